"""A health and readiness report of an elector, for web frameworks' health endpoints.

:func:`health` only reads local state (no request to etcd), so a health
endpoint that calls it stays fast and answers even while etcd is down. Every
value in the report is JSON-able: lease ids are lowercase hex strings (64-bit
ids do not fit a JavaScript number), values are decoded as UTF-8.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
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


class LeadershipHealth(TypedDict):
    """One :class:`Leadership` given to :func:`health` (an item of ``Health["leaderships"]``)."""

    name: str
    value: str
    node_name: str | None
    is_leader: bool
    token: int | None
    expires_in: float | None


class Health(TypedDict):
    """The report :func:`health` returns (a JSON-able dict).

    Keys:
        ready: whether the elector can take part in elections now: it is open
            and its session lease is live (and, with ``require_leader``, one of
            the given leaderships leads).
        prefix: the elector's key prefix.
        session: ``live``, ``lease_id`` (hex), ``lease_expires_in`` (seconds
            until etcd may expire the lease, at the latest) and
            ``keepalive_latency`` (seconds, of the last renewal).
        terms: the terms this elector holds now, by election name: ``name``,
            ``value``, ``token`` (the fencing token) and ``expires_in``
            (seconds the term stays valid without another renewal).
        leaderships: for each given :class:`Leadership`: ``name``, ``value``,
            ``node_name``, ``is_leader``, and ``token`` and ``expires_in`` of
            its term (None when not leading).
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
        *leaderships: leaderships to include (their state and current term).
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
    reports: list[LeadershipHealth] = []
    for leadership in leaderships:
        term = leadership.term
        reports.append(
            LeadershipHealth(
                name=leadership.name,
                value=_text(leadership.value),
                node_name=leadership.node_name,
                is_leader=term is not None,
                token=term.token if term is not None else None,
                expires_in=round(term.expires_in(), 3) if term is not None else None,
            )
        )
    ready = live and (not require_leader or any(r["is_leader"] for r in reports))
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
