"""Issue 17's benchmarks: what a process pays for elections it takes no part in.

Sections of ``bench/run.py`` (``--only noisy,entry,fanout,fleet``), each driving
``bench/_fleet_member.py`` processes that use aioelect's public API only, so
they run unchanged before and after a rewrite of its internals:

- ``noisy`` (goal 1): an idle Elector (holding one election, observing one
  more) while another process churns 1,000 elections under the same prefix,
  then under another prefix: its CPU (% of one core) in each case.
- ``entry`` (goal 2): entering an Elector and winning one election under a
  prefix holding 100,000 other keys vs an empty prefix (a fresh process per
  trial): time, and the process's RSS growth.
- ``fanout`` (goal 3): etcd's ``etcd_debugging_mvcc_events_total`` (events
  sent to watchers) per leader change, 20 processes under one prefix of which
  2 take part in the election.
- ``fleet`` (goal 5): a simulated fleet (P processes x E elections each, k
  candidates per election on k processes): start time, etcd's CPU and RSS, the
  fleet's CPU, and a probe election's handover p99 (between two more processes)
  with the fleet idle and churning; over growing P until the time budget runs
  out or the probe's p99 under churn is 5x the smallest fleet's (the report
  names the largest fleet up to which it stays within 2x).

Every child gets ``--parent`` (this pid) and arms ``PR_SET_PDEATHSIG``: it dies
with the bench even when the bench is SIGKILLed; each section also kills its
children and deletes its keys on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from _common import count_keys, proc_cpu_seconds, summary
from aetcd import rpc

from aioelect._keys import prefix_range_end

if TYPE_CHECKING:
    from run import Ctx

HERE = Path(__file__).resolve().parent
MEMBER = str(HERE / "_fleet_member.py")
PAGE = os.sysconf("SC_PAGE_SIZE")
T = TypeVar("T")

FULL: dict[str, Any] = {
    "noisy_n": 1000,
    "noisy_warmup": 3.0,
    "noisy_window": 10.0,
    "noisy_quiet_window": 5.0,
    "entry_keys": 100_000,
    "entry_trials": 7,
    "fanout_procs": 20,
    "fanout_changes": 50,
    "fleet_procs": [5, 10, 20, 40],
    "fleet_per": 500,
    "fleet_candidates": 2,
    "fleet_churn_rate": 10.0,  # resigns per second per fleet process
    "fleet_idle_window": 5.0,
    "fleet_trials": 100,
    "fleet_start_timeout": 90.0,
    "fleet_budget": 330.0,
}
QUICK: dict[str, Any] = {
    "noisy_n": 1000,
    "noisy_warmup": 1.0,
    "noisy_window": 3.0,
    "noisy_quiet_window": 2.0,
    "entry_keys": 100_000,
    "entry_trials": 3,
    "fanout_procs": 20,
    "fanout_changes": 10,
    "fleet_procs": [2, 4],
    "fleet_per": 100,
    "fleet_candidates": 2,
    "fleet_churn_rate": 10.0,
    "fleet_idle_window": 2.0,
    "fleet_trials": 15,
    "fleet_start_timeout": 30.0,
    "fleet_budget": 50.0,
}
GAP = 0.05  # idle time before each probe handover
STOP_FACTOR = 5  # the fleet sweep stops once the probe's p99 under churn is this many x
ENTRY_BATCH = 128  # puts per txn when filling the big prefix
ENTRY_VALUE = b"v" * 16


def params(ctx: Ctx) -> dict[str, Any]:
    return dict(QUICK if ctx.quick else FULL)


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------


class Member:
    """A ``_fleet_member.py`` process: commands on stdin, lines on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label

    @classmethod
    async def spawn(cls, ctx: Ctx, mode: str, prefix: str, *args: str, label: str = "") -> Member:
        argv = [
            sys.executable, MEMBER, mode, "--endpoint", ctx.endpoint, "--prefix", prefix,
            "--parent", str(os.getpid()), *args,
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=HERE,
        )
        return cls(proc, label or mode)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd}\n".encode())

    async def line(self, timeout: float = 60.0) -> list[str]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"{self.label} (pid {self.pid}) exited: {self.proc.returncode}")
        return raw.decode().split()

    async def wait(self, kind: str, timeout: float = 60.0) -> list[str]:
        words = await self.line(timeout)
        if not words or words[0] != kind:
            raise RuntimeError(f"{self.label}: expected {kind!r}, got {words!r}")
        return words

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        return proc_rss(self.pid)

    async def quit(self, timeout: float = 15.0) -> None:
        """Ask it to leave (resigning, revoking); SIGKILL it if it takes too long."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.command("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                self.kill()
        await self.proc.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


async def kill_all(members: Iterable[Member]) -> None:
    ms = list(members)
    for m in ms:
        m.kill()
    for m in ms:
        await m.proc.wait()


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


async def delete_prefix(ctx: Ctx, prefix: str) -> None:
    key = (prefix + "/").encode()
    await ctx.poll.kvstub.DeleteRange(
        rpc.DeleteRangeRequest(key=key, range_end=prefix_range_end(key)), timeout=60
    )


async def wait_count(
    ctx: Ctx, prefix: str, n: int, timeout: float = 30.0, poll: float = 0.02
) -> bool:
    """Wait until ``n`` keys are under ``prefix/``; whether they were, in time."""
    key = (prefix + "/").encode()
    deadline = time.monotonic() + timeout
    while await count_keys(ctx.poll, key) != n:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
    return True


async def cpu_window(
    pids: dict[str, list[int]], during: float | Awaitable[T]
) -> tuple[dict[str, float], float, T | None]:
    """CPU (% of one core) of each group of processes over ``during`` (seconds, or
    while awaiting it); also the window (s) and what ``during`` returned."""
    c0 = {k: sum(proc_cpu_seconds(p) for p in ps) for k, ps in pids.items()}
    t0 = time.monotonic()
    result: T | None = None
    if isinstance(during, (int, float)):
        await asyncio.sleep(during)
    else:
        result = await during
    window = time.monotonic() - t0
    c1 = {k: sum(proc_cpu_seconds(p) for p in ps) for k, ps in pids.items()}
    return {k: 100.0 * (c1[k] - c0[k]) / window for k in pids}, window, result


# -- 1. noisy neighbours ---------------------------------------------------------------


async def section_noisy(ctx: Ctx) -> dict[str, Any]:
    """Two idle Electors (each holding one election and observing the other's), measured
    with nothing else running, while a churner runs 1,000 elections under their
    prefix, and while it runs them under another prefix."""
    n = params(ctx)
    prefix = f"{ctx.prefix}/noisy"
    idle = [
        await Member.spawn(ctx, "idle", prefix, "--hold", "a", "--observe", "b", label="idle a"),
        await Member.spawn(ctx, "idle", prefix, "--hold", "b", "--observe", "a", label="idle b"),
    ]
    children = list(idle)
    out: dict[str, Any] = {"params": {k: v for k, v in n.items() if k.startswith("noisy")}}
    try:
        for m in idle:
            await m.wait("ready")
        pids = {"idle": [m.pid for m in idle], "etcd": [ctx.etcd_pid]}
        await asyncio.sleep(1.0)
        cpu, _, _ = await cpu_window(pids, n["noisy_quiet_window"])
        out["quiet"] = {"idle_cpu_pct": cpu["idle"] / 2, "etcd_cpu_pct": cpu["etcd"]}
        for case, churn_prefix in (("same", prefix), ("other", f"{ctx.prefix}/noisy-other")):
            log(f"  churn of {n['noisy_n']} elections under the {case} prefix")
            churner = await Member.spawn(
                ctx, "churn", churn_prefix, "--n", str(n["noisy_n"]), "--start-timeout", "60",
                label="churner",
            )  # fmt: skip
            children.append(churner)
            words = await churner.wait("ready", timeout=120)
            started = int(words[2])
            await asyncio.sleep(n["noisy_warmup"])
            churner.command("mark")
            m0 = await churner.wait("mark")
            pids["churner"] = [churner.pid]
            cpu, window, _ = await cpu_window(pids, n["noisy_window"])
            churner.command("mark")
            m1 = await churner.wait("mark")
            terms = int(m1[1]) - int(m0[1])
            out[case] = {
                "idle_cpu_pct": cpu["idle"] / 2,  # mean of the two idle processes
                "churner_cpu_pct": cpu["churner"],
                "etcd_cpu_pct": cpu["etcd"],
                "window_s": window,
                "churner_terms_per_s": terms / ((int(m1[2]) - int(m0[2])) / 1e9),
                "churner_started": started,
                "idle_rss_mib": [m.rss() / 2**20 for m in idle],
            }
            await churner.quit(timeout=30)
            children.remove(churner)
            del pids["churner"]
            if not await wait_count(ctx, churn_prefix, 2 if case == "same" else 0):
                await delete_prefix(ctx, churn_prefix)  # (the churner's keys only)
            await asyncio.sleep(1.0)
        out["difference_pp"] = out["same"]["idle_cpu_pct"] - out["other"]["idle_cpu_pct"]
    finally:
        await kill_all(children)
        await delete_prefix(ctx, prefix)
        await delete_prefix(ctx, f"{ctx.prefix}/noisy-other")
    return out


# -- 2. entry vs the prefix's size -----------------------------------------------------


async def fill(ctx: Ctx, prefix: str, keys: int) -> float:
    """Write ``keys`` keys in elections named unlike ours (txns of 128 puts); seconds."""
    t0 = time.monotonic()
    kv = ctx.poll.kvstub
    batch: list[Any] = []
    for i in range(keys):
        key = f"{prefix}/other{i // 4:06d}/{0x10000 + i:x}".encode()  # 4 candidates each
        batch.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=ENTRY_VALUE)))
        if len(batch) == ENTRY_BATCH or i == keys - 1:
            await kv.Txn(rpc.TxnRequest(success=batch), timeout=30)
            batch = []
    return time.monotonic() - t0


async def _enter_once(ctx: Ctx, prefix: str, name: str) -> dict[str, Any]:
    m = await Member.spawn(ctx, "enter", prefix, "--name", name, label="enter")
    try:
        words = await m.line(timeout=120)
        res: dict[str, Any] = json.loads(" ".join(words))
    finally:
        await m.quit(timeout=30)
    return res


async def section_entry(ctx: Ctx) -> dict[str, Any]:
    n = params(ctx)
    big, empty = f"{ctx.prefix}/entry-big", f"{ctx.prefix}/entry-empty"
    log(f"  writing {n['entry_keys']:,} keys under {big}")
    fill_s = await fill(ctx, big, n["entry_keys"])
    runs: dict[str, list[dict[str, Any]]] = {"empty": [], "big": []}
    try:
        for i in range(n["entry_trials"]):
            order = (("empty", empty), ("big", big))
            for case, prefix in order if i % 2 == 0 else order[::-1]:
                runs[case].append(await _enter_once(ctx, prefix, f"mine{i}"))
            log(f"  {i + 1}/{n['entry_trials']}")
    finally:
        await delete_prefix(ctx, big)
        await delete_prefix(ctx, empty)

    def med(case: str, field: str) -> float:
        return float(statistics.median(r[field] for r in runs[case]))

    out: dict[str, Any] = {
        "params": {k: v for k, v in n.items() if k.startswith("entry")},
        "fill_s": fill_s,
        "runs": runs,
    }
    for case in runs:
        out[case] = {f: med(case, f) for f in ("enter_s", "win_s", "total_s", "rss_growth")}
    out["time_ratio"] = out["big"]["total_s"] / out["empty"]["total_s"]
    out["rss_from_keys"] = out["big"]["rss_growth"] - out["empty"]["rss_growth"]
    return out


# -- 3. etcd's fan-out -----------------------------------------------------------------

EVENTS_RE = re.compile(rb"^etcd_debugging_mvcc_events_total (\S+)$", re.M)


def _scrape(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        m = EVENTS_RE.search(resp.read())
    if m is None:
        raise RuntimeError(f"no etcd_debugging_mvcc_events_total at {url}")
    return float(m.group(1))


async def events_total(ctx: Ctx) -> float:
    return await asyncio.to_thread(_scrape, f"http://{ctx.endpoint}/metrics")


async def revision(ctx: Ctx) -> int:
    resp = await ctx.poll.kvstub.Range(rpc.RangeRequest(key=b"\0", limit=1), timeout=10)
    return int(resp.header.revision)


async def handover(leader: Member, follower: Member) -> float:
    """One graceful handover between two ``control`` members: exit -> elected (s)."""
    leader.command("release")
    t_exit = int((await leader.wait("exit"))[1])
    t_elected = int((await follower.wait("elected"))[1])
    return (t_elected - t_exit) / 1e9


async def _pair(ctx: Ctx, prefix: str, name: str) -> list[Member]:
    """Two ``control`` members in election ``name``: [leader, queued follower]."""
    pair = [
        await Member.spawn(ctx, "control", prefix, "--name", name, "--value", v, label=v)
        for v in ("probe-1", "probe-2")
    ]
    for m in pair:
        await m.wait("ready", timeout=120)
    pair[0].command("join")
    await pair[0].wait("elected")
    pair[1].command("join")
    await _queued(ctx, prefix, name, 2)
    return pair


async def _queued(ctx: Ctx, prefix: str, name: str, n: int) -> None:
    if not await wait_count(ctx, f"{prefix}/{name}", n, timeout=30):
        raise TimeoutError(f"{prefix}/{name}: waited for {n} candidates")


async def _handovers(
    ctx: Ctx, pair: list[Member], prefix: str, name: str, trials: int, gap: float
) -> list[float]:
    """``trials`` handovers back and forth; the leaving candidate queues again each time."""
    out: list[float] = []
    for _ in range(trials):
        await asyncio.sleep(gap)
        leader, follower = pair
        out.append(await handover(leader, follower))
        leader.command("join")
        await _queued(ctx, prefix, name, 2)
        pair.reverse()
    return out


async def section_fanout(ctx: Ctx) -> dict[str, Any]:
    n = params(ctx)
    prefix = f"{ctx.prefix}/fanout"
    others = n["fanout_procs"] - 2
    k = n["fanout_changes"]
    children: list[Member] = []
    try:
        pair = await _pair(ctx, prefix, "probe")
        children += pair
        for i in range(others):
            children.append(
                await Member.spawn(ctx, "idle", prefix, "--hold", f"own{i}", label=f"own{i}")
            )
        for m in children[2:]:
            await m.wait("ready", timeout=120)
        await asyncio.sleep(1.0)
        # The baseline: the same processes, idle, for as long as the changes will take.
        e0, r0, t0 = await events_total(ctx), await revision(ctx), time.monotonic()
        await asyncio.sleep(max(2.0, k * 0.1))
        e1, r1, t1 = await events_total(ctx), await revision(ctx), time.monotonic()
        idle_rate = (e1 - e0) / (t1 - t0)
        e2, r2, t2 = await events_total(ctx), await revision(ctx), time.monotonic()
        lat = await _handovers(ctx, pair, prefix, "probe", k, GAP)
        e3, r3, t3 = await events_total(ctx), await revision(ctx), time.monotonic()
        events = e3 - e2
        events_net = events - idle_rate * (t3 - t2)
        writes = r3 - r2
        return {
            "params": {k_: v for k_, v in n.items() if k_.startswith("fanout")},
            "processes": n["fanout_procs"],
            "changes": k,
            "events": events,
            "writes": writes,
            "idle_events": e1 - e0,
            "idle_writes": r1 - r0,
            "idle_seconds": t1 - t0,
            "events_per_change": events_net / k,
            "events_per_write": events_net / writes if writes else None,
            "writes_per_change": writes / k,
            "handover": summary(lat),
        }
    finally:
        await kill_all(children)
        await delete_prefix(ctx, prefix)


# -- 5. the fleet ----------------------------------------------------------------------


async def _fleet_point(ctx: Ctx, procs: int, n: dict[str, Any], tag: str) -> dict[str, Any]:
    per, k = n["fleet_per"], n["fleet_candidates"]
    prefix = f"{ctx.prefix}/{tag}"
    out: dict[str, Any] = {"procs": procs, "elections": procs * per, "candidates": k}
    children: list[Member] = []
    etcd = ctx.etcd_pid
    try:
        rss_etcd0 = proc_rss(etcd)
        pair = await _pair(ctx, prefix, "probe")
        children += pair
        fleet: list[Member] = []
        t0 = time.monotonic_ns()
        for p in range(procs):
            args = ("--index", str(p), "--procs", str(procs), "--per", str(per))
            m = await Member.spawn(
                ctx, "fleet", prefix, *args, "--candidates", str(k), label=f"fleet{p}"
            )
            fleet.append(m)
            children.append(m)
        ready = await asyncio.gather(
            *(m.wait("ready", timeout=n["fleet_start_timeout"]) for m in fleet),
            return_exceptions=True,
        )
        failed = [r for r in ready if isinstance(r, BaseException)]
        if failed:
            out["error"] = f"{len(failed)} of {procs} processes not ready: {failed[0]!r}"
            return out
        # Started: every candidate has seen a leader of each of its elections, and
        # every candidate key is in etcd (a candidate may see the leader first).
        seen_ns = max(int(r[1]) for r in ready if isinstance(r, list))
        want = procs * per * k + 2
        done_ns = seen_ns
        if await count_keys(ctx.poll, (prefix + "/").encode()) != want:
            if not await wait_count(ctx, prefix, want, timeout=n["fleet_start_timeout"]):
                got = await count_keys(ctx.poll, (prefix + "/").encode())
                out["error"] = f"{got} candidate keys, waited for {want}"
                return out
            done_ns = max(seen_ns, time.monotonic_ns())
        out["start_s"] = (done_ns - t0) / 1e9
        out["seen_s"] = (seen_ns - t0) / 1e9
        out["keys"] = want
        await asyncio.sleep(1.0)
        pids = {
            "etcd": [etcd],
            "fleet": [m.pid for m in fleet],
            "probe": [m.pid for m in pair],
        }
        cpu, _, _ = await cpu_window(pids, n["fleet_idle_window"])
        out["idle"] = {
            "etcd_cpu_pct": cpu["etcd"],
            "fleet_cpu_pct": cpu["fleet"],
            "probe_cpu_pct": cpu["probe"] / 2,
            "etcd_rss_mib": proc_rss(etcd) / 2**20,
            "etcd_rss_growth_mib": (proc_rss(etcd) - rss_etcd0) / 2**20,
            "fleet_rss_mib": sum(m.rss() for m in fleet) / 2**20,
            "probe_rss_mib": pair[0].rss() / 2**20,
        }
        lat = await _handovers(ctx, pair, prefix, "probe", n["fleet_trials"], GAP)
        out["idle"]["handover"] = summary(lat)
        out["idle"]["handover_samples"] = lat
        for m in fleet:
            m.command("stats")
        s0 = [await m.wait("stats") for m in fleet]
        for m in fleet:
            m.command(f"churn {n['fleet_churn_rate']}")
        await asyncio.sleep(1.0)
        t_c0 = time.monotonic()
        cpu, window, churned = await cpu_window(
            pids, _handovers(ctx, pair, prefix, "probe", n["fleet_trials"], GAP)
        )
        lat = churned or []
        for m in fleet:
            m.command("stats")
        s1 = [await m.wait("stats") for m in fleet]
        elapsed = time.monotonic() - t_c0
        for m in fleet:
            m.command("idle")
        resigns = sum(int(b[1]) - int(a[1]) for a, b in zip(s0, s1, strict=True))
        out["churn"] = {
            "etcd_cpu_pct": cpu["etcd"],
            "fleet_cpu_pct": cpu["fleet"],
            "probe_cpu_pct": cpu["probe"] / 2,
            "etcd_rss_mib": proc_rss(etcd) / 2**20,
            "fleet_rss_mib": sum(m.rss() for m in fleet) / 2**20,
            "window_s": window,
            "resigns_per_s": resigns / elapsed,
            "handover": summary(lat),
            "handover_samples": lat,
        }
        return out
    finally:
        await kill_all(children)
        await delete_prefix(ctx, prefix)


async def section_fleet(ctx: Ctx) -> dict[str, Any]:
    n = params(ctx)
    points: list[dict[str, Any]] = []
    t_start = time.monotonic()
    base: float | None = None
    stopped = "swept every size"
    for procs in n["fleet_procs"]:
        spent = time.monotonic() - t_start
        if points:
            # Each point costs about its start plus a fixed part; the next is larger.
            last = points[-1].get("seconds", 0.0)
            if spent + last * 2 > n["fleet_budget"]:
                stopped = f"time budget ({n['fleet_budget']:.0f} s) before {procs} processes"
                break
        log(f"  fleet of {procs} processes x {n['fleet_per']} elections")
        t0 = time.monotonic()
        point = await _fleet_point(ctx, procs, n, f"fleet{procs}")
        point["seconds"] = time.monotonic() - t0
        points.append(point)
        if "error" in point:
            stopped = f"{procs} processes: {point['error']}"
            break
        p99 = point["churn"]["handover"]["p99"]
        if base is None:
            base = p99
        elif p99 > STOP_FACTOR * base:  # well past doubling: a larger fleet only takes longer
            stopped = f"probe handover p99 under churn over {STOP_FACTOR}x at {procs} processes"
            break
    # The largest fleet up to which every point's p99 (under churn) is within 2x of
    # the smallest fleet's; one noisy point past it does not stop the sweep.
    largest = None
    for point in points:
        if "error" in point or base is None or point["churn"]["handover"]["p99"] > 2 * base:
            break
        largest = point["procs"]
    return {
        "params": {k: v for k, v in n.items() if k.startswith("fleet")},
        "points": points,
        "stopped": stopped,
        "largest_within_2x": largest,
    }


SECTIONS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "noisy": section_noisy,
    "entry": section_entry,
    "fanout": section_fanout,
    "fleet": section_fleet,
}
