"""Network partitions between etcd members and clients, with Linux network namespaces.

Theory of operation
-------------------
Every node (an etcd member or a client process) gets a network namespace of
its own with one interface, ``eth0`` (``10.47.0.<i+1>/24``): one end of a veth
pair whose other end is a port of a bridge in one more namespace, the hub. No
interface, route or rule is ever added to the host's own namespace, nothing
is routed out of the test's namespaces, and :meth:`Network.close` removes
them all (the names carry the owner's pid, so parallel runs never collide
and a later run removes those of a run that was SIGKILLed).

Cuts and packet loss are nftables rules in the hub's namespace (a bridge
table's forward chain, replaced atomically on every change): the directed
link A->B drops every packet from A's address to B's (a cut) or a random
share of them (``numgen random``). Cuts are directed, so a one-way drop is
the same operation as a two-way cut, done once. Only IP is filtered (ARP
always flows), as when a switch or a firewall drops a flow. Latency is a
``netem`` qdisc on the hub's port towards the destination (under an ``htb``
class per source). Kernels without netem (some VMs' minimal kernels, see
:func:`netem_unavailable`) delay in userspace instead: :meth:`Network.relay`
starts a TCP relay (a :class:`~aioelect.testing.FaultProxy` whose thread
entered the source's namespace) on the source namespace's loopback, forwarding
to the destination's address; a process in that namespace connects to the
relay, and a link's delay then holds each chunk of bytes in the relay (per
direction), while cuts and loss still drop the relay's own packets in the hub.
Only traffic through a relay is delayed then: :meth:`Network.impair` with a
delay on a link no relay carries raises :class:`NetnsError`. Unlike netem, the
delay is added above TCP: the lossy connection's round trip (and so its
retransmission timeout) stays short.

The test process itself stays in the host namespace. It reaches the members
of a :class:`PartitionCluster` through unix sockets that etcd also listens on:
a unix socket is a file, no partition cuts it, so the test's observer (e.g.
the history watch of the chaos suite) sees every member throughout.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aetcd import rpc

from .._connection import Connection, _Client
from .._embedded import EtcdProcess
from .._exceptions import AioelectError, EtcdError
from ._proxy import FaultProxy

__all__ = (
    "Impairment",
    "NetnsError",
    "Network",
    "PartitionCluster",
    "netem_unavailable",
    "netns_unavailable",
)

_PREFIX = "aioe"  # namespace names: aioe<pid>x<n>-<node>
_SUBNET = "10.47.0"
_MAX_NODES = 32
_serial = itertools.count()
_probe_result: dict[str, str | None] = {}


class NetnsError(AioelectError):
    """An ``ip`` or ``tc`` command failed."""


def _run(*cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        list(cmd), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        shown = " ".join(cmd) + (f" <<{stdin.strip()[:400]!r}" if stdin else "")
        raise NetnsError(f"{shown}: exit {proc.returncode}: {proc.stderr.strip()[:400]}")
    return proc.stdout


def netns_unavailable() -> str | None:
    """Why network namespaces with partitions cannot be made here (None: they can).

    Tries once per process: Linux, root, ``ip`` (iproute2) and ``nft``
    (nftables) on PATH, and a throwaway namespace with a veth pair, a bridge
    and an nftables rule.
    """
    if "netns" not in _probe_result:
        _probe_result["netns"] = _probe()
    return _probe_result["netns"]


def netem_unavailable() -> str | None:
    """Why links cannot be delayed here (None: they can): ``tc`` or the kernel's netem."""
    if "netem" not in _probe_result:
        reason = netns_unavailable()
        if reason is None and shutil.which("tc") is None:
            reason = "no 'tc' on PATH (iproute2)"
        if reason is None:
            reason = _in_probe_ns(
                [("tc", "qdisc", "add", "dev", "pa", "root", "netem", "delay", "1ms")],
                "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): links cannot be delayed",
            )
        _probe_result["netem"] = reason
    return _probe_result["netem"]


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "no 'ip' on PATH (apt-get install iproute2)"
    if shutil.which("nft") is None:
        return "no 'nft' on PATH (apt-get install nftables)"
    return _in_probe_ns(
        [
            ("ip", "link", "add", "name", "br0", "type", "bridge"),
            (
                "nft",
                "add table bridge probe; add chain bridge probe c { type filter hook "
                "forward priority 0; policy accept; }; add rule bridge probe c "
                "ip saddr 10.0.0.1 numgen random mod 100 < 5 drop",
            ),
        ],
        "nftables cannot filter a bridge in a network namespace",
    )


