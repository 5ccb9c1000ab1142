"""Preferred leaders: options, the preference record, and the version helper.

Theory of operation: a candidate that declares a ``priority`` (or a health
check) publishes a *preference record* ``{prefix}/{name}\\x00pref\\x00{lease
hex}`` attached to its session lease (so the record goes with the candidate's
session, and the lease in its key names the candidate key
``{prefix}/{name}/{lease hex}`` it belongs to). The record lies outside
``{prefix}/{name}/``: ``etcdctl elect`` and Go candidates never see it and keep
their FIFO order. Every aioelect elector mirrors it with the election (one
watch, as for the candidates).

The leader decides, alone, from its mirror: while it leads a preemptible term,
it looks for a waiting candidate whose record shows a priority strictly
higher than its own, and healthy. Such a challenger must have outranked the
leader continuously for ``settle`` seconds (a priority that flaps resets
that clock), and the leader must have led for ``min_term`` seconds. Then the
leader hands over through :meth:`Term.transfer` (guarded by both tokens) after
its own step-down (the handover barrier): one leader change, no vacancy
beyond a normal transfer, and the one-leader invariant is the one of
``transfer()``. Among several challengers the highest priority wins, ties in
election (FIFO) order. A candidate without a record has priority 0 and never
challenges; a leader that is not preemptible (or not an aioelect candidate)
never hands over.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._config import Duration, duration
from ._connection import KV, Connection
from ._exceptions import ConfigError
from ._healthgate import HealthCheck, HealthOptions, health_options
from ._keys import PREFERENCE_MARK, prefix_range_end

if TYPE_CHECKING:
    from ._mirror import ElectionView

__all__ = (
    "DEFAULT_MIN_TERM",
    "DEFAULT_SETTLE",
    "PreferenceCounters",
    "PreferenceOptions",
    "check_priority",
    "decode_record",
    "encode_record",
    "preempted_reason",
    "preference_options",
    "preference_records",
    "standing",
    "version_priority",
)

#: Defaults: a leader leads at least this long before a better candidate takes over.
DEFAULT_MIN_TERM = 5.0
#: ... and a challenger must have outranked it continuously this long.
DEFAULT_SETTLE = 1.0
_INT64 = 2**63


@dataclass(frozen=True)
class PreferenceOptions:
    """The validated preference and health options of one candidate (all optional)."""

    priority: int | None
    preemptible: bool
    min_term: float
    settle: float
    health: HealthOptions | None

    @property
    def active(self) -> bool:
        """Whether the candidate takes part in preference or health gating at all."""
        return self.priority is not None or self.preemptible or self.health is not None


def check_priority(value: object, field: str = "priority") -> int:
    """Validate a priority: an int that fits in 64 bits (higher wins)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(field, f"must be an int (higher wins), not {type(value).__name__}")
    if not -_INT64 <= value < _INT64:
        raise ConfigError(field, f"must fit in a signed 64-bit int, got {value}")
    return value


def preference_options(
    *,
    priority: int | None = None,
    preemptible: bool | None = None,
    min_term: Duration = DEFAULT_MIN_TERM,
    settle: Duration = DEFAULT_SETTLE,
    health_check: HealthCheck | None = None,
    health_interval: Duration = 5.0,
    health_timeout: Duration = 2.0,
    unhealthy_after: int = 3,
    healthy_after: int = 2,
    default_preemptible: bool = False,
) -> PreferenceOptions:
    """Validate the options (raising ConfigError naming the field, before any I/O).

    ``preemptible`` None means ``default_preemptible`` (Leadership: True), or
    True when a ``priority`` is given.
    """
    if priority is not None:
        priority = check_priority(priority)
    if preemptible is None:
        preemptible = default_preemptible or priority is not None
    elif not isinstance(preemptible, bool):
        raise ConfigError("preemptible", f"must be True, False or None, not {preemptible!r}")
    health = health_options(
        health_check,
        interval=health_interval,
        timeout=health_timeout,
        unhealthy_after=unhealthy_after,
        healthy_after=healthy_after,
    )
    return PreferenceOptions(
        priority=priority,
        preemptible=preemptible,
        min_term=duration("min_term", min_term, allow_zero=True),
        settle=duration("settle", settle, allow_zero=True),
        health=health,
    )


