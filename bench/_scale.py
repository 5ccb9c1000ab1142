"""Scale of one process and one Elector (never a test): run by ``bench/run.py``.

``python bench/_scale.py --endpoint HOST:PORT --prefix P --n N`` starts N
elections on ONE Elector (ONE lease, one keepalive stream, one watch), each
campaigned by a ``hold`` and observed by an ``observe``, and measures:

- the time until every hold body runs and every observer has seen its leader;
- memory per election (RSS delta; with ``--tracemalloc``, Python heap delta);
- idle CPU (process CPU time over an idle interval), before and after ``gc.freeze()``;
- graceful handover latency of one more election between this process and a
  peer process (``_candidate.py control``, its own Elector on the same prefix),
  both directions alternating, before and after ``gc.freeze()``;
- garbage collector pauses during each phase.

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from _candidate import LocalCandidate
from _common import (
    GCMeter,
    PySpy,
    count_keys,
    cpu_seconds,
    now_ns,
    raw_client,
    rss_bytes,
    summary,
)
from aetcd import rpc

import aioelect
from aioelect._core import core_of

HERE = Path(__file__).resolve().parent
HANDOVER = "handover"


class Remote:
    """A ``_candidate.py control`` process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, endpoint: str, prefix: str, name: str, value: str) -> Remote:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "_candidate.py"),
            "control",
            "--endpoints",
            endpoint,
            "--prefix",
            prefix,
            "--name",
            name,
            "--value",
            value,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self = cls(proc)
        await self.wait("ready")
        return self

    def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd}\n".encode())

    async def wait(self, kind: str) -> int:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode().split()
        if not line or line[0] != kind:
            raise RuntimeError(f"peer candidate: expected {kind!r}, got {line!r}")
        return int(line[1])

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def queued(local: LocalCandidate, n: int, timeout: float = 30.0) -> None:
    """Wait until the elector's mirror shows ``n`` candidates in the handover election.

    Reads the mirror (no request to etcd), so the wait does not show in a profile.
    """
    view = core_of(local.candidate.elector).mirror.view(HANDOVER)
    deadline = time.monotonic() + timeout
    while len(view.kvs) != n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"handover election: {len(view.kvs)} candidates, waited for {n}")
        await asyncio.sleep(0.002)


async def handovers(
    local: LocalCandidate,
    remote: Remote,
    trials: int,
    gap: float,
    leader_is_local: bool,
) -> tuple[list[float], list[float], bool]:
    """Alternate graceful handovers; return latencies (s) out of and into this process."""
    out: list[float] = []
    into: list[float] = []
    for _ in range(trials):
        await asyncio.sleep(gap)
        leader: Any = local if leader_is_local else remote
        follower: Any = remote if leader_is_local else local
        leader.command("release")
        t_exit = await leader.wait("exit")
        t_elected = await follower.wait("elected")
        (out if leader_is_local else into).append((t_elected - t_exit) / 1e9)
        leader.command("join")
        await queued(local, 2)
        leader_is_local = not leader_is_local
    return out, into, leader_is_local


async def watch_start(
    e1: aioelect.Elector,
    n: int,
    timeout: float,
    t0: float,
    counts: Callable[[], tuple[int, int]],
    all_held: anyio.Event,
    all_observed: anyio.Event,
    errors: Counter[str],
) -> dict[str, Any] | None:
    """Wait for every election to run; give up on a timeout or a lost session.

    Also counts re-created watch streams (the mirror's stream object changing).
    Returns None, or a failure report.
    """
    streams = 0
    last_stream = core_of(e1).mirror._stream
    debug = bool(os.environ.get("BENCH_DEBUG"))
    while True:
        with anyio.move_on_after(0.1):
            await all_held.wait()
            await all_observed.wait()
            return None
        elapsed = time.perf_counter() - t0
        stream = core_of(e1).mirror._stream
        if stream is not last_stream and stream is not None:
            streams += 1
            last_stream = stream
        lost = e1.statistics().sessions_lost
        held, observed = counts()
        if debug:
            print(
                f"{elapsed:.1f}s held={held} observed={observed} streams={streams}", file=sys.stderr
            )
        if lost or errors or elapsed > timeout:
            why = (
                "session lost (keepalive starved)"
                if lost
                else ("elections raised" if errors else f"not running after {timeout:g} s")
            )
            return {
                "error": f"{why}: {held} holds and {observed} observers of {n} "
                f"running after {elapsed:.1f} s; watch re-created {streams}x"
                + "".join(f"; {v}x {k}" for k, v in errors.most_common(2)),
                "held": held,
                "observed": observed,
                "watch_recreated": streams,
                "sessions_lost": lost,
                "elapsed_s": elapsed,
                "raised": dict(errors.most_common(5)),
            }


