"""The mirror follows only the elections its process uses (issue 17): entering reads none,
each election in use has a watch of its own on one stream until its last user left, other
elections' changes never reach the process, and above ``prefix_watch_at`` elections in use
one watch of the whole prefix takes over. Against a real etcd."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest
from helpers import ElectorFactory, eventually

import aioelect
from aioelect._connection import Connection, WatchBatch
from aioelect._core import core_of

pytestmark = pytest.mark.asyncio


async def _fill(raw: Connection, prefix: str, n: int, name: str = "other") -> None:
    """``n`` candidate keys of elections that are not ours, 128 per transaction."""
    for at in range(0, n, 128):
        ops = [
            raw.op_put(f"{prefix}/{name}-{i}/{i:x}".encode(), b"v" * 16)
            for i in range(at, min(n, at + 128))
        ]
        await raw.txn([], ops)


async def test_entering_reads_no_election_and_a_hold_only_its_own(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """A prefix holding 1,000 keys of other elections: the Elector enters knowing none of
    them, and holding one election mirrors that one alone."""
    await _fill(raw, etcd_prefix, 1000)
    elector = await make_elector()
    mirror = core_of(elector).mirror
    assert mirror.views == {}
    assert mirror.watching() == []
    async with elector.hold("mine", "a") as term:
        assert list(mirror.views) == ["mine"]
        assert [kv.key for kv in mirror.views["mine"].kvs.values()] == [term.key]
        assert mirror.watching() == ["mine"]
        assert await elector.leader("other-7") is not None  # read once, not watched
        assert mirror.watching() == ["mine"]


async def test_each_election_in_use_has_a_watch_until_its_last_user_left(
    make_elector: ElectorFactory,
) -> None:
    """A hold and an observer each watch their election; two users share one watch; the
    watch stops once the last user left (after ``linger``)."""
    elector = await make_elector()
    mirror = core_of(elector).mirror
    mirror.linger = 0.2
    async with elector.hold("a", "x"), elector.observe("b"), elector.observe("a"):
        assert mirror.watching() == ["a", "b"]
        assert mirror.in_use == 2
    await eventually(lambda: mirror.watching() == [], what="watches stopped")
    assert mirror.views == {} and mirror.in_use == 0


async def test_other_elections_changes_never_reach_the_process(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str, monkeypatch: Any
) -> None:
    """Another candidate's churn in 20 elections under the same prefix: not one of its events
    reaches this elector, while a change in its own election does."""
    elector = await make_elector()
    mirror = core_of(elector).mirror
    keys: list[bytes] = []
    apply = mirror.apply_batch

    def recording(batch: WatchBatch) -> None:
        keys.extend(kv.key for _, kv in batch.events)
        apply(batch)

    monkeypatch.setattr(mirror, "apply_batch", recording)
    async with elector.observe("mine") as leaders:
        for _ in range(5):
            await _fill(raw, etcd_prefix, 20)
            await raw.txn([], [raw.op_delete(f"{etcd_prefix}/other-3/3".encode())])
        theirs = f"{etcd_prefix}/mine/beef".encode()
        await raw.txn([], [raw.op_put(theirs, b"them")])
        async for info in leaders:
            if info is not None:
                assert info.key == theirs
                break
    assert keys == [theirs]


async def test_elections_sharing_a_key_range_are_kept_apart(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """The watch of ``job`` covers ``{prefix}/job\\x00`` to ``{prefix}/job0``, which holds
    ``job-2``'s and ``job.x``'s keys too: they are dropped, and ``job`` leads alone."""
    elector = await make_elector()
    mirror = core_of(elector).mirror
    early = f"{etcd_prefix}/job-2/1".encode()
    await raw.txn([], [raw.op_put(early, b"early")])  # before ours: it would lead
    async with elector.hold("job", "a") as term:
        await raw.txn([], [raw.op_put(f"{etcd_prefix}/job.x/2".encode(), b"b")])
        async with elector.observe("job-2") as leaders:
            async for info in leaders:
                assert info is not None and info.key == early
                break
        view = mirror.views["job"]
        assert list(view.kvs) == [term.key]
        assert term.is_valid
        assert (await elector.leader("job")) is not None
        info = await elector.leader("job")
        assert info is not None and info.key == term.key


async def test_above_prefix_watch_at_one_watch_of_the_prefix_takes_over(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """More elections in use than ``prefix_watch_at``: the mirror switches to one watch of
    the whole prefix, the terms it holds go on, and it still follows every change."""
    elector = await make_elector()
    mirror = core_of(elector).mirror
    mirror.prefix_watch_at = 3
    stop = anyio.Event()
    held: list[Any] = []

    async def hold(i: int) -> None:
        with contextlib.suppress(aioelect.LeadershipLost):  # e1's key is deleted below
            async with elector.hold(f"e{i}", "v") as term:
                held.append(term)
                await stop.wait()

    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(hold, i)
        await eventually(lambda: len(held) == 2, what="two held")
        assert mirror.watching() == ["e0", "e1"]
        for i in range(2, 6):
            tg.start_soon(hold, i)
        await eventually(lambda: len(held) == 6, what="six held")
        assert mirror.prefix is not None and mirror.watching() is None
        assert all(term.is_valid for term in held)
        # A candidate from outside queues in e0 and a leader key is deleted in e1:
        # both reach the mirror through the prefix's watch.
        queued = f"{etcd_prefix}/e0/beef".encode()
        await raw.txn([], [raw.op_put(queued, b"them")])
        await eventually(lambda: queued in mirror.views["e0"].kvs, what="queued seen")
        await raw.txn([], [raw.op_delete(held[1].key)])
        await eventually(lambda: not held[1].is_valid, what="term ended")
        stop.set()


async def test_a_write_between_the_read_and_its_apply_is_kept(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str, monkeypatch: Any
) -> None:
    """Loading watches first, reads second: a key written after the read (but before the
    view applied it) arrives through the watch and is applied after the read, not lost."""
    elector = await make_elector()
    mirror = core_of(elector).mirror
    late = f"{etcd_prefix}/job/late".encode()
    arrived = anyio.Event()
    apply = mirror.apply_batch

    def watching(batch: WatchBatch) -> None:
        apply(batch)
        if any(kv.key == late for _, kv in batch.events):
            arrived.set()

    monkeypatch.setattr(mirror, "apply_batch", watching)
    read_views = mirror._read_views

    async def reading(views: Any) -> Any:
        out = await read_views(views)
        await raw.txn([], [raw.op_put(late, b"late")])  # after the read: only the watch has it
        await arrived.wait()  # kept by the watch until the read is applied
        return out

    monkeypatch.setattr(mirror, "_read_views", reading)
    async with elector.observe("job") as leaders:
        async for info in leaders:
            assert info is not None and info.key == late
            break
    assert arrived.is_set()


async def test_a_load_whose_read_fails_is_tried_again(
    make_elector: ElectorFactory, monkeypatch: Any
) -> None:
    """The read of a load fails (after its watch was created): the watch is dropped, the
    load is tried again after a back-off, and the campaign wins on one watch."""
    elector = await make_elector()
    conn = core_of(elector).conn
    original = conn.txn
    failed: list[int] = []

    async def txn(compare: Any, success: Any, *args: Any, **kw: Any) -> Any:
        if not compare and not failed and success and success[0].HasField("request_range"):
            failed.append(1)
            raise aioelect.EtcdUnavailable(conn.endpoint_names, "injected")
        return await original(compare, success, *args, **kw)

    monkeypatch.setattr(conn, "txn", txn)
    with anyio.fail_after(10):
        async with elector.hold("job", "a") as term:
            assert failed == [1]
            assert term.is_valid
            assert core_of(elector).mirror.watching() == ["job"]
