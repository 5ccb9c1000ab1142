"""Big prefixes (never a test): entering an Elector, and resyncing after a broken watch.

``python bench/_limits.py [--runs 5]`` starts its own etcd (the embedded binary,
etcd's default flags: --max-request-bytes 1.5 MiB), fills one prefix per case,
and measures, ``--runs`` times each:

- ``enter``: ``async with Elector(...)`` (connect, grant the lease, read the
  whole prefix in pages at one revision, start the watch);
- ``load``: one resync read of the running Elector's mirror (``Mirror.load``:
  the paginated read plus the diff against the mirror);
- ``resync``: from resetting every connection of the Elector (through a
  FaultProxy) to its mirror having caught up with a write made after the reset
  (detection, reconnection, backoff of 50 ms, the paginated read and the diff).

Cases: 10,000 elections of one candidate with a 1 KiB value (~10 MiB), and one
election of 5 candidates with 1 MiB values (5 MiB). Both are over gRPC's
default 4 MiB receive limit, which made entering fail before pagination.
Prints a table and, on the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aioelect
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect._embedded import EtcdProcess
from aioelect.testing import FaultProxy

KiB = 1024
MiB = 1024 * KiB

CASES = {
    "10000 x 1 KiB": (10_000, KiB),
    "5 x 1 MiB": (5, MiB),
}


async def fill(raw: Connection, prefix: str, n: int, size: int) -> None:
    """``n`` elections of one candidate each (or, for big values, one election of ``n``)."""
    batch: list[Any] = []
    for i in range(n):
        name = f"e{i}" if size < MiB else "big"
        batch.append(raw.op_put(f"{prefix}/{name}/{i + 1:x}".encode(), bytes([65 + i % 26]) * size))
        if len(batch) == 128 or len(batch) * size >= 512 * KiB or i == n - 1:
            await raw.txn([], batch)
            batch = []


async def run_case(
    endpoint: str, raw: Connection, prefix: str, n: int, runs: int
) -> dict[str, Any]:
    host, _, port = endpoint.rpartition(":")
    enter: list[float] = []
    load: list[float] = []
    resync: list[float] = []
    for _ in range(runs):
        with FaultProxy(host, int(port)) as proxy:
            elector = aioelect.Elector(endpoints=[proxy.endpoint], prefix=prefix, ttl=10)
            t0 = time.perf_counter()
            async with elector:
                enter.append(time.perf_counter() - t0)
                mirror = core_of(elector).mirror
                mirrored = sum(len(view.kvs) for view in mirror.views.values())
                assert mirrored == n, f"mirrored {mirrored} candidates, not {n}"
                t0 = time.perf_counter()
                await mirror.load()
                load.append(time.perf_counter() - t0)
                # The watch is live (it delivered a write made after the entry).
                marker = f"{prefix}/marker/1".encode()
                resp = await raw.txn([], [raw.op_put(marker, b"x")])
                await mirror.sync(int(resp.header.revision))
                before = mirror.resyncs
                t0 = time.perf_counter()
                proxy.reset()
                # A write after the reset: the mirror reaches it through the resync (the
                # broken watch is replaced only after it).
                resp = await raw.txn([], [raw.op_delete(marker)])
                await mirror.sync(int(resp.header.revision))
                resync.append(time.perf_counter() - t0)
                assert mirror.resyncs == before + 1, "the watch did not break"
    return {"enter": enter, "load": load, "resync": resync}


def fmt(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples) * 1000:7.1f} ms  "
        f"min {min(samples) * 1000:7.1f}  max {max(samples) * 1000:7.1f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description="Big prefixes: enter and resync.")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    proc = EtcdProcess()
    proc.start()
    results: dict[str, Any] = {}
    try:
        raw = Connection.create(proc.endpoint, timeout=30)
        await raw.connect()
        try:
            for i, (case, (n, size)) in enumerate(CASES.items()):
                prefix = f"/bench-limits/{i}"
                await fill(raw, prefix, n, size)
                results[case] = await run_case(proc.endpoint, raw, prefix, n, args.runs)
        finally:
            await raw.close()
    finally:
        proc.cleanup()
    for case, r in results.items():
        print(f"{case}:")
        for what in ("enter", "load", "resync"):
            print(f"  {what:6s} {fmt(r[what])}")
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
