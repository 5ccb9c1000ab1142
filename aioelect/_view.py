"""The mirrored state of one election, and the revisions it is known at.

An :class:`ElectionView` keeps one election's candidates in create-revision
order (a new key always has the highest create revision, so it is appended),
which makes "who leads" and "who is just before me" local look-ups, plus its
transfer and preference records and its listeners. A :class:`Scope` records
the revisions a view is known at: up to which every event has been applied
(``seen``), and which revision has been reached, progress notifications
included (``reached``); with the waiters on each. A view watched alone has a
scope of its own; in prefix mode every view shares the prefix's (see
:mod:`._mirror`). Pure bookkeeping, no I/O: the mirror feeds it.

Size: over 400 lines because the view, its scope and the waiters they hold
are one piece of bookkeeping (the scope's waiters are woken by the view's
events); each class is small.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable
from typing import Protocol

from ._connection import KV
from ._few import Few, add, each, remove
from ._keys import PREFERENCE_MARK, TRANSFER_SUFFIX
from ._models import LeaderInfo

__all__ = (
    "ElectionView",
    "KeyListener",
    "LeaderListener",
    "Reached",
    "Scope",
    "leader_info",
    "resync_events",
)


class KeyListener(Protocol):
    def key_changed(self, is_put: bool, kv: KV) -> None: ...


class LeaderListener(Protocol):
    def leader_changed(self, info: LeaderInfo | None) -> None: ...


#: Called once a revision is reached, with None, or with the exception that ended the wait.
Reached = Callable[[BaseException | None], None]


class _Waiters:
    """Futures and callbacks waiting for a revision, woken in revision order (a heap)."""

    __slots__ = ("_failed", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None] | Reached]] = []
        self._seq = 0
        self._failed: BaseException | None = None

    def __bool__(self) -> bool:
        return bool(self._heap)

    def add(self, revision: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            future.set_exception(self._failed)
            return future
        self._seq += 1
        heapq.heappush(self._heap, (revision, self._seq, future))
        return future

    def add_future(self, revision: int, future: asyncio.Future[None]) -> None:
        """Resolve ``future`` once ``revision`` is reached (or fail it)."""
        if self._failed is not None:
            future.set_exception(self._failed)
            return
        self._seq += 1
        heapq.heappush(self._heap, (revision, self._seq, future))

    def add_callback(self, revision: int, callback: Reached) -> None:
        """Call ``callback`` (synchronously) once ``revision`` is reached, or it fails."""
        if self._failed is not None:
            callback(self._failed)
            return
        self._seq += 1
        heapq.heappush(self._heap, (revision, self._seq, callback))

    def fail(self, exc: BaseException) -> None:
        """Fail every waiter, and those that come later (the mirror stopped)."""
        self._failed = exc
        heap, self._heap = self._heap, []
        for _, _, waiter in heap:
            if not isinstance(waiter, asyncio.Future):
                waiter(exc)
            elif not waiter.done():
                waiter.set_exception(exc)

    def merge(self, other: _Waiters) -> None:
        """Take over the waiters of ``other`` (which is left empty)."""
        for entry in other._heap:
            heapq.heappush(self._heap, entry)
        other._heap = []

    def advance(self, revision: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= revision:
            waiter = heapq.heappop(heap)[2]
            if not isinstance(waiter, asyncio.Future):
                waiter(None)
            elif not waiter.done():  # a cancelled waiter's future is done
                waiter.set_result(None)


class Scope:
    """The revisions one watch's elections are known at, and the waiters on them."""

    __slots__ = ("epoch", "live", "reached", "seen", "seen_waiters", "sync_waiters")

    def __init__(self) -> None:
        #: Set anew (from a global counter) by every load; 0: never loaded.
        self.epoch = 0
        #: Whether its watch is created on the current stream (progress applies).
        self.live = False
        self.seen = 0
        self.reached = 0
        self.seen_waiters: _Waiters | None = None
        self.sync_waiters: _Waiters | None = None

    def advance(self, revision: int, seen: bool) -> None:
        """Record that ``revision`` is reached (``seen``: by events or a read)."""
        if seen and revision > self.seen:
            self.seen = revision
            if self.seen_waiters:
                self.seen_waiters.advance(revision)
        if revision > self.reached:
            self.reached = revision
            if self.sync_waiters:
                self.sync_waiters.advance(revision)

    def waiters(self, seen: bool) -> _Waiters:
        """The waiters on ``seen`` (or on ``reached``), made on first use."""
        if seen:
            if self.seen_waiters is None:
                self.seen_waiters = _Waiters()
            return self.seen_waiters
        if self.sync_waiters is None:
            self.sync_waiters = _Waiters()
        return self.sync_waiters

    def merge_into(self, other: Scope) -> None:
        """Hand this scope's waiters over to ``other``."""
        if self.seen_waiters:
            other.waiters(True).merge(self.seen_waiters)
        if self.sync_waiters:
            other.waiters(False).merge(self.sync_waiters)

    def fail(self, exc: BaseException) -> None:
        for waiters in (self.seen_waiters, self.sync_waiters):
            if waiters is not None:
                waiters.fail(exc)


