"""Plain data: who leads, who campaigns, and statistics snapshots."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("CandidateInfo", "ElectorStatistics", "LeaderInfo")


@dataclass(frozen=True, slots=True)
class CandidateInfo:
    """One live candidate of an election.

    Attributes:
        name: the election's name.
        key: the candidate's key, ``{prefix}/{name}/{lease hex}``.
        value: the candidate's value.
        token: the key's create revision; the candidate with the lowest leads.
        lease_id: the lease the key is attached to.
        priority: the candidate's declared priority (higher wins; 0 when it
            declared none, and for ``etcdctl elect`` or Go candidates). Filled
            by :meth:`Elector.candidates`; 0 elsewhere.
        healthy: whether its health check passes, as it last published it
            (None without a health check). Filled by :meth:`Elector.candidates`.
    """

    name: str
    key: bytes
    value: bytes
    token: int
    lease_id: int
    priority: int = 0
    healthy: bool | None = None


# Not ``slots=True``: on Python 3.10 that re-declares the parent's fields as slots
# of their own (CPython gh-90540), which hide the parent's, so an instance filled
# through CandidateInfo's slots (as the mirror does) would read as empty. An empty
# __slots__ gives what 3.11+ make of ``slots=True`` here: no __dict__, the parent's slots.
@dataclass(frozen=True)
class LeaderInfo(CandidateInfo):
    """The leader of an election (the candidate with the lowest create revision).

    ``token`` is a fencing token: it only grows from one leader to the next.
    """

    __slots__ = ()


@dataclass(frozen=True)
class ElectorStatistics:
    """A snapshot of an elector's counters, from :meth:`Elector.statistics`.

    Attributes:
        campaigns: elections this elector is waiting to win now.
        terms_held: terms this elector holds now.
        terms_won: terms won since the elector was entered.
        terms_lost: terms that ended other than by resigning.
        leader_changes: changes of leader seen in any election under the prefix.
        sessions_granted: session leases granted (more than one after a loss).
        sessions_lost: sessions lost (lease expired or not renewed in time).
        keepalives: successful lease renewals.
        keepalive_failures: renewals that failed or timed out.
        keepalive_latency: round trip of the last renewal, in seconds.
        keepalive_latency_sum: round trips of all successful renewals, added up
            (with ``keepalives``, the mean; a Prometheus summary).
        lease_expires_in: seconds until etcd may expire the lease, at the latest
            (None without a live session).
        lease_id: the current session lease (None without one).
        callback_errors: exceptions raised by the callbacks of this elector's
            :class:`Leadership` objects (``on_elected``, ``on_stepped_down``,
            ``on_leader_change``), handled or propagated.
        preemptions: terms of this elector handed over to a waiting candidate
            of higher priority.
        unhealthy_transitions: times a health-checked candidate of this
            elector turned unhealthy (stepping down, or withdrawing its key).
        unhealthy_candidates: health-checked candidates of this elector whose
            check fails now (withdrawn until it passes again).
    """

    campaigns: int
    terms_held: int
    terms_won: int
    terms_lost: int
    leader_changes: int
    sessions_granted: int
    sessions_lost: int
    keepalives: int
    keepalive_failures: int
    keepalive_latency: float | None
    keepalive_latency_sum: float
    lease_expires_in: float | None
    lease_id: int | None
    callback_errors: int = 0
    preemptions: int = 0
    unhealthy_transitions: int = 0
    unhealthy_candidates: int = 0
