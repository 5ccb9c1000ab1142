"""Candidate processes paused (SIGSTOP, a GC pause) and killed (SIGKILL), against real etcd.

Every candidate is an OS process running ``candidate.py``; what etcd recorded
(the history of the election keys and of every fenced write) is the evidence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import anyio.to_thread
import pytest
from _support import (
    CandidateProc,
    Event,
    History,
    Procs,
    analyse,
    check_intervals,
    check_logs_against_history,
    fmt_times,
    leading_periods,
    report,
)
from helpers import eventually, keys_under

from aioelect._connection import Connection
from aioelect.testing import EtcdServer

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos]


async def _queued(raw: Connection, prefix: str, name: str, n: int) -> None:
    async def check() -> bool:
        return len(await keys_under(raw, f"{prefix}/{name}/")) >= n

    await eventually(check, what=f"{n} candidates in {name}")


async def _first_elected(
    pool: Sequence[CandidateProc], after: float, timeout: float
) -> tuple[CandidateProc, Event]:
    """The first process of ``pool`` to report a term that started after ``after``."""

    def first() -> tuple[CandidateProc, Event] | None:
        for p in pool:
            found = p.find("elected", t=lambda t: t > after)
            if found:
                return p, found[0]
        return None

    return await eventually(first, timeout, "a new term", interval=0.005)


def _verify(procs: Procs, history: History, lines: list[str]) -> None:
    """The invariant, from etcd's history and from what the processes reported."""
    analysis = analyse(history)
    assert not analysis.violations, analysis.violations
    events = procs.events()
    assert not check_logs_against_history(events, analysis)
    kill_times = {i: p.killed_at for i, p in enumerate(procs.all) if p.killed_at is not None}
    periods, _ = leading_periods(events, kill_times)
    assert not check_intervals(periods)
    assert not [e for e in events if e["event"] in ("run_failed", "garbage")]
    lines.append(f"etcd history: {analysis.summary()}")


async def test_paused_leader_wakes_invalid_and_its_writes_never_land_late(
    procs: Procs, etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """A leader SIGSTOPped past its TTL is succeeded; woken, its term is invalid, its body is
    cancelled, its fenced writes are refused, and none of them landed after the successor began."""
    ttl = 2
    with report("SIGSTOP of the leader (ttl=2)") as lines:
        async with History(raw, etcd_prefix) as history:
            spawn = dict(endpoints=etcd.endpoints, prefix=etcd_prefix, elections=["job"], ttl=ttl)
            a = procs.spawn(ident="a", interval=0.01, **spawn)
            won = await a.wait("elected", election="job")
            token = won["token"]
            b = procs.spawn(ident="b", **spawn)
            await _queued(raw, etcd_prefix, "job", 2)
            await a.wait("write", token=token)
            a.pause()
            paused = time.monotonic()
            successor = await b.wait("elected", timeout=ttl + 10)
            a.resume()
            resumed = time.monotonic()
            down = await a.wait("stepped_down", token=token)
            probe = await a.wait("probe", token=token)
            woke = await a.wait("woke")
            body = [
                e
                for e in a.find("body_cancelled", token=token)
                + a.find("fence_rejected", token=token)
                # After the pause began: the woken child may record before the test
                # process has even read its clock after SIGCONT.
                if e["t"] >= paused
            ]
            ended = (await a.wait("ended", token=token))["t"]
            # The woken process re-campaigns on a new session, behind b.
            await _queued(raw, etcd_prefix, "job", 2)
            a.send("stats")
            stats = await a.wait("stats")
            await anyio.to_thread.run_sync(b.exit)
            await anyio.to_thread.run_sync(a.exit)
        # The successor was elected only after the pause began, and after a's term ended.
        assert paused < ended < successor["t"], (paused, ended, successor["t"])
        # The woken process reports: invalid term, body cancelled (or its next write refused
        # locally), and a guarded write after waking refused by the term and by etcd.
        assert woke["gap"] >= resumed - paused - 0.5
        assert all(not t["is_valid"] for t in woke["terms"]), woke
        assert body and all(not e["is_valid"] for e in body), a.snapshot()[-20:]
        assert down["is_valid"] is False
        assert "renew" in down["reason"] or "lease" in down["reason"], down
        assert probe["post_txn"] == "NotLeader", probe
        assert probe["etcd_refused"] is True, probe
        assert stats["stats"]["sessions_lost"] >= 1
        assert stats["running"] == {"job": True}
        _verify(procs, history, lines)
        spans = analyse(history).terms["job"]
        assert [s.token for s in spans[:2]] == [token, successor["token"]]
        assert spans[0].writes, "the paused leader made fenced writes"
        assert max(spans[0].writes) < spans[1].begin
        lines.append(
            f"paused leader: {len(spans[0].writes)} writes, last at revision "
            f"{max(spans[0].writes)}; successor began at revision {spans[1].begin}"
        )
        lines.append(f"pause -> leader's term ended (its renew deadline): {ended - paused:.3f} s")
        lines.append(f"pause -> successor elected: {successor['t'] - paused:.3f} s")
        lines.append(f"pause length: {resumed - paused:.3f} s; woke after {woke['gap']:.3f} s gap")
        lines.append(
            f"resume -> body ended: {min(e['t'] for e in body) - resumed:.3f} s; "
            f"-> on_stepped_down: {down['t'] - resumed:.3f} s"
        )


async def test_killed_leader_is_succeeded_within_ttl(
    procs: Procs, etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """A leader killed with SIGKILL is succeeded within TTL + 1 s (ttl=1; 3 trials)."""
    ttl = 1
    trials = 3
    times: list[float] = []
    spawn = dict(endpoints=etcd.endpoints, prefix=etcd_prefix, elections=["job"], ttl=ttl)
    with report("SIGKILL of the leader (ttl=1)") as lines:
        async with History(raw, etcd_prefix) as history:
            pool = [procs.spawn(ident=f"c{i}", **spawn) for i in range(3)]
            for p in pool:
                await p.wait("ready")
            await _queued(raw, etcd_prefix, "job", 3)
            serial = 3
            for _ in range(trials):
                head = (await keys_under(raw, f"{etcd_prefix}/job/"))[0]
                victim = next(p for p in pool if p.ident == head.value.decode())
                await victim.wait("elected", token=head.create_revision)
                killed = victim.kill()
                pool.remove(victim)
                _successor, won = await _first_elected(pool, killed, timeout=ttl + 10)
                took = won["t"] - killed
                times.append(took)
                assert took <= ttl + 1.0, f"successor elected {took:.3f} s after the kill"
                pool.append(procs.spawn(ident=f"c{serial}", **spawn))
                serial += 1
                await _queued(raw, etcd_prefix, "job", 3)
            for p in pool:
                await anyio.to_thread.run_sync(p.exit)
        lines.append(f"kill -> successor elected: {fmt_times(times)} (bound {ttl + 1.0:g} s)")
        _verify(procs, history, lines)
