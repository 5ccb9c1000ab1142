"""What a graceful reload (gunicorn SIGHUP) costs the election: vacancy and hops.

Usage (from the repository root, in the venv with aioelect[test])::

    python bench/reload.py [--reloads 5] [--workers 3]

Starts an embedded etcd and ``gunicorn examples.apscheduler_app:app -w N -k
uvicorn_worker.UvicornWorker``, follows the election with ``Elector.observe``
(timestamps taken in this process as each change arrives), and sends SIGHUP
``--reloads`` times per configuration:

- ``resign``: the leader resigns on its way out (``graceful_leave=False``): the
  next candidate in line leads, typically another old worker that is leaving too;
- ``youngest``: the leader hands over to the youngest live candidate
  (``graceful_leave=True``, the default, ``leave_wait=0``);
- ``youngest+wait``: the same, waiting up to ``leave_wait=3`` s for a candidate
  when alone.

For each reload: the time without a leader (vacancy) from SIGHUP until a new
worker leads, how many leaders there were on the way (hops), and whether the
leader at the end is a new worker. Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aioelect
from aioelect._embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "resign": {"GRACEFUL_LEAVE": "0"},
    "youngest": {"GRACEFUL_LEAVE": "1", "LEAVE_WAIT": "0"},
    "youngest+wait": {"GRACEFUL_LEAVE": "1", "LEAVE_WAIT": "3"},
}


def workers(master: int) -> set[int]:
    """The master's worker processes."""
    pids = set()
    for children in Path(f"/proc/{master}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.add(int(pid))
    return pids


def pid_of(info: aioelect.LeaderInfo | None) -> int | None:
    """The pid in a node_identity() value."""
    return int(info.value.rsplit(b"-", 1)[1]) if info is not None else None


async def run_config(
    name: str, extra: dict[str, str], endpoint: str, reloads: int, n: int, tmp: Path
) -> dict[str, Any]:
    prefix = f"/bench-reload-{name}"
    env = dict(
        os.environ,
        AIOELECT_ENDPOINTS=endpoint,
        AIOELECT_PREFIX=prefix,
        AIOELECT_TTL="10",
        TICK_SECONDS="0.5",
        TICK_FILE=str(tmp / f"{name}.ticks"),
        PYTHONWARNINGS="ignore::DeprecationWarning",
        **extra,
    )
    port = free_port()
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115, ASYNC230
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gunicorn", "examples.apscheduler_app:app", "-w", str(n),
        "-k", "uvicorn_worker.UvicornWorker", "-b", f"127.0.0.1:{port}",
        env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    changes: list[tuple[float, int | None]] = []
    changed = asyncio.Event()
    results = []
    try:
        async with aioelect.Elector(endpoints=endpoint, prefix=prefix, ttl=10) as elector:

            async def follow() -> None:
                async with elector.observe("ticks") as leaders:
                    async for info in leaders:
                        changes.append((time.monotonic(), pid_of(info)))
                        changed.set()

            task = asyncio.create_task(follow())
            while not (changes and changes[-1][1] is not None and len(workers(proc.pid)) == n):
                changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.2)
            await asyncio.sleep(2)
            for _ in range(reloads):
                old = workers(proc.pid)
                start = len(changes)
                sent = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                deadline = sent + 60
                while time.monotonic() < deadline:
                    cur = workers(proc.pid)
                    last = changes[-1][1]
                    if not (cur & old) and last is not None and last not in old:
                        break
                    await asyncio.sleep(0.05)
                window = [changes[start - 1], *changes[start:]]
                vacancy = 0.0
                for (t0, leader), (t1, _) in itertools.pairwise(window):
                    if leader is None:
                        vacancy += t1 - t0
                leaders = [p for _, p in window[1:] if p is not None]
                results.append(
                    {
                        "vacancy_ms": round(vacancy * 1000, 1),
                        "hops": len(leaders),
                        "via_old_workers": sum(p in old for p in leaders),
                        "ends_on_new_worker": window[-1][1] not in old,
                    }
                )
                await asyncio.sleep(2)
            task.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        log.close()
    vac = [r["vacancy_ms"] for r in results]
    return {
        "config": name,
        "reloads": results,
        "vacancy_ms_median": statistics.median(vac),
        "vacancy_ms_max": max(vac),
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reloads", type=int, default=5)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with aioelect.EmbeddedEtcd() as etcd:
            for name in args.configs:
                result = await run_config(
                    name, CONFIGS[name], etcd.endpoint, args.reloads, args.workers, Path(tmp)
                )
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
