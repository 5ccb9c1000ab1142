"""Soak: 5 candidate processes x 20 elections under random resigns, stops, kills, pauses,
partitions and connection resets.

The default run does a short soak (``AIOELECT_SOAK_SHORT_SECONDS``, 25 s of chaos);
``pytest tests/chaos -m slow`` runs the long one (``AIOELECT_SOAK_SECONDS``, 180 s).
``AIOELECT_SOAK_SEED`` replays a run (the seed is printed).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import pytest
from _support import (
    CandidateProc,
    History,
    Procs,
    analyse,
    check_intervals,
    check_logs_against_history,
    explain_overlaps,
    fmt_times,
    leading_periods,
    report,
    unmatched_elections,
)

from aioelect._connection import Connection
from aioelect.testing import EtcdServer, FaultProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos]

SHORT = float(os.environ.get("AIOELECT_SOAK_SHORT_SECONDS", "25"))
LONG = float(os.environ.get("AIOELECT_SOAK_SECONDS", "180"))
PROCESSES = 5
ELECTIONS = [f"e{i:02d}" for i in range(20)]
TTL = 2
MAX_FAULTED = 2  # processes paused or partitioned at once
ACTIONS = {"resign": 30, "stop": 15, "kill": 5, "pause": 12, "partition": 12, "reset": 5}


@dataclass
class Slot:
    """One process position: its own fault proxy and the current process behind it."""

    index: int
    proxy: FaultProxy
    proc: CandidateProc
    generation: int = 0
    fault: str | None = None
    fault_until: float = 0.0
    # election -> (when to start it again, run_returned events needed first)
    restarts: dict[str, tuple[float, int]] = field(default_factory=dict)

    def leading(self) -> list[str]:
        """Elections this slot's process leads, as far as its events tell."""
        ended = {(e["election"], e["token"]) for e in self.proc.find("ended")}
        return [
            e["election"]
            for e in self.proc.find("elected")
            if (e["election"], e["token"]) not in ended
        ]


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(SHORT, id="short", marks=pytest.mark.timeout(SHORT + 150)),
        pytest.param(LONG, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(LONG + 300)]),
    ],
)
async def test_soak(
    seconds: float, procs: Procs, etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """Under random faults every election keeps at most one leader (etcd's history: every
    fenced write landed in its own term), and every term that ended called on_stepped_down."""
    seed = int(os.environ.get("AIOELECT_SOAK_SEED", str(time.time_ns() % 1_000_000)))
    rng = random.Random(seed)
    host, _, port = etcd.endpoints[0].rpartition(":")
    proxies: list[FaultProxy] = []
    done: Counter[str] = Counter()
    timeline: list[dict[str, object]] = []  # every chaos action, for post-mortems
    kills: list[tuple[CandidateProc, list[str], float]] = []

    def spawn(slot_index: int, proxy: FaultProxy, generation: int) -> CandidateProc:
        return procs.spawn(
            ident=f"p{slot_index}g{generation}",
            endpoints=[proxy.endpoint],
            prefix=etcd_prefix,
            elections=ELECTIONS,
            ttl=TTL,
            interval=0.3,
        )

    with report(f"soak {seconds:g} s, seed {seed}") as lines:
        try:
            for _ in range(PROCESSES):
                proxy = FaultProxy(host, int(port))
                proxy.start()
                proxies.append(proxy)
            async with History(raw, etcd_prefix) as history:
                slots = [Slot(i, p, spawn(i, p, 0)) for i, p in enumerate(proxies)]
                for s in slots:
                    await s.proc.wait("ready", timeout=30)
                start = time.monotonic()
                deadline = start + seconds
                while time.monotonic() < deadline:
                    await anyio.sleep(rng.uniform(0.1, 0.4))  # pacing of the chaos
                    done["rounds"] += 1
                    now = time.monotonic()
                    for s in slots:
                        _due(s, now, done, timeline)
                    action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
                    healthy = [s for s in slots if s.fault is None]
                    faulted = len(slots) - len(healthy)
                    if not healthy:
                        continue
                    s = rng.choice(healthy)
                    leaders = [(h, name) for h in healthy for name in h.leading()]
                    if action in ("resign", "kill") and leaders and rng.random() < 0.7:
                        s, name = rng.choice(leaders)  # aim at a leader
                    ident = s.proc.ident  # (a kill replaces s.proc)
                    if action == "resign":
                        leading = s.leading()
                        if leading:
                            s.proc.send(f"resign {rng.choice(leading)}")
                            done[action] += 1
                            timeline.append({"t": now, "action": action, "id": ident})
                    elif action == "stop":
                        running = [e for e in ELECTIONS if e not in s.restarts]
                        if running:
                            name = rng.choice(running)
                            needed = len(s.proc.find("run_returned", election=name)) + 1
                            s.restarts[name] = (now + rng.uniform(0.3, 3.0), needed)
                            s.proc.send(f"stop {name}")
                            done[action] += 1
                            timeline.append({"t": now, "action": action, "id": ident})
                    elif action == "kill":
                        kills.append((s.proc, s.leading(), s.proc.kill()))
                        s.generation += 1
                        s.restarts.clear()
                        s.proc = spawn(s.index, s.proxy, s.generation)
                        done[action] += 1
                        timeline.append({"t": now, "action": action, "id": ident})
                    elif action in ("pause", "partition") and faulted < MAX_FAULTED:
                        s.fault = action
                        s.fault_until = now + rng.uniform(0.3, 2.5 * TTL)
                        if action == "pause":
                            s.proc.pause()
                        else:
                            s.proxy.blackhole()
                        done[action] += 1
                        timeline.append({"t": now, "action": action, "id": ident})
                    elif action == "reset":
                        s.proxy.reset()
                        done[action] += 1
                        timeline.append({"t": now, "action": action, "id": ident})
                # Wind down: end every fault, restart every stopped Leadership.
                for s in slots:
                    _due(s, float("inf"), done, timeline)
                with anyio.move_on_after(30):
                    while any(s.restarts for s in slots):
                        for s in slots:
                            _due(s, float("inf"), done, timeline)
                        await anyio.sleep(0.05)
                failed = [e for e in procs.events() if e["event"] == "run_failed"]
                for e in failed[:2]:
                    print(e["id"], e["election"], e["error"], e.get("tb"), sep="\n")
                assert not failed, [(e["id"], e["election"], e["error"]) for e in failed[:5]]
                pending = {s.proc.ident: sorted(s.restarts) for s in slots if s.restarts}
                assert not pending, f"Leadership.stop() still not done after 30 s: {pending}"
                for s in slots:
                    s.proc.send("stats")
                for s in slots:
                    stats = await s.proc.wait("stats", timeout=20)
                    assert all(stats["running"].values()), (s.proc.ident, stats["running"])
                    assert len(stats["running"]) == len(ELECTIONS)
                    assert not stats["failures"], stats["failures"]
                async with anyio.create_task_group() as tg:
                    for s in slots:
                        tg.start_soon(anyio.to_thread.run_sync, s.proc.exit)
                for s in slots:
                    assert s.proc.proc.returncode == 0, (s.proc.ident, s.proc.stderr_tail())
        finally:
            for proxy in proxies:
                proxy.close()
            (procs.log_dir / "actions.jsonl").write_text(
                "".join(json.dumps(a) + "\n" for a in timeline)
            )
        events = procs.events()
        killed = {i for i, p in enumerate(procs.all) if p.killed_at is not None}
        kill_times = {i: t for i, p in enumerate(procs.all) if (t := p.last_alive()) is not None}
        analysis = analyse(history)
        lines.append(f"actions: {dict(done)}; processes started: {len(procs.all)}")
        lines.append(f"etcd history: {analysis.summary()}")
        failovers = _failover_times(procs, kills)
        lines.append(f"kill of a leader -> successor elected: {fmt_times(failovers)}")
        assert not analysis.violations, analysis.violations[:20]
        assert not check_logs_against_history(events, analysis)
        assert not unmatched_elections(events, killed)
        periods, open_terms = leading_periods(events, kill_times)
        assert not open_terms, open_terms[:20]
        overlaps = check_intervals(periods)
        if overlaps:
            print(explain_overlaps(overlaps, events, timeline, history))
        assert not overlaps
        failed = [e for e in events if e["event"] in ("run_failed", "garbage")]
        assert not failed, [(e.get("id"), e.get("error"), e.get("tb")) for e in failed][:3]
        assert all(analysis.terms.get(name) for name in ELECTIONS)
        elected = [e for e in events if e["event"] == "elected"]
        lines.append(
            f"terms won: {len(elected)}; stepped down: "
            f"{len([e for e in events if e['event'] == 'stepped_down'])}; "
            f"woke after a pause: {len([e for e in events if e['event'] == 'woke'])}"
        )


def _due(slot: Slot, now: float, done: Counter[str], timeline: list[dict[str, object]]) -> None:
    """Run what is due for ``slot``: end its fault, start stopped Leaderships again."""
    if slot.fault is not None and now >= slot.fault_until:
        ended = {"t": time.monotonic(), "action": f"end {slot.fault}", "id": slot.proc.ident}
        timeline.append(ended)
        if slot.fault == "pause":
            slot.proc.resume()
        else:
            slot.proxy.heal()
        slot.fault = None
    for name, (due, needed) in list(slot.restarts.items()):
        if now >= due and len(slot.proc.find("run_returned", election=name)) >= needed:
            slot.proc.send(f"start {name}")
            del slot.restarts[name]
            done["start"] += 1


def _failover_times(
    procs: Procs, kills: list[tuple[CandidateProc, list[str], float]]
) -> list[float]:
    """For each election a killed process led: how long until another process was elected."""
    out: list[float] = []
    for victim, elections, killed in kills:
        for name in elections:
            later = [
                e["t"]
                for p in procs.all
                if p is not victim
                for e in p.find("elected", election=name)
                if e["t"] > killed
            ]
            if later:
                out.append(min(later) - killed)
    return out
