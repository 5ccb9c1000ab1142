"""etcd itself failing: one member of a cluster, the whole server, and compaction/defrag."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from _support import (
    Event,
    EventLog,
    History,
    Member,
    analyse,
    check_intervals,
    check_logs_against_history,
    defragment,
    fmt_times,
    leading_periods,
    raft_leader,
    report,
)
from helpers import ElectorFactory, eventually, keys_under

import aioelect
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect._embedded import EtcdProcess
from aioelect.testing import EtcdCluster, FaultProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos]


@asynccontextmanager
async def connection(endpoints: list[str]) -> AsyncIterator[Connection]:
    conn = Connection.create(endpoints, timeout=5)
    await conn.connect()
    try:
        yield conn
    finally:
        await conn.close()


def _verify(log: EventLog, history: History, members: list[Member], lines: list[str]) -> None:
    analysis = analyse(history)
    assert not analysis.violations, analysis.violations
    assert not check_logs_against_history(log.events, analysis)
    periods, open_terms = leading_periods(log.events)
    assert not open_terms
    assert not check_intervals(periods)
    for m in members:
        assert not m.failures, m.failures
    lines.append(f"etcd history: {analysis.summary()}")


def _leader_event(log: EventLog, name: str) -> Event:
    """The 'elected' event of the latest term of ``name``."""
    return max(log.find("elected", election=name), key=lambda e: e["token"])


async def test_whole_etcd_down_longer_than_ttl(etcd_process: EtcdProcess) -> None:
    """etcd down past the TTL: leaders step down by their deadline; once etcd is back a leader
    is elected again within TTL + back-off, with no user action and no task lost."""
    ttl = 2
    prefix = "/chaos-outage"
    names = ["job", "cron"]
    log = EventLog()
    with report("whole etcd down for TTL + 1 s (ttl=2)") as lines:
        async with AsyncExitStack() as stack:
            conn = await stack.enter_async_context(connection([etcd_process.endpoint]))
            electors = [
                await stack.enter_async_context(
                    aioelect.Elector(endpoints=etcd_process.endpoint, prefix=prefix, ttl=ttl)
                )
                for _ in range(2)
            ]
            members = [
                Member(e, ident=f"m{i}", emit=log, interval=0.05) for i, e in enumerate(electors)
            ]
            async with History(conn, prefix) as history:
                async with anyio.create_task_group() as tg:
                    for m in members:
                        for name in names:
                            m.start(tg, name)
                    for name in names:
                        await eventually(
                            lambda name=name: _count(conn, f"{prefix}/{name}/", 2),
                            what=f"two candidates in {name}",
                        )
                    leaders = {name: await log.wait("elected", election=name) for name in names}
                    sessions = {m.ident: core_of(m.elector).session for m in members}
                    etcd_process.kill()
                    killed = time.monotonic()
                    for name, won in leaders.items():
                        ended = await log.wait("ended", election=name, token=won["token"])
                        session = sessions[won["id"]]
                        assert session is not None
                        # Stepped down (noticed by the library, not only by the clock) before
                        # etcd could have expired the lease.
                        assert ended["noticed"] < session.hard_deadline
                        lines.append(
                            f"{name}: leader's term ended {ended['noticed'] - killed:.3f} s after "
                            f"the kill, {session.hard_deadline - ended['noticed']:.3f} s before "
                            "its lease's hard deadline"
                        )
                    await anyio.sleep(max(0.0, killed + ttl + 1.0 - time.monotonic()))
                    await anyio.to_thread.run_sync(etcd_process.restart)
                    back = time.monotonic()
                    lines.append(f"etcd down for {back - killed:.3f} s")
                    for name in names:
                        again = await log.wait(
                            "elected", election=name, t=lambda t: t > back, timeout=ttl + 15
                        )
                        took = again["t"] - back
                        lines.append(f"{name}: leader elected {took:.3f} s after etcd was back")
                        # TTL + the longest back-off of the session re-grant and the
                        # campaign retries (each capped at min(2 s, TTL / 2)) + 1 s of slack.
                        assert took <= ttl + min(2.0, ttl / 2) + 1.0
                    # No task died silently: every run() still runs, sessions were replaced.
                    for m in members:
                        assert all(m.running.values()), m.running
                        assert not m.failures, m.failures
                        await eventually(
                            lambda m=m: _new_session(m.elector), timeout=ttl + 5, what="a session"
                        )
                        stats = m.elector.statistics()
                        old = sessions[m.ident]
                        assert old is not None
                        assert stats.sessions_lost >= 1
                        assert stats.lease_id != old.lease_id
                        lines.append(
                            f"{m.ident}: new session within {time.monotonic() - back:.3f} s of "
                            f"etcd's return; {stats}"
                        )
                    for m in members:
                        m.closing = True
                    for m in members:
                        await m.stop_all()
                    tg.cancel_scope.cancel()
            _verify(log, history, members, lines)


async def _new_session(elector: aioelect.Elector) -> bool:
    stats = elector.statistics()
    return stats.sessions_granted >= 2 and stats.lease_id is not None


async def _count(conn: Connection, prefix: str, n: int) -> bool:
    return len(await keys_under(conn, prefix)) >= n


async def test_cluster_member_faults(etcd_cluster: EtcdCluster) -> None:
    """In a 3-member cluster a paused member, a killed raft leader and a restarted member change
    nothing: terms last, new terms are won, fenced writes keep landing, one leader at a time."""
    eps = etcd_cluster.endpoints
    prefix = "/chaos-cluster"
    names = ["job", "cron"]
    log = EventLog()
    # gRPC notices a hung member after up to 8 s (5 s ping + 3 s timeout): renewals every
    # second and a 12 s renew deadline let a term outlive that.
    kw: dict[str, Any] = dict(
        endpoints=eps, prefix=prefix, ttl=15, renew_deadline=12, keepalive_interval=1
    )
    with report("3-member cluster: pause, kill raft leader, restart (ttl=15)") as lines:
        async with AsyncExitStack() as stack:
            conn = await stack.enter_async_context(connection(eps))
            electors = [await stack.enter_async_context(aioelect.Elector(**kw)) for _ in range(3)]
            members = [
                Member(e, ident=f"m{i}", emit=log, interval=0.05) for i, e in enumerate(electors)
            ]
            by_id = {m.ident: m for m in members}
            async with History(conn, prefix) as history:
                async with anyio.create_task_group() as tg:
                    for m in members:
                        for name in names:
                            m.start(tg, name)
                    for name in names:
                        await log.wait("elected", election=name)

                    async def progress(phase: str) -> None:
                        """Fenced writes keep landing in every election, and a new term is won."""
                        start = time.monotonic()
                        for name in names:
                            n = len(log.find("write", election=name)) + 5
                            await eventually(
                                lambda name=name, n=n: len(log.find("write", election=name)) >= n,
                                timeout=20,
                                what=f"writes in {name}",
                            )
                        writes_at = time.monotonic() - start
                        cur = _leader_event(log, "job")
                        await by_id[cur["id"]].resign("job")
                        new = await log.wait(
                            "elected", election="job", token=lambda t: t > cur["token"], timeout=20
                        )
                        lines.append(
                            f"{phase}: writes resumed within {writes_at:.3f} s; "
                            f"new term {new['token']} won {new['t'] - start:.3f} s after"
                        )

                    def involuntary() -> list[Event]:
                        return [e for e in log.find("ended") if e["reason"] != "resigned"]

                    await progress("healthy")
                    # Pause the member every client talks to (pick_first: the first endpoint).
                    etcd_cluster.members[0].pause()
                    await progress("m0 paused (SIGSTOP)")
                    etcd_cluster.members[0].resume()
                    leader_ep = await raft_leader(eps)
                    assert leader_ep is not None
                    victim = etcd_cluster.member(leader_ep)
                    victim.kill()
                    await progress(f"raft leader {victim.name} killed")
                    await anyio.to_thread.run_sync(victim.restart)
                    await progress(f"{victim.name} restarted")
                    other = next(m for m in etcd_cluster.members if m is not victim)
                    await anyio.to_thread.run_sync(other.restart)
                    await progress(f"{other.name} restarted (graceful)")
                    lost = involuntary()
                    lines.append(f"terms that ended involuntarily: {len(lost)} {lost}")
                    assert not lost
                    for m in members:
                        assert all(m.running.values()) and not m.failures
                        m.closing = True
                    for m in members:
                        await m.stop_all()
                    tg.cancel_scope.cancel()
            _verify(log, history, members, lines)


async def _compact_now(raw: Connection) -> int:
    rev = (await raw.txn([], [raw.op_put(b"/aioelect-chaos-compact", b"x")])).header.revision
    await raw.compact(int(rev))
    return int(rev)


async def test_history_watch_exists_once_entered(
    fault_proxy: FaultProxy, raw: Connection, etcd_prefix: str
) -> None:
    """History returns from __aenter__ only once etcd has created its watch: a compaction
    right after entry (as the compaction test does) loses no change. Its requests go
    through a slow link here, so a watch still on its way would start compacted."""
    slow = Connection.create(fault_proxy.endpoint, timeout=10)
    await slow.connect()
    try:
        fault_proxy.delay(0.2)
        key = f"{etcd_prefix}/job/a".encode()
        async with History(slow, etcd_prefix) as history:
            await raw.txn([], [raw.op_put(key, b"x")])
            await _compact_now(raw)  # compacts the revision the watch starts from
        assert [(c.is_put, c.kv.key) for c in history.changes][:1] == [(True, key)]
    finally:
        fault_proxy.heal()
        await slow.close()


async def test_compaction_and_defragmentation_during_elections(
    fault_proxy: FaultProxy, make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """Compacting and defragmenting etcd while candidates wait and observers watch (some of
    them reconnecting across each compaction) loses nothing: every change reaches every
    observer and every waiting candidate gets its turn."""
    log = EventLog()
    rounds = 8
    direct = [await make_elector(ttl=5) for _ in range(3)]
    behind = await make_elector(ttl=5, endpoints=[fault_proxy.endpoint])
    members = [Member(e, ident=f"d{i}", emit=log, interval=0.05) for i, e in enumerate(direct)]
    members.append(Member(behind, ident="p", emit=log, interval=0.05))
    by_id = {m.ident: m for m in members}
    seen: dict[str, list[int | None]] = {"direct": [], "behind the proxy": []}
    elapsed: list[float] = []

    async def observe(elector: aioelect.Elector, into: list[int | None]) -> None:
        async with elector.observe("job") as leaders:
            async for info in leaders:
                into.append(info.token if info is not None else None)

    with report(f"compaction + defragmentation, {rounds} rounds") as lines:
        async with History(raw, etcd_prefix) as history:
            async with anyio.create_task_group() as tg:
                tg.start_soon(observe, direct[1], seen["direct"])
                tg.start_soon(observe, behind, seen["behind the proxy"])
                for i, m in enumerate(members):
                    m.start(tg, "job")
                    await eventually(
                        lambda i=i: _count(raw, f"{etcd_prefix}/job/", i + 1),
                        what="queued",
                    )
                for _ in range(rounds):
                    cur = _leader_event(log, "job")
                    start = time.monotonic()
                    await by_id[cur["id"]].resign("job")
                    new = await log.wait(
                        "elected", election="job", token=lambda t, c=cur["token"]: t > c
                    )
                    fault_proxy.reset()  # the proxied elector's watch restarts from its revision
                    await _compact_now(raw)
                    await defragment(raw)
                    await eventually(
                        lambda new=new: all(new["token"] in s for s in seen.values()),
                        timeout=15,
                        what="every observer saw the new leader",
                    )
                    elapsed.append(time.monotonic() - start)
                # (Stopping everyone makes keys lead briefly that never confirm a term.)
                observed = {where: [t for t in s if t is not None] for where, s in seen.items()}
                tokens = [e["token"] for e in log.find("elected")]
                for m in members:
                    m.closing = True
                for m in members:
                    await m.stop_all()
                tg.cancel_scope.cancel()
        for where, got in observed.items():
            assert got == tokens, (where, got, tokens)
        assert log.find("elected", id="p"), "the candidate behind the proxy got its turn"
        assert core_of(behind).mirror.resyncs >= 1
        lines.append(
            f"observers saw all {len(tokens)} leaders in order; proxied elector resynced "
            f"{core_of(behind).mirror.resyncs} times after compaction"
        )
        lines.append(f"resign -> every observer saw the successor: {fmt_times(elapsed)}")
        _verify(log, history, members, lines)
