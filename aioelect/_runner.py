"""The lifespan runner: a Leadership run in the background for an ``async with`` block.

Theory of operation: entering starts one asyncio task (not a task group in
the caller's task, so nothing of ours can end the caller's block or reach a
web framework as an ``ExceptionGroup``). The task loops around
:meth:`Leadership.run`: when ``run()`` raises, the error is logged at ERROR
and counted, and ``run()`` is called again after a bounded, jittered
back-off (the term was resigned by ``run()`` on its way out). An elector that
was closed or whose background task failed cannot recover: the task then
stops, logging it once. Exiting leaves gracefully: a candidate that does not
lead withdraws at once; the leader hands leadership over to the youngest live
candidate (the most recently started process: on a rolling reload a new
worker, not another old one that is leaving too), waiting up to
``leave_wait`` for one to appear, or resigns; then the task is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import anyio
from typing_extensions import Self

from ._backoff import Backoff
from ._callbacks import OnElected, OnLeaderChange, OnSteppedDown
from ._config import Duration, check_name, duration, to_bytes
from ._connection import KV
from ._core import core_of
from ._elector import Elector
from ._exceptions import AioelectError, ConfigError, ElectorClosed
from ._health import health
from ._healthgate import HealthCheck
from ._identity import node_identity
from ._jobs import LeaderOnly, stop_jobs
from ._leadership import Leadership
from ._preference import DEFAULT_MIN_TERM, DEFAULT_SETTLE, preference_options, standing
from ._term import Term

__all__ = ("LeadershipRunner",)

log = logging.getLogger("aioelect")

R = TypeVar("R")

#: Back-off between restarts of a failed ``run()``: from 0.5 s, doubling, up to 30 s.
RESTART_INITIAL = 0.5
RESTART_CAP = 30.0


_PREFERENCE = (
    "priority",
    "preemptible",
    "min_term",
    "settle",
    "health_check",
    "health_interval",
    "health_timeout",
    "unhealthy_after",
    "healthy_after",
)


class LeadershipRunner:
    """Campaign in the background for the duration of an ``async with`` block.

    Usage (a FastAPI lifespan, an aiohttp ``cleanup_ctx``, a worker's main)::

        async with aioelect.Elector(prefix="/myapp", ttl=10) as elector:
            async with aioelect.LeadershipRunner(elector, "jobs") as runner:
                ...   # serve; runner.is_leader, runner.term, runner.leader_only(job)

    Entering creates the :class:`Leadership` (``runner.leadership``) and
    starts a task that runs it; it returns at once, without waiting to be
    elected. The task restarts ``run()`` when it raises (logged at ERROR,
    counted in :attr:`errors`, bounded jittered back-off from 0.5 s up to
    30 s), so the caller's block and its web server are never taken down by
    the election; while ``run()`` is not running, :attr:`is_running` is
    False. Exiting leaves gracefully (see ``graceful_leave``) and stops the
    task; exiting never raises the election's errors. The runner does not
    own the elector: entering the elector still raises
    :class:`EtcdUnavailable` when etcd cannot be reached at start (a web
    server then fails to start, and its process manager retries), while
    outages after that are survived without user action.

    Args:
        elector: an entered :class:`Elector`.
        name: the election.
        value: this process's value; default :func:`node_identity`, computed
            when the block is entered (so forks and ``gunicorn --preload``
            workers each get their own).
        on_elected: as for :meth:`Elector.leadership`.
        on_stepped_down: as for :meth:`Elector.leadership`. Before it runs,
            the runner cancels the term's :meth:`leader_only` calls and waits
            for them, so with the handover barrier (the default) they end
            before the successor is elected.
        on_leader_change: as for :meth:`Elector.leadership`.
        handover_barrier: as for :meth:`Elector.leadership`.
        reclaim_stale: as for :meth:`Elector.leadership`.
        priority: as for :meth:`Elector.leadership`
            (``runner.leadership.set_priority(n)`` changes it).
        preemptible: as for :meth:`Elector.leadership`.
        min_term: as for :meth:`Elector.leadership`.
        settle: as for :meth:`Elector.leadership`.
        health_check: as for :meth:`Elector.leadership`.
        health_interval: as for :meth:`Elector.leadership`.
        health_timeout: as for :meth:`Elector.leadership`.
        unhealthy_after: as for :meth:`Elector.leadership`.
        healthy_after: as for :meth:`Elector.leadership`.
        graceful_leave: on exit, hand leadership over to the youngest live
            candidate instead of resigning to the next in line (default True);
            with priorities, to the youngest of the highest priority (an
            unhealthy one last).
        leave_wait: on exit, how long the leader keeps leading while it
            waits for a candidate that campaigns after it began to leave (the
            new worker of a rolling reload that is still starting, rather
            than an old one that is leaving too); then it hands over to the
            youngest live candidate, or resigns when alone. Default 0: hand
            over at once. On a ``gunicorn`` reload, about the time a new
            worker takes to start (e.g. 3 s) leaves no vacancy at all; it
            also delays by that much the exit of a leader with no successor
            to come (a full stop, a single replica).

    Raises:
        ConfigError: a bad argument (at construction).
    """

    def __init__(
        self,
        elector: Elector,
        name: str,
        value: str | bytes | None = None,
        *,
        on_elected: OnElected | None = None,
        on_stepped_down: OnSteppedDown | None = None,
        on_leader_change: OnLeaderChange | None = None,
        handover_barrier: bool = True,
        reclaim_stale: bool = False,
        graceful_leave: bool = True,
        leave_wait: Duration = 0.0,
        priority: int | None = None,
        preemptible: bool = True,
        min_term: Duration = DEFAULT_MIN_TERM,
        settle: Duration = DEFAULT_SETTLE,
        health_check: HealthCheck | None = None,
        health_interval: Duration = 5.0,
        health_timeout: Duration = 2.0,
        unhealthy_after: int = 3,
        healthy_after: int = 2,
    ) -> None:
        if not isinstance(elector, Elector):
            raise ConfigError("elector", f"must be an aioelect.Elector, not {elector!r}")
        if not isinstance(graceful_leave, bool):
            raise ConfigError("graceful_leave", f"must be True or False, not {graceful_leave!r}")
        if on_stepped_down is not None and not callable(on_stepped_down):
            raise ConfigError("on_stepped_down", "must be an async function or None")
        self._elector = elector
        self._core = core_of(elector)
        self.name = check_name(name)
        self._value = to_bytes(value) if value is not None else None
        self._user_stepped_down = on_stepped_down
        self._options: dict[str, Any] = {
            "on_elected": on_elected,
            "on_leader_change": on_leader_change,
            "handover_barrier": handover_barrier,
            "reclaim_stale": reclaim_stale,
            "priority": priority,
            "preemptible": preemptible,
            "min_term": min_term,
            "settle": settle,
            "health_check": health_check,
            "health_interval": health_interval,
            "health_timeout": health_timeout,
            "unhealthy_after": unhealthy_after,
            "healthy_after": healthy_after,
        }
        # Validated now (ConfigError before any I/O); passed on to leadership() on entry.
        preference_options(**{k: v for k, v in self._options.items() if k in _PREFERENCE})
        self.graceful_leave = graceful_leave
        self.leave_wait = duration("leave_wait", leave_wait, allow_zero=True)
        self._leadership: Leadership | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = anyio.Event()
        self._running = False
        self._errors = 0
        self._last_error: BaseException | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def leadership(self) -> Leadership:
        """The :class:`Leadership` (created on entry).

        Raises:
            AioelectError: the runner was not entered yet.
        """
        if self._leadership is None:
            raise AioelectError("enter the LeadershipRunner first ('async with')")
        return self._leadership

    @property
    def elector(self) -> Elector:
        """The elector the runner campaigns with."""
        return self._elector

    @property
    def term(self) -> Term | None:
        """The current term while leading with a valid term, else None."""
        return self._leadership.term if self._leadership is not None else None

    @property
    def is_leader(self) -> bool:
        """Whether this process leads now (a valid term)."""
        return self.term is not None

    @property
    def is_running(self) -> bool:
        """Whether ``Leadership.run()`` is running now (False while backing off after an error)."""
        return self._running

    @property
    def errors(self) -> int:
        """How many times ``run()`` failed and was restarted."""
        return self._errors

    @property
    def last_error(self) -> BaseException | None:
        """The last error ``run()`` raised, or None."""
        return self._last_error

    def health(self, *, require_leader: bool = False) -> dict[str, Any]:
        """:func:`aioelect.health` of the elector and this leadership, with the runner's state.

        Adds ``"runner": {"running", "errors", "last_error"}``; ``ready`` is also
        False while ``run()`` is not running (backing off after an error).
        """
        report: dict[str, Any] = dict(
            health(self._elector, *self._leaderships(), require_leader=require_leader)
        )
        report["ready"] = bool(report["ready"]) and self._running
        error = self._last_error
        report["runner"] = {
            "running": self._running,
            "errors": self._errors,
            "last_error": f"{type(error).__name__}: {error}" if error is not None else None,
        }
        return report

    def _leaderships(self) -> tuple[Leadership, ...]:
        return (self._leadership,) if self._leadership is not None else ()

    def leader_only(
        self,
        func: Callable[..., Coroutine[Any, Any, R]],
        *,
        pass_term: bool | str | None = None,
        due: Callable[[], float] | None = None,
    ) -> Callable[..., Coroutine[Any, Any, R | None]]:
        """``aioelect.leader_only(runner, ...)(func)``: see :func:`leader_only`."""
        return LeaderOnly(self, pass_term=pass_term, due=due)(func)

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise AioelectError("this LeadershipRunner was already entered; create a new one")
        value = self._value if self._value is not None else node_identity().encode()
        node_name = value.decode(errors="replace")
        self._leadership = self._elector.leadership(
            self.name,
            value,
            node_name=node_name,
            on_stepped_down=self._stepped_down,
            **self._options,
        )
        self._task = asyncio.create_task(self._supervise(), name=f"aioelect runner {self.name}")
        log.info("campaigning in election %r as %r", self.name, node_name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, leadership = self._task, self._leadership
        assert task is not None
        assert leadership is not None
        ttl = self._elector.ttl
        with anyio.CancelScope(shield=True):
            if self.graceful_leave and leadership.is_leader:
                with anyio.move_on_after(self.leave_wait + ttl):
                    await self._hand_over(leadership)
            self._closing.set()
            leadership.stop()
            # stop() steps down (bounded by the TTL for on_stepped_down) and resigns.
            with anyio.move_on_after(2 * ttl + 5):
                await asyncio.wait([task])
            if not task.done():  # pragma: no cover - a callback ignoring cancellation
                log.error("leadership of %r did not stop in time: cancelling it", self.name)
                task.cancel()
                await asyncio.wait([task])

    async def _stepped_down(self, term: Term) -> None:
        await stop_jobs(term)
        if self._user_stepped_down is not None:
            await self._user_stepped_down(term)

    async def _hand_over(self, leadership: Leadership) -> None:
        """Transfer to the youngest live candidate, preferring one that campaigned after we
        began to leave (waiting up to ``leave_wait`` for it)."""
        term = leadership.term
        if term is None:
            return
        # The elector's mirror of the election (local, kept current by its watch).
        view = self._core.mirror.view(self.name)

        def others() -> list[KV]:
            return [kv for kv in view.kvs.values() if kv.lease != term.lease_id]

        began = max((kv.create_revision for kv in view.kvs.values()), default=0)
        deadline = time.monotonic() + self.leave_wait
        newcomers: list[KV] = []
        while term.is_valid:
            newcomers = [kv for kv in others() if kv.create_revision > began]
            if newcomers or time.monotonic() >= deadline:
                break
            await anyio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        candidates = newcomers or others()
        if not candidates or not term.is_valid:
            return
        # The highest priority first (all 0 without preference records), then the youngest.
        youngest = max(candidates, key=lambda kv: (standing(view, kv), kv.create_revision))
        healthy, priority = standing(view, youngest)
        try:
            await leadership.change_leader_to(youngest.value)
            if healthy and priority == 0:  # no preference in play
                log.info(
                    "leaving %r: handed over to the youngest candidate %r",
                    self.name,
                    youngest.value.decode(errors="replace"),
                )
            else:
                log.info(
                    "leaving %r: handed over to the candidate of highest priority %r (%d)",
                    self.name,
                    youngest.value.decode(errors="replace"),
                    priority,
                )
        except AioelectError as exc:  # gone meanwhile, no longer leading, etcd unavailable
            log.info("leaving %r: no handover (%s); resigning", self.name, exc)

    def _elector_failed(self) -> bool:
        return self._core.failure is not None

    async def _supervise(self) -> None:
        leadership = self._leadership
        assert leadership is not None
        backoff = Backoff(initial=RESTART_INITIAL, cap=RESTART_CAP)
        while not self._closing.is_set():
            started = time.monotonic()
            self._running = True
            try:
                await leadership.run()
                return  # run() returns only after stop()
            except Exception as exc:
                self._errors += 1
                self._last_error = exc
                if self._closing.is_set():
                    log.warning("leadership of %r failed while stopping: %s", self.name, exc)
                    return
                if isinstance(exc, ElectorClosed) or self._elector_failed():
                    log.error(
                        "leadership of %r stopped: the elector is closed or failed",
                        self.name,
                        exc_info=exc,
                    )
                    return
                if time.monotonic() - started > RESTART_CAP:
                    backoff.reset()
                delay = backoff.next()
                log.error(
                    "leadership of %r failed; campaigning again in %.2f s",
                    self.name,
                    delay,
                    exc_info=exc,
                )
            finally:
                self._running = False
            with anyio.move_on_after(delay):
                await self._closing.wait()

    def __repr__(self) -> str:
        state = "not entered" if self._leadership is None else repr(self._leadership)
        return f"<LeadershipRunner {self.name!r} {state} errors={self._errors}>"
