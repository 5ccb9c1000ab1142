"""Faults against a real etcd: restarts shorter and longer than the TTL, compaction."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import anyio
import pytest
from helpers import ElectorFactory, eventually

import aioelect
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect._embedded import EtcdProcess
from aioelect.testing import FaultProxy

pytestmark = pytest.mark.asyncio


def _stats_reach(elector: aioelect.Elector, keepalives: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return elector.statistics().keepalives >= keepalives

    return check


async def test_term_survives_restart_shorter_than_renew_deadline(
    etcd_process: EtcdProcess,
) -> None:
    """etcd killed and restarted quickly: the lease survives, and so does the term."""
    async with aioelect.Elector(endpoints=etcd_process.endpoint, prefix="/r", ttl=4) as a:
        async with a.hold("job", "a") as term:
            before = a.statistics().keepalives
            etcd_process.kill()
            await anyio.to_thread.run_sync(etcd_process.restart)
            await eventually(_stats_reach(a, before + 1), what="a renewal after the restart")
            assert term.is_valid
            assert a.statistics().sessions_lost == 0
            leader = await a.leader("job")
            assert leader is not None
            assert leader.token == term.token


async def test_outage_longer_than_ttl(etcd_process: EtcdProcess) -> None:
    """etcd down past the TTL: the leader steps down before its lease can expire, and after
    etcd returns a waiting candidate is elected without any user action."""
    ep = etcd_process.endpoint
    async with (
        aioelect.Elector(endpoints=ep, prefix="/r", ttl=2) as a,
        aioelect.Elector(endpoints=ep, prefix="/r", ttl=2) as b,
    ):
        b_won = anyio.Event()
        lost_at: list[float] = []

        async def follower() -> None:
            async with b.hold("job", "b") as term_b:
                assert term_b.is_valid
                b_won.set()
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            with pytest.raises(aioelect.LeadershipLost) as info:
                async with a.hold("job", "a") as term:
                    tg.start_soon(follower)
                    await eventually(lambda: _queued(a), what="b queued")
                    etcd_process.kill()
                    hard_deadline = core_of(a).session.hard_deadline if core_of(a).session else 0.0
                    killed_at = time.monotonic()
                    try:
                        await anyio.sleep_forever()
                    finally:
                        lost_at.append(time.monotonic())
            assert "renew" in info.value.reason or "session lost" in info.value.reason
            assert not term.is_valid
            # The guarantee: stepped down before etcd could have expired the lease.
            assert lost_at[0] < hard_deadline
            # Keep etcd down for longer than the TTL, then bring it back.
            await anyio.sleep(max(0.0, killed_at + a.ttl + 0.5 - time.monotonic()))
            await anyio.to_thread.run_sync(etcd_process.restart)
            with anyio.fail_after(a.ttl * 3 + 5):
                await b_won.wait()
            # a can campaign again on its new session once b is gone.
            tg.cancel_scope.cancel()
        async with a.hold("job", "a-again") as again:
            assert again.is_valid
            assert a.statistics().sessions_lost >= 1


async def _queued(elector: aioelect.Elector) -> bool:
    return len(await elector.candidates("job")) == 2


async def _compact_now(raw: Connection) -> int:
    rev = (await raw.txn([], [raw.op_put(b"/aioelect-test-compact", b"x")])).header.revision
    await raw.compact(int(rev))
    return int(rev)


async def test_compaction_while_waiting(
    make_elector: ElectorFactory, fault_proxy: FaultProxy, raw: Connection
) -> None:
    """A waiter cut off while its predecessor resigns and history is compacted still wins."""
    a = await make_elector(ttl=5)
    b = await make_elector(ttl=5, endpoints=[fault_proxy.endpoint])
    b_won = anyio.Event()

    async def follower() -> None:
        async with b.hold("job", "b"):
            b_won.set()

    async with anyio.create_task_group() as tg:
        async with a.hold("job", "a"):
            tg.start_soon(follower)
            await eventually(lambda: _queued(a), what="b queued")
            fault_proxy.blackhole()
            fault_proxy.reset()
        await _compact_now(raw)
        fault_proxy.heal()
        with anyio.fail_after(10):
            await b_won.wait()
    assert core_of(b).mirror.resyncs >= 1


async def test_a_watch_that_broke_resyncs_instead_of_resuming(
    make_elector: ElectorFactory,
    fault_proxy: FaultProxy,
    raw: Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leader's key deleted while its watch was down: the elector resyncs (a range read)
    before it watches again, so the term ends even if the resumed watch lost the delete
    (etcd #18089: a watch catching up across a compaction could; here every watch opened
    after the break drops every delete)."""
    a = await make_elector(ttl=10, endpoints=[fault_proxy.endpoint])
    original = core_of(a).conn.watch_stream

    def lossy(*args: Any, **kwargs: Any) -> Any:
        stream = original(*args, **kwargs)
        read = stream.read

        async def read_without_deletes() -> Any:
            batch = await read()
            return dataclasses.replace(batch, events=[(p, kv) for p, kv in batch.events if p])

        stream.read = read_without_deletes  # type: ignore[method-assign]
        return stream

    with pytest.raises(aioelect.LeadershipLost):
        async with a.hold("job", "a") as term:
            resyncs = core_of(a).mirror.resyncs
            monkeypatch.setattr(core_of(a).conn, "watch_stream", lossy)
            fault_proxy.blackhole()
            fault_proxy.reset()
            await raw.txn([], [raw.op_delete(term.key)])
            fault_proxy.heal()
            with anyio.fail_after(6):  # well before the renew deadline (6.7 s) ends it
                await term.wait_lost()
    assert term.end_reason == "leader key deleted"
    assert core_of(a).mirror.resyncs > resyncs


async def test_compaction_while_observing(
    make_elector: ElectorFactory, fault_proxy: FaultProxy, raw: Connection
) -> None:
    """An observer cut off while the leader changes and history is compacted sees the new one."""
    a = await make_elector(ttl=5)
    c = await make_elector(ttl=5)
    b = await make_elector(ttl=5, endpoints=[fault_proxy.endpoint])
    async with b.observe("job") as leaders:
        it = aiter(leaders)
        assert await anext(it) is None
        async with a.hold("job", "a"):
            first = await anext(it)
            assert first is not None
            assert first.value == b"a"
            fault_proxy.blackhole()
            fault_proxy.reset()
        async with c.hold("job", "c") as term_c:
            await _compact_now(raw)
            fault_proxy.heal()
            with anyio.fail_after(10):
                nxt = await anext(it)
            assert nxt is not None
            assert (nxt.value, nxt.token) == (b"c", term_c.token)
    assert core_of(b).mirror.resyncs >= 1


async def test_observe_survives_etcd_restart(etcd_process: EtcdProcess) -> None:
    """An observer keeps reporting leader changes after etcd was killed and restarted."""
    ep = etcd_process.endpoint
    async with (
        aioelect.Elector(endpoints=ep, prefix="/o", ttl=3) as watcher,
        aioelect.Elector(endpoints=ep, prefix="/o", ttl=3) as a,
    ):
        async with watcher.observe("job") as leaders:
            it = aiter(leaders)
            assert await anext(it) is None
            etcd_process.kill()
            await anyio.to_thread.run_sync(etcd_process.restart)
            async with a.hold("job", "after-restart") as term:
                with anyio.fail_after(15):
                    info = await anext(it)
                assert info is not None
                assert (info.value, info.token) == (b"after-restart", term.token)
            with anyio.fail_after(15):
                assert await anext(it) is None
