"""A health and readiness report of an elector, for web frameworks' health endpoints.

:func:`health` only reads local state (no request to etcd), so a health
endpoint that calls it stays fast and answers even while etcd is down. Every
value in the report is JSON-able: lease ids are lowercase hex strings (64-bit
ids do not fit a JavaScript number), values are decoded as UTF-8.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, TypedDict

from ._leadership import run_state

if TYPE_CHECKING:
    from ._callbacks import Failure
    from ._elector import Elector
    from ._leadership import Leadership

__all__ = ("Health", "health")


class SessionHealth(TypedDict):
    """The elector's session lease (``Health["session"]``)."""

    live: bool
    lease_id: str | None
    lease_expires_in: float | None
    keepalive_latency: float | None


class TermHealth(TypedDict):
    """One term the elector holds now (an item of ``Health["terms"]``)."""

    name: str
    value: str
    token: int
    expires_in: float


class ErrorHealth(TypedDict):
    """The last error of a :class:`Leadership` (``LeadershipHealth["last_error"]``)."""

    callback: str | None
    type: str
    message: str
    age: float


class LeadershipHealth(TypedDict):
    """One :class:`Leadership` given to :func:`health` (an item of ``Health["leaderships"]``)."""

    name: str
    value: str
    node_name: str | None
    ready: bool
    state: str
    is_leader: bool
    token: int | None
    expires_in: float | None
    retry_in: float | None
    callback_errors: int
    last_error: ErrorHealth | None
    priority: int
    healthy: bool | None


class Health(TypedDict):
    """The report :func:`health` returns (a JSON-able dict).

    Keys:
        ready: whether the elector can take part in elections now: it is open,
            its session lease is live and every given leadership is ready
            (and, with ``require_leader``, one of them leads).
        prefix: the elector's key prefix.
        session: ``live``, ``lease_id`` (hex), ``lease_expires_in`` (seconds
            until etcd may expire the lease, at the latest) and
            ``keepalive_latency`` (seconds, of the last renewal).
        terms: the terms this elector holds now, by election name: ``name``,
            ``value``, ``token`` (the fencing token) and ``expires_in``
            (seconds the term stays valid without another renewal).
        leaderships: for each given :class:`Leadership`: ``name``, ``value``,
            ``node_name``; ``ready``: its ``run()`` is running (campaigning,
            leading, observing, or backing off after a callback error, since
            it campaigns again within ``error_backoff``); ``state``: ``"new"``
            (``run()`` never started), ``"running"``, ``"backing_off"`` (after
            a callback error), ``"stopped"`` (``run()`` returned or was
            cancelled) or ``"failed"`` (``run()`` raised); ``is_leader``;
            ``token`` and ``expires_in`` of its term (None when not leading);
            ``retry_in``: seconds until it campaigns again while backing off
            (else None); ``callback_errors``: exceptions its callbacks raised;
            ``last_error``: the last of those, or what ended ``run()``, as
            ``callback`` (``"on_elected"``, ``"on_stepped_down"``,
            ``"on_leader_change"``, or None when not a callback's), ``type``
            (e.g. ``"ConnectionError"``, ``"mypkg.DbDown"``), ``message`` and
            ``age`` (seconds since it was raised); None without one. A
            leadership is not ready unless its ``run()`` is running;
            ``priority``: its priority (0 without one); ``healthy``: whether
            its ``health_check`` passes (None without one; a leadership
            whose check fails is not ready: it withdrew from the election).
        statistics: :meth:`Elector.statistics` as a dict (``lease_id`` in hex).
    """

    ready: bool
    prefix: str
    session: SessionHealth
    terms: list[TermHealth]
    leaderships: list[LeadershipHealth]
    statistics: dict[str, Any]


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


def _hex(lease_id: int | None) -> str | None:
    return None if lease_id is None else f"{lease_id:x}"


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _type_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _error(failure: Failure | None, now: float) -> ErrorHealth | None:
    if failure is None:
        return None
    return ErrorHealth(
        callback=failure.callback,
        type=_type_name(failure.error),
        message=str(failure.error),
        age=round(max(0.0, now - failure.at), 3),
    )


def _leadership_health(leadership: Leadership, now: float) -> LeadershipHealth:
    term = leadership.term
    run = run_state(leadership)
    running, retry_at, state = run.running, run.retry_at, run.state
    if running and retry_at is not None:
        state = "backing_off"
    return LeadershipHealth(
        name=leadership.name,
        value=_text(leadership.value),
        node_name=leadership.node_name,
        ready=running and leadership.healthy is not False,
        state=state,
        is_leader=term is not None,
        token=term.token if term is not None else None,
        expires_in=round(term.expires_in(), 3) if term is not None else None,
        retry_in=round(max(0.0, retry_at - now), 3) if retry_at is not None else None,
        callback_errors=run.callback_errors,
        last_error=_error(run.last_error, now),
        priority=leadership.priority,
        healthy=leadership.healthy,
    )


def health(elector: Elector, *leaderships: Leadership, require_leader: bool = False) -> Health:
    """Report the elector's state, for a health or readiness endpoint.

    Usage (FastAPI)::

        @app.get("/healthz")
        async def healthz(response: Response) -> aioelect.Health:
            report = aioelect.health(elector, leadership)
            if not report["ready"]:
                response.status_code = 503
            return report

    Reads local state only (no request to etcd) and never blocks; it may be
    called at any time, also before the elector is entered or after it
    closed (``ready`` is False then), and from another thread.

    Args:
        elector: the elector to report on.
        *leaderships: leaderships to include (their state and current term);
            ``ready`` is False while one of them does not run.
        require_leader: when True, ``ready`` also requires that one of
            ``leaderships`` leads now (for a service that only the leader
            should receive traffic for).

    Returns:
        A JSON-able :class:`Health` dict.
    """
    stats = elector.statistics()
    live = stats.lease_id is not None
    # sorted() copies the set at once: another thread may call this while the loop runs.
    held = sorted(elector.terms(), key=lambda t: t.name)
    terms = [
        TermHealth(
            name=t.name,
            value=_text(t.value),
            token=t.token,
            expires_in=round(t.expires_in(), 3),
        )
        for t in held
        if t.is_valid
    ]
    now = time.monotonic()
    reports = [_leadership_health(leadership, now) for leadership in leaderships]
    ready = (
        live
        and all(r["ready"] for r in reports)
        and (not require_leader or any(r["is_leader"] for r in reports))
    )
    statistics = dataclasses.asdict(stats)
    statistics["lease_id"] = _hex(stats.lease_id)
    return Health(
        ready=ready,
        prefix=elector.prefix,
        session=SessionHealth(
            live=live,
            lease_id=_hex(stats.lease_id),
            lease_expires_in=_seconds(stats.lease_expires_in),
            keepalive_latency=_seconds(stats.keepalive_latency),
        ),
        terms=terms,
        leaderships=reports,
        statistics=statistics,
    )
