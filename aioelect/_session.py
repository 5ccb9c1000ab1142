"""The session: one lease, its keepalive, and the deadlines derived from it.

Two instants come from the SEND time of the last successful grant or
keepalive, on the monotonic clock (etcd cannot expire the lease before
``sent + ttl``, because it only starts counting when it receives the request):

- ``valid_until = sent + renew_deadline``: terms of this session are valid
  until then. The keepalive loop's waits are all bounded by it, so at that
  instant the session is marked lost and every term ends (its body cancelled):
  one timer for all the terms of the session.
- ``hard_deadline = sent + ttl``: the earliest instant etcd may expire the
  lease and let someone else lead.

The keepalive runs over one long-lived LeaseKeepAlive stream, re-opened when
it breaks. Every wait in the loop is bounded by ``valid_until``; past it, or
when etcd answers TTL 0 (the lease is gone), the session is lost: every
listener is told, and the elector grants a new one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import anyio

from ._backoff import Backoff
from ._config import ElectorConfig
from ._connection import Connection, KeepAliveStream, sleep_until
from ._exceptions import AuthenticationFailed, EtcdError

__all__ = ("Session",)

log = logging.getLogger("aioelect")


class Session:
    """One granted lease and its keepalive loop."""

    def __init__(
        self, conn: Connection, config: ElectorConfig, lease_id: int, ttl: int, sent_at: float
    ) -> None:
        self._conn = conn
        self._config = config
        self.lease_id = lease_id
        self.ttl = min(float(ttl), config.ttl) if ttl > 0 else config.ttl
        self._renewed_at = sent_at
        self.lost_reason: str | None = None
        self._on_lost: set[Callable[[str], None]] = set()
        self._on_renewed: list[Callable[[float], None]] | None = None
        self.keepalives = 0
        self.failures = 0
        self.latency: float | None = None
        self.latency_sum = 0.0

    @property
    def valid_until(self) -> float:
        """Monotonic instant until which this session's terms are valid."""
        return self._renewed_at + self._config.renew_deadline

    @property
    def hard_deadline(self) -> float:
        """Monotonic instant before which etcd cannot expire the lease."""
        return self._renewed_at + self.ttl

    @property
    def is_lost(self) -> bool:
        return self.lost_reason is not None

    def is_live(self) -> bool:
        """Not lost and still within ``valid_until`` (checked against the clock now)."""
        return self.lost_reason is None and time.monotonic() < self.valid_until

    def on_lost(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(reason)`` when the session is lost; return an unsubscribe function."""
        if self.lost_reason is not None:
            callback(self.lost_reason)
            return lambda: None
        self._on_lost.add(callback)
        return lambda: self._on_lost.discard(callback)

    def on_renewed(self, callback: Callable[[float], None]) -> Callable[[], None]:
        """Call ``callback(hard_deadline)`` after every successful renewal; return an
        unsubscribe function. (For ``aioelect run``'s watchdog: package-internal.)
        """
        if self._on_renewed is None:
            self._on_renewed = []
        listeners = self._on_renewed
        listeners.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                listeners.remove(callback)

        return unsubscribe

    def mark_lost(self, reason: str) -> None:
        """End the session now and tell every listener (once)."""
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        listeners, self._on_lost = self._on_lost, set()
        for callback in listeners:
            callback(reason)

    async def run(self) -> None:
        """Renew the lease until the session is lost; return then.

        Cancelling stops renewing (the lease then expires by its TTL unless
        revoked).
        """
        cfg = self._config
        backoff = Backoff(
            initial=min(0.05, cfg.keepalive_interval / 4), cap=cfg.keepalive_interval / 2
        )
        stream: KeepAliveStream | None = None
        next_at = self._renewed_at + cfg.keepalive_interval
        try:
            while self.lost_reason is None:
                with anyio.move_on_after(max(0.0, self.valid_until - time.monotonic())):
                    await sleep_until(next_at)
                now = time.monotonic()
                if now >= self.valid_until:
                    self.mark_lost(
                        f"lease not renewed within renew_deadline ({cfg.renew_deadline:g} s)"
                    )
                    return
                sent = now
                ttl: int | None = None
                with anyio.move_on_after(min(cfg.request_timeout, self.valid_until - now)):
                    try:
                        if stream is None:
                            stream = self._conn.keepalive_stream()
                        ttl = await stream.keepalive(self.lease_id)
                    except EtcdError as exc:
                        log.debug("keepalive of lease %x failed: %s", self.lease_id, exc)
                        if isinstance(exc, AuthenticationFailed):
                            with contextlib.suppress(EtcdError):
                                await self._conn.reauthenticate()
                if ttl is None:
                    self.failures += 1
                    if stream is not None:
                        stream.close()
                        stream = None
                    next_at = time.monotonic() + backoff.next()
                    continue
                if ttl <= 0:
                    self.mark_lost("lease expired (etcd answered TTL 0)")
                    return
                self.latency = time.monotonic() - sent
                self.latency_sum += self.latency
                self.keepalives += 1
                self._renewed_at = max(self._renewed_at, sent)
                backoff.reset()
                for renewed in list(self._on_renewed or ()):
                    renewed(self.hard_deadline)
                next_at = sent + cfg.keepalive_interval
        finally:
            if stream is not None:
                stream.close()

    def __repr__(self) -> str:
        state = f"lost ({self.lost_reason})" if self.lost_reason else "live"
        return f"<Session lease={self.lease_id:x} {state}>"
