"""Preferred leaders: priorities, and the leader's cooperative handover to a better candidate.

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

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ._backoff import Backoff
from ._config import Duration, duration
from ._connection import KV, Connection
from ._exceptions import ConfigError, EtcdError
from ._few import Few, add, each, remove
from ._healthgate import HealthGate, HealthOptions, health_options
from ._keys import PREFERENCE_MARK, preference_key, prefix_range_end

if TYPE_CHECKING:
    from ._elector import Elector
    from ._mirror import ElectionView
    from ._term import Term

__all__ = (
    "Candidacy",
    "PreferenceCounters",
    "PreferenceOptions",
    "decode_record",
    "preference_options",
    "preference_records",
    "standing",
    "version_priority",
)

log = logging.getLogger("aioelect")

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
    health_check: Callable[[], Awaitable[Any]] | None = None,
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
        self.unhealthy: set[Candidacy] = set()


#: Called with the challenger's candidate KV and its priority when the leader must hand over.
OnPreempt = Callable[[KV, int], None]
#: Called with the new health state and the reason when it changes.
OnHealth = Callable[[bool, str], None]


class Candidacy:
    """One candidate's preference: its record, its health gate and its leader's watch.

    Owned by a :class:`HoldBlock` or a :class:`Leadership`; :meth:`start`
    runs its background task in the elector's task group (only when a record
    or a health check is needed), :meth:`aclose` ends it and deletes the record.
    """

    def __init__(self, elector: Elector, name: str, options: PreferenceOptions) -> None:
        self._elector = elector
        self.name = name
        self.options = options
        self._priority = options.priority
        self.gate: HealthGate | None = None
        if options.health is not None:
            self.gate = HealthGate(options.health, f"election {name!r}", self._health_changed)
        self._dirty = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._on_health: Few[OnHealth] = None
        self._watch: _Watch | None = None
        self._live = False

    # -- state -------------------------------------------------------------------------

    @property
    def priority(self) -> int:
        """This candidate's priority (0 when none was declared)."""
        return 0 if self._priority is None else self._priority

    @property
    def healthy(self) -> bool | None:
        """Whether the health check passes (None without one)."""
        return None if self.gate is None else self.gate.healthy

    @property
    def publishes(self) -> bool:
        return self._priority is not None or self.gate is not None

    def set_priority(self, priority: int) -> None:
        """Change the priority; the record follows, and the leader re-evaluates."""
        self._priority = check_priority(priority)
        self._dirty.set()
        if self._live:
            self._launch()
        if self._watch is not None:
            self._watch.evaluate()

    def on_health(self, callback: OnHealth) -> Callable[[], None]:
        self._on_health = add(self._on_health, callback)

        def unsubscribe() -> None:
            self._on_health = remove(self._on_health, callback)

        return unsubscribe

    def _health_changed(self, healthy: bool, reason: str) -> None:
        counters: PreferenceCounters = self._elector._preference
        if healthy:
            counters.unhealthy.discard(self)
        else:
            counters.unhealthy.add(self)
            counters.unhealthy_transitions += 1
        self._dirty.set()
        for callback in each(self._on_health):
            callback(healthy, reason)

    async def wait_healthy(self) -> None:
        """Wait until the health check passes (at once without one)."""
        if self.gate is not None:
            await self.gate.wait_healthy()

    # -- the background task -----------------------------------------------------------

    def start(self) -> None:
        """Start publishing the record and polling the health check (if any)."""
        self._live = True
        self._launch()

    def _launch(self) -> None:
        tg = self._elector._tg
        if self._done is not None or tg is None or not (self.publishes or self.gate is not None):
            return
        self._done = anyio.Event()
        tg.start_soon(self._run, self._done)

    async def aclose(self) -> None:
        """Stop the background task and delete the record (bounded; shield it when cancelled)."""
        self._live = False
        self._unwatch()
        self._elector._preference.unhealthy.discard(self)
        done = self._done
        if done is None:
            return
        if self._scope is None:
            self._scope = anyio.CancelScope()
        self._scope.cancel()
        # Bounded: a task cancelled before it ever ran (the elector closing) sets nothing.
        with anyio.move_on_after(self._elector._conn.timeout + 1):
            await done.wait()
        self._done = self._scope = None

    async def _run(self, done: anyio.Event) -> None:
        try:
            if self._scope is None:
                self._scope = anyio.CancelScope()
            with self._scope:
                async with anyio.create_task_group() as tg:
                    if self.gate is not None:
                        tg.start_soon(self.gate.run)
                    await self._publish()
        finally:
            try:
                await self._unpublish()
            finally:
                done.set()

    async def _publish(self) -> None:
        elector = self._elector
        conn = elector._conn
        written: tuple[int, bytes] | None = None
        backoff = Backoff(initial=0.05, cap=1.0)
        while True:
            dirty = self._dirty = anyio.Event()
            changed = elector._session_changed
            session = elector._live_session()
            if session is not None and self.publishes:
                want = (session.lease_id, encode_record(self.priority, self.healthy))
                if want != written:
                    key = preference_key(elector.prefix, self.name, session.lease_id)
                    try:
                        await conn.txn([], [conn.op_put(key, want[1], session.lease_id)])
                    except EtcdError as exc:
                        log.debug("preference record of %r: %s; retrying", self.name, exc)
                        await anyio.sleep(backoff.next())
                        continue
                    backoff.reset()
                    written = want
            await _first_of(dirty, changed)

    async def _unpublish(self) -> None:
        elector = self._elector
        session = elector._live_session()
        if session is None or not self.publishes or elector._state != "open":
            return
        conn = elector._conn
        key = preference_key(elector.prefix, self.name, session.lease_id)
        with anyio.CancelScope(shield=True), anyio.move_on_after(conn.timeout):
            try:
                await conn.txn([], [conn.op_delete(key)])
            except EtcdError as exc:
                log.debug("could not delete the preference record of %r: %s", self.name, exc)

    # -- the leader's watch ------------------------------------------------------------

    def watch(self, term: Term, on_preempt: OnPreempt) -> None:
        """While ``term`` leads, call ``on_preempt`` once when a better candidate is due."""
        if not self.options.preemptible:
            return
        if self._watch is not None:
            self._watch.close()
        view = self._elector._mirror.view(self.name)
        self._watch = _Watch(self, view, term, on_preempt)
        term._add_on_end(lambda _t, _r: self._unwatch())
        self._watch.evaluate()

    def _unwatch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None


