"""The context managers behind :meth:`Elector.hold` and :meth:`Elector.observe`.

Classes rather than ``@asynccontextmanager`` generators: one small object per
block instead of a generator, its frame and a wrapper, which matters when
one process holds or observes thousands of elections.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from ._campaign import campaign
from ._config import check_candidate_size, check_name, to_bytes, value_limit
from ._exceptions import ConfigError, LeadershipLost
from ._mirror import leader_info
from ._observe import Observer
from ._term import RESIGNED, Term, cancellation_was_ours

if TYPE_CHECKING:
    from ._elector import Elector

__all__ = ("HoldBlock", "ObserveBlock")


class HoldBlock:
    """``async with elector.hold(name, value) as term``: see :meth:`Elector.hold`."""

    __slots__ = ("_elector", "_name", "_scope", "_term", "_value", "_wait")

    def __init__(self, elector: Elector, name: str, value: str | bytes, wait: bool) -> None:
        self._elector = elector
        self._name = name
        self._value = value
        self._wait = wait
        self._term: Term | None = None
        self._scope: anyio.CancelScope | None = None

    async def __aenter__(self) -> Term:
        elector = self._elector
        if self._term is not None:
            raise ConfigError("hold", "this hold() block is already in use; call hold() again")
        elector._check_usable()
        name = self._name = check_name(self._name)
        data = to_bytes(self._value, limit=value_limit(elector._config.max_request_bytes))
        check_candidate_size(elector.prefix, name, data, elector._config.max_request_bytes)
        if not isinstance(self._wait, bool):
            raise ConfigError("wait", f"must be True or False, not {self._wait!r}")
        if name in elector._busy:
            raise ConfigError(
                "name", f"this Elector already campaigns in or leads election {name!r}"
            )
        elector._busy.add(name)
        try:
            elector._campaigns += 1
            try:
                term = await campaign(elector, name, data, wait=self._wait)
            finally:
                elector._campaigns -= 1
        except BaseException:
            elector._busy.discard(name)
            raise
        self._term = term
        scope = self._scope = term._scope()
        scope.__enter__()
        return term

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
        try:
            try:
                swallowed = bool(scope.__exit__(exc_type, exc, tb))
            except asyncio.CancelledError:
                # grpc.aio may replace the scope's cancellation by a bare one.
                if not (scope.cancel_called and cancellation_was_ours(term)):
                    raise
                swallowed = True
            if (
                not swallowed
                and isinstance(exc, asyncio.CancelledError)
                and scope.cancel_called
                and cancellation_was_ours(term)
            ):
                swallowed = True
        finally:
            # Whatever the scope raised (e.g. exited from another task), give the
            # election up and free the name.
            try:
                term._drop_scope(scope)
                reason = term.end_reason
                with anyio.CancelScope(shield=True):
                    await term.resign()
            finally:
                self._elector._busy.discard(self._name)
        if (exc is None or swallowed) and reason is not None and reason != RESIGNED:
            # from None hides only the term's own cancellation of the body (swallowed
            # above); any other exception of the body propagates itself instead.
            raise LeadershipLost(self._name, reason) from None
        return swallowed


class ObserveBlock(Observer):
    """``async with elector.observe(name) as leaders``: see :meth:`Elector.observe`.

    The block is its own iterator (one object per observer instead of two).
    """

    __slots__ = ("_elector", "_in_use", "_name")

    def __init__(self, elector: Elector, name: str) -> None:
        super().__init__()
        self._closed = True  # iterated before the block is entered: nothing to give
        self._elector = elector
        self._name = name
        self._in_use = False

    async def __aenter__(self) -> Observer:
        elector = self._elector
        if self._in_use:
            raise ConfigError("observe", "this observe() block is in use; call observe() again")
        elector._check_usable()
        name = self._name = check_name(self._name)
        self._in_use = True
        try:
            await elector._batcher.barrier()  # the mirror is as current as a linearizable read
            elector._check_usable()  # closed meanwhile: do not register after the teardown
        except BaseException:
            self._in_use = False
            raise
        self._reset()
        view = elector._mirror.view(name)
        view.listen_leader(self)
        elector._observers.add(self)
        self.leader_changed(leader_info(name, view.leader()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elector = self._elector
        view = elector._mirror.views.get(self._name)
        if view is not None:
            view.unlisten_leader(self)
        elector._observers.discard(self)
        self.close()
        self._in_use = False
