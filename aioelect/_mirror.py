"""A local mirror of the elections this process uses, from ONE watch stream.

Theory of operation: an election is *in use* while anything in the process
campaigns in it, leads it, observes it or serves it as a shard
(:meth:`Mirror.use` / :meth:`Mirror.unuse`). The mirror reads each election
in use once (batched: one read-only transaction per 128 elections), then
follows it with a watch of its own, created from the next revision, all on
one gRPC Watch stream (etcd multiplexes any number of watches on a stream;
their ids are chosen here, so the creates go out back to back). A process
therefore reads, keeps and receives only the elections it takes part in,
however many others share its prefix: etcd sends each change to the
processes that watch that election, not to every process under the prefix.

Events of one watch arrive in revision order, so after applying them a view
is exactly etcd's state of that election at its scope's ``seen`` revision:
waiting candidates, leaders watching their own key and observers are all fed
from the stream, with no request per event. ``leader()``/``candidates()``
read once without watching. When the last user leaves, the watch stays
``linger`` seconds (5 by default) before it is cancelled, so that a process
that campaigns again right after its term (a hold/resign loop) pays for no
new read.

Prefix mode: a process with more than ``prefix_watch_at`` elections in use
at once (1,000 by default) switches, for good, to one watch over the whole
prefix (one read of the prefix, then one watch; the per-election watches
are dropped): one watch costs etcd and this process less than thousands,
and such a process takes part in most of its prefix anyway. Every view then
shares the prefix's :class:`~._view.Scope`.

Loading watches first and reads second: a watch is created from etcd's
current revision (never from a past one: such a watch catches up from etcd's
backend, where etcd #18089 could drop a delete), its responses are kept
until the read, made once every create was answered, is applied; then the
events after the read's revision are applied.

Faults: after a broken stream (or a watch etcd cancelled) the mirror loads
what the watch covered again the same way, turning the difference into
events (so nobody waits on a key that vanished meanwhile). It never resumes
a broken watch. Every (re)load gives the view a new ``epoch``.
:meth:`Mirror.sync` waits until a view has reached a revision (asking etcd
for a progress notification when nothing else moves it).

Size: over 400 lines because the loading, the stream's dispatch and the
two modes share one piece of state (the watches on the current stream); the
per-election bookkeeping is :mod:`._view`, the resync diff the pure
:func:`~._view.resync_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import anyio

from ._backoff import Backoff
from ._connection import KV, Connection, WatchBatch, WatchStream
from ._exceptions import AuthenticationFailed, ElectorClosed, EtcdError
from ._few import Few, each
from ._keys import prefix_range_end, split_key, split_preference_key, split_transfer_key
from ._view import ElectionView, KeyListener, Reached, Scope, leader_info, resync_events

__all__ = ("PREFIX_WATCH_AT", "ElectionView", "Mirror", "leader_info", "resync_events")

log = logging.getLogger("aioelect")

#: Elections in use at once above which a mirror watches its whole prefix instead.
PREFIX_WATCH_AT = 1000
#: Seconds an election stays watched after its last user left (a campaign that
#: follows its own term, as in a hold/resign loop, finds it still watched).
LINGER = 5.0
#: Keys per election in the batched first read (an election with more is read
#: again, paginated).
_FIRST_KEYS = 64
#: Range ops per read-only transaction (etcd's default --max-txn-ops).
_OPS_PER_TXN = 128
#: Every (re)load takes a new epoch from here (an epoch never repeats, across scopes).
_epochs = itertools.count(1)


class _Watch:
    """One watch on the current stream: of one election (``view``), or of the prefix.

    While it loads, its responses are kept in ``buffer`` (see :meth:`Mirror._load_views`)
    and ``created`` resolves with etcd's answer to its create.
    """

    __slots__ = ("buffer", "created", "scope", "view")

    def __init__(self, scope: Scope, view: ElectionView | None) -> None:
        self.scope = scope
        self.view = view
        self.buffer: list[WatchBatch] | None = []
        self.created: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.created.add_done_callback(_consume)


def _consume(future: asyncio.Future[None]) -> None:
    """Mark a failed future's exception as retrieved (nobody may be waiting on it)."""
    if not future.cancelled():
        future.exception()