def encode_record(priority: int, healthy: bool | None) -> bytes:
    """The value of a preference record."""
    body: dict[str, Any] = {"priority": priority}
    if healthy is not None:
        body["healthy"] = healthy
    return json.dumps(body, separators=(",", ":")).encode()


def decode_record(value: bytes) -> tuple[int, bool | None] | None:
    """``(priority, healthy)`` of a record's value; None if it is not one of ours."""
    try:
        body = json.loads(value)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    priority = body.get("priority", 0)
    healthy = body.get("healthy")
    if not isinstance(priority, int) or isinstance(priority, bool):
        return None
    if healthy is not None and not isinstance(healthy, bool):
        healthy = None
    return priority, healthy


_VERSION = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-+].*)?")


def version_priority(version: str, *, prefer: str = "newest") -> int:
    """Map a version ``"MAJOR[.MINOR[.PATCH]]"`` to a priority that orders versions.

    With ``prefer="newest"`` (the default) a newer version gets a higher
    priority, so during a rolling upgrade leadership moves to the first
    upgraded replica (after its settling time and the leader's minimum term)
    and stays on the new version; ``prefer="oldest"`` keeps it on the oldest
    version until the last old replica is gone (KEP-4355's choice for
    Kubernetes control planes). Pre-release and build suffixes
    (``"1.4.2-rc1"``, ``"1.4.2+abc"``) are ignored. Each part must be below
    1,000,000.

    Raises:
        ConfigError: ``version`` is not such a version, or ``prefer`` is neither
            ``"newest"`` nor ``"oldest"``.
    """
    if prefer not in ("newest", "oldest"):
        raise ConfigError("prefer", f"must be 'newest' or 'oldest', not {prefer!r}")
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise ConfigError("version", f"must look like 'MAJOR[.MINOR[.PATCH]]', got {version!r}")
    parts = [int(p) if p is not None else 0 for p in match.groups()]
    if any(p >= 1_000_000 for p in parts):
        raise ConfigError("version", f"each part must be below 1000000, got {version!r}")
    value = (parts[0] * 1_000_000 + parts[1]) * 1_000_000 + parts[2]
    return value if prefer == "newest" else -value


class PreferenceCounters:
    """An elector's preemption and health counters (for ``statistics()``)."""

    __slots__ = ("preemptions", "unhealthy", "unhealthy_transitions")

    def __init__(self) -> None:
        self.preemptions = 0
        self.unhealthy_transitions = 0
        self.unhealthy: set[object] = set()  # the Candidacy objects


def standing(view: ElectionView, kv: KV) -> tuple[bool, int]:
    """How candidate ``kv`` ranks by its record: (not unhealthy, priority); (True, 0) without."""
    record = view.record_of(kv)
    decoded = None if record is None else decode_record(record.value)
    if decoded is None:
        return True, 0
    return decoded[1] is not False, decoded[0]


async def preference_records(
    conn: Connection, prefix: str, name: str
) -> dict[int, tuple[int, bool | None]]:
    """``{lease id: (priority, healthy)}`` of election ``name``'s preference records."""
    head = f"{prefix}/{name}".encode() + PREFERENCE_MARK
    result = await conn.range_all(head, prefix_range_end(head))
    records: dict[int, tuple[int, bool | None]] = {}
    for kv in result.kvs:
        decoded = decode_record(kv.value)
        if decoded is not None:
            records[kv.lease] = decoded
    return records


def preempted_reason(target: KV, priority: int) -> str:
    """The reason a preempted term gives (``LeadershipLost.reason``)."""
    value = target.value.decode("utf-8", errors="backslashreplace")
    return f"preempted by {value!r} (priority {priority})"
