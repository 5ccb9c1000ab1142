"""The context managers behind :meth:`Elector.hold` and :meth:`Elector.observe`.

Classes rather than ``@asynccontextmanager`` generators: one small object per
block instead of a generator, its frame and a wrapper, which matters when
one process holds or observes thousands of elections.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from ._campaign import campaign
from ._candidacy import Candidacy
from ._config import check_candidate_size, check_name, to_bytes, value_limit
from ._connection import KV
from ._exceptions import AioelectError, ConfigError, LeadershipLost
from ._mirror import ElectionView, leader_info
from ._observe import Observer
from ._preference import PreferenceOptions, preempted_reason
from ._term import (
    RESIGNED,
    Term,
    add_on_end,
    cancellation_was_ours,
    drop_scope,
    open_scope,
    transfer_to,
)

if TYPE_CHECKING:
    from ._core import Core, Reservation

__all__ = ("HoldBlock", "ObserveBlock")

log = logging.getLogger("aioelect")


class HoldBlock:
    """``async with elector.hold(name, value) as term``: see :meth:`Elector.hold`."""

    __slots__ = (
        "_candidacy",
        "_core",
        "_cut",
        "_name",
        "_pref",
        "_reservation",
        "_scope",
        "_term",
        "_value",
        "_wait",
    )

    def __init__(
        self,
        core: Core,
        name: str,
        value: str | bytes,
        wait: bool,
        pref: PreferenceOptions | None = None,
    ) -> None:
        self._core = core
        self._reservation: Reservation | None = None
        self._name = name
        self._value = value
        self._wait = wait
        self._pref = pref  # priorities and health gating (see _preference.py), if asked for
        # Why the block was ended while the term was still valid (preempted: with the
        # transfer's target; unhealthy: None), else None.
        self._cut: tuple[str, KV | None] | None = None
        self._candidacy: Candidacy | None = None
        self._term: Term | None = None
        self._scope: anyio.CancelScope | None = None

    async def __aenter__(self) -> Term:
        core = self._core
        if self._term is not None:
            raise ConfigError("hold", "this hold() block is already in use; call hold() again")
        core.check_usable()
        name = self._name = check_name(self._name)
        limit = core.config.max_request_bytes
        data = to_bytes(self._value, limit=value_limit(limit))
        check_candidate_size(core.prefix, name, data, limit)
        if not isinstance(self._wait, bool):
            raise ConfigError("wait", f"must be True or False, not {self._wait!r}")
        reservation = core.reserve(name)
        candidacy = None
        try:
            with reservation.campaigning():
                if self._pref is None or not self._pref.active:
                    term = await campaign(core, name, data, wait=self._wait)
                else:
                    candidacy = Candidacy(core, name, self._pref)
                    candidacy.start()
                    term = await _gated_campaign(candidacy, data, self._wait)
        except BaseException:
            try:
                if candidacy is not None:
                    with anyio.CancelScope(shield=True):
                        await candidacy.aclose()
            finally:
                reservation.release()
            raise
        self._term, self._reservation = term, reservation
        scope = self._scope = open_scope(term)
        scope.__enter__()
        if candidacy is not None:
            self._watch(candidacy, term, scope)
        return term

    def _watch(self, candidacy: Candidacy, term: Term, scope: anyio.CancelScope) -> None:
        """End the block (the term still valid) on a preemption or a failed health check."""
        name = self._name

        def preempt(target: KV, priority: int) -> bool:
            if self._cut is not None or not term.is_valid:
                return False
            self._cut = (preempted_reason(target, priority), target)
            log.info("election %r: %s: handing over", name, self._cut[0])
            scope.cancel()
            return True

        def health(healthy: bool, reason: str) -> None:
            if not healthy and self._cut is None and term.is_valid:
                self._cut = (f"unhealthy: {reason}", None)
                log.info("election %r: stepping down: %s", name, reason)
                scope.cancel()

        self._candidacy = candidacy
        candidacy.watch(term, preempt)
        unsubscribe = candidacy.on_health(health)
        add_on_end(term, lambda _t, _r: unsubscribe())
        if candidacy.healthy is False:
            health(False, "health check failing")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        term, scope = self._term, self._scope
        assert term is not None
        assert scope is not None
        self._scope = None
        reason: str | None = None
        cut = self._cut
        try:
            try:
                swallowed = bool(scope.__exit__(exc_type, exc, tb))
            except asyncio.CancelledError:
                # grpc.aio may replace the scope's cancellation by a bare one.
                if not (scope.cancel_called and (cut is not None or cancellation_was_ours(term))):
                    raise
                swallowed = True
            if (
                not swallowed
                and isinstance(exc, asyncio.CancelledError)
                and scope.cancel_called
                and (cut is not None or cancellation_was_ours(term))
            ):
                swallowed = True
        finally:
            # Whatever the scope raised (e.g. exited from another task), give the
            # election up and free the name.
            try:
                drop_scope(term, scope)
                reason = term.end_reason
                with anyio.CancelScope(shield=True):
                    try:
                        await _leave(term, cut)
                    finally:
                        if self._candidacy is not None:
                            await self._candidacy.aclose()
            finally:
                if self._reservation is not None:
                    self._reservation.release()
        if cut is not None and reason is None and (exc is None or swallowed):
            raise LeadershipLost(self._name, cut[0]) from None
        if (exc is None or swallowed) and reason is not None and reason != RESIGNED:
            # from None hides only the term's own cancellation of the body (swallowed
            # above); any other exception of the body propagates itself instead.
            raise LeadershipLost(self._name, reason) from None
        return swallowed


async def _leave(term: Term, cut: tuple[str, KV | None] | None) -> None:
    """Resign, or hand over to a preempting candidate (resigning if that fails)."""
    target = None if cut is None else cut[1]
    if target is not None and term.is_valid:
        try:
            await transfer_to(term, target)
            return
        except AioelectError as exc:
            log.warning("transfer of %r failed (%s): resigning instead", term.name, exc)
    await term.resign()


async def _gated_campaign(candidacy: Candidacy, value: bytes, wait: bool) -> Term:
    """Campaign while healthy: an unhealthy candidate withdraws its key and waits."""
    while True:
        await candidacy.wait_healthy()
        with anyio.CancelScope() as scope:

            def withdraw(healthy: bool, _reason: str, scope: anyio.CancelScope = scope) -> None:
                if not healthy:
                    scope.cancel()

            unsubscribe = candidacy.on_health(withdraw)
            try:
                return await campaign(candidacy.core, candidacy.name, value, wait=wait)
            finally:
                unsubscribe()
        log.info("election %r: withdrawn while unhealthy", candidacy.name)


class ObserveBlock(Observer):
    """``async with elector.observe(name) as leaders``: see :meth:`Elector.observe`.

    The block is its own iterator (one object per observer instead of two).
    """

    __slots__ = ("_core", "_in_use", "_name", "_view")

    def __init__(self, core: Core, name: str) -> None:
        super().__init__()
        self._closed = True  # iterated before the block is entered: nothing to give
        self._core = core
        self._name = name
        self._in_use = False
        self._view: ElectionView | None = None

    async def __aenter__(self) -> Observer:
        core = self._core
        if self._in_use:
            raise ConfigError("observe", "this observe() block is in use; call observe() again")
        core.check_usable()
        name = self._name = check_name(self._name)
        self._in_use = True
        mirror = core.mirror
        view = mirror.use(name)
        try:
            if not await mirror.ready(view):
                # Watched already: make the view as current as a linearizable read.
                revision, _ = await core.batcher.read(())
                await mirror.sync(view, revision)
            core.check_usable()  # closed meanwhile: do not register after the teardown
        except BaseException:
            mirror.unuse(view)
            self._in_use = False
            raise
        self._reset()
        self._view = view
        view.listen_leader(self)
        core.add_observer(self)
        self.leader_changed(leader_info(name, view.leader()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        core = self._core
        view, self._view = self._view, None
        if view is not None:
            view.unlisten_leader(self)
            core.mirror.unuse(view)
        core.discard_observer(self)
        self.close()
        self._in_use = False
