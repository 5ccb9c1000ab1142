"""A candidate's preference at work: its published record, its health gate, and the
leader's look-out for a better candidate (the theory of operation is in ``_preference.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ._backoff import Backoff
from ._connection import KV
from ._exceptions import EtcdError
from ._few import Few, add, each, remove
from ._healthgate import HealthGate
from ._keys import preference_key
from ._preference import PreferenceOptions, check_priority, decode_record, encode_record
from ._term import add_on_end

if TYPE_CHECKING:
    from ._core import Core
    from ._mirror import ElectionView
    from ._preference import PreferenceCounters
    from ._term import Term

__all__ = ("Candidacy",)

log = logging.getLogger("aioelect")


#: Called with the challenger's candidate KV and its priority when the leader must hand
#: over; returns whether it does (counted in ``statistics().preemptions``).
OnPreempt = Callable[[KV, int], bool]
#: Called with the new health state and the reason when it changes.
OnHealth = Callable[[bool, str], None]


class Candidacy:
    """One candidate's preference: its record, its health gate and its leader's watch.

    Owned by a :class:`HoldBlock` or a :class:`Leadership`; :meth:`start`
    runs its background task in the elector's task group (only when a record
    or a health check is needed), :meth:`aclose` ends it and deletes the record.
    """

    def __init__(self, core: Core, name: str, options: PreferenceOptions) -> None:
        self.core = core
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
        counters: PreferenceCounters = self.core.preference
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
        if self._done is not None or not (self.publishes or self.gate is not None):
            return
        done = anyio.Event()
        if self.core.spawn(self._run, done):  # not once the elector closed
            self._done = done

    async def aclose(self) -> None:
        """Stop the background task and delete the record (bounded; shield it when cancelled)."""
        self._live = False
        self._unwatch()
        self.core.preference.unhealthy.discard(self)
        done = self._done
        if done is None:
            return
        if self._scope is None:
            self._scope = anyio.CancelScope()
        self._scope.cancel()
        # Bounded: a task cancelled before it ever ran (the elector closing) sets nothing.
        with anyio.move_on_after(self.core.conn.timeout + 1):
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
        core = self.core
        conn = core.conn
        written: tuple[int, bytes] | None = None
        backoff = Backoff(initial=0.05, cap=1.0)
        while True:
            dirty = self._dirty = anyio.Event()
            changed = core.session_changed
            session = core.live_session()
            if session is not None and self.publishes:
                want = (session.lease_id, encode_record(self.priority, self.healthy))
                if want != written:
                    key = preference_key(core.prefix, self.name, session.lease_id)
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
        core = self.core
        session = core.live_session()
        if session is None or not self.publishes or core.closing:
            return
        conn = core.conn
        key = preference_key(core.prefix, self.name, session.lease_id)
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
        view = self.core.mirror.view(self.name)
        self._watch = _Watch(self, view, term, on_preempt)
        add_on_end(term, lambda _t, _r: self._unwatch())
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
            if self._on_preempt(*best):
                self._candidacy.core.preference.preemptions += 1
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