class Mirror:
    """The elections in use under ``root`` (``{prefix}/``), kept current by one stream.

    Args:
        conn: the connection.
        root: the prefix and its ``/``.
        prefix_watch_at: elections in use at once above which the mirror
            watches the whole prefix (see the module docstring).
    """

    def __init__(
        self, conn: Connection, root: bytes, prefix_watch_at: int = PREFIX_WATCH_AT
    ) -> None:
        self._conn = conn
        self.root = root
        self._range_end = prefix_range_end(root)
        self.prefix_watch_at = prefix_watch_at
        self.views: dict[str, ElectionView] = {}
        self._key_listeners: dict[bytes, Few[KeyListener]] = {}  # shared by the views
        #: The prefix's scope once in prefix mode (None: a watch per election).
        self.prefix: Scope | None = None
        self._prefix_pending = False
        #: Resolved by the prefix's next load (shared by the views waiting for it).
        self._prefix_loading: asyncio.Future[None] | None = None
        #: The watches on the current stream, by id.
        self._watches: dict[int, _Watch] = {}
        self._ids = itertools.count(1)
        self._stream: WatchStream | None = None
        #: Views to (re)load and watch on the current stream (an ordered set).
        self._pending: dict[ElectionView, None] = {}
        self._cancels: list[int] = []
        #: Views with no user, still watched, by when their watch is to stop.
        self._idle: dict[ElectionView, float] = {}
        #: Seconds an election stays watched after its last user left.
        self.linger = LINGER
        self._wake = anyio.Event()
        #: Scopes with sync() waiters (progress notifications are asked for them).
        self._syncing: set[Scope] = set()
        self._waiting = anyio.Event()
        self._failed: BaseException | None = None
        self._changed: anyio.Event | None = None
        #: Elections in use now.
        self.in_use = 0
        self.leader_changes = 0
        #: Completed reloads (after a broken stream, a watch etcd cancelled, or resync()).
        self.resyncs = 0
        #: Watches created (per election, or of the prefix) since the start.
        self.watches_created = 0
        self._read_any = False

    # -- views and their users -----------------------------------------------------------

    def watching(self) -> list[str] | None:
        """The elections followed by a watch of their own now (None: the prefix's watch)."""
        if self.prefix is not None:
            return None
        return sorted(w.view.name for w in self._watches.values() if w.view is not None)

    def view(self, name: str) -> ElectionView:
        """The view of election ``name`` (created empty, not watched, if unknown)."""
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = ElectionView(
                name,
                self.root,
                self._key_listeners,
                self.prefix,
            )
        return view

    def use(self, name: str) -> ElectionView:
        """Count one user of election ``name`` and start watching it if it is new.

        Await :meth:`ready` before reading the view; call :meth:`unuse` once done.
        """
        view = self.view(name)
        view.uses += 1
        if view.uses == 1:
            self.in_use += 1
            self._idle.pop(view, None)
            if not view.epoch or view.loading is not None or not (view.watch_id or self.prefix):
                self._want(view)
        return view

    def _want(self, view: ElectionView) -> None:
        if self.prefix is None and self.in_use > self.prefix_watch_at and self._failed is None:
            # Prefix mode from now on: views made from here on share its scope.
            self.prefix = Scope()
            self._prefix_pending = True
            log.info(
                "%d elections in use under %r: watching the whole prefix",
                self.in_use,
                self.root,
            )
        if self.prefix is not None and self.prefix.epoch and not self._prefix_pending:
            return  # the prefix's watch covers it already
        if view.loading is None:
            if self.prefix is not None:  # one future for every view the prefix's load loads
                if self._prefix_loading is None:
                    self._prefix_loading = asyncio.get_running_loop().create_future()
                    self._prefix_loading.add_done_callback(_consume)
                view.loading = self._prefix_loading
            else:
                view.loading = asyncio.get_running_loop().create_future()
                view.loading.add_done_callback(_consume)
        if self._failed is not None:
            if not view.loading.done():
                view.loading.set_exception(self._failed)
            return
        if self.prefix is None:
            self._pending[view] = None
        self._wake.set()

    def unuse(self, view: ElectionView) -> None:
        """One user of ``view`` is done; the last one stops its watch (per-election mode)."""
        view.uses -= 1
        if view.uses:
            return
        self.in_use -= 1
        if self.prefix is not None:
            return  # the prefix's watch goes on: the view is kept, as every other
        if view.watch_id and view.loading is None and self.linger > 0:
            self._idle[view] = time.monotonic() + self.linger  # see _drop_idle
            return
        self._drop(view)

    def _drop(self, view: ElectionView) -> None:
        """Stop watching ``view`` (no user left) and forget it."""
        self._idle.pop(view, None)
        self._pending.pop(view, None)
        if view.watch_id:
            if self._watches.pop(view.watch_id, None) is not None:
                self._cancels.append(view.watch_id)
                self._wake.set()
            view.watch_id = 0
        if view.loading is not None:
            view.loading.cancel()
            view.loading = None
        self._syncing.discard(view.scope)
        if self.views.get(view.name) is view:
            del self.views[view.name]

    async def ready(self, view: ElectionView) -> bool:
        """Wait until ``view`` (in use) is loaded.

        Returns True if it was loaded after this call began (the view is then
        as current as a linearizable read made after the call), False if it
        was loaded already (see :meth:`sync`).

        Raises:
            ElectorClosed: the mirror stopped.
        """
        loading = view.loading
        if loading is None:
            if self._failed is not None:
                raise self._failed
            return False
        await asyncio.shield(loading)
        return True

    def _resolve(self, view: ElectionView) -> None:
        loading, view.loading = view.loading, None
        if loading is not None and not loading.done():
            loading.set_result(None)

    # -- waiting for revisions -----------------------------------------------------------

    def seen_future(self, view: ElectionView, revision: int) -> asyncio.Future[None] | None:
        """A future resolved once every event of ``view`` up to ``revision`` is applied.

        None if that is already the case. No progress request is made for it.
        """
        if view.scope.seen >= revision:
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            future.set_exception(self._failed)
        else:
            view.scope.waiters(True).add_future(revision, future)
        return future

    def when_keys_seen(self, keys: Iterable[bytes], revision: int, callback: Reached) -> bool:
        """Call ``callback`` once the views of ``keys`` have applied every event up to
        ``revision`` (one call; with the first error, if any); False, without calling
        it, if they have already (or a key belongs to no loaded view)."""
        scopes: set[Scope] = set()
        for key in keys:
            name = self._name_of(key)
            view = None if name is None else self.views.get(name)
            if view is None or not view.epoch:
                return False
            if view.scope.seen < revision:
                scopes.add(view.scope)
        if not scopes:
            return False
        if self._failed is not None:
            callback(self._failed)
            return True
        left = len(scopes)

        def reached(exc: BaseException | None) -> None:
            nonlocal left
            if left <= 0:
                return
            left = 0 if exc is not None else left - 1
            if left == 0:
                callback(exc)

        for scope in scopes:
            scope.waiters(True).add_callback(revision, reached)
        return True

    async def sync(self, view: ElectionView, revision: int) -> None:
        """Wait until ``view`` has reached ``revision``. Cancelling leaves nothing behind.

        When nothing in the election moves it, the mirror's progress task asks
        etcd for a progress notification (one per 50 ms, however many tasks wait).
        """
        scope = view.scope
        if scope.reached >= revision:
            return
        if self._failed is not None:
            raise self._failed
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        scope.waiters(False).add_future(revision, future)
        self._syncing.add(scope)
        self._waiting.set()
        await future

    def next_change(self) -> anyio.Event:
        """An event set when the mirror next applies a change (or stops)."""
        if self._changed is None:
            self._changed = anyio.Event()
            if self._failed is not None:
                self._changed.set()
        return self._changed

    async def resync(self) -> None:
        """Re-read every election in use now and watch it anew (as after a compacted
        watch); return once they are reloaded."""
        futures = []
        if self.prefix is not None:
            self._prefix_pending = True
        for view in self.views.values():
            if not view.uses:
                continue
            if view.loading is None:
                view.loading = asyncio.get_running_loop().create_future()
                view.loading.add_done_callback(_consume)
            futures.append(view.loading)
            if self.prefix is None:
                self._drop_watch(view)
                self._pending[view] = None
        self._wake.set()
        for future in futures:
            await asyncio.shield(future)

    # -- applying what etcd sends --------------------------------------------------------

    def _name_of(self, key: bytes) -> str | None:
        return (
            split_key(self.root, key)
            or split_transfer_key(self.root, key)
            or split_preference_key(self.root, key)
        )

    def _leaders_moved(self, views: Iterable[ElectionView]) -> None:
        for view in views:
            if view.leader_moved():
                self.leader_changes += 1
            for listener in each(view.change_listeners):
                listener()
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def apply_batch(self, batch: WatchBatch) -> None:
        """Apply one watch response (of any watch of the stream)."""
        watch = self._watches.get(batch.watch_id)
        if watch is None:
            if batch.watch_id == -1 and not batch.events:
                self._progress(batch.revision)  # a progress notification of the stream
            return  # a cancelled watch's late answers
        if batch.canceled or batch.compact_revision:
            self._lost(batch.watch_id, watch, batch)
            return
        if batch.created:
            watch.scope.live = watch.buffer is None
            if not watch.created.done():
                watch.created.set_result(None)
            return
        if watch.buffer is not None:
            watch.buffer.append(batch)  # loading: applied after the read
            return
        if not batch.events:
            watch.scope.advance(batch.revision, seen=False)  # the watch's own progress
            return
        self._apply(watch, batch.events)

    def _apply(self, watch: _Watch, events: list[tuple[bool, KV]]) -> None:
        view = watch.view
        if view is None:
            touched: set[ElectionView] = set()
            views, name_of = self.views, self._name_of
            for is_put, kv in events:
                name = name_of(kv.key)
                if name is None:
                    continue
                one = views.get(name)
                if one is None:
                    if not is_put:
                        continue
                    one = self.view(name)
                one.apply(is_put, kv)
                touched.add(one)
            self._leaders_moved(touched)
        else:
            name, moved = view.name, False
            for is_put, kv in events:
                if self._name_of(kv.key) == name:
                    view.apply(is_put, kv)
                    moved = True
            if moved:
                self._leaders_moved((view,))
        watch.scope.advance(max(kv.mod_revision for _, kv in events), seen=True)

    def _replay(self, watch: _Watch, revision: int) -> None:
        """The watch's read is applied (at ``revision``): apply what it buffered since."""
        buffer, watch.buffer = watch.buffer, None
        watch.scope.live = watch.created.done()
        for batch in buffer or ():
            events = [(p, kv) for p, kv in batch.events if kv.mod_revision > revision]
            if events:
                self._apply(watch, events)

    def _progress(self, revision: int) -> None:
        for scope in list(self._syncing):
            if scope.live:
                scope.advance(revision, seen=False)
            if not scope.sync_waiters:
                self._syncing.discard(scope)

    def _lost(self, watch_id: int, watch: _Watch, batch: WatchBatch) -> None:
        """A watch etcd cancelled (compacted, or refused): re-read what it covered."""
        log.debug(
            "watch %d of %r cancelled by etcd (compact revision %d): resync",
            watch_id,
            watch.view.name if watch.view is not None else self.root,
            batch.compact_revision,
        )
        del self._watches[watch_id]
        if not watch.created.done():  # its load gives up: the view is wanted again
            watch.created.set_exception(EtcdError("watch refused by etcd", retryable=True))
            return
        if watch.view is None:
            self._prefix_pending = True
        else:
            watch.view.watch_id = 0
            self._pending[watch.view] = None
        self._wake.set()

    def _drop_watch(self, view: ElectionView) -> None:
        if view.watch_id and self._watches.pop(view.watch_id, None) is not None:
            self._cancels.append(view.watch_id)
        view.watch_id = 0

    # -- loading -------------------------------------------------------------------------

    def _loaded(self, view: ElectionView, kvs: list[KV], revision: int) -> None:
        """Make ``view`` match a read of its range at ``revision``."""
        name = view.name
        fresh = [kv for kv in kvs if self._name_of(kv.key) == name]
        for is_put, kv in resync_events(view.mirrored(), fresh, lambda _key: name):
            view.apply(is_put, kv)
        scope = view.scope
        scope.epoch = next(_epochs)
        scope.advance(revision, seen=True)
        self._leaders_moved((view,))
        self._resolve(view)

    async def _read_views(
        self, views: list[ElectionView]
    ) -> list[tuple[ElectionView, list[KV], int]]:
        """Read each view's range (batched, an election with many keys paginated)."""
        conn = self._conn
        out: list[tuple[ElectionView, list[KV], int]] = []
        for at in range(0, len(views), _OPS_PER_TXN):
            chunk = views[at : at + _OPS_PER_TXN]
            try:
                resp = await conn.txn(
                    [], [conn.op_range(*view.bounds(), _FIRST_KEYS) for view in chunk]
                )
            except EtcdError as exc:
                if "receive limit" not in str(exc):
                    raise
                # Over a caller's client's receive limit: each alone, in pages.
                for view in chunk:
                    result = await conn.range_all(*view.bounds())
                    out.append((view, result.kvs, result.revision))
                continue
            revision = int(resp.header.revision)
            for view, one in zip(chunk, resp.responses, strict=True):
                rr = one.response_range
                if rr.more:
                    result = await conn.range_all(*view.bounds())
                    out.append((view, result.kvs, result.revision))
                else:
                    out.append((view, [KV.from_pb(kv) for kv in rr.kvs], revision))
        return out

    async def _load_views(self, stream: WatchStream, views: list[ElectionView]) -> None:
        """Watch ``views`` from now, then read them, then apply what the watches brought
        after the read.

        Watch first: each watch starts at etcd's revision when it is created, so
        it never catches up from the past (where etcd #18089 lost events), and
        the read, made after every create was answered, leaves no gap; events
        up to the read's revision are in the read and dropped from the watch.
        """
        watches: list[_Watch] = []
        try:
            for view in views:
                if not view.uses or self.views.get(view.name) is not view or view.watch_id:
                    continue  # given up (or watched) meanwhile
                watch_id = next(self._ids)
                watch = self._watches[watch_id] = _Watch(view.scope, view)
                view.watch_id = watch_id
                watches.append(watch)
                self.watches_created += 1
                await stream.create(watch_id, *view.bounds(), 0)
            wanted, refused = await self._created(watches)
            results = await self._read_views([w.view for w in wanted if w.view is not None])
        except BaseException:
            # Not loaded: forget these watches (cancelled on etcd), so that the views
            # are loaded again (by _serve) instead of waiting on a buffer forever.
            for watch in watches:
                one = watch.view
                assert one is not None
                if self._watches.get(one.watch_id) is watch:
                    del self._watches[one.watch_id]
                    self._cancels.append(one.watch_id)
                    one.watch_id = 0
            raise
        reloaded = False
        for watch, (view, kvs, revision) in zip(wanted, results, strict=True):
            if self._watches.get(view.watch_id) is not watch:
                continue  # given up meanwhile
            reloaded = reloaded or bool(view.epoch)
            self._loaded(view, kvs, revision)
            self._replay(watch, revision)
        if reloaded:
            self.resyncs += 1
        if refused is not None:
            raise refused  # the loader backs off, then tries those again

    async def _created(self, watches: list[_Watch]) -> tuple[list[_Watch], EtcdError | None]:
        """Wait for etcd's answer to each create: the watches it created, and the error
        of one it refused (those are wanted again)."""
        wanted: list[_Watch] = []
        refused: EtcdError | None = None
        for watch in watches:
            try:
                await watch.created
            except EtcdError as exc:
                assert watch.view is not None
                watch.view.watch_id = 0
                self._pending[watch.view] = None
                refused = exc
                continue
            wanted.append(watch)
        return wanted, refused

    async def _load_prefix(self, stream: WatchStream) -> None:
        """Read the whole prefix and follow it with one watch (prefix mode); watch first,
        as :meth:`_load_views` does."""
        self._prefix_pending = False
        scope = self.prefix
        assert scope is not None  # set when the mode switched (see _want)
        # The new watch and the read cover whatever the watches before them would
        # still bring: stop applying those now.
        old = list(self._watches)
        self._watches.clear()
        self._pending.clear()
        for view in self.views.values():
            view.watch_id = 0
            if view.scope is not scope:
                view.scope.merge_into(scope)
                self._syncing.discard(view.scope)
                view.scope = scope
        if scope.sync_waiters:
            self._syncing.add(scope)
        for watch_id in old:
            await stream.cancel(watch_id)
        watch_id = next(self._ids)
        watch = self._watches[watch_id] = _Watch(scope, None)
        self.watches_created += 1
        try:
            await stream.create(watch_id, self.root, self._range_end, 0)
            await watch.created
            result = await self._conn.range_all(self.root, self._range_end)
        except BaseException:
            self._prefix_pending = True
            if self._watches.pop(watch_id, None) is not None:
                self._cancels.append(watch_id)
            raise
        mirrored: list[KV] = []
        for view in self.views.values():
            mirrored.extend(view.mirrored())
        name_of = self._name_of
        touched: set[ElectionView] = set()
        for is_put, kv in resync_events(mirrored, result.kvs, name_of):
            name = name_of(kv.key)
            assert name is not None
            view = self.view(name)
            view.apply(is_put, kv)
            touched.add(view)
        if scope.epoch:
            self.resyncs += 1
        scope.epoch = next(_epochs)
        scope.advance(result.revision, seen=True)
        for view in self.views.values():
            self._resolve(view)
        loading, self._prefix_loading = self._prefix_loading, None
        if loading is not None and not loading.done():
            loading.set_result(None)
        self._leaders_moved(touched)
        self._replay(watch, result.revision)

    async def _serve(self, stream: WatchStream) -> None:
        """Load and watch what is wanted, and cancel what is not, on ``stream``."""
        backoff = Backoff(initial=0.05, cap=1.0)
        while True:
            if not (self._pending or self._cancels or self._prefix_pending):
                await self._wake.wait()
            self._wake = anyio.Event()
            cancels, self._cancels = self._cancels, []
            for watch_id in cancels:
                await stream.cancel(watch_id)
            views = list(self._pending)
            try:
                if self._prefix_pending:
                    await self._load_prefix(stream)
                elif views:
                    self._pending.clear()
                    await self._load_views(stream, views)
            except EtcdError as exc:
                if self._stream is not stream:
                    raise
                # Nobody called this: retry whatever the error, but say so if a
                # retry cannot help by itself (e.g. a permission was revoked).
                log.log(
                    logging.DEBUG if exc.retryable else logging.WARNING,
                    "reading the elections of %r failed: %s; retrying",
                    self.root,
                    exc,
                )
                await anyio.sleep(backoff.next())
            else:
                backoff.reset()
            finally:
                for view in views:  # not loaded (failed or cancelled): again later
                    if view.uses and not view.watch_id and self.prefix is None:
                        self._pending[view] = None

    async def _drop_idle(self) -> None:
        """Stop the watches of the elections nobody used for ``linger`` seconds."""
        while True:
            await anyio.sleep(max(0.1, self.linger / 4))
            now = time.monotonic()
            for view, deadline in list(self._idle.items()):
                if deadline <= now and not view.uses and self.prefix is None:
                    self._drop(view)
            if self.prefix is not None:
                self._idle.clear()

    async def _request_progress(self) -> None:
        """While sync() waiters wait, ask for a progress notification every 50 ms."""
        while True:
            await self._waiting.wait()
            await anyio.sleep(0.05)
            if not self._syncing:
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
                tg.start_soon(self._drop_idle)
                await self._follow()
        finally:
            # Nobody would wake the waiters any more: fail them instead of leaving them hanging.
            self._fail(ElectorClosed("the elector's watch stopped (elector closed)"))

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        scopes = {view.scope for view in self.views.values()}
        for scope in scopes:
            scope.fail(exc)
        for view in self.views.values():
            loading, view.loading = view.loading, None
            if loading is not None and not loading.done():
                loading.set_exception(exc)
        if self._prefix_loading is not None and not self._prefix_loading.done():
            self._prefix_loading.set_exception(exc)
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _restart(self) -> None:
        """A new stream: everything in use is to be re-read and watched on it."""
        for watch in self._watches.values():
            watch.scope.live = False
        self._watches.clear()
        self._cancels.clear()
        if self.prefix is not None:
            self.prefix.live = False
            self._prefix_pending = True
        else:
            for view in self.views.values():
                view.watch_id = 0
                if view.uses:
                    self._pending[view] = None
        self._wake.set()

    async def _follow(self) -> None:
        backoff = Backoff(initial=0.05, cap=1.0)
        while True:
            stream = self._conn.watch_stream()
            self._stream = stream
            self._restart()
            broke: list[EtcdError] = []
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_guarded, self._serve, stream, tg.cancel_scope, broke)
                    await _guarded(self._read, stream, tg.cancel_scope, broke)
            finally:
                self._stream = None
                stream.close()
            exc = broke[0]
            # Resync instead of resuming: a resumed watch catches up from etcd's
            # backend, where etcd #18089 could drop a delete (and a leader would
            # never see its key go); a range read cannot lose one.
            log.debug("watch stream of %r broke: %s; resync and watch again", self.root, exc)
            if isinstance(exc, AuthenticationFailed):
                with contextlib.suppress(EtcdError):
                    await self._conn.reauthenticate()
            if self._read_any:
                backoff.reset()  # it worked for a while: retry soon
            await anyio.sleep(backoff.next())

    async def _read(self, stream: WatchStream) -> None:
        self._read_any = False
        while True:
            batch = await stream.read()
            self.apply_batch(batch)  # looked up now: tests may replace it
            self._read_any = True


async def _guarded(
    work: Callable[[WatchStream], Awaitable[None]],
    stream: WatchStream,
    scope: anyio.CancelScope,
    broke: list[EtcdError],
) -> None:
    """Run one task of a stream; when the stream breaks, note why and end its tasks."""
    try:
        await work(stream)
    except EtcdError as exc:
        broke.append(exc)
        scope.cancel()