def _in_probe_ns(commands: list[tuple[str, ...]], what: str) -> str | None:
    ns = f"{_PREFIX}{os.getpid()}x{next(_serial)}-probe"
    try:
        _run("ip", "netns", "add", ns)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run("ip", "-n", ns, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb")
        for cmd in commands:
            _run("ip", "netns", "exec", ns, *cmd)
    except NetnsError as exc:
        return f"{what}: {exc}"
    finally:
        with contextlib.suppress(NetnsError):
            _run("ip", "netns", "del", ns)
    return None


def _sweep_stale() -> None:
    """Remove the namespaces of runs whose process is gone (SIGKILLed owners)."""
    with contextlib.suppress(NetnsError):
        for line in _run("ip", "netns", "list").splitlines():
            name = line.split()[0] if line.split() else ""
            m = re.fullmatch(rf"{_PREFIX}(\d+)x\d+-\w+", name)
            if m is None:
                continue
            pid = int(m.group(1))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(NetnsError):
                    _run("ip", "netns", "del", name)
            except PermissionError:
                pass


@dataclass(frozen=True)
class Impairment:
    """What a link does to the packets it carries, in one direction.

    Attributes:
        delay: added latency in seconds.
        jitter: random variation of the delay, in seconds.
        loss: fraction of packets dropped at random (0 to 1).
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.loss <= 1:
            raise ValueError(f"loss must be between 0 and 1, got {self.loss!r}")
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter must be >= 0")

    def netem(self) -> str | None:
        """The netem qdisc for the delay (None: no delay)."""
        if not (self.delay or self.jitter):
            return None
        args = ["netem", "limit", "100000", "delay", f"{self.delay * 1000:.3f}ms"]
        if self.jitter:
            args += [f"{self.jitter * 1000:.3f}ms", "distribution", "normal"]
        return " ".join(args)


_CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it) into the network namespace ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if sys.version_info >= (3, 12):
            os.setns(fd, os.CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class _Relay(FaultProxy):
    """A TCP relay whose thread lives in a node's namespace: it listens on that
    namespace's loopback and connects to ``host:port`` from there, holding each
    chunk for the delay of its direction (``up``: towards ``host``)."""

    def __init__(self, netns: str, host: str, port: int) -> None:
        super().__init__(host, port)
        self._netns = netns
        self._up = Impairment()
        self._down = Impairment()
        self._rng = random.Random()

    async def _listen(self) -> None:
        _enter_netns(self._netns)  # this thread only, before any socket is made
        await super()._listen()

    def _latency(self, up: bool) -> float:
        imp = self._up if up else self._down
        if imp.jitter:
            return max(0.0, self._rng.gauss(imp.delay, imp.jitter))
        return imp.delay

    def set_delays(self, up: Impairment, down: Impairment) -> None:
        async def apply() -> None:
            self._up, self._down = up, down

        self._control(apply())


class Network:
    """Nodes in network namespaces around a bridge, and the faults between them.

    Args:
        nodes: node names (letters, digits, ``_``; at most 15 nodes).

    Use as a context manager, or call :meth:`create` and :meth:`close`.
    Directed links are named ``(source, destination)``.
    """

    def __init__(self, nodes: Sequence[str]) -> None:
        if not 2 <= len(nodes) <= _MAX_NODES:
            raise ValueError(f"nodes: between 2 and {_MAX_NODES} names, got {len(nodes)}")
        for n in nodes:
            if not re.fullmatch(r"\w{1,8}", n):
                raise ValueError(f"nodes: {n!r} must be 1-8 letters, digits or '_'")
        if len(set(nodes)) != len(nodes):
            raise ValueError("nodes: names must be unique")
        self.nodes = list(nodes)
        self._tag = f"{_PREFIX}{os.getpid()}x{next(_serial)}"
        self.hub = f"{self._tag}-hub"
        self._index = {n: i for i, n in enumerate(self.nodes)}
        self._cuts: set[tuple[str, str]] = set()
        self._impaired: dict[tuple[str, str], Impairment] = {}
        self._delays: dict[tuple[str, str], str] = {}
        self._relays: dict[tuple[str, str, int], _Relay] = {}
        self._made: list[str] = []

    # -- naming --------------------------------------------------------------------------

    def netns(self, node: str) -> str:
        """The network namespace of ``node``."""
        self._check(node)
        return f"{self._tag}-{node}"

    def address(self, node: str) -> str:
        """The IPv4 address of ``node``."""
        return f"{_SUBNET}.{self._index[self._check(node)] + 1}"

    def exec_prefix(self, node: str) -> list[str]:
        """The command prefix that runs a program in ``node``'s namespace
        (``ip netns exec``: it execs the program, so its pid is the program's)."""
        return ["ip", "netns", "exec", self.netns(node)]

    def _check(self, node: str) -> str:
        if node not in self._index:
            raise ValueError(f"unknown node {node!r}; nodes: {', '.join(self.nodes)}")
        return node

    # -- life cycle ------------------------------------------------------------------------

    def create(self) -> None:
        """Make the namespaces, the bridge and the veth pairs; every link healthy."""
        reason = netns_unavailable()
        if reason is not None:
            raise NetnsError(reason)
        _sweep_stale()
        try:
            for ns in [self.hub, *(self.netns(n) for n in self.nodes)]:
                _run("ip", "netns", "add", ns)
                self._made.append(ns)
            hub = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
            for n in self.nodes:
                hub += [
                    f"link add name p{n} type veth peer name eth0 netns {self.netns(n)}",
                    f"link set p{n} master br0",
                    f"link set p{n} up",
                ]
            _run("ip", "-n", self.hub, "-batch", "-", stdin="\n".join(hub) + "\n")
            for n in self.nodes:
                node = [
                    "link set lo up",
                    f"addr add {self.address(n)}/24 dev eth0",
                    "link set eth0 up",
                ]
                _run("ip", "-n", self.netns(n), "-batch", "-", stdin="\n".join(node) + "\n")
            self._apply()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every relay; remove every namespace (and with them the veth pairs and rules)."""
        while self._relays:
            _, relay = self._relays.popitem()
            relay.close()
        while self._made:
            ns = self._made.pop()
            with contextlib.suppress(NetnsError):
                _run("ip", "netns", "del", ns)

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------

    def drop(self, source: str, destination: str) -> None:
        """Drop every packet from ``source`` to ``destination`` (one way), added to
        the current faults."""
        self._cuts.add((self._check(source), self._check(destination)))
        self._apply()

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between ``a`` and ``b``, both ways, added to the current faults."""
        self._cuts |= {(self._check(a), self._check(b)), (b, a)}
        self._apply()

    def partition(self, *groups: Iterable[str]) -> None:
        """Replace the current cuts with these: two nodes named in the groups can talk
        only if some group holds both. Nodes in no group keep every link.

        ``partition({"m0"}, {"m1", "m2"})`` isolates m0 from m1 and m2;
        ``partition({"m0", "m1"}, {"m1", "m2"})`` is a bridge: m1 sees both sides.
        """
        sets = [set(g) for g in groups]
        for g in sets:
            for n in g:
                self._check(n)
        named = set().union(*sets) if sets else set()
        self._cuts = {
            (a, b)
            for a in named
            for b in named
            if a != b and not any(a in g and b in g for g in sets)
        }
        self._apply()

    def isolate(self, node: str, from_: Iterable[str] | None = None) -> None:
        """Replace the current cuts: ``node`` is cut off from ``from_`` (default: every
        other node), both ways."""
        others = set(from_) if from_ is not None else set(self.nodes) - {node}
        self.partition({node}, others - {node})

    def bridge(self, left: Iterable[str], right: Iterable[str], via: str) -> None:
        """Replace the current cuts: ``left`` and ``right`` cannot talk, ``via`` talks to both."""
        self.partition({*left, via}, {*right, via})

    def impair(
        self,
        source: str,
        destination: str,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        both_ways: bool = True,
    ) -> None:
        """Delay and/or lose packets on a link; replaces that link's impairment.

        Loss is an nftables rule; a delay is netem, or where the kernel has none,
        added by the relays that carry the link (:meth:`relay`; :class:`NetnsError`
        if none does, and then nothing changes).

        Args:
            delay, jitter: seconds.
            loss: fraction of packets lost at random (0.2 is 20 %).
            both_ways: the reverse link too.
        """
        imp = Impairment(delay, jitter, loss)
        before = dict(self._impaired)
        links = [(source, destination)] + ([(destination, source)] if both_ways else [])
        for s, d in links:
            self._check(s)
            self._check(d)
            if imp == Impairment():
                self._impaired.pop((s, d), None)
            else:
                self._impaired[(s, d)] = imp
        try:
            self._apply()
        except NetnsError:
            self._impaired = before  # refused (no netem, no relay): nothing changed
            self._apply()
            raise

    def relay(self, source: str, destination: str, port: int) -> str:
        """A TCP relay in ``source``'s namespace to ``destination``'s ``port``, for
        delays where the kernel has no netem (:func:`netem_unavailable`).

        Returns ``127.0.0.1:PORT`` (a free port on ``source``'s own loopback): a
        process in ``source``'s namespace that connects there reaches
        ``destination`` through the relay, whose connection is ``source``'s (cuts
        and loss apply to it). Without netem, :meth:`impair`'s delay and jitter on
        the links ``source``->``destination`` and back are added by the relay to
        each chunk of bytes, in that direction; with netem the relay only forwards
        (the kernel delays its packets). The same call returns the same relay; it
        lives until :meth:`close`.
        """
        self._check(source)
        self._check(destination)
        if not self._made:
            raise NetnsError("Network.relay() needs the network: create() it first")
        if not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {port!r}")
        key = (source, destination, port)
        if key not in self._relays:
            relay = _Relay(self.netns(source), self.address(destination), port)
            relay.start()
            self._relays[key] = relay
            if self._delays and netem_unavailable() is not None:
                self._relay_delays(self._delays)
        return self._relays[key].endpoint

    def heal(self) -> None:
        """Every link healthy again: no cut, no impairment."""
        self._cuts.clear()
        self._impaired.clear()
        self._apply()

    def heal_cuts(self) -> None:
        """Remove every cut; impairments stay."""
        self._cuts.clear()
        self._apply()

    @property
    def cuts(self) -> frozenset[tuple[str, str]]:
        """The directed links that drop everything now."""
        return frozenset(self._cuts)

    def _apply(self) -> None:
        rules: list[str] = []
        for src, dst in sorted(self._cuts):
            rules.append(f"ip saddr {self.address(src)} ip daddr {self.address(dst)} drop")
        for (src, dst), imp in sorted(self._impaired.items()):
            if imp.loss and (src, dst) not in self._cuts:
                share = round(imp.loss * 1_000_000)
                rules.append(
                    f"ip saddr {self.address(src)} ip daddr {self.address(dst)} "
                    f"numgen random mod 1000000 < {share} drop"
                )
        body = "".join(f"    {r}\n" for r in rules)
        # Declaring the table first makes the delete valid on the first run: one
        # atomic transaction replaces the whole rule set.
        script = (
            "table bridge aioelect {}\n"
            "delete table bridge aioelect\n"
            "table bridge aioelect {\n"
            "  chain links {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"{body}"
            "  }\n"
            "}\n"
        )
        _run("ip", "netns", "exec", self.hub, "nft", "-f", "-", stdin=script)
        self._apply_delays()

    def _apply_delays(self) -> None:
        want: dict[tuple[str, str], str] = {}
        for link, imp in self._impaired.items():
            netem = imp.netem()
            if netem is not None and link not in self._cuts:
                want[link] = netem
        if want == self._delays:
            return
        reason = netem_unavailable() if want or self._delays else None
        if reason is not None:
            uncovered = sorted(link for link in want if not self._relayed(link))
            if uncovered:
                s, d = uncovered[0]
                raise NetnsError(
                    f"{reason}; a delay then applies only to traffic through a relay, "
                    f"and no Network.relay() carries {s}->{d}"
                )
            self._relay_delays(want)
            self._delays = want
            return
        tc: list[str] = []
        for dst in self.nodes:
            had = any(d == dst for _, d in self._delays)
            needs = any(d == dst for _, d in want)
            if had:
                tc.append(f"qdisc del dev p{dst} root")
            if not needs:
                continue
            # One htb class per delayed source (1:2, 1:3...), the rest in 1:1.
            tc.append(f"qdisc add dev p{dst} root handle 1: htb default 1")
            tc.append(f"class add dev p{dst} parent 1: classid 1:1 htb rate 10gbit quantum 60000")
            for k, ((src, d), netem) in enumerate(sorted(want.items()), start=2):
                if d != dst:
                    continue
                tc += [
                    f"class add dev p{dst} parent 1: classid 1:{k:x} htb rate 10gbit quantum 60000",
                    f"qdisc add dev p{dst} parent 1:{k:x} {netem}",
                    f"filter add dev p{dst} parent 1: protocol ip prio 1 u32 "
                    f"match ip src {self.address(src)}/32 flowid 1:{k:x}",
                ]
        _run("tc", "-n", self.hub, "-batch", "-", stdin="\n".join(tc) + "\n")
        self._delays = want

    def _relayed(self, link: tuple[str, str]) -> bool:
        s, d = link
        return any({src, dst} == {s, d} for src, dst, _ in self._relays)

    def _relay_delays(self, want: dict[tuple[str, str], str]) -> None:
        """Give each relay the delays of its two links (those in ``want``; else none)."""
        for (src, dst, _), relay in self._relays.items():
            up = self._impaired.get((src, dst), Impairment()) if (src, dst) in want else None
            down = self._impaired.get((dst, src), Impairment()) if (dst, src) in want else None
            relay.set_delays(
                Impairment(up.delay, up.jitter) if up else Impairment(),
                Impairment(down.delay, down.jitter) if down else Impairment(),
            )


class PartitionCluster:
    """An etcd cluster and client slots, each in a namespace of one :class:`Network`.

    Members ``m0``, ``m1``... serve clients on ``<address>:2379`` inside their
    namespace (and on a unix socket, :meth:`socket_path`, for the test's own
    process); clients ``c0``, ``c1``... are namespaces for the processes under
    test (:meth:`exec_prefix`). Faults go through :attr:`network`.

    Args:
        size: members.
        clients: client namespaces.
        heartbeat_ms, election_ms: raft timings.
        binary: the etcd binary (default: ``find_etcd_binary()``).
    """

    CLIENT_PORT = 2379
    PEER_PORT = 2380

    def __init__(
        self,
        size: int = 3,
        clients: int = 3,
        *,
        heartbeat_ms: int = 10,
        election_ms: int = 100,
        binary: str | None = None,
    ) -> None:
        self.member_names = [f"m{i}" for i in range(size)]
        self.client_names = [f"c{i}" for i in range(clients)]
        self.network = Network(self.member_names + self.client_names)
        net = self.network
        initial = ",".join(
            f"{n}=http://{net.address(n)}:{self.PEER_PORT}" for n in self.member_names
        )
        token = f"aioelect-{net.hub}"
        self.members: list[EtcdProcess] = []
        for n in self.member_names:
            url = f"http://{net.address(n)}:{self.CLIENT_PORT}"
            self.members.append(
                EtcdProcess(
                    name=n,
                    host=net.address(n),
                    client_port=self.CLIENT_PORT,
                    peer_port=self.PEER_PORT,
                    initial_cluster=initial,
                    cluster_token=token,
                    heartbeat_ms=heartbeat_ms,
                    election_ms=election_ms,
                    binary=binary,
                    wrapper=net.exec_prefix(n),
                    # Also a unix socket ("<name>:1" in the member's folder) for the test.
                    extra_args=["--listen-client-urls", f"{url},unix://{n}:1"],
                )
            )

    @property
    def endpoints(self) -> list[str]:
        """``address:2379`` of every member, in member order."""
        return [m.endpoint for m in self.members]

    def endpoints_from(self, member: str) -> list[str]:
        """Every member's endpoint, ``member``'s first (gRPC pick_first connects to it)."""
        m = self.member(member)
        return [m.endpoint] + [e for e in self.endpoints if e != m.endpoint]

    def relayed_endpoints(self, client: str, member: str | None = None) -> list[str]:
        """Every member's endpoint through a relay in ``client``'s namespace
        (:meth:`Network.relay`: link delays where the kernel has no netem),
        ``member``'s first."""
        order = list(self.member_names)
        if member is not None:
            self.member(member)
            order.remove(member)
            order.insert(0, member)
        return [self.network.relay(client, m, self.CLIENT_PORT) for m in order]

    def member(self, name: str) -> EtcdProcess:
        """The member named ``name``."""
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def socket_path(self, member: str) -> Path:
        """The unix socket ``member`` serves clients on (reachable whatever the faults)."""
        m = self.member(member)
        return m._tmp / f"{m.name}:1"

    def exec_prefix(self, node: str) -> list[str]:
        """The command prefix that runs a program in a client's (or member's) namespace."""
        return self.network.exec_prefix(node)

    def connection(self, member: str, timeout: float = 5.0) -> Connection:
        """A connection (not yet connected) from the test's process to ``member``
        through its unix socket, which no partition cuts."""
        path = f"unix:{self.socket_path(member)}"
        client = _Client(
            target=path, tls=None, username=None, password=None, timeout=timeout, authority=None
        )
        return Connection(client, endpoint_names=[path], owned=True, timeout=timeout)

    async def raft_leader(self, timeout: float = 1.0) -> str | None:
        """The member that a majority of members names as raft leader (None: no majority)."""
        names: dict[int, str] = {}
        votes: dict[int, int] = {}
        for m in self.member_names:
            conn = self.connection(m, timeout)
            try:
                await conn.connect()
                resp = await conn._unary(
                    conn.client.maintenancestub.Status, rpc.StatusRequest(), timeout
                )
            except EtcdError:
                continue
            finally:
                await conn.close()
            names[int(resp.header.member_id)] = m
            if resp.leader:
                votes[int(resp.leader)] = votes.get(int(resp.leader), 0) + 1
        for leader, n in votes.items():
            if n > len(self.member_names) // 2 and leader in names:
                return names[leader]
        return None

    def start(self, timeout: float = 30.0) -> None:
        """Create the network, start every member and wait until all serve."""
        self.network.create()
        try:
            for m in self.members:
                m.spawn()
            for m in self.members:
                m.wait_ready(timeout)
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        """Stop every member, remove their files and the namespaces."""
        for m in self.members:
            with contextlib.suppress(Exception):
                m.cleanup()
        self.network.close()

    def __enter__(self) -> PartitionCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # -- faults, by member name (see Network for the rest) --------------------------------

    def isolate_member(self, name: str) -> None:
        """Cut ``name`` off from the other members (clients still reach every member)."""
        self.network.isolate(name, self.member_names)

    def split(self, minority: Iterable[str]) -> None:
        """Cut the members in ``minority`` off from the others (clients reach all)."""
        side = set(minority)
        self.network.partition(side, set(self.member_names) - side)

    def heal(self) -> None:
        """Every link healthy again."""
        self.network.heal()
