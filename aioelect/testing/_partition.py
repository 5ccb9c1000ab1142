"""An etcd cluster whose members and clients live in the namespaces of one :class:`Network`.

The test process itself stays in the host namespace. It reaches the members
of a :class:`PartitionCluster` through unix sockets that etcd also listens on:
a unix socket is a file, no partition cuts it, so the test's observer (e.g.
the history watch of the chaos suite) sees every member throughout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from .._connection import Connection
from .._embedded import EtcdProcess
from .._exceptions import EtcdError
from ._network import Network

__all__ = ("PartitionCluster",)


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
        return m.work_dir / f"{m.name}:1"

    def exec_prefix(self, node: str) -> list[str]:
        """The command prefix that runs a program in a client's (or member's) namespace."""
        return self.network.exec_prefix(node)

    def connection(self, member: str, timeout: float = 5.0) -> Connection:
        """A connection (not yet connected) from the test's process to ``member``
        through its unix socket, which no partition cuts."""
        return Connection.unix(self.socket_path(member), timeout=timeout)

    async def raft_leader(self, timeout: float = 1.0) -> str | None:
        """The member that a majority of members names as raft leader (None: no majority)."""
        names: dict[int, str] = {}
        votes: dict[int, int] = {}
        for m in self.member_names:
            conn = self.connection(m, timeout)
            try:
                await conn.connect()
                status = await conn.member_status(timeout)
            except EtcdError:
                continue
            finally:
                await conn.close()
            names[status.member_id] = m
            if status.leader:
                votes[status.leader] = votes.get(status.leader, 0) + 1
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
