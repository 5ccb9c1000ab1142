"""Leader-only jobs: run a coroutine function only while this process leads.

Theory of operation: a guard (:func:`leader_only`) wraps an async function.
Each call looks up the current term of its source (a :class:`Leadership`, a
:class:`LeadershipRunner`, or an :class:`Elector` and an election name) and
checks it against the clock (:attr:`Term.is_valid`). No valid term: the call
is skipped (returns None; nothing is queued for later). A valid term: the
function runs inside a cancel scope that is registered with the term, so that
it is cancelled when the term ends for any reason (deadline, key deleted,
session lost, resigned, transferred). A call cut short that way raises
:class:`LeadershipLost` to its caller (a scheduler logs it as the job's
error), never a bare ``CancelledError`` that would look like the scheduler
being cancelled. A cancellation of the caller itself propagates unchanged.

The lifespan runner awaits :func:`stop_jobs` in ``on_stepped_down``: with the
handover barrier (the default) the jobs of a term are cancelled and finished
before its key is deleted, so the successor's jobs never overlap them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
import typing
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

import anyio

from ._core import find_core
from ._errors import scope_cancellation_in_disguise
from ._exceptions import ConfigError, LeadershipLost
from ._term import Term, add_on_end

__all__ = ("LeaderOnly", "LeaderOnlyStatistics", "leader_only", "stop_jobs")

log = logging.getLogger("aioelect")

R = TypeVar("R")


class _ElectorLike(Protocol):
    """An :class:`Elector` (the facade, a layer above this module)."""

    prefix: str

    def terms(self) -> list[Term]: ...


class _HasTerm(Protocol):
    """A source of the current term: a Leadership or a LeadershipRunner."""

    @property
    def name(self) -> str: ...

    @property
    def term(self) -> Term | None: ...


@dataclasses.dataclass(frozen=True)
class LeaderOnlyStatistics:
    """A snapshot of a :class:`LeaderOnly` guard's counters.

    Attributes:
        runs: calls that ran to completion while leading.
        skipped: calls skipped because this process did not lead (or the call
            was due before the current term began).
        lost: calls cut short because the term ended while they ran.
        running: calls running now.
    """

    runs: int
    skipped: int
    lost: int
    running: int


class _Running:
    """The guarded calls running in one term (cancelled together when it ends)."""

    __slots__ = ("idle", "scopes")

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.idle: anyio.Event | None = None

    def cancel(self) -> None:
        for scope in self.scopes:
            scope.cancel()

    def discard(self, scope: anyio.CancelScope) -> None:
        self.scopes.discard(scope)
        if not self.scopes and self.idle is not None:
            self.idle.set()


_running: weakref.WeakKeyDictionary[Term, _Running] = weakref.WeakKeyDictionary()


def _running_in(term: Term) -> _Running:
    running = _running.get(term)
    if running is None:
        running = _running[term] = _Running()
        add_on_end(term, lambda t, _reason: _running[t].cancel() if t in _running else None)
    return running


async def stop_jobs(term: Term) -> None:
    """Cancel the guarded calls running in ``term`` and wait until they have returned.

    Cancelling this wait leaves them cancelled (they finish on their own).
    """
    running = _running.get(term)
    if running is None:
        return
    running.cancel()
    while running.scopes:
        running.idle = anyio.Event()
        await running.idle.wait()


def _term_parameter(func: Callable[..., Any], pass_term: bool | str | None) -> str | None:
    """The name of the parameter that receives the term, or None."""
    if pass_term is False:
        return None
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}  # type: ignore[assignment]
    if isinstance(pass_term, str):
        if pass_term not in params and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        ):
            raise ConfigError("pass_term", f"the function has no parameter {pass_term!r}")
        return pass_term
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: look at the strings
        hints = {}
    for param in params.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        ann = hints.get(param.name, param.annotation)
        if ann is Term or (isinstance(ann, str) and ann.rsplit(".", 1)[-1] == "Term"):
            return param.name
    if "term" in params:
        return "term"
    if pass_term is True:
        raise ConfigError(
            "pass_term", "the function has no parameter named 'term' or annotated Term"
        )
    return None


def _is_async(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - async callable objects
    )


class LeaderOnly:
    """A guard that runs async functions only while this process leads.

    Made by :func:`leader_only`; call it on an async function (or use it as
    a decorator) to get the guarded function. One guard may wrap several
    functions; its counters cover them all.
    """

    def __init__(
        self,
        source: _ElectorLike | _HasTerm,
        name: str | None = None,
        *,
        pass_term: bool | str | None = None,
        due: Callable[[], float] | None = None,
    ) -> None:
        is_elector = find_core(source) is not None
        if is_elector:
            if not isinstance(name, str) or not name:
                raise ConfigError("name", "give the election's name with an Elector")
        elif not hasattr(source, "term"):
            raise ConfigError(
                "source",
                "must be an Elector (with a name), a Leadership or a LeadershipRunner, "
                f"not {type(source).__name__}",
            )
        elif name is not None and name != cast("_HasTerm", source).name:
            raise ConfigError("name", f"{name!r} is not the election of {source!r}")
        if pass_term is not None and not isinstance(pass_term, (bool, str)):
            raise ConfigError("pass_term", "must be None, True, False or a parameter name")
        if due is not None and not callable(due):
            raise ConfigError("due", "must be a function returning a time.time() value, or None")
        self._source = source
        self._name = name if is_elector else None
        self._pass_term = pass_term
        self._due = due
        self._runs = self._skipped = self._lost = self._now = 0

    @property
    def name(self) -> str:
        """The election this guard follows."""
        if self._name is not None:
            return self._name
        return cast("_HasTerm", self._source).name

    def current_term(self) -> Term | None:
        """The term a call would run in now, or None (not leading, or no longer valid)."""
        source = self._source
        if self._name is not None:
            elector = cast("_ElectorLike", source)
            term = next((t for t in elector.terms() if t.name == self._name), None)
        else:
            term = cast("_HasTerm", source).term
        return term if term is not None and term.is_valid else None

    def statistics(self) -> LeaderOnlyStatistics:
        """A snapshot of the counters."""
        return LeaderOnlyStatistics(self._runs, self._skipped, self._lost, self._now)

    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, R]]
    ) -> Callable[..., Coroutine[Any, Any, R | None]]:
        """Wrap ``func``: the result runs it only while leading (see :func:`leader_only`)."""
        if not _is_async(func):
            raise ConfigError("func", f"must be an async function, not {func!r}")
        param = _term_parameter(func, self._pass_term)
        label = getattr(func, "__qualname__", repr(func))

        @functools.wraps(func)
        async def guarded(*args: Any, **kwargs: Any) -> R | None:
            term = self.current_term()
            if term is None:
                self._skipped += 1
                log.debug("%s skipped: not the leader of %r", label, self.name)
                return None
            if self._due is not None:
                due = self._due()
                began = time.time() - (time.monotonic() - term.started_at)
                if due < began:
                    self._skipped += 1
                    log.debug("%s skipped: due before term %d began", label, term.token)
                    return None
            if param is not None:
                kwargs[param] = term
            running = _running_in(term)
            scope = anyio.CancelScope()
            running.scopes.add(scope)
            self._now += 1
            done = False
            result: R | None = None
            try:
                try:
                    with scope:
                        result = await func(*args, **kwargs)
                        done = True
                except asyncio.CancelledError:
                    # grpc.aio (an etcd call in the job) may disguise the scope's own
                    # cancellation as a bare CancelledError.
                    if not scope_cancellation_in_disguise(scope):
                        raise
            finally:
                self._now -= 1
                running.discard(scope)
            if done:
                self._runs += 1
                return result
            self._lost += 1
            reason = term.end_reason or "term ended"
            log.info("%s cut short: term %d of %r ended (%s)", label, term.token, term.name, reason)
            raise LeadershipLost(term.name, reason)

        if param is not None:
            sig = inspect.signature(func)
            guarded.__signature__ = sig.replace(  # type: ignore[attr-defined]
                parameters=[p for p in sig.parameters.values() if p.name != param]
            )
        guarded.leader_only = self  # type: ignore[attr-defined]
        return guarded

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<LeaderOnly {self.name!r} runs={s.runs} skipped={s.skipped} lost={s.lost} "
            f"running={s.running}>"
        )


def leader_only(
    source: _ElectorLike | _HasTerm,
    name: str | None = None,
    *,
    pass_term: bool | str | None = None,
    due: Callable[[], float] | None = None,
) -> LeaderOnly:
    """A guard that runs an async function only while this process leads.

    Usage, e.g. with any scheduler (APScheduler, aiocron, a loop of your own)::

        @aioelect.leader_only(runner)          # or a Leadership, or (elector, "jobs")
        async def report(term: aioelect.Term) -> None:
            await send_report(fence=term.token)

        scheduler.add_job(report, "interval", seconds=10)  # in every worker

    Each call of the guarded function:

    - returns None at once, without calling the function (logged at DEBUG,
      counted as skipped), when this process does not lead the election now
      with a valid term (nothing is queued: the call is simply not made);
    - otherwise runs it inside the term: when the term ends (deadline
      passed, key lost, resigned, handed over, elector closed) the function is
      cancelled at its next await, and the call raises
      :class:`LeadershipLost`; it returns the function's result when it
      completes first.

    Args:
        source: a :class:`LeadershipRunner` or a :class:`Leadership` (its
            current term), or an :class:`Elector` together with ``name``
            (the term this elector holds in that election, e.g. inside
            ``elector.hold(name, ...)``).
        name: the election, with an Elector source.
        pass_term: None (default): pass the term, as a keyword argument, to a
            parameter annotated ``Term`` or else named ``term``, if the
            function has one (hidden from the guarded function's signature);
            a str: to that parameter; True: require such a parameter; False:
            never.
        due: for scheduled jobs: a function returning when the call was due
            (``time.time()`` seconds). A call due before the current term
            began is skipped: the previous leader may already have run it
            (its timer fired on time, ours late). With it, each scheduled
            run happens at most once across the processes of one host (across
            hosts: clocks must agree to better than the handover time).

    Raises:
        ConfigError: a bad source, name or option, or ``func`` not async.
    """
    return LeaderOnly(source, name, pass_term=pass_term, due=due)
