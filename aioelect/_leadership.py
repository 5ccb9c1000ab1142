"""The seed's callback API: Leadership (CreateLeadership + ElectionLoop).

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

Callback errors (recorded and logged by :mod:`._callbacks`): an exception
from ``on_elected`` or ``on_stepped_down``
ends the term like a graceful step-down (``on_stepped_down`` still runs
once, the key is resigned so the next candidate leads at once); with
``restart_on_error`` (the default) it is logged at ERROR, counted, and the
loop backs off (``error_backoff``: capped, jittered, growing while errors
repeat) and campaigns again; without it, it propagates out of :meth:`run`.
An exception from ``on_leader_change`` does not touch the term: the
follower backs off and observes again (the callback then sees the current
leader), or without ``restart_on_error`` it ends :meth:`run`. When a second
callback fails while the first error propagates (``on_stepped_down`` after
``on_elected``), the second is raised with the first as its ``__context__``;
while :meth:`run` is being cancelled the cancellation goes on and the error
is logged. Only callbacks' exceptions are restarted: aioelect's own (a
closed elector, a permanent etcd error, a callback that is not async) end
:meth:`run`.

Size: over 400 lines because most of it is the documented contract of the
seed's callback API (every argument, every callback's error path); the loop
itself is about 200 lines.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from ._backoff import Backoff
from ._callbacks import (
    ERROR_BACKOFF,
    Callbacks,
    Failure,
    OnElected,
    OnLeaderChange,
    OnSteppedDown,
)
from ._campaign import campaign as run_campaign
from ._candidacy import Candidacy
from ._config import (
    Duration,
    check_backoff,
    check_candidate_size,
    check_name,
    to_bytes,
    value_limit,
)
from ._connection import KV
from ._errors import scope_cancellation_in_disguise
from ._exceptions import AioelectError, ConfigError, NotLeader
from ._hold import ObserveBlock
from ._lease import LeaderLease
from ._preference import PreferenceOptions, preempted_reason, preference_options
from ._term import (
    Term,
    add_on_end,
    cancellation_was_ours,
    drop_scope,
    ended,
    open_scope,
    session_of,
    transfer_to,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._core import Core, Reservation

__all__ = ("Leadership", "RunState", "run_state")

log = logging.getLogger("aioelect")


class Leadership:
    """Campaign, lead, step down and campaign again, with callbacks (the seed's Leadership).

    Created by :meth:`Elector.leadership`; the seed's ``ElectionLoop`` is
    :meth:`run`. All callbacks are awaited in the task that runs :meth:`run`,
    except ``on_leader_change``, which runs in a task of its own there.
    """

    def __init__(
        self,
        core: Core,
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
        restart_on_error: bool = True,
        error_backoff: tuple[Duration, Duration] = ERROR_BACKOFF,
        preference: PreferenceOptions | None = None,
    ) -> None:
        self._core = core
        self.name = check_name(name)
        limit = core.config.max_request_bytes
        self.value = to_bytes(value, limit=value_limit(limit))
        check_candidate_size(core.prefix, self.name, self.value, limit)
        if node_name is not None and not isinstance(node_name, str):
            raise ConfigError("node_name", f"must be a str or None, not {type(node_name).__name__}")
        for field, flag in (
            ("campaign", campaign),
            ("handover_barrier", handover_barrier),
            ("reclaim_stale", reclaim_stale),
            ("restart_on_error", restart_on_error),
        ):
            if not isinstance(flag, bool):
                raise ConfigError(field, f"must be True or False, not {flag!r}")
        self.node_name = node_name
        node = f" (node {node_name})" if node_name else ""
        self._callbacks = Callbacks(
            f"election {self.name!r}{node}",
            on_elected=on_elected,
            on_stepped_down=on_stepped_down,
            on_leader_change=on_leader_change,
            restart=bool(restart_on_error),
            count=lambda callback: core.callback_failed(self.name, callback),
            stopping=lambda: self._stopped,
        )
        self._campaign = bool(campaign)
        self.handover_barrier = bool(handover_barrier)
        self.reclaim_stale = bool(reclaim_stale)
        self.error_backoff = check_backoff("error_backoff", error_backoff)
        self._term: Term | None = None
        self._stopped = False
        self._running = False
        self._wake = anyio.Event()
        self._campaign_scope: anyio.CancelScope | None = None
        self._lead_scope: anyio.CancelScope | None = None
        self._pause_scope: anyio.CancelScope | None = None
        # For health(): run()'s state ("new", "running", "stopped", "failed") and
        # when a back-off after an error ends (errors: self._callbacks).
        self._state = "new"
        self._retry_at: float | None = None
        self._transfer: KV | None = None
        self._transfer_done: anyio.Event | None = None
        # Priorities and health gating (see _preference.py): None when not asked for.
        self._candidacy: Candidacy | None = None
        if preference is not None and preference.active and self._campaign:
            self._candidacy = Candidacy(core, self.name, preference)
        self._unhealthy = False  # a failed health check ends the current term

    # -- state ------------------------------------------------------------------------

    @property
    def restart_on_error(self) -> bool:
        """Whether :meth:`run` goes on after a callback's exception (see :meth:`run`)."""
        return self._callbacks.restart

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
        return LeaderLease(self._core, session_of(term)) if term is not None else None

    async def current_leader(self) -> tuple[bytes, int] | None:
        """The current leader's value and token (create revision), or None when vacant."""
        info = await self._core.leader(self.name)
        return (info.value, info.token) if info is not None else None

    @property
    def priority(self) -> int:
        """This candidate's priority (0 when none was declared)."""
        return 0 if self._candidacy is None else self._candidacy.priority

    @property
    def healthy(self) -> bool | None:
        """Whether the health check passes now (None without a health check)."""
        return None if self._candidacy is None else self._candidacy.healthy

    def set_priority(self, priority: int) -> None:
        """Change this candidate's priority, also while :meth:`run` runs.

        The new value is published at once; a leader compares it with the
        waiting candidates' again (a challenger must then outrank it for
        ``settle`` seconds anew).

        Raises:
            ConfigError: ``priority`` is not an int, or this Leadership only
                observes (``campaign=False``).
        """
        if not self._campaign:
            raise ConfigError("priority", "an observing Leadership (campaign=False) has none")
        if self._candidacy is None:
            self._candidacy = Candidacy(
                self._core, self.name, preference_options(preemptible=False)
            )
            if self._running:
                self._candidacy.start()
        self._candidacy.set_priority(priority)

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
        for scope in (self._campaign_scope, self._lead_scope, self._pause_scope):
            if scope is not None:
                scope.cancel()

    async def run(self) -> None:
        """Campaign, lead, step down and campaign again until :meth:`stop` or cancellation.

        With ``campaign=False`` it only reports leaders to ``on_leader_change``.
        Cancelling steps down gracefully (shielded, bounded by the TTL), as
        does :meth:`stop`; both also end a back-off at once.

        A callback's exception is handled as the module docstring says: with
        ``restart_on_error`` (the default) it is logged at ERROR, counted in
        :meth:`Elector.statistics`, and the loop resigns, backs off and
        campaigns again; without it, it propagates from here.

        Raises:
            Exception: with ``restart_on_error=False``, what a callback raised,
                after the term was resigned (a second callback's error carries
                the first as its ``__context__``).
            ElectorClosed: the elector closed meanwhile.
            TypeError: a callback is not an async function.
        """
        self._core.check_usable()
        if self._running:
            raise AioelectError(f"Leadership({self.name!r}).run() is already running")
        self._running = True
        self._state = "running"
        failure: BaseException | None = None
        if self._candidacy is not None:
            self._candidacy.start()
        try:
            try:
                async with anyio.create_task_group() as tg:
                    if self._callbacks.on_leader_change is not None:
                        await tg.start(self._follow)
                    if self._campaign:
                        await self._loop()
                    else:
                        await self._pause(math.inf, retry=False)  # until stop() or close
                    tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                if len(group.exceptions) != 1:
                    raise
                failure = group.exceptions[0]
            if failure is not None:
                # Raised here, outside the except clause, so that it keeps its own
                # __context__ (e.g. the on_elected error an on_stepped_down error
                # followed) instead of getting the group as its context.
                raise failure
        except BaseException as exc:
            self._run_ended(exc)
            raise
        else:
            self._state = "stopped"
        finally:
            self._running = False
            if self._candidacy is not None:
                with anyio.CancelScope(shield=True):
                    await self._candidacy.aclose()

    election_loop = run
    """The seed's name (``ElectionLoop``) for :meth:`run`."""

    def _run_ended(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._state = "stopped"
        else:
            self._state = "failed"
            self._callbacks.run_ended(exc)

    def _label(self) -> str:
        return self._callbacks.label

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds; raise ElectorClosed at once if the elector closes."""
        core = self._core
        with anyio.move_on_after(delay):
            while True:
                changed = core.session_changed  # also set when the elector closes
                core.check_usable()
                await changed.wait()

    async def _pause(self, delay: float, *, retry: bool) -> None:
        """Back off for ``delay`` seconds before campaigning again; stop() ends it, a
        closing elector raises ElectorClosed."""
        with anyio.CancelScope() as scope:
            self._pause_scope = scope
            if self._stopped:
                scope.cancel()
            if retry:
                self._retry_at = time.monotonic() + delay
                log.info("%s: campaigning again in %.2f s", self._label(), delay)
            try:
                await self._sleep(delay)
            finally:
                self._pause_scope = None
                self._retry_at = None

    # -- the loop ---------------------------------------------------------------------

    async def _follow(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        callbacks = self._callbacks
        on_change = callbacks.on_leader_change
        assert on_change is not None
        backoff = Backoff(*self.error_backoff)
        started = False
        while True:
            failures: list[BaseException] = []
            try:
                async with ObserveBlock(self._core, self.name) as leaders:
                    if not started:
                        task_status.started()
                        started = True
                    async for info in leaders:
                        await callbacks.call("on_leader_change", on_change, info, failures)
                        backoff.reset()
                return  # the observer ended: the elector is closing
            except Exception as exc:
                if not callbacks.restarts_after(exc, failures):
                    raise
            await self._sleep(backoff.next())

    async def _loop(self) -> None:
        core = self._core
        declines = Backoff(initial=0.1, cap=min(5.0, core.config.ttl))
        errors = Backoff(*self.error_backoff)
        while not self._stopped:
            reservation = core.reserve(self.name)
            failures: list[BaseException] = []
            declined = failed = False
            try:
                term = await self._acquire(reservation)
                if term is None:
                    return
                try:
                    declined = await self._lead(term, failures)
                except Exception as exc:
                    if not self._callbacks.restarts_after(exc, failures):
                        raise
                    failed = True  # logged and counted already; the term was resigned
            finally:
                reservation.release()
            if failed:
                await self._pause(errors.next(), retry=True)
            else:
                errors.reset()
                if declined:
                    await self._pause(declines.next(), retry=False)

    async def _acquire(self, reservation: Reservation) -> Term | None:
        candidacy = self._candidacy
        while True:
            withdrawn = False
            with anyio.CancelScope() as scope:
                self._campaign_scope = scope
                if self._stopped:
                    scope.cancel()
                unsubscribe = None
                if candidacy is not None:
                    await candidacy.wait_healthy()  # an unhealthy candidate does not campaign

                    def withdraw(healthy: bool, _reason: str) -> None:
                        nonlocal withdrawn
                        if not healthy:
                            withdrawn = True
                            scope.cancel()

                    unsubscribe = candidacy.on_health(withdraw)
                try:
                    with reservation.campaigning():
                        term = await run_campaign(
                            self._core, self.name, self.value, reclaim_stale=self.reclaim_stale
                        )
                finally:
                    self._campaign_scope = None
                    if unsubscribe is not None:
                        unsubscribe()
                return term
            if not withdrawn or self._stopped:
                return None
            log.info("%s: withdrawn while unhealthy", self._label())

    async def _lead(self, term: Term, failures: list[BaseException]) -> bool:
        """Lead for one term; return whether ``on_elected`` declined it.

        Callback errors are appended to ``failures`` and raised.
        """
        self._term = term
        add_on_end(term, lambda _t, _r: self._wake.set())
        declined = False
        scope = open_scope(term)
        self._lead_scope = scope
        self._unhealthy = False
        if self._candidacy is not None:
            self._watch(self._candidacy, term)
        if self._stopped or self._transfer is not None or self._unhealthy:
            scope.cancel()
        ending: BaseException | None = None
        try:
            try:
                with scope:
                    elected = self._callbacks.on_elected
                    if elected is not None:
                        result = await self._callbacks.call("on_elected", elected, term, failures)
                        declined = result is False
                    while (
                        not declined
                        and not self._stopped
                        and self._transfer is None
                        and not self._unhealthy
                    ):
                        if ended(term) is not None:
                            break
                        self._wake = anyio.Event()
                        await self._wake.wait()
            except asyncio.CancelledError:
                ours = (
                    cancellation_was_ours(term)
                    or self._stopped
                    or self._transfer is not None
                    or self._unhealthy
                )
                if not (scope.cancel_called and ours):
                    raise
        except BaseException as exc:
            ending = exc
            raise
        finally:
            self._lead_scope = None
            drop_scope(term, scope)
            with anyio.CancelScope(shield=True):
                try:
                    await self._step_down(term, failures)
                except Exception as exc:
                    if ending is None or isinstance(ending, Exception):
                        raise  # chained: the error that was ending the term is its __context__
                    # run() is being cancelled (or interrupted): that goes on, and the
                    # error is logged rather than lost (_call logged a callback's already
                    # when restart_on_error).
                    if not self._callbacks.restarts_after(exc, failures):
                        log.error(
                            "stepping down from %s raised %r while run() was being cancelled",
                            self._label(),
                            exc,
                            exc_info=exc,
                        )
        return declined

    def _watch(self, candidacy: Candidacy, term: Term) -> None:
        """Step down on a preemption (handing over) or a failed health check (resigning)."""

        def preempt(target: KV, priority: int) -> bool:
            if self._transfer is not None or self._stopped or not term.is_valid:
                return False
            log.info("%s: %s: handing over", self._label(), preempted_reason(target, priority))
            self._transfer = target
            self._wake.set()
            if self._lead_scope is not None:
                self._lead_scope.cancel()
            return True

        def health(healthy: bool, reason: str) -> None:
            if not healthy and term.is_valid and not self._unhealthy:
                log.info("%s: stepping down: %s", self._label(), reason)
                self._unhealthy = True
                self._wake.set()
                if self._lead_scope is not None:
                    self._lead_scope.cancel()

        candidacy.watch(term, preempt)
        unsubscribe = candidacy.on_health(health)
        add_on_end(term, lambda _t, _r: unsubscribe())
        if candidacy.healthy is False:
            self._unhealthy = True

    async def _step_down(self, term: Term, failures: list[BaseException]) -> None:
        target, done = self._transfer, self._transfer_done
        self._transfer = self._transfer_done = None
        try:
            if not term.is_valid or self.handover_barrier:
                # Forced (the term already ended: stop work first, the key is gone or
                # dying), or graceful with the barrier (the successor waits for us).
                try:
                    await self._stepped_down(term, failures)
                finally:
                    await self._hand_over(term, target)
            else:
                await self._hand_over(term, target)
                await self._stepped_down(term, failures)
        finally:
            self._term = None
            if done is not None:
                done.set()

    async def _stepped_down(self, term: Term, failures: list[BaseException]) -> None:
        """Await on_stepped_down, bounded by the TTL."""
        stepped_down = self._callbacks.on_stepped_down
        if stepped_down is None:
            return
        bound = anyio.move_on_after(self._core.config.ttl)
        try:
            with bound:
                await self._callbacks.call("on_stepped_down", stepped_down, term, failures)
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
                await transfer_to(term, target)
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


class RunState(NamedTuple):
    """What :func:`aioelect.health` reports of a Leadership's ``run()`` (see :func:`run_state`)."""

    #: Whether run() is running.
    running: bool
    #: "new", "running", "stopped" or "failed".
    state: str
    #: The monotonic instant a back-off after an error ends, or None.
    retry_at: float | None
    #: Callback errors so far, and the last one.
    callback_errors: int
    last_error: Failure | None


def candidacy_of(leadership: Leadership) -> Candidacy | None:
    """``leadership``'s candidacy (its preference record and health gate), or None
    without a priority or health check (the package's and the tests' way to it)."""
    return leadership._candidacy


def run_state(leadership: Leadership) -> RunState:
    """The state of ``leadership``'s run() (the package's API for :mod:`._health`)."""
    callbacks = leadership._callbacks
    return RunState(
        leadership._running,
        leadership._state,
        leadership._retry_at,
        callbacks.errors,
        callbacks.last_error,
    )
