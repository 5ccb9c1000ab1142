"""Helpers shared by the benchmark scripts: statistics, raw etcd clients, process meters."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import resource
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aetcd
from aetcd import rpc

from aioelect._keys import prefix_range_end

PAGE = os.sysconf("SC_PAGE_SIZE")


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns: the same clock in every process of the machine."""
    return time.monotonic_ns()


def percentiles(samples: Sequence[float]) -> list[float]:
    """The 1st to 99th percentiles (index ``q - 1``), linearly interpolated between the
    closest ranks (:func:`statistics.quantiles`' inclusive method, numpy's default)."""
    if len(samples) < 2:  # quantiles() needs two points before Python 3.13
        return [samples[0] if samples else math.nan] * 99
    return statistics.quantiles(samples, n=100, method="inclusive")


def summary(samples: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, min, max, mean of a list of samples."""
    cuts = percentiles(samples)
    return {
        "n": len(samples),
        "p50": cuts[49],
        "p90": cuts[89],
        "p99": cuts[98],
        "min": min(samples) if samples else math.nan,
        "max": max(samples) if samples else math.nan,
        "mean": statistics.fmean(samples) if samples else math.nan,
    }


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of another process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class GCMeter:
    """Pauses of the garbage collector, by generation, while installed."""

    pauses: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: [], 2: []})
    _start: float = 0.0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._start)

    def __enter__(self) -> GCMeter:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for gen, p in self.pauses.items():
            out[f"gen{gen}_count"] = len(p)
            out[f"gen{gen}_max_ms"] = max(p) * 1e3 if p else 0.0
            out[f"gen{gen}_total_ms"] = sum(p) * 1e3
        return out


class PySpy:
    """py-spy sampling this very process, between start() and stop() (raw collapsed stacks)."""

    def __init__(self, path: str, rate: int = 250) -> None:
        self.path = path
        self.rate = rate
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
        self._proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(os.getpid()), "--rate", str(self.rate),
            "--nonblocking", "--format", "raw", "-o", self.path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # let it attach

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGINT)  # py-spy writes what it has
            await self._proc.wait()


async def raw_client(endpoint: str) -> aetcd.Client:
    """A plain aetcd client (the baseline's: no aioelect code in its path)."""
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), timeout=10)
    await client.connect()
    return client


async def count_keys(client: aetcd.Client, prefix: bytes) -> int:
    """How many keys are under ``prefix`` (a linearizable count)."""
    resp = await client.kvstub.Range(
        rpc.RangeRequest(key=prefix, range_end=prefix_range_end(prefix), count_only=True),
        timeout=10,
    )
    return int(resp.count)


async def wait_keys(
    client: aetcd.Client, prefix: bytes, n: int, timeout: float = 30.0, poll: float = 0.005
) -> None:
    """Wait until exactly ``n`` keys are under ``prefix``."""
    deadline = time.monotonic() + timeout
    while await count_keys(client, prefix) != n:
        if time.monotonic() > deadline:
            got = await count_keys(client, prefix)
            raise TimeoutError(f"{prefix!r}: {got} keys, waited for {n}")
        await asyncio.sleep(poll)


class RawWatcher:
    """One raw gRPC Watch stream on a prefix that resolves futures per (key, event type)."""

    def __init__(self, client: aetcd.Client, prefix: bytes) -> None:
        self._call = rpc.WatchStub(client.channel).Watch()
        self._prefix = prefix
        self._waiters: dict[tuple[bytes, int], asyncio.Future[int]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._call.write(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=self._prefix, range_end=prefix_range_end(self._prefix)
                )
            )
        )
        resp = await self._call.read()
        assert resp.created
        self._task = asyncio.get_running_loop().create_task(self._read())

    def expect(self, key: bytes, delete: bool) -> asyncio.Future[int]:
        """A future resolved with the arrival time (ns) of the next such event on ``key``."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[(key, rpc.Event.DELETE if delete else rpc.Event.PUT)] = fut
        return fut

    async def _read(self) -> None:
        while True:
            resp = await self._call.read()
            t = now_ns()
            for ev in resp.events:
                fut = self._waiters.pop((ev.kv.key, ev.type), None)
                if fut is not None and not fut.done():
                    fut.set_result(t)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._call.cancel()
