"""A 3-member etcd cluster on loopback, each member stoppable, killable, pausable."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from .._embedded import EtcdProcess, free_port

__all__ = ("EtcdCluster",)


class EtcdCluster:
    """``size`` etcd members on free loopback ports, sharing one cluster token.

    Members are :class:`aioelect._embedded.EtcdProcess` objects in
    ``members``: ``stop()``, ``kill()``, ``pause()`` (SIGSTOP), ``resume()``
    (SIGCONT) and ``restart()`` (on the same data and ports) each of them.
    """

    def __init__(self, size: int = 3, *, heartbeat_ms: int = 10, election_ms: int = 100) -> None:
        names = [f"m{i}" for i in range(size)]
        peers = {n: free_port() for n in names}
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in peers.items())
        token = f"aioelect-{free_port()}"
        self.members: list[EtcdProcess] = [
            EtcdProcess(
                name=n,
                peer_port=peers[n],
                initial_cluster=initial,
                cluster_token=token,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
            )
            for n in names
        ]

    @property
    def endpoints(self) -> list[str]:
        """``host:port`` of every member, in member order."""
        return [m.endpoint for m in self.members]

    @property
    def endpoint(self) -> str:
        """All endpoints as one comma-separated string."""
        return ",".join(self.endpoints)

    def start(self, timeout: float = 30.0) -> None:
        """Start all members (they must see each other to serve) and wait for all."""
        try:
            for m in self.members:
                m.spawn()
            for m in self.members:
                m.wait_ready(timeout)
        except BaseException:
            self.cleanup()
            raise

    def member(self, endpoint: str) -> EtcdProcess:
        """The member serving ``endpoint``."""
        for m in self.members:
            if m.endpoint == endpoint:
                return m
        raise KeyError(endpoint)

    def pids(self) -> Sequence[int]:
        return [m.pid for m in self.members if m.pid is not None]

    def cleanup(self) -> None:
        """Stop every member and remove their files."""
        for m in self.members:
            with contextlib.suppress(Exception):
                m.cleanup()
