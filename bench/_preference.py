"""Preference and health gating latencies (never a test).

``python bench/_preference.py [--endpoint HOST:PORT] [--trials 20]`` measures,
on an embedded etcd unless ``--endpoint`` is given, with two Electors of this
process (each its own connection and session):

- ``preempt``: a higher-priority candidate's arrival (its ``Leadership.run()``
  starts while the other leads) to its ``on_elected``, with ``min_term=0,
  settle=0`` (the mechanism: record, mirror, step-down, transfer, campaign)
  and with ``min_term``/``settle`` from the flags (what a user waits);
- ``health``: a leader's health check turning bad (polled every
  ``--interval`` s, unhealthy after ``--after`` failures) to the successor's
  ``on_elected``.

Prints a summary line per measure and one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary

import aioelect
from aioelect._core import core_of


async def _preempt(
    a: aioelect.Elector, b: aioelect.Elector, name: str, min_term: float, settle: float
) -> float:
    a_in, b_in = anyio.Event(), anyio.Event()
    elected_at: list[float] = []

    async def on_a(term: aioelect.Term) -> None:
        a_in.set()

    async def on_b(term: aioelect.Term) -> None:
        elected_at.append(time.monotonic())
        b_in.set()

    la = a.leadership(name, "a", on_elected=on_a, min_term=min_term, settle=settle)
    lb = b.leadership(name, "b", on_elected=on_b, priority=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(la.run)
        await a_in.wait()
        arrived = time.monotonic()
        tg.start_soon(lb.run)
        await b_in.wait()
        la.stop()
        lb.stop()
    return elected_at[0] - arrived


async def _health(
    a: aioelect.Elector, b: aioelect.Elector, name: str, interval: float, after: int
) -> float:
    ok = [True]
    a_in, b_in = anyio.Event(), anyio.Event()
    elected_at: list[float] = []

    async def check() -> bool:
        return ok[0]

    async def on_a(term: aioelect.Term) -> None:
        a_in.set()

    async def on_b(term: aioelect.Term) -> None:
        elected_at.append(time.monotonic())
        b_in.set()

    la = a.leadership(
        name,
        "a",
        on_elected=on_a,
        health_check=check,
        health_interval=interval,
        health_timeout=interval,
        unhealthy_after=after,
    )
    lb = b.leadership(name, "b", on_elected=on_b)
    async with anyio.create_task_group() as tg:
        tg.start_soon(la.run)
        await a_in.wait()
        tg.start_soon(lb.run)
        view = core_of(a).mirror.view(name)
        while len(view.kvs) < 2:  # noqa: ASYNC110 (b queued; a bench may poll)
            await anyio.sleep(0.005)
        failed = time.monotonic()
        ok[0] = False
        await b_in.wait()
        la.stop()
        lb.stop()
    return elected_at[0] - failed


def _line(label: str, samples: list[float]) -> dict[str, float]:
    s = summary(samples)
    print(
        f"{label:<40} n={s['n']:<3} p50={s['p50'] * 1000:8.1f} ms  p90={s['p90'] * 1000:8.1f} ms"
        f"  max={s['max'] * 1000:8.1f} ms",
        flush=True,
    )
    return s


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        if args.endpoint:
            endpoints = [args.endpoint]
        else:
            etcd = await stack.enter_async_context(aioelect.EmbeddedEtcd())
            endpoints = etcd.endpoints
        prefix = f"/bench-pref-{time.time_ns()}"
        a = await stack.enter_async_context(
            aioelect.Elector(endpoints=endpoints, prefix=prefix, ttl=args.ttl)
        )
        b = await stack.enter_async_context(
            aioelect.Elector(endpoints=endpoints, prefix=prefix, ttl=args.ttl)
        )
        results: dict[str, Any] = {}
        samples = [await _preempt(a, b, f"p0-{i}", 0.0, 0.0) for i in range(args.trials)]
        results["preempt_mechanism"] = _line("preempt (min_term=0, settle=0)", samples)
        label = f"preempt (min_term={args.min_term:g}, settle={args.settle:g})"
        samples = [
            await _preempt(a, b, f"p1-{i}", args.min_term, args.settle)
            for i in range(max(1, args.trials // 4))
        ]
        results["preempt_configured"] = _line(label, samples)
        samples = [
            await _health(a, b, f"h-{i}", args.interval, args.after) for i in range(args.trials)
        ]
        label = f"health (interval={args.interval:g}, N={args.after})"
        results["health"] = _line(label, samples)
        results["settings"] = vars(args)
        return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", default=None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ttl", type=int, default=5)
    parser.add_argument("--min-term", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=0.2)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--after", type=int, default=2)
    out = anyio.run(main, parser.parse_args())
    print(json.dumps(out))
