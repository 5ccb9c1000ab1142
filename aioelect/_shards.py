"""Shard groups: S shards spread over the live members, each owned by exactly one.

Theory of operation: shard ``i`` of group ``g`` is an ordinary election,
``{prefix}/g.shard-{i:04d}/`` (``etcdctl elect`` can join or watch it), so at
every revision at most one member owns it (the election's invariant) and an
owned shard is a :class:`Term` with its own fencing token. A member announces
itself with a membership key ``{prefix}/g`` + ``\\0members/{member id}``
(outside every election's ``{prefix}/{name}/``: Go candidates never see it)
attached to its session lease, so a crash removes it with the member's
shard keys when the lease expires.

Every member's controller reads, from one revision of the elector's mirror,
the live members and each shard's owner (its first candidate, or the target
of a transfer under way), and computes the same target assignment with the
pure :func:`._shardplan.plan`. It campaigns only for the shards targeted to
it, and hands over each shard it owns that is targeted elsewhere: the work
is cancelled, ``on_revoked`` awaited (bounded by the TTL), and only then is
the key transferred to the target's queued candidate (or resigned): the
target's ``on_assigned`` starts after the predecessor's ``on_revoked``
returned (the per-shard barrier). A shard without any candidate (at a
cold start, or left by a member that crashed or lost its session) is claimed
only once the membership has been stable for ``claim_delay``: members that
start together claim each its own share at once (no handovers), and a member
that lost its session re-registers within it and gets its shards back (it is
the only member below its quota).

Graceful leave (:meth:`ShardGroup.stop`): the membership key goes first, the
other members queue for the leaver's shards at once, and each is handed over
as soon as its target queued (bounded by ``leave_wait``).

Size: over 400 lines because :class:`ShardGroup` is one controller: the
registration loop, the control loop that turns a plan into campaigns and
handovers, and the per-shard serve/own/finish/hand-over path share the
slots and must be read together for the per-shard barrier. The pure parts
are elsewhere (the plan in :mod:`._shardplan`, the keys and events in
:mod:`._shardinfo`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from typing_extensions import Self

from ._campaign import campaign
from ._config import (
    Duration,
    check_candidate_size,
    check_name,
    duration,
    to_bytes,
    value_limit,
)
from ._connection import KV
from ._exceptions import AioelectError, ConfigError, EtcdError, NoSuchCandidate, NotLeader
from ._mirror import ElectionView, Mirror
from ._shardinfo import (
    MAX_SHARDS,
    MEMBERS,
    OnShard,
    Shard,
    ShardEvent,
    ShardGroupStatistics,
    members_prefix,
    shard_name,
)
from ._shardplan import plan
from ._term import Term, drop_scope, open_scope, transfer_to

if TYPE_CHECKING:
    from ._core import Core, Reservation

__all__ = ("ShardGroup", "running_groups")

log = logging.getLogger("aioelect")

#: The groups running now (for metrics and health: see :func:`running_groups`).
_running: set[ShardGroup] = set()


def running_groups(core: Core) -> list[ShardGroup]:
    """The shard groups of an elector (its ``core``) whose :meth:`ShardGroup.run` runs now."""
    return sorted((g for g in list(_running) if g._core is core), key=lambda g: g.group)


def held_shards(group: ShardGroup) -> list[Shard]:
    """Every shard ``group``'s member holds a term of, valid or not (unlike
    :meth:`ShardGroup.owned`, which lists only valid ones): for diagnostics."""
    return [s.shard for _, s in sorted(group._slots.items()) if s.shard is not None]


class _Slot:
    """This member's business with one shard: campaigning, owning, handing over."""

    __slots__ = ("done", "index", "release", "shard", "target", "task_scope")

    def __init__(self, index: int) -> None:
        self.index = index
        self.target: str | None = None  # the plan's target when it is not us
        self.shard: Shard | None = None
        self.release = anyio.CancelScope()  # cancelled to hand the shard over
        self.task_scope = anyio.CancelScope()  # cancelled to stop campaigning
        self.done = False


