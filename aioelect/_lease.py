"""The seed's LeaderLease: the lease behind a leader's term, from :meth:`Leadership.get_lease`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._core import Core
    from ._session import Session

__all__ = ("LeaderLease",)


class LeaderLease:
    """The lease behind a leader's term (the seed's ``LeaderLease``).

    Attributes:
        id: the lease id.
        ttl: the lease's TTL in seconds.
    """

    def __init__(self, core: Core, session: Session) -> None:
        self._core = core
        self._session = session
        self.id = session.lease_id
        self.ttl = session.ttl

    def expires_in(self) -> float:
        """Seconds until the term must end without another renewal (0 once expired)."""
        if self._session.is_lost:
            return 0.0
        return max(0.0, self._session.valid_until - time.monotonic())

    def is_expired(self) -> bool:
        """Whether this node must step down now (the seed's ``IsExpired``)."""
        return not self._session.is_live()

    async def close(self) -> None:
        """Revoke the lease: every term and candidacy of the elector on it ends at once."""
        self._session.mark_lost("lease closed")
        await self._core.conn.revoke(self.id)

    def __repr__(self) -> str:
        return f"<LeaderLease {self.id:x} ttl={self.ttl:g} expires_in={self.expires_in():.3f}>"
