"""A TCP fault-injection proxy (placeholder: being written)."""

from __future__ import annotations

__all__ = ("FaultProxy",)


class FaultProxy:
    """A TCP proxy on a free loopback port in front of ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.endpoint = ""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass
