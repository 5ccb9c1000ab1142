"""Preferred leaders and health-gated candidacy with candidate processes, from etcd's history.

Every candidate is an OS process running ``candidate.py`` (a ``Leadership``
making fenced writes while it leads); etcd's history of the election keys and
of every fenced write is the evidence that there was one handover, no vacancy
beyond it and never two valid terms.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from _support import (
    History,
    Procs,
    analyse,
    check_intervals,
    check_logs_against_history,
    leading_periods,
    report,
)
from helpers import eventually, keys_under

from aioelect._connection import Connection
from aioelect.testing import EtcdServer

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos]


def _verify(procs: Procs, history: History, lines: list[str]) -> None:
    """The invariant, from etcd's history and from what the processes reported."""
    analysis = analyse(history)
    assert not analysis.violations, analysis.violations
    events = procs.events()
    assert not check_logs_against_history(events, analysis)
    periods, _ = leading_periods(events, {})
    assert not check_intervals(periods)
    assert not [e for e in events if e["event"] in ("run_failed", "garbage")]
    lines.append(f"etcd history: {analysis.summary()}")


async def _queued(raw: Connection, prefix: str, n: int) -> None:
    async def check() -> bool:
        return len(await keys_under(raw, f"{prefix}/job/")) == n

    await eventually(check, what=f"{n} candidates")


async def test_higher_priority_process_leads_after_min_term_through_one_handover(
    procs: Procs, etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """A joining candidate of higher priority is elected after the leader's minimum term,
    by one handover: the old term ends at the revision the new one begins."""
    min_term = 1.5
    spawn = dict(endpoints=etcd.endpoints, prefix=etcd_prefix, elections=["job"], ttl=2)
    with report("preemption by a higher priority (min_term=1.5, settle=0.2)") as lines:
        async with History(raw, etcd_prefix) as history:
            a = procs.spawn(
                ident="a", extra=["--min-term", str(min_term), "--settle", "0.2"], **spawn
            )
            won = await a.wait("elected", election="job")
            arrived = time.monotonic()
            b = procs.spawn(ident="b", extra=["--priority", "10"], **spawn)
            elected = await b.wait("elected", election="job", timeout=30)
            down = await a.wait("stepped_down", token=won["token"])
            await _queued(raw, etcd_prefix, 2)  # a campaigns again, behind b
            await anyio.to_thread.run_sync(b.exit)
            await anyio.to_thread.run_sync(a.exit)
        # The minimum term is a guarantee; the handover barrier orders the callbacks.
        assert down["t"] - won["t"] >= min_term
        assert down["t"] <= elected["t"]
        assert down["is_valid"] is True, down  # a graceful step-down, not a lost term
        _verify(procs, history, lines)
        spans = analyse(history).terms["job"]
        assert [s.token for s in spans[:2]] == [won["token"], elected["token"]]
        # One handover, no vacancy: a's key went in the revision b began to lead.
        assert spans[0].end == spans[1].begin
        lines.append(f"b's arrival -> b elected: {elected['t'] - arrived:.3f} s")
        lines.append(f"a's term lasted {down['t'] - won['t']:.3f} s (min_term {min_term})")


async def test_flapping_priority_does_not_flap_leadership(
    procs: Procs, etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """A candidate whose priority flips every 100 ms changes the leader at most once per
    minimum term (here: never, since it never outranks the leader for ``settle``)."""
    min_term = 1.0
    spawn = dict(endpoints=etcd.endpoints, prefix=etcd_prefix, elections=["job"], ttl=2)
    with report("a priority flapping every 100 ms (min_term=1, settle=0.5)") as lines:
        async with History(raw, etcd_prefix) as history:
            a = procs.spawn(
                ident="a",
                extra=["--priority", "5", "--min-term", str(min_term), "--settle", "0.5"],
                **spawn,
            )
            await a.wait("elected", election="job")
            b = procs.spawn(ident="b", extra=["--priority", "0"], **spawn)
            await _queued(raw, etcd_prefix, 2)
            started = time.monotonic()
            flips = 0
            while time.monotonic() - started < 4.0:
                flips += 1
                b.send(f"priority job {10 if flips % 2 else 0}")
                await anyio.sleep(0.1)  # the workload's pace, not an ordering
            elapsed = time.monotonic() - started
            await b.wait("priority", priority=0 if flips % 2 == 0 else 10)
            await anyio.to_thread.run_sync(b.exit)
            await anyio.to_thread.run_sync(a.exit)
        _verify(procs, history, lines)
        spans = analyse(history).terms["job"]
        changes = len(spans) - 1  # the first term is the initial election
        assert changes <= max(1.0, elapsed / min_term), [s.token for s in spans]
        assert len(b.find("elected")) == 0, "b never outranked a for the settling time"
        lines.append(f"{flips} priority flips over {elapsed:.1f} s: {changes} leader changes")


async def test_unhealthy_leader_hands_over_then_returns_after_successes(
    procs: Procs, etcd: EtcdServer, etcd_prefix: str, raw: Connection, tmp_path: Path
) -> None:
    """A leader whose health check fails twice resigns (its key goes in the revision the
    successor begins, its session lives on); it leads again only after 3 successes."""
    interval = 0.1
    sick = tmp_path / "a.sick"
    spawn = dict(endpoints=etcd.endpoints, prefix=etcd_prefix, elections=["job"], ttl=2)
    with report("a leader's health check fails (interval 0.1, N=2, M=3)") as lines:
        async with History(raw, etcd_prefix) as history:
            a = procs.spawn(
                ident="a",
                extra=["--health-file", str(sick), "--health-interval", str(interval)],
                **spawn,
            )
            won = await a.wait("elected", election="job")
            b = procs.spawn(ident="b", **spawn)
            await _queued(raw, etcd_prefix, 2)
            sick.touch()
            failed_at = time.monotonic()
            elected = await b.wait("elected", election="job", timeout=30)
            down = await a.wait("stepped_down", token=won["token"])
            await _queued(raw, etcd_prefix, 1)  # a withdrew while unhealthy
            sick.unlink()
            healed_at = time.monotonic()
            await _queued(raw, etcd_prefix, 2)  # a is back in line, behind b
            await anyio.to_thread.run_sync(b.exit)
            again = await a.wait("elected", election="job", t=lambda t: t > healed_at)
            await anyio.to_thread.run_sync(a.exit)
        assert down["t"] <= elected["t"]
        assert down["is_valid"] is True, down  # stepped down itself: no lost lease
        oks = [e for e in a.find("health", ok=True) if healed_at <= e["t"] <= again["t"]]
        assert len(oks) >= 3, oks  # only after M successes in a row
        _verify(procs, history, lines)
        spans = analyse(history).terms["job"]
        assert [s.token for s in spans[:2]] == [won["token"], elected["token"]]
        assert spans[0].end == spans[1].begin  # resigned, not expired: no vacancy
        lines.append(f"health failure -> successor elected: {elected['t'] - failed_at:.3f} s")