class _Watch:
    """A preemptible leader's look-out for a better candidate (see the module docstring)."""

    def __init__(
        self, candidacy: Candidacy, view: ElectionView, term: Term, on_preempt: OnPreempt
    ) -> None:
        self._candidacy = candidacy
        self._view = view
        self._term = term
        self._on_preempt = on_preempt
        self._since: dict[bytes, float] = {}  # record key -> outranks us since
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        view.change_listeners = add(view.change_listeners, self.evaluate)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._view.change_listeners = remove(self._view.change_listeners, self.evaluate)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def evaluate(self) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        term = self._term
        if not term.is_valid:
            return
        view, options = self._view, self._candidacy.options
        own = self._candidacy.priority
        now = time.monotonic()
        earliest = term.started_at + options.min_term
        since: dict[bytes, float] = {}
        best: tuple[KV, int] | None = None
        due_next: float | None = None
        if view.records is not None:
            for kv in view.kvs.values():  # in election order: ties go FIFO
                if kv.key == term.key:
                    continue
                record = view.record_of(kv)
                decoded = None if record is None else decode_record(record.value)
                if record is None or decoded is None:
                    continue
                priority, healthy = decoded
                if priority <= own or healthy is False:
                    continue
                start = since[record.key] = self._since.get(record.key, now)
                due = max(earliest, start + options.settle)
                if due <= now:
                    if best is None or priority > best[1]:
                        best = (kv, priority)
                elif due_next is None or due < due_next:
                    due_next = due
        self._since = since
        if best is not None:
            self.close()
            self._candidacy._elector._preference.preemptions += 1
            self._on_preempt(*best)
        elif due_next is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + (due_next - now), self.evaluate)


async def _first_of(*events: anyio.Event) -> None:
    """Wait until one of ``events`` is set."""
    async with anyio.create_task_group() as tg:

        async def one(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(one, event)


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