# A frozen dataclass's __init__ sets each field with object.__setattr__; the slots'
# own setters do the same in a third of the time (one LeaderInfo per election and
# change of leader, so thousands at a mass start). LeaderInfo's own: on Python 3.10,
# dataclass(slots=True) gives the subclass slots of its own that shadow CandidateInfo's.
_new = object.__new__
_set_name, _set_key, _set_value, _set_token, _set_lease, _set_priority, _set_healthy = (
    getattr(LeaderInfo, field).__set__
    for field in ("name", "key", "value", "token", "lease_id", "priority", "healthy")
)


def leader_info(name: str, kv: KV | None) -> LeaderInfo | None:
    """The LeaderInfo of ``kv`` (None for a vacancy)."""
    if kv is None:
        return None
    info: LeaderInfo = _new(LeaderInfo)
    _set_name(info, name)
    _set_key(info, kv.key)
    _set_value(info, kv.value)
    _set_token(info, kv.create_revision)
    _set_lease(info, kv.lease)
    _set_priority(info, 0)
    _set_healthy(info, None)
    return info


def resync_events(
    mirrored: Iterable[KV], fresh: Iterable[KV], name_of: Callable[[bytes], str | None]
) -> list[tuple[bool, KV]]:
    """The events that turn the mirrored keys into a fresh range read (pure; a resync).

    Args:
        mirrored: every key the mirror holds (candidates, transfer and
            preference records), election by election, each in its order.
        fresh: the range read (one snapshot).
        name_of: the election of a key, or None for a key of no election.

    Returns:
        ``(is_put, kv)`` pairs to apply in order: first a delete of every mirrored
        key that is missing or was re-created (another create revision), in the
        mirror's order; then a put of every key of an election that is new or
        changed, by create revision (so each view stays in election order).
    """
    by_key = {kv.key: kv for kv in fresh}
    events: list[tuple[bool, KV]] = []
    kept: dict[bytes, KV] = {}
    for kv in mirrored:
        new = by_key.get(kv.key)
        if new is None or new.create_revision != kv.create_revision:
            events.append((False, kv))
        else:
            kept[kv.key] = kv
    for kv in sorted(by_key.values(), key=lambda kv: kv.create_revision):
        if name_of(kv.key) is not None and kept.get(kv.key) != kv:
            events.append((True, kv))
    return events


