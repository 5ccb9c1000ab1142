"""Churn (never a test): run by ``bench/run.py``.

``python bench/_churn.py --endpoint HOST:PORT --prefix P --n 1000`` runs N
elections with two candidates each, one on each of two Electors of this
process. A leader holds for a random time (uniform in ``[0, 2 * hold_mean]``),
resigns by leaving its ``hold`` block and campaigns again at once, so every
election changes leader over and over. Over a measuring window (after a
warm-up) it counts terms started, the handover latency of each (the
predecessor's exit to the successor's body), and every request aioelect sends
to etcd, by kind: the Connection's unary calls are wrapped here (in this
process only), as are the keepalive and watch streams' writes and reads.

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from typing import Any

import anyio
from _common import GCMeter, PySpy, cpu_seconds, now_ns, proc_cpu_seconds, summary

import aioelect
from aioelect import _connection
from aioelect._core import core_of

REQUESTS: Counter[str] = Counter()


def _instrument() -> None:
    """Count every request aioelect sends to etcd (wrapping the connection layer)."""
    conn_cls = _connection.Connection
    unary = conn_cls._unary

    async def counted_unary(self: Any, method: Any, request: Any, timeout: Any) -> Any:
        REQUESTS[type(request).__name__] += 1
        return await unary(self, method, request, timeout)

    conn_cls._unary = counted_unary  # type: ignore[method-assign]

    ka_cls = _connection.KeepAliveStream
    keepalive = ka_cls.keepalive

    async def counted_keepalive(self: Any, lease_id: int) -> int:
        REQUESTS["LeaseKeepAlive (stream write)"] += 1
        return await keepalive(self, lease_id)

    ka_cls.keepalive = counted_keepalive  # type: ignore[method-assign]

    w_cls = _connection.WatchStream
    progress = w_cls.request_progress
    read = w_cls.read
    create = w_cls.create
    cancel = w_cls.cancel

    async def counted_create(self: Any, *args: Any) -> None:
        REQUESTS["WatchCreateRequest (stream write)"] += 1
        await create(self, *args)

    async def counted_cancel(self: Any, watch_id: int) -> None:
        REQUESTS["WatchCancelRequest (stream write)"] += 1
        await cancel(self, watch_id)

    async def counted_progress(self: Any) -> None:
        REQUESTS["WatchProgressRequest (stream write)"] += 1
        await progress(self)

    async def counted_read(self: Any) -> Any:
        batch = await read(self)
        REQUESTS["watch responses received (not requests)"] += 1
        REQUESTS["watch events received (not requests)"] += len(batch.events)
        return batch

    w_cls.request_progress = counted_progress  # type: ignore[method-assign]
    w_cls.create = counted_create  # type: ignore[method-assign]
    w_cls.cancel = counted_cancel  # type: ignore[method-assign]
    w_cls.read = counted_read  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    n = args.n
    terms = 0
    counting = False
    latencies: list[float] = []
    last_exit: dict[int, int] = {}
    stop = anyio.Event()
    started = 0
    all_started = anyio.Event()

    async with (
        aioelect.Elector(endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl) as ea,
        aioelect.Elector(endpoints=args.endpoint, prefix=args.prefix, ttl=args.ttl) as eb,
    ):

        async def candidate(elector: aioelect.Elector, i: int, first: bool) -> None:
            nonlocal terms, started
            name = f"c{i}"
            if not first:
                # Join behind the other candidate, so every election starts with two.
                async with elector.observe(name) as leaders:
                    async for info in leaders:
                        if info is not None:
                            break
            while not stop.is_set():
                async with elector.hold(name, "x"):
                    t = now_ns()
                    if counting:
                        terms += 1
                        prev = last_exit.pop(i, None)
                        if prev is not None:
                            latencies.append((t - prev) / 1e9)
                    if not first:
                        started += 1
                        first = True
                        if started == n:
                            all_started.set()
                    await anyio.sleep(rng.uniform(0, 2 * args.hold_mean))
                    last_exit[i] = now_ns()

        recreated = 0

        async def count_watch_streams() -> None:
            """Count re-created watch streams (the mirrors' stream objects changing)."""
            nonlocal recreated
            last = [core_of(ea).mirror._stream, core_of(eb).mirror._stream]
            while True:
                await anyio.sleep(0.05)
                for j, e in enumerate((ea, eb)):
                    cur = core_of(e).mirror._stream
                    if cur is not None and cur is not last[j]:
                        recreated += 1
                        last[j] = cur

        async with anyio.create_task_group() as tg:
            tg.start_soon(count_watch_streams)
            for i in range(n):
                tg.start_soon(candidate, ea, i, True)
                tg.start_soon(candidate, eb, i, False)
            t_start = time.perf_counter()
            with anyio.move_on_after(args.start_timeout):
                await all_started.wait()
            start_s = time.perf_counter() - t_start
            await anyio.sleep(args.warmup)
            spy = PySpy(args.pyspy, args.pyspy_rate) if args.pyspy else None
            if spy is not None:
                await spy.start()
            last_exit.clear()
            before = Counter(REQUESTS)
            counting = True
            etcd0 = proc_cpu_seconds(args.etcd_pid) if args.etcd_pid else 0.0
            c0, w0 = cpu_seconds(), time.perf_counter()
            with GCMeter() as gcm:
                await anyio.sleep(args.duration)
            c1, w1 = cpu_seconds(), time.perf_counter()
            etcd1 = proc_cpu_seconds(args.etcd_pid) if args.etcd_pid else 0.0
            counting = False
            if spy is not None:
                await spy.stop()
            window = w1 - w0
            got = Counter(REQUESTS)
            got.subtract(before)
            stats_a, stats_b = ea.statistics(), eb.statistics()
            requests = {k: v for k, v in got.items() if v}
            sent = sum(v for k, v in requests.items() if "not requests" not in k)
            res: dict[str, Any] = {
                "n": n,
                "hold_mean_s": args.hold_mean,
                "window_s": window,
                "all_started": all_started.is_set(),
                "started": started,
                "start_s": start_s,
                "terms": terms,
                "terms_per_s": terms / window,
                "requests": requests,
                "requests_per_term": sent / terms if terms else None,
                "handover": summary(latencies),
                "handover_samples": latencies[:: max(1, len(latencies) // 2000)],
                "cpu_pct": 100.0 * (c1 - c0) / window,
                "etcd_cpu_pct": 100.0 * (etcd1 - etcd0) / window if args.etcd_pid else None,
                "gc": gcm.report(),
                "sessions_lost": stats_a.sessions_lost + stats_b.sessions_lost,
                "watch_recreated": recreated,
                "finished_ns": now_ns(),
            }
            sys.stdout.write(json.dumps(res) + "\n")
            sys.stdout.flush()
            # Drop the keys at once, not by TTL (the candidates still running fail once
            # their lease is gone: that ends this process, its figures written above).
            with contextlib.suppress(BaseException):
                for elector in (ea, eb):
                    lease_id = elector.statistics().lease_id
                    if lease_id is not None:
                        await core_of(elector).conn.revoke(lease_id)
            os._exit(0)  # skip the teardown


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--hold-mean", type=float, default=0.05, help="mean hold time (s)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument(
        "--start-timeout", type=float, default=60.0, help="max wait for every election to run"
    )
    p.add_argument("--etcd-pid", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pyspy", help="sample the measuring window with py-spy into this file")
    p.add_argument("--pyspy-rate", type=int, default=250)
    args = p.parse_args()
    _instrument()
    anyio.run(main, args)


if __name__ == "__main__":
    cli()