class ShardGroup:
    """A member of shard group ``group``: created by :meth:`Elector.shards`.

    Run it with :meth:`run` (until :meth:`stop` or cancellation) or as
    ``async with`` (it runs in the background for the block; leaving the
    block leaves the group gracefully).
    """

    def __init__(
        self,
        core: Core,
        group: str,
        *,
        size: int,
        value: str | bytes,
        member_id: str | None = None,
        on_assigned: OnShard | None = None,
        on_revoked: OnShard | None = None,
        claim_delay: Duration = 0.5,
        leave_wait: Duration | None = None,
    ) -> None:
        self._core = core
        self.group = check_name(group, "group")
        if isinstance(size, bool) or not isinstance(size, int):
            raise ConfigError("size", f"must be an int, not {type(size).__name__}")
        if not 1 <= size <= MAX_SHARDS:
            raise ConfigError("size", f"must be 1 to {MAX_SHARDS}, got {size}")
        self.size = size
        limit = core.config.max_request_bytes
        self.value = to_bytes(value, limit=value_limit(limit))
        self.names = [shard_name(self.group, i) for i in range(size)]
        check_candidate_size(core.prefix, self.names[-1], self.value, limit)
        if member_id is None:
            member_id = secrets.token_hex(8)
        self.member_id = check_name(member_id, "member_id")
        check_candidate_size(core.prefix, self.group + MEMBERS, self.value, limit)
        for field, fn in (("on_assigned", on_assigned), ("on_revoked", on_revoked)):
            if fn is not None and not asyncio.iscoroutinefunction(fn):
                raise ConfigError(field, "must be an async function (async def) or None")
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self.claim_delay = duration("claim_delay", claim_delay, allow_zero=True)
        ttl = core.config.ttl
        self.leave_wait = (
            ttl if leave_wait is None else duration("leave_wait", leave_wait, allow_zero=True)
        )
        self._mprefix = members_prefix(core.prefix, self.group)
        self._member_key = self._mprefix + self.member_id.encode()
        self._slots: dict[int, _Slot] = {}
        self._retry_at: dict[int, float] = {}  # shard -> when to claim it again after an error
        self._shard_errors: dict[int, int] = {}  # shard -> on_assigned errors in a row
        self._errors = 0
        self._member_set: frozenset[str] = frozenset()
        self._settle_at = 0.0
        self._targets: tuple[str | None, ...] = (None,) * size
        self._members = 0
        self._balanced = False
        self._leaving = False
        self._state = "new"
        self._poke = anyio.Event()
        self._streams: list[MemoryObjectSendStream[ShardEvent]] = []
        self._receivers: list[MemoryObjectReceiveStream[ShardEvent]] = []
        self._task: asyncio.Task[None] | None = None
        self._assigned = self._revoked = self._handed_over = 0

    # -- public -----------------------------------------------------------------------

    @property
    def owned(self) -> dict[int, Shard]:
        """The shards this member owns now (valid terms), by index."""
        return {
            i: s.shard
            for i, s in sorted(self._slots.items())
            if s.shard is not None and s.shard.term.is_valid
        }

    def statistics(self) -> ShardGroupStatistics:
        """A snapshot of this member's shards and counters."""
        me = self.member_id
        return ShardGroupStatistics(
            group=self.group,
            member=me,
            size=self.size,
            members=self._members,
            owned=tuple(self.owned),
            targeted=tuple(i for i, t in enumerate(self._targets) if t == me),
            balanced=self._balanced,
            assigned=self._assigned,
            revoked=self._revoked,
            handed_over=self._handed_over,
            callback_errors=self._errors,
        )

    def health(self) -> dict[str, Any]:
        """A JSON-able report for a health endpoint (local state only, no request).

        ``ready`` is True while :meth:`run` runs and the member is registered in
        the group; ``shards`` lists the owned shards with their token and the
        seconds their term stays valid without another renewal.
        """
        stats = self.statistics()
        owned = self.owned
        registered = self._member_key in self._members_view().kvs
        return {
            "group": self.group,
            "member": self.member_id,
            "state": self._state,
            "ready": self._state == "running" and registered and not self._leaving,
            "size": self.size,
            "members": stats.members,
            "balanced": stats.balanced,
            "owned": len(owned),
            "targeted": len(stats.targeted),
            "shards": [
                {"index": i, "token": s.token, "expires_in": round(s.term.expires_in(), 3)}
                for i, s in owned.items()
            ],
        }

    def events(self) -> AsyncIterator[ShardEvent]:
        """Assignment events from now on, queued while not read; ends when the group stops."""
        send, receive = anyio.create_memory_object_stream[ShardEvent](math.inf)
        self._streams.append(send)
        self._receivers.append(receive)
        if self._state in ("stopped", "failed"):
            send.close()
        return _Events(receive)

    def stop(self) -> None:
        """Leave the group gracefully: :meth:`run` hands every shard over and returns."""
        if not self._leaving:
            self._leaving = True
            self._poke.set()

    async def run(self) -> None:
        """Join the group and serve shards until :meth:`stop` (graceful) or cancellation.

        On :meth:`stop` the membership key is deleted first and every owned
        shard is handed to its new target once that target queued for it
        (at most ``leave_wait``), then resigned. Cancelled, it resigns every
        shard at once (after ``on_revoked``, shielded, bounded by the TTL) and
        deletes its membership key.

        Raises:
            ElectorClosed: the elector closed.
            AioelectError: the group already runs.
        """
        if self._state != "new":
            raise AioelectError("this ShardGroup already ran; call elector.shards() again")
        core = self._core
        mine = [self.group + MEMBERS, *self.names]
        taken = core.in_use(mine)
        if taken:
            raise ConfigError("group", f"this Elector already uses election {taken[0]!r}")
        reservations: list[Reservation] = [core.reserve(n) for n in mine]
        views = [core.mirror.use(n) for n in mine]  # watched while the group runs
        self._state = "running"
        _running.add(self)
        try:
            for view in views:
                await core.mirror.ready(view)
            async with anyio.create_task_group() as tg:
                register_scope = anyio.CancelScope()
                tg.start_soon(self._register, register_scope)
                await self._control(tg, register_scope)
                tg.cancel_scope.cancel()
            self._state = "stopped"
        except BaseException:
            self._state = "failed"
            raise
        finally:
            _running.discard(self)
            for reservation in reservations:
                reservation.release()
            for view in views:
                core.mirror.unuse(view)
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout()):
                await self._unregister()
            for send in self._streams:
                send.close()
            if self._task is None:  # run() called directly: nobody reads after it
                self._close_receivers()

    def _close_receivers(self) -> None:
        for receive in self._receivers:
            receive.close()

    async def __aenter__(self) -> Self:
        self._core.check_usable()
        self._task = asyncio.get_running_loop().create_task(self.run())
        await anyio.lowlevel.checkpoint()
        if self._task.done():
            self._task.result()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        assert task is not None
        if exc is None:
            self.stop()
        else:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([task])
        self._close_receivers()  # the block is over: nobody iterates any more
        if not task.cancelled() and task.exception() is not None and exc is None:
            raise task.exception()  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"<ShardGroup {self.group!r} member={self.member_id} size={self.size} "
            f"owned={len(self.owned)} {self._state}>"
        )

    # -- membership -------------------------------------------------------------------

    def _timeout(self) -> float:
        return self._core.conn.timeout

    async def _register(self, scope: anyio.CancelScope) -> None:
        """Keep the membership key on the live session until leaving."""
        with scope:
            await self._keep_registered()

    async def _keep_registered(self) -> None:
        core = self._core
        conn = core.conn
        while not self._leaving:
            session = await core.wait_session()
            kv = self._members_view().kvs.get(self._member_key)
            if (kv is None or kv.lease != session.lease_id) and not self._leaving:
                try:
                    await conn.txn(
                        [], [conn.op_put(self._member_key, self.value, session.lease_id)]
                    )
                    log.info(
                        "shard group %r: member %s joined (lease %x)",
                        self.group,
                        self.member_id,
                        session.lease_id,
                    )
                except EtcdError as exc:
                    if not exc.retryable and "lease not found" not in str(exc):
                        raise
                    log.debug("shard group %r: registering: %s", self.group, exc)
                    await anyio.sleep(0.05)
                    continue
            lost = anyio.Event()
            unsubscribe = session.on_lost(_setter(lost))
            try:
                with anyio.move_on_after(1.0):  # a key deleted by someone: put it back
                    await lost.wait()
            finally:
                unsubscribe()

    async def _unregister(self) -> None:
        conn = self._core.conn
        try:
            await conn.txn([], [conn.op_delete(self._member_key)])
        except EtcdError as exc:
            log.debug("shard group %r: could not delete membership: %s", self.group, exc)

    def _members_view(self) -> ElectionView:
        return self._core.mirror.view(self.group + MEMBERS)

    # -- the controller -------------------------------------------------------------

    def _read(self) -> tuple[dict[int, str], list[str | None], list[bool]]:
        """Members (lease -> id), each shard's owner, and whether it has no candidate."""
        n = len(self._mprefix)
        by_lease = {kv.lease: kv.key[n:].decode() for kv in self._members_view().kvs.values()}
        views = self._core.mirror.views
        owners: list[str | None] = []
        empty: list[bool] = []
        for name in self.names:
            view = views.get(name)
            kv = None if view is None else (view.transfer_target() or view.leader())
            owners.append(None if kv is None else by_lease.get(kv.lease, f"~{kv.lease:x}"))
            empty.append(view is None or not view.kvs)
        return by_lease, owners, empty

    async def _control(self, tg: TaskGroup, register_scope: anyio.CancelScope) -> None:
        mirror = self._core.mirror
        me = self.member_id
        unregistered = False
        while True:
            self._core.check_usable()
            changed = _next_change(mirror)
            by_lease, owners, empty = self._read()
            members = set(by_lease.values())
            self._members = len(members)
            if self._leaving:
                members.discard(me)
                if me in by_lease.values() and not unregistered:
                    unregistered = True
                    register_scope.cancel()
                    await self._unregister()  # first: the others queue for our shards now
                    continue
            now = time.monotonic()
            if members != self._member_set:
                # Unowned shards wait until the membership has been stable for
                # claim_delay: members starting together claim each its own share, and
                # a member back from a lost session gets its shards back.
                self._member_set = frozenset(members)
                self._settle_at = now + self.claim_delay
            wake_in = math.inf
            result = plan(self.size, sorted(members), owners)
            self._targets = result.targets
            self._balanced = result.targets == tuple(owners)
            for i, target in enumerate(result.targets):
                slot = self._slots.get(i)
                if target == me and not self._leaving:
                    if slot is None or slot.done:
                        if empty[i] and now < self._settle_at:
                            wake_in = min(wake_in, self._settle_at - now)
                            continue
                        retry = self._retry_at.get(i)
                        if retry is not None:
                            if now < retry:
                                wake_in = min(wake_in, retry - now)
                                continue
                            del self._retry_at[i]
                        slot = self._slots[i] = _Slot(i)
                        tg.start_soon(self._serve, slot, owners[i])
                    slot.target = None
                elif slot is not None and not slot.done:
                    slot.target = target
                    if slot.shard is None:
                        slot.task_scope.cancel()  # stop campaigning
                    else:
                        slot.release.cancel()  # hand it over (the slot waits for the target)
            if self._leaving and not any(not s.done for s in self._slots.values()):
                return
            poke = self._poke
            with anyio.move_on_after(wake_in):
                async with anyio.create_task_group() as waits:

                    async def wait(event: anyio.Event, scope: anyio.CancelScope) -> None:
                        await event.wait()
                        scope.cancel()

                    waits.start_soon(wait, changed, waits.cancel_scope)
                    waits.start_soon(wait, poke, waits.cancel_scope)
            if poke.is_set():
                self._poke = anyio.Event()
            # Let a burst of changes land before reading again (a read costs O(size)).
            await anyio.sleep(min(0.02, self.size / 100_000))

    # -- one shard ----------------------------------------------------------------------

    async def _serve(self, slot: _Slot, previous: str | None) -> None:
        i = slot.index
        name = self.names[i]
        try:
            term: Term | None = None
            with slot.task_scope:
                term = await campaign(self._core, name, self.value)
            if term is not None:
                await self._own(slot, term, previous)
        finally:
            slot.done = True
            self._poke.set()

    async def _own(self, slot: _Slot, term: Term, previous: str | None) -> None:
        shard = slot.shard = Shard(self.group, slot.index, term.name, term)
        self._assigned += 1
        log.info(
            "shard group %r: member %s owns shard %d (token %d; %s)",
            self.group,
            self.member_id,
            slot.index,
            term.token,
            f"from {previous}" if previous else "unowned before",
        )
        self._emit(ShardEvent("assigned", shard))
        if slot.target is not None or self._leaving:
            slot.release.cancel()  # no longer targeted since the campaign won
        scope = open_scope(term)
        try:
            with scope, slot.release:
                if self._on_assigned is not None:
                    try:
                        await self._on_assigned(shard)
                    except Exception:
                        # Logged; the shard is resigned and claimed again after a back-off
                        # (1 s, doubling to 30 s while its errors repeat).
                        self._errors += 1
                        errors = self._shard_errors[slot.index] = (
                            self._shard_errors.get(slot.index, 0) + 1
                        )
                        backoff = min(30.0, 2.0 ** (errors - 1))
                        self._retry_at[slot.index] = time.monotonic() + backoff
                        log.exception(
                            "shard group %r: on_assigned of shard %d raised; resigning it, "
                            "claiming it again in %.0f s",
                            self.group,
                            slot.index,
                            backoff,
                        )
                        return
                    self._shard_errors.pop(slot.index, None)
                await anyio.sleep_forever()
        finally:
            drop_scope(term, scope)
            with anyio.CancelScope(shield=True):
                await self._finish(slot, term)

    async def _finish(self, slot: _Slot, term: Term) -> None:
        """Revoke: ``on_revoked`` (bounded by the TTL), then hand over or resign."""
        shard = slot.shard
        assert shard is not None
        ttl = self._core.config.ttl
        if self._on_revoked is not None:
            with anyio.move_on_after(ttl):
                try:
                    await self._on_revoked(shard)
                except Exception:
                    self._errors += 1
                    log.exception("shard group %r: on_revoked of shard %d", self.group, slot.index)
        reason = term.end_reason
        handed = False
        if reason is None and slot.index in self._retry_at:
            await term.resign()
            reason = "on_assigned raised"
        elif reason is None and (self._leaving or slot.release.cancel_called):
            handed = await self._hand_over(slot, term)
            reason = f"moved to member {slot.target}" if handed else "resigned"
        elif reason is None:  # run() cancelled: resign at once
            await term.resign()
            reason = "resigned"
        self._revoked += 1
        self._handed_over += handed
        slot.shard = None
        log.info(
            "shard group %r: member %s gave up shard %d (token %d): %s",
            self.group,
            self.member_id,
            slot.index,
            term.token,
            reason,
        )
        self._emit(ShardEvent("revoked", shard, reason))

    async def _hand_over(self, slot: _Slot, term: Term) -> bool:
        """Transfer to the target's queued candidate (waiting for it, bounded), else resign."""
        mirror = self._core.mirror
        view = mirror.view(term.name)
        wait = self.leave_wait if self._leaving else self._core.config.ttl
        deadline = time.monotonic() + wait
        with anyio.move_on_after(self._timeout() + wait):
            while term.is_valid and time.monotonic() < deadline:
                if slot.target is None and not self._leaving:
                    break  # targeted back to us meanwhile (e.g. the target left): claim anew
                kv = self._target_key(slot, view)
                if kv is not None:
                    try:
                        nxt = _next_after(view, term.key)
                        if nxt is not None and nxt.key == kv.key:
                            await term.resign()
                        else:
                            await transfer_to(term, kv)
                        return True
                    except (NoSuchCandidate, NotLeader, EtcdError) as exc:
                        log.debug("shard %r: handover failed: %s", term.name, exc)
                        break
                changed = _next_change(mirror)
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    await changed.wait()
        await term.resign()  # bounded by its own retries
        return False

    def _target_key(self, slot: _Slot, view: ElectionView) -> KV | None:
        target = slot.target
        if target is None:
            return None
        members = self._members_view().kvs.get(self._mprefix + target.encode())
        if members is None:
            return None
        for kv in view.kvs.values():
            if kv.lease == members.lease:
                return kv
        return None

    def _emit(self, event: ShardEvent) -> None:
        for send in self._streams:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                send.send_nowait(event)


def _next_change(mirror: Mirror) -> anyio.Event:
    """An event set when the mirror applies its next change (or stops)."""
    return mirror.next_change()


def _setter(event: anyio.Event) -> Callable[[object], None]:
    def set_it(_: object) -> None:
        event.set()

    return set_it


def _next_after(view: ElectionView, key: bytes) -> KV | None:
    """The candidate right after ``key`` in election order."""
    seen = False
    for kv in sorted(view.kvs.values(), key=lambda kv: (kv.create_revision, kv.key)):
        if seen:
            return kv
        seen = kv.key == key
    return None


class _Events:
    """The async iterator of :meth:`ShardGroup.events`."""

    def __init__(self, receive: MemoryObjectReceiveStream[ShardEvent]) -> None:
        self._receive = receive

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> ShardEvent:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            raise StopAsyncIteration from None
