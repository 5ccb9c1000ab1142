"""The seed's callback API: Leadership (CreateLeadership + ElectionLoop) and LeaderLease.

Theory of operation: :meth:`Leadership.run` loops campaign -> lead -> step
down -> campaign until :meth:`Leadership.stop` or cancellation. A step-down
is graceful (stop, decline, transfer: this side chose to end the term) or
forced (the term ended by itself: lease, key, session). On a graceful
step-down with ``handover_barrier`` the key stays (and the lease is kept
alive) until ``on_stepped_down`` has returned, bounded by the TTL, so the
successor's ``on_elected`` starts after it; without the barrier the key goes
first. On a forced step-down the key is already gone or dying, so
``on_stepped_down`` simply follows. Every term that was elected gets exactly
one ``on_stepped_down``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

from ._backoff import Backoff
from ._campaign import campaign as run_campaign
from ._config import check_candidate_size, check_name, to_bytes, value_limit
from ._connection import KV
from ._exceptions import AioelectError, ConfigError, NotLeader
from ._models import LeaderInfo
from ._term import Term, cancellation_was_ours, scope_cancellation_in_disguise

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._elector import Elector
    from ._session import Session

__all__ = ("LeaderLease", "Leadership")

log = logging.getLogger("aioelect")

OnElected: TypeAlias = Callable[[Term], Awaitable[bool | None]]
OnSteppedDown: TypeAlias = Callable[[Term], Awaitable[None]]
OnLeaderChange: TypeAlias = Callable[[LeaderInfo | None], Awaitable[None]]


class LeaderLease:
    """The lease behind a leader's term (the seed's ``LeaderLease``).

    Attributes:
        id: the lease id.
        ttl: the lease's TTL in seconds.
    """

    def __init__(self, elector: Elector, session: Session) -> None:
        self._elector = elector
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
        await self._elector._conn.revoke(self.id)

    def __repr__(self) -> str:
        return f"<LeaderLease {self.id:x} ttl={self.ttl:g} expires_in={self.expires_in():.3f}>"


class Leadership:
    """Campaign, lead, step down and campaign again, with callbacks (the seed's Leadership).

    Created by :meth:`Elector.leadership`; the seed's ``ElectionLoop`` is
    :meth:`run`. All callbacks are awaited in the task that runs :meth:`run`,
    except ``on_leader_change``, which runs in a task of its own there.
    """

    def __init__(
        self,
        elector: Elector,
        name: str,
        value: str | bytes,
        *,
        node_name: str | None = None,
        campaign: bool = True,
        on_elected: OnElected | None = None,
        on_stepped_down: OnSteppedDown | None = None,
        on_leader_change: OnLeaderChange | None = None,
        handover_barrier: bool = True,
        reclaim_stale: bool = False,
    ) -> None:
        self._elector = elector
        self.name = check_name(name)
        limit = elector._config.max_request_bytes
        self.value = to_bytes(value, limit=value_limit(limit))
        check_candidate_size(elector.prefix, self.name, self.value, limit)
        if node_name is not None and not isinstance(node_name, str):
            raise ConfigError("node_name", f"must be a str or None, not {type(node_name).__name__}")
        for field, flag in (
            ("campaign", campaign),
            ("handover_barrier", handover_barrier),
            ("reclaim_stale", reclaim_stale),
        ):
            if not isinstance(flag, bool):
                raise ConfigError(field, f"must be True or False, not {flag!r}")
        self.node_name = node_name
        for field, cb in (
            ("on_elected", on_elected),
            ("on_stepped_down", on_stepped_down),
            ("on_leader_change", on_leader_change),
        ):
            if cb is not None and not callable(cb):
                raise ConfigError(field, "must be an async function or None")
        self._campaign = bool(campaign)
        self._on_elected = on_elected
        self._on_stepped_down = on_stepped_down
        self._on_leader_change = on_leader_change
        self.handover_barrier = bool(handover_barrier)
        self.reclaim_stale = bool(reclaim_stale)
        self._term: Term | None = None
        self._stopped = False
        self._running = False
        self._wake = anyio.Event()
        self._campaign_scope: anyio.CancelScope | None = None
        self._lead_scope: anyio.CancelScope | None = None
        self._transfer: KV | None = None
        self._transfer_done: anyio.Event | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def term(self) -> Term | None:
        """The current term while leading, else None."""
        term = self._term
        return term if term is not None and term.is_valid else None

    @property
    def is_leader(self) -> bool:
        """Whether this node leads now (term valid, lease not locally expired)."""
        return self.term is not None

    def check(self) -> bool:
        """The seed's ``Check``: whether the leadership is still valid."""
        return self.is_leader

    def get_lease(self) -> LeaderLease | None:
        """The lease of the current term, or None when not leading (the seed's GetLease)."""
        term = self.term
        return LeaderLease(self._elector, term._session) if term is not None else None

    async def current_leader(self) -> tuple[bytes, int] | None:
        """The current leader's value and token (create revision), or None when vacant."""
        info = await self._elector.leader(self.name)
        return (info.value, info.token) if info is not None else None

    # -- leader-only operations -------------------------------------------------------

    def _leading_term(self) -> Term:
        term = self.term
        if term is None:
            raise NotLeader(f"not the leader of election {self.name!r}")
        return term

    async def do_if_leader(
        self, compare: Sequence[Any] = (), success: Sequence[Any] = (), failure: Sequence[Any] = ()
    ) -> tuple[bool, list[Any]]:
        """Run a transaction only while leading (see :meth:`Term.transaction`).

        Raises:
            NotLeader: not leading (nothing is sent), or etcd refused the guard.
        """
        return await self._leading_term().transaction(compare, success, failure)

    async def change_leader_to(self, value: str | bytes) -> None:
        """Hand leadership to the live candidate with ``value`` (see :meth:`Term.transfer`).

        Steps down as on :meth:`stop` (honouring ``handover_barrier``; a
        running ``on_elected`` is cancelled), then campaigns again at the back
        of the queue. Returns when the transfer is recorded; called from
        ``on_elected`` itself, that call is cancelled with it.

        Raises:
            NoSuchCandidate: no live candidate has that value.
            NotLeader: this node does not lead.
        """
        term = self._leading_term()
        target = await term.find_candidate(value)
        done = anyio.Event()
        self._transfer, self._transfer_done = target, done
        self._wake.set()
        if self._lead_scope is not None:
            self._lead_scope.cancel()
        await done.wait()

    # -- the loop ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to step down (gracefully, cancelling a running ``on_elected``)
        and return."""
        self._stopped = True
        self._wake.set()
        if self._campaign_scope is not None:
            self._campaign_scope.cancel()
        if self._lead_scope is not None:
            self._lead_scope.cancel()

    async def run(self) -> None:
        """Campaign, lead, step down and campaign again until :meth:`stop` or cancellation.

        With ``campaign=False`` it only reports leaders to ``on_leader_change``.
        Cancelling steps down gracefully (shielded, bounded by the TTL).

        Raises:
            Exception: whatever a callback raised, after the term was resigned.
        """
        self._elector._check_usable()
        if self._running:
            raise AioelectError(f"Leadership({self.name!r}).run() is already running")
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                if self._on_leader_change is not None:
                    await tg.start(self._follow)
                if self._campaign:
                    await self._loop()
                else:
                    while not self._stopped:
                        await self._wake.wait()
                        self._wake = anyio.Event()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self._running = False

    #: The seed's name of :meth:`run`.
    election_loop = run

    async def _follow(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self._on_leader_change is not None
        async with self._elector.observe(self.name) as leaders:
            task_status.started()
            async for info in leaders:
                await self._on_leader_change(info)

    async def _loop(self) -> None:
        elector = self._elector
        backoff = Backoff(initial=0.1, cap=min(5.0, elector._config.ttl))
        while not self._stopped:
            if self.name in elector._busy:
                raise ConfigError(
                    "name", f"this Elector already campaigns in or leads election {self.name!r}"
                )
            elector._busy.add(self.name)
            try:
                term = await self._acquire()
                if term is None:
                    return
                declined = await self._lead(term)
            finally:
                elector._busy.discard(self.name)
            if declined and not self._stopped:
                await anyio.sleep(backoff.next())

    async def _acquire(self) -> Term | None:
        elector = self._elector
        with anyio.CancelScope() as scope:
            self._campaign_scope = scope
            if self._stopped:
                scope.cancel()
            try:
                elector._campaigns += 1
                term = await run_campaign(
                    elector, self.name, self.value, reclaim_stale=self.reclaim_stale
                )
            finally:
                elector._campaigns -= 1
                self._campaign_scope = None
            return term
        return None

    async def _lead(self, term: Term) -> bool:
        """Lead for one term; return whether ``on_elected`` declined it."""
        self._term = term
        term._add_on_end(lambda _t, _r: self._wake.set())
        declined = False
        scope = term._scope()
        self._lead_scope = scope
        if self._stopped or self._transfer is not None:
            scope.cancel()
        try:
            try:
                with scope:
                    if self._on_elected is not None:
                        declined = (await self._on_elected(term)) is False
                    while not declined and not self._stopped and self._transfer is None:
                        if term._ended is not None:
                            break
                        self._wake = anyio.Event()
                        await self._wake.wait()
            except asyncio.CancelledError:
                ours = cancellation_was_ours(term) or self._stopped or self._transfer is not None
                if not (scope.cancel_called and ours):
                    raise
        finally:
            self._lead_scope = None
            term._drop_scope(scope)
            with anyio.CancelScope(shield=True):
                await self._step_down(term)
        return declined

    async def _step_down(self, term: Term) -> None:
        target, done = self._transfer, self._transfer_done
        self._transfer = self._transfer_done = None
        try:
            if not term.is_valid or self.handover_barrier:
                # Forced (the term already ended: stop work first, the key is gone or
                # dying), or graceful with the barrier (the successor waits for us).
                try:
                    await self._stepped_down(term)
                finally:
                    await self._hand_over(term, target)
            else:
                await self._hand_over(term, target)
                await self._stepped_down(term)
        finally:
            self._term = None
            if done is not None:
                done.set()

    async def _stepped_down(self, term: Term) -> None:
        """Await on_stepped_down, bounded by the TTL."""
        if self._on_stepped_down is None:
            return
        bound = anyio.move_on_after(self._elector._config.ttl)
        try:
            with bound:
                await self._on_stepped_down(term)
        except asyncio.CancelledError:
            # An etcd call of the callback's own (grpc.aio) may turn the bound's
            # cancellation into a bare CancelledError: it must not end run().
            if not scope_cancellation_in_disguise(bound):
                raise
        if bound.cancel_called:
            log.warning("on_stepped_down of %r took longer than the TTL: cut short", self.name)

    async def _hand_over(self, term: Term, target: KV | None) -> None:
        if target is not None and term.is_valid:
            try:
                await term._transfer_to(target)
                return
            except AioelectError as exc:
                log.warning("transfer of %r failed (%s): resigning instead", self.name, exc)
        await term.resign()

    def __repr__(self) -> str:
        term = self.term
        state = f"LEADER token={term.token}" if term is not None else "FOLLOWER"
        if not self._campaign:
            state = "OBSERVER"
        return f"<Leadership {self.name!r} {state}>"