class ElectionView:
    """The mirrored state of one election: its candidates in election order."""

    __slots__ = (
        "_leader",
        "change_listeners",
        "key_listeners",
        "kvs",
        "leader_listeners",
        "loading",
        "name",
        "records",
        "scope",
        "transfer",
        "transfer_key",
        "uses",
        "watch_id",
    )

    def __init__(
        self,
        name: str,
        root: bytes,
        key_listeners: dict[bytes, Few[KeyListener]] | None = None,
        scope: Scope | None = None,
    ) -> None:
        self.name = name
        self.transfer_key = root + name.encode() + TRANSFER_SUFFIX
        self.transfer: KV | None = None
        self.kvs: dict[bytes, KV] = {}
        # Few objects per election (one process may mirror thousands): the listeners
        # by key live in one dict shared by the mirror's views (keys are full keys),
        # and a key's only listener is stored as is, without a list.
        self.key_listeners = {} if key_listeners is None else key_listeners
        self.leader_listeners: Few[LeaderListener] = None
        self._leader: KV | None = None
        # Preference records (see _preference.py) by key; None while there are none.
        self.records: dict[bytes, KV] | None = None
        #: Called (no arguments) after each watch response that changed this election.
        self.change_listeners: Few[Callable[[], None]] = None
        #: The revisions this view is known at: its own, or the whole prefix's.
        self.scope = Scope() if scope is None else scope
        #: How many users (campaigns, terms, observers, shard groups) need it watched.
        self.uses = 0
        #: Resolved when the mirror has (re)loaded the view (None: nobody waits).
        self.loading: asyncio.Future[None] | None = None
        #: The id of the watch that follows this election alone (0: none).
        self.watch_id = 0

    @property
    def epoch(self) -> int:
        """Changes whenever the view is (re)loaded from a read (0: never loaded).

        A campaign whose view was reloaded while it waited cannot rule out a
        lost event there (etcd #18089 dropped a delete on a resumed, compacted
        watch) and confirms its win with a read.
        """
        return self.scope.epoch

    @property
    def seen(self) -> int:
        """The revision up to which every event of this election has been applied."""
        return self.scope.seen

    def bounds(self) -> tuple[bytes, bytes]:
        """The key range of this election: its candidates (``{prefix}/{name}/...``)
        and its records (``{prefix}/{name}\\x00...``).

        One range from ``{prefix}/{name}\\x00`` to ``{prefix}/{name}0``: it also
        holds the keys of elections whose names extend this one's with a
        character below ``0`` (``job`` and ``job-2``), which the mirror drops.
        """
        head = self.transfer_key[: -len(TRANSFER_SUFFIX)]
        return head + b"\x00", head + b"0"

    def mirrored(self) -> list[KV]:
        """Every key this view holds: candidates in order, the transfer and preference records."""
        kvs = list(self.kvs.values())
        if self.transfer is not None:
            kvs.append(self.transfer)
        if self.records is not None:
            kvs.extend(self.records.values())
        return kvs

    def leader(self) -> KV | None:
        """The candidate with the lowest create revision, or None.

        While a transfer is under way (its target alive but not yet first),
        nobody leads: None.
        """
        first: KV | None = None
        for kv in self.kvs.values():  # in create revision order; ties by key
            if first is None:
                first = kv
            elif kv.create_revision != first.create_revision:
                break
            elif kv.key < first.key:
                first = kv
        if first is not None and self.transfer is not None:
            target = self.kvs.get(self.transfer.value)
            if target is not None and target.key != first.key:
                return None
        return first

    def record_of(self, kv: KV) -> KV | None:
        """The preference record of candidate ``kv`` (same lease), or None."""
        if self.records is None:
            return None
        head = self.transfer_key[: -len(TRANSFER_SUFFIX)]
        return self.records.get(head + PREFERENCE_MARK + b"%x" % kv.lease)

    def stored(self, key: bytes) -> KV | None:
        """The mirrored KV of ``key`` (candidate, transfer or preference record), or None."""
        if key == self.transfer_key:
            return self.transfer
        if self.records is not None and PREFERENCE_MARK in key:
            return self.records.get(key)
        return self.kvs.get(key)

    def transfer_target(self) -> KV | None:
        """The live candidate a pending transfer hands leadership to, or None."""
        if self.transfer is None:
            return None
        return self.kvs.get(self.transfer.value)

    def predecessor(self, token: int, key: bytes) -> KV | None:
        """The live candidate just before ``key`` (created at ``token``), or None.

        Keys created in one transaction share a create revision: among them the
        lower key comes first, as in :meth:`leader` (every process agrees, whether
        its mirror saw the events or read the range).
        """
        best: KV | None = None
        for kv in self.kvs.values():  # in create revision order
            if kv.create_revision > token:
                break
            rank = (kv.create_revision, kv.key)
            if rank < (token, key) and (best is None or rank > (best.create_revision, best.key)):
                best = kv
        return best

    def listen_key(self, key: bytes, listener: KeyListener) -> None:
        """Call ``listener.key_changed(is_put, kv)`` on every change of ``key``."""
        self.key_listeners[key] = add(self.key_listeners.get(key), listener)

    def unlisten_key(self, key: bytes, listener: KeyListener) -> None:
        """Stop calling ``listener`` (nothing if it does not listen)."""
        rest = remove(self.key_listeners.get(key), listener)
        if rest is None:
            self.key_listeners.pop(key, None)
        else:
            self.key_listeners[key] = rest

    def listen_leader(self, listener: LeaderListener) -> None:
        """Call ``listener.leader_changed(info)`` on every change of leader."""
        self.leader_listeners = add(self.leader_listeners, listener)

    def unlisten_leader(self, listener: LeaderListener) -> None:
        """Stop calling ``listener`` (nothing if it does not listen)."""
        self.leader_listeners = remove(self.leader_listeners, listener)

    def apply(self, is_put: bool, kv: KV) -> None:
        if kv.key == self.transfer_key:
            if not is_put and self.transfer is None:
                return
            self.transfer = kv if is_put else None
        elif PREFERENCE_MARK in kv.key:  # names and prefixes hold no NUL
            records = self.records
            if is_put:
                if records is None:
                    records = self.records = {}
                records[kv.key] = kv
            elif records is None or records.pop(kv.key, None) is None:
                return
            elif not records:
                self.records = None
        elif is_put:
            old = self.kvs.get(kv.key)
            if old is not None and old.create_revision != kv.create_revision:
                del self.kvs[kv.key]  # re-created: it moves to the back
            self.kvs[kv.key] = kv
        else:
            old = self.kvs.pop(kv.key, None)
            if old is None:
                return
            kv = old
        for listener in each(self.key_listeners.get(kv.key)):
            listener.key_changed(is_put, kv)

    def leader_moved(self) -> bool:
        """Tell the leader listeners if the leader (or its value) changed; return whether it did."""
        new = self.leader()
        old = self._leader
        if new == old or (
            new is not None
            and old is not None
            and new.key == old.key
            and new.create_revision == old.create_revision
            and new.value == old.value
        ):
            return False
        self._leader = new
        info = leader_info(self.name, new)
        for listener in each(self.leader_listeners):
            listener.leader_changed(info)
        return True
