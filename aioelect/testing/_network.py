"""Nodes in Linux network namespaces around a bridge, and the faults between them.

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

Size: about 400 lines because :class:`Network` is one idea, the fault table
of the links and the commands that apply it (nftables for cuts and loss, tc
or the relays for delays); the namespace primitives are in :mod:`._netns`
and the etcd cluster on top in :mod:`._partition`.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._netns import (
    NetnsError,
    enter_netns,
    netem_unavailable,
    netns_unavailable,
    new_tag,
    run,
    sweep_stale,
)
from ._proxy import FaultProxy

__all__ = ("Impairment", "Network")

_SUBNET = "10.47.0"
_MAX_NODES = 32


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
        enter_netns(self._netns)  # this thread only, before any socket is made
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
        self._tag = new_tag()
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
        sweep_stale()
        try:
            for ns in [self.hub, *(self.netns(n) for n in self.nodes)]:
                run("ip", "netns", "add", ns)
                self._made.append(ns)
            hub = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
            for n in self.nodes:
                hub += [
                    f"link add name p{n} type veth peer name eth0 netns {self.netns(n)}",
                    f"link set p{n} master br0",
                    f"link set p{n} up",
                ]
            run("ip", "-n", self.hub, "-batch", "-", stdin="\n".join(hub) + "\n")
            for n in self.nodes:
                node = [
                    "link set lo up",
                    f"addr add {self.address(n)}/24 dev eth0",
                    "link set eth0 up",
                ]
                run("ip", "-n", self.netns(n), "-batch", "-", stdin="\n".join(node) + "\n")
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
                run("ip", "netns", "del", ns)

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
        run("ip", "netns", "exec", self.hub, "nft", "-f", "-", stdin=script)
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
        run("tc", "-n", self.hub, "-batch", "-", stdin="\n".join(tc) + "\n")
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
