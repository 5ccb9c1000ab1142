"""A local mirror of every election under the elector's prefix, from ONE watch.

Theory of operation: the mirror reads the whole ``{prefix}/`` range once, then
follows one Watch stream from the next revision. Watch events arrive in
revision order, so after applying them the mirror is exactly etcd's state at
``revision``. Each election keeps its candidates in create-revision order (a
new key always has the highest create revision, so it is appended), which
makes "who leads" and "who is just before me" local look-ups: waiting
candidates, leaders watching their own key and observers are all fed from this
one stream, with no per-key watch and no request per event.

Faults: after a broken stream (or a compacted or cancelled one) the mirror
re-reads the range, turns the difference into events (so nobody waits on a key
that vanished meanwhile), and watches on from that read's revision. It never
resumes a broken watch from an old revision: such a watch catches up from
etcd's backend, where etcd #18089 could drop a delete.
:meth:`Mirror.sync` waits until the mirror has reached a revision (asking etcd
for a progress notification when nothing else moves it).

Size: over 400 lines because it holds the per-election view (ordering,
predecessor, listeners) beside the mirror that feeds it, and the waiters on
revisions that both use; the resync diff is the pure :func:`resync_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

import anyio

from ._backoff import Backoff
from ._connection import KV, Connection, WatchBatch, WatchStream
from ._exceptions import AuthenticationFailed, ElectorClosed, EtcdError
from ._few import Few, add, each, remove
from ._keys import (
    PREFERENCE_MARK,
    TRANSFER_SUFFIX,
    prefix_range_end,
    split_key,
    split_preference_key,
    split_transfer_key,
)
from ._models import LeaderInfo

__all__ = ("ElectionView", "Mirror", "resync_events")

log = logging.getLogger("aioelect")


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

    def advance(self, revision: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= revision:
            waiter = heapq.heappop(heap)[2]
            if not isinstance(waiter, asyncio.Future):
                waiter(None)
            elif not waiter.done():  # a cancelled waiter's future is done
                waiter.set_result(None)


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
        "name",
        "records",
        "transfer",
        "transfer_key",
    )

    def __init__(
        self, name: str, root: bytes, key_listeners: dict[bytes, Few[KeyListener]] | None = None
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


class Mirror:
    """Every election under ``root`` (``{prefix}/``), kept current by one watch."""

    def __init__(self, conn: Connection, root: bytes) -> None:
        self._conn = conn
        self.root = root
        self._range_end = prefix_range_end(root)
        self.views: dict[str, ElectionView] = {}
        self._key_listeners: dict[bytes, Few[KeyListener]] = {}  # shared by the views
        #: The revision the mirror has reached (progress notifications included).
        self.revision = 0
        #: The revision up to which the mirror has applied every event (from events
        #: and range reads only: etcd before 3.5.8 may send a progress notification
        #: ahead of the events it covers, etcd #15220).
        self.seen_revision = 0
        self._sync_waiters = _Waiters()
        self._seen_waiters = _Waiters()
        self._waiting = anyio.Event()
        self.leader_changes = 0
        self._stream: WatchStream | None = None
        self.resyncs = 0
        #: Bumped by every resync (every watch stream starts from one): a campaign
        #: whose mirror restarted while it waited cannot rule out a lost event there
        #: (etcd #18089 dropped a delete on a resumed, compacted watch) and confirms
        #: its win with a read.
        self.epoch = 0

    def view(self, name: str) -> ElectionView:
        """The view of election ``name`` (created empty if unknown)."""
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = ElectionView(name, self.root, self._key_listeners)
        return view

    async def load(self) -> None:
        """Read the whole range and make the mirror match it (a resync).

        The range is read in pages at one revision (:meth:`Connection.range_all`),
        so the mirror still jumps from one consistent snapshot to the next.
        """
        self.epoch += 1
        # Paginated at one revision: the pages are one snapshot, as one read would be.
        result = await self._conn.range_all(self.root, self._range_end)
        name_of = self._name_of
        mirrored: list[KV] = []
        for view in self.views.values():
            mirrored.extend(view.kvs.values())
            if view.transfer is not None:
                mirrored.append(view.transfer)
            if view.records is not None:
                mirrored.extend(view.records.values())
        touched: set[ElectionView] = set()
        for is_put, kv in resync_events(mirrored, result.kvs, name_of):
            name = name_of(kv.key)
            assert name is not None
            view = self.view(name)
            view.apply(is_put, kv)
            touched.add(view)
        self._advance(result.revision, seen=True)
        self._leaders_moved(touched)

    def _name_of(self, key: bytes) -> str | None:
        return (
            split_key(self.root, key)
            or split_transfer_key(self.root, key)
            or split_preference_key(self.root, key)
        )

    def _leaders_moved(self, views: set[ElectionView]) -> None:
        for view in views:
            if view.leader_moved():
                self.leader_changes += 1
            for listener in each(view.change_listeners):
                listener()

    def _advance(self, revision: int, seen: bool) -> None:
        if seen and revision > self.seen_revision:
            self.seen_revision = revision
            self._seen_waiters.advance(revision)
        if revision > self.revision:
            self.revision = revision
            self._sync_waiters.advance(revision)

    def apply_batch(self, batch: WatchBatch) -> None:
        """Apply one watch response."""
        if not batch.events:
            if not batch.created:
                self._advance(batch.revision, seen=False)  # a progress notification
            return
        touched: set[ElectionView] = set()
        for is_put, kv in batch.events:
            name = self._name_of(kv.key)
            if name is None:
                continue
            view = self.views.get(name)
            if view is None:
                if not is_put:
                    continue
                view = self.view(name)
            view.apply(is_put, kv)
            touched.add(view)
        self._leaders_moved(touched)
        self._advance(max(kv.mod_revision for _, kv in batch.events), seen=True)

    async def sync(self, revision: int) -> None:
        """Wait until the mirror has reached ``revision``. Cancelling leaves nothing behind.

        When nothing under the prefix moves the mirror, the mirror's progress
        task asks etcd for a progress notification (one per 50 ms, however
        many tasks wait).
        """
        if self.revision >= revision:
            return
        future = self._sync_waiters.add(revision)
        self._waiting.set()
        await future

    def when_synced(self, revision: int, callback: Reached) -> bool:
        """Call ``callback`` once the mirror has reached ``revision`` (as :meth:`sync`);
        False, without calling it, if it already has."""
        if self.revision >= revision:
            return False
        self._sync_waiters.add_callback(revision, callback)
        self._waiting.set()
        return True

    def seen_future(self, revision: int) -> asyncio.Future[None] | None:
        """A future resolved once every event up to ``revision`` has been applied.

        None if that is already the case. No progress request is made for it.
        """
        if self.seen_revision >= revision:
            return None
        return self._seen_waiters.add(revision)

    def when_seen(self, revision: int, callback: Reached) -> bool:
        """Call ``callback`` once every event up to ``revision`` has been applied (as
        :meth:`seen_future`); False, without calling it, if that is already the case."""
        if self.seen_revision >= revision:
            return False
        self._seen_waiters.add_callback(revision, callback)
        return True

    async def _request_progress(self) -> None:
        """While sync() waiters wait, ask for a progress notification every 50 ms."""
        while True:
            await self._waiting.wait()
            await anyio.sleep(0.05)
            if not self._sync_waiters:
                self._waiting = anyio.Event()
                continue
            stream = self._stream
            if stream is not None:
                with contextlib.suppress(EtcdError):
                    await stream.request_progress()

    async def run(self) -> None:
        """Follow the watch stream forever, reconnecting and resyncing as needed."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._request_progress)
                await self._follow()
        finally:
            # Nobody would wake the waiters any more: fail them instead of leaving them hanging.
            for waiters in (self._sync_waiters, self._seen_waiters):
                waiters.fail(ElectorClosed("the elector's watch stopped (elector closed)"))

    async def _follow(self) -> None:
        backoff = Backoff(initial=0.05, cap=1.0)
        broke = False
        while True:
            if broke:
                # Resync instead of resuming: a resumed watch catches up from etcd's
                # backend, where etcd #18089 could drop a delete (and a leader would
                # never see its key go); a range read cannot lose one.
                try:
                    await self.load()
                except EtcdError as exc:
                    # Nobody called this: retry whatever the error, but say so if a
                    # retry cannot help by itself (e.g. a permission was revoked).
                    log.log(
                        logging.DEBUG if exc.retryable else logging.WARNING,
                        "resync of %r failed: %s; retrying",
                        self.root,
                        exc,
                    )
                    await anyio.sleep(backoff.next())
                    continue
                self.resyncs += 1
                broke = False
            stream = self._conn.watch_stream(self.root, self._range_end, self.seen_revision + 1)
            self._stream = stream
            try:
                while True:
                    batch = await stream.read()
                    if batch.compact_revision or batch.canceled:
                        log.debug(
                            "watch of %r at revision %d compacted/cancelled: resync",
                            self.root,
                            self.revision + 1,
                        )
                        self.resyncs += 1
                        await self.load()
                        break
                    self.apply_batch(batch)
                    backoff.reset()
            except EtcdError as exc:
                log.debug("watch of %r broke: %s; resync and watch again", self.root, exc)
                broke = True
                if isinstance(exc, AuthenticationFailed):
                    with contextlib.suppress(EtcdError):
                        await self._conn.reauthenticate()
                await anyio.sleep(backoff.next())
            finally:
                self._stream = None
                stream.close()