async def main(args: argparse.Namespace) -> None:
    n: int = args.n
    res: dict[str, Any] = {
        "n": n,
        "tracemalloc": args.tracemalloc,
        "mode": args.mode,
        "gc_paused": args.gc_paused,
        "spawn": args.spawn,
    }
    raw = await raw_client(args.endpoint)
    stop = anyio.Event()
    held = 0
    observed = 0
    all_held = anyio.Event()
    all_observed = anyio.Event()
    times: dict[str, float] = {}
    errors: Counter[str] = Counter()
    t0 = 0.0

    async with aioelect.Elector(endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl) as e1:

        async def hold(i: int) -> None:
            try:
                await _hold(i)
            except aioelect.LeadershipLost:  # the final revoke
                pass
            except Exception as exc:
                errors[f"hold: {type(exc).__name__}: {exc}"[:160]] += 1

        async def observe(i: int) -> None:
            try:
                await _observe(i)
            except Exception as exc:
                errors[f"observe: {type(exc).__name__}: {exc}"[:160]] += 1

        async def _hold(i: int) -> None:
            nonlocal held
            async with e1.hold(f"s{i}", "scale"):
                held += 1
                if held == n:
                    times["held"] = time.perf_counter() - t0
                    all_held.set()
                await stop.wait()

        async def _observe(i: int) -> None:
            nonlocal observed
            async with e1.observe(f"s{i}") as leaders:
                async for info in leaders:
                    if info is not None or args.mode == "observe":
                        observed += 1
                        if observed == n:
                            times["all"] = time.perf_counter() - t0
                            all_observed.set()
                        break
                await stop.wait()

        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()

        def spawn(coro: Any) -> None:
            # asyncio tasks by default: an anyio TaskGroup task costs ~4 KiB instead of ~1.3.
            if args.spawn == "anyio":
                tg.start_soon(lambda: coro)
            else:
                tasks.add(loop.create_task(coro))

        async with anyio.create_task_group() as tg:
            local = LocalCandidate(e1, HANDOVER, "scale-process")

            async def run_local() -> None:
                with contextlib.suppress(aioelect.LeadershipLost):  # the final revoke
                    await local.run()

            tg.start_soon(run_local)
            await asyncio.sleep(0.2)
            gc.collect()
            objects0 = len(gc.get_objects())
            if args.tracemalloc:
                tracemalloc.start()
            tm0 = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
            rss0 = rss_bytes()
            cpu0 = cpu_seconds()
            spy = PySpy(args.pyspy_start, args.pyspy_rate) if args.pyspy_start else None
            if spy is not None:
                await spy.start()
                cpu0 = cpu_seconds()
            if args.gc_paused:
                gc.disable()
            with GCMeter() as gcm:
                t0 = time.perf_counter()
                for i in range(n):
                    if args.mode != "observe":
                        spawn(hold(i))
                    if args.mode != "hold":
                        spawn(observe(i))
                if args.mode == "observe":  # nothing campaigns: observers see vacancies
                    times["held"] = 0.0
                    all_held.set()
                if args.mode == "hold":
                    times["all"] = 0.0
                    all_observed.set()
                failure = await watch_start(
                    e1,
                    n,
                    args.start_timeout,
                    t0,
                    lambda: (held, observed),
                    all_held,
                    all_observed,
                    errors,
                )
            if args.gc_paused:
                gc.enable()
                gc.freeze()
            if spy is not None:
                await spy.stop()
            if failure is not None:
                res.update(failure)
                res["error"] = failure["error"]
                res["start_cpu_s"] = cpu_seconds() - cpu0
                res["start_gc"] = gcm.report()
                sys.stdout.write(json.dumps(res) + "\n")
                sys.stdout.flush()
                os._exit(0)
            res["start_held_s"] = times["held"]
            res["start_observed_s"] = times["all"]
            res["start_all_s"] = max(times["held"], times["all"])
            res["start_cpu_s"] = cpu_seconds() - cpu0
            res["start_gc"] = gcm.report()
            gc.collect()
            res["rss_delta_bytes"] = rss_bytes() - rss0
            res["gc_objects_per_election"] = (len(gc.get_objects()) - objects0) / n
            res["rss_per_election"] = res["rss_delta_bytes"] / n
            if args.tracemalloc:
                tm1 = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
                res["traced_delta_bytes"] = tm1 - tm0
                res["traced_per_election"] = (tm1 - tm0) / n
            res["keys"] = await count_keys(raw, (args.prefix + "/").encode())
            lease_id = e1.statistics().lease_id

            if not args.tracemalloc:
                # Idle CPU: keepalives only (ttl / 3 apart); nothing else should run.
                await asyncio.sleep(1.0)
                for label in ("idle", "idle_frozen"):
                    if label == "idle_frozen":
                        gc.collect()
                        gc.freeze()
                    with GCMeter() as gcm:
                        c0, w0 = cpu_seconds(), time.perf_counter()
                        await asyncio.sleep(args.idle)
                        c1, w1 = cpu_seconds(), time.perf_counter()
                    res[f"{label}_cpu_pct"] = 100.0 * (c1 - c0) / (w1 - w0)
                    res[f"{label}_gc"] = gcm.report()
                    if label == "idle":
                        gc.unfreeze()
                gc.unfreeze()

                # Handover of one more election between this process and a peer.
                remote = await Remote.spawn(args.endpoint, args.prefix, HANDOVER, "peer")
                try:
                    local.command("join")
                    await local.wait("elected")
                    remote.command("join")
                    await queued(local, 2)
                    leader_is_local = True
                    warm = min(5, args.trials)
                    _, _, leader_is_local = await handovers(
                        local, remote, warm, args.gap, leader_is_local
                    )
                    spy = (
                        PySpy(args.pyspy_handover, args.pyspy_rate) if args.pyspy_handover else None
                    )
                    if spy is not None:
                        await spy.start()
                    for label in ("handover", "handover_frozen"):
                        if label == "handover_frozen":
                            gc.collect()
                            gc.freeze()
                        with GCMeter() as gcm:
                            out, into, leader_is_local = await handovers(
                                local, remote, args.trials, args.gap, leader_is_local
                            )
                        res[label] = {
                            "out": out,
                            "in": into,
                            "all": summary(out + into),
                            "gc": gcm.report(),
                        }
                    if spy is not None:
                        await spy.stop()
                finally:
                    remote.kill()
                    await remote.proc.wait()
            res["finished_ns"] = now_ns()
            sys.stdout.write(json.dumps(res) + "\n")
            sys.stdout.flush()
            # Drop every key at once (the holds would otherwise resign one by one).
            await raw.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=30)
            # Skip the teardown of 2N tasks: their keys are gone with the lease.
            os._exit(0)
    raise AssertionError("unreachable")


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--idle", type=float, default=10.0, help="idle CPU interval (s)")
    p.add_argument("--trials", type=int, default=100, help="handovers per phase")
    p.add_argument("--gap", type=float, default=0.1, help="idle time before each handover (s)")
    p.add_argument("--tracemalloc", action="store_true", help="only start and measure the heap")
    p.add_argument(
        "--mode",
        choices=["both", "hold", "observe"],
        default="both",
        help="each election is campaigned and observed (both), or only one of them",
    )
    p.add_argument(
        "--spawn",
        choices=["asyncio", "anyio"],
        default="asyncio",
        help="run each hold/observe in an asyncio task (default) or an anyio TaskGroup task",
    )
    p.add_argument(
        "--gc-paused",
        action="store_true",
        help="gc.disable() during the start, then gc.freeze() (the advice for mass starts)",
    )
    p.add_argument("--start-timeout", type=float, default=60.0, help="give up after (s)")
    p.add_argument("--pyspy-start", help="sample the start with py-spy into this file")
    p.add_argument("--pyspy-handover", help="sample the handovers with py-spy into this file")
    p.add_argument("--pyspy-rate", type=int, default=250)
    args = p.parse_args()
    anyio.run(main, args)


if __name__ == "__main__":
    cli()
