"""A Leadership's user callbacks: awaiting them, and what becomes of what they raise.

Theory of operation: every exception a callback raises is recorded at once,
where it is raised (the last one for :func:`aioelect.health`, a count per
leadership and per elector), and, when the leadership restarts after errors,
logged at ERROR with its traceback there and then. So no error is lost, even
when a later one (``on_stepped_down`` failing after ``on_elected`` did)
replaces it on its way out. The leadership's loop tells a callback's error
from aioelect's own by identity: :meth:`Callbacks.call` appends each one to
the ``failures`` list of the loop's current cycle.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from ._exceptions import ConfigError
from ._models import LeaderInfo

if TYPE_CHECKING:
    from ._term import Term

__all__ = ("ERROR_BACKOFF", "Callbacks", "Failure", "OnElected", "OnLeaderChange", "OnSteppedDown")

log = logging.getLogger("aioelect")

OnElected: TypeAlias = Callable[["Term"], Awaitable[bool | None]]
OnSteppedDown: TypeAlias = Callable[["Term"], Awaitable[None]]
OnLeaderChange: TypeAlias = Callable[[LeaderInfo | None], Awaitable[None]]

#: The default ``error_backoff``: the first retry after 0.5-1 s, then doubling up to 30 s.
ERROR_BACKOFF = (1.0, 30.0)

_NEXT = {
    "on_elected": "the term ends (resigned), then run() campaigns again after a back-off",
    "on_stepped_down": "run() campaigns again after a back-off",
    "on_leader_change": "observing again after a back-off (leadership is unaffected)",
}


@dataclass(frozen=True)
class Failure:
    """An exception that a callback raised, or that ended :meth:`Leadership.run`.

    Attributes:
        callback: ``"on_elected"``, ``"on_stepped_down"`` or
            ``"on_leader_change"``; None when it did not come from a callback.
        error: the exception.
        at: when it was recorded (``time.monotonic()``).
    """

    callback: str | None
    error: BaseException
    at: float


class Callbacks:
    """The callbacks of one Leadership and the record of their errors.

    Args:
        label: how logs name the leadership (election and node).
        restart: whether the leadership restarts after a callback error (then
            each error is logged here; otherwise it propagates to the caller).
        count: called with the callback's name for each error (the elector's
            statistics).
        stopping: whether the leadership is stopping (for the log message).
    """

    def __init__(
        self,
        label: str,
        *,
        on_elected: OnElected | None,
        on_stepped_down: OnSteppedDown | None,
        on_leader_change: OnLeaderChange | None,
        restart: bool,
        count: Callable[[str], None],
        stopping: Callable[[], bool],
    ) -> None:
        for field, cb in (
            ("on_elected", on_elected),
            ("on_stepped_down", on_stepped_down),
            ("on_leader_change", on_leader_change),
        ):
            if cb is not None and not callable(cb):
                raise ConfigError(field, "must be an async function or None")
        self.on_elected = on_elected
        self.on_stepped_down = on_stepped_down
        self.on_leader_change = on_leader_change
        self.label = label
        self.restart = restart
        self._count = count
        self._stopping = stopping
        self.errors = 0
        self.last_error: Failure | None = None

    async def call(
        self,
        callback: str,
        fn: Callable[[Any], Awaitable[Any]],
        arg: Any,
        failures: list[BaseException],
    ) -> Any:
        """Await ``fn(arg)``, the callback named ``callback``; what it raises is recorded
        (appended to ``failures``, counted, logged when restarting) and raised on.

        Raises:
            TypeError: ``fn`` is not an async function (a misuse: not recorded).
        """
        try:
            result = fn(arg)
        except Exception as exc:
            self._failed(callback, exc, failures)
            raise
        if not inspect.isawaitable(result):
            raise TypeError(
                f"{callback} must be an async function; it returned {type(result).__name__}"
            )
        try:
            return await result
        except Exception as exc:
            self._failed(callback, exc, failures)
            raise

    def _failed(self, callback: str, exc: Exception, failures: list[BaseException]) -> None:
        failures.append(exc)
        self.errors += 1
        self.last_error = Failure(callback, exc, time.monotonic())
        self._count(callback)
        if not self.restart:
            return  # it propagates out of run(): the caller reports it
        stopping = callback != "on_leader_change" and self._stopping()
        then = "run() is stopping" if stopping else _NEXT[callback]
        log.error("%s of %s raised %r; %s", callback, self.label, exc, then, exc_info=exc)

    def restarts_after(self, exc: BaseException, failures: list[BaseException]) -> bool:
        """Whether the loop goes on after ``exc``: a callback's error while restarting."""
        return self.restart and any(exc is f for f in failures)

    def run_ended(self, exc: BaseException) -> None:
        """Record what ended run() (unless it is the callback error recorded already)."""
        last = self.last_error
        if last is None or last.error is not exc:
            self.last_error = Failure(None, exc, time.monotonic())
