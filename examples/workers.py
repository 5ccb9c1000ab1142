"""Worker processes that all do work, while exactly one of them runs the scheduler.

::

    export AIOELECT_ENDPOINTS=127.0.0.1:2379
    python examples/workers.py --workers 3          # a supervisor and 3 worker processes
    python examples/workers.py --worker-id w1       # one worker (one per container or VM)

Every worker is an asyncio process with its own :class:`aioelect.Elector`
and runs two things at once:

- the scheduler, only while it leads the election ``scheduler``: it keeps a
  backlog of jobs in etcd (``{prefix}-jobs/``), every write fenced by its
  term (:meth:`aioelect.Term.transaction`), so a deposed scheduler cannot add
  jobs any more;
- the work loop, always: it claims a pending job with a transaction that
  deletes it (only one claimer succeeds) and does it.

Stopping the scheduling worker (SIGTERM or SIGINT; ``kill`` its pid) makes it
resign on its way out, and another worker runs the scheduler within
milliseconds; a crashed one (SIGKILL) is replaced once its lease expires
(``--ttl``). SIGTERM or SIGINT to the supervisor stops every worker.

Each worker prints one JSON object per line: ``ready``, ``scheduler-start``,
``scheduler-stop``, ``scheduled``, ``done`` and ``exit`` events.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import anyio

import aioelect

ELECTION = "scheduler"
BACKLOG = 6  # jobs the scheduler keeps pending
JOB_SECONDS = 0.1  # how long a job "works"


def emit(event: str, worker: str, **fields: Any) -> None:
    """Print one event as a JSON line (one write, so lines of workers never mix)."""
    line = json.dumps(
        {"event": event, "worker": worker, "pid": os.getpid(), "t": time.time(), **fields}
    )
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def schedule(elector: aioelect.Elector, term: aioelect.Term, jobs: str, me: str) -> None:
    """While ``term`` leads: keep ``BACKLOG`` jobs pending, writing them fenced by the term."""
    client = elector.client
    tx = client.transactions
    seq = 0
    while True:
        pending = len(await client.get_prefix(jobs.encode(), keys_only=True))
        for _ in range(BACKLOG - pending):
            seq += 1
            # Keys sort by term, then sequence: a later scheduler's jobs come after.
            key = f"{jobs}{term.token:012d}-{seq:06d}"
            value = json.dumps({"by": me, "token": term.token})
            try:
                await term.transaction(success=[tx.put(key.encode(), value.encode())])
            except aioelect.NotLeader:
                return  # the term ended: this job was not written
            emit("scheduled", me, job=key, token=term.token)
        await anyio.sleep(0.05)


async def run_scheduler(elector: aioelect.Elector, jobs: str, me: str) -> None:
    """Campaign; run the scheduler while leading; campaign again, until cancelled."""
    while True:
        try:
            async with elector.hold(ELECTION, me) as term:
                emit("scheduler-start", me, token=term.token)
                try:
                    await schedule(elector, term, jobs, me)
                finally:
                    # Printed before the block resigns, so before any successor starts.
                    emit("scheduler-stop", me, token=term.token)
        except aioelect.LeadershipLost as exc:
            emit("scheduler-lost", me, reason=str(exc))


async def work(elector: aioelect.Elector, jobs: str, me: str) -> None:
    """Claim pending jobs (deleting the key wins the claim) and do them, until cancelled."""
    client = elector.client
    tx = client.transactions
    while True:
        pending = [kv.key for kv in await client.get_prefix(jobs.encode(), keys_only=True)]
        if not pending:
            await anyio.sleep(0.05)
            continue
        key = random.choice(pending)  # fewer collisions than all taking the oldest
        won, results = await client.transaction(
            compare=[tx.version(key) > 0],
            success=[tx.get(key), tx.delete(key)],
            failure=[],
        )
        if not won or not results[0]:
            continue  # another worker claimed it first
        job = json.loads(results[0][0][0])
        await anyio.sleep(JOB_SECONDS)  # the work
        emit("done", me, job=key.decode(), scheduled_by=job["by"], token=job["token"])


async def worker(args: argparse.Namespace) -> None:
    """One worker process: an elector, the scheduler campaign and the work loop."""
    me = args.worker_id
    jobs = f"{args.prefix}-jobs/"
    # The receiver stays open until the end, so that a second signal (a
    # terminal's Ctrl-C reaches the supervisor too, which forwards it) cannot
    # kill the worker while it resigns.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with aioelect.Elector(
            endpoints=args.endpoints, prefix=args.prefix, ttl=args.ttl
        ) as elector:
            emit("ready", me)
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_scheduler, elector, jobs, me)
                tg.start_soon(work, elector, jobs, me)
                async for signum in signals:
                    emit("stopping", me, signal=signal.Signals(signum).name)
                    break
                # Cancelling the scheduler's block resigns at once (the next
                # worker takes over now); leaving the elector revokes the lease.
                tg.cancel_scope.cancel()
    emit("exit", me)


def supervise(args: argparse.Namespace) -> int:
    """Start ``args.workers`` worker processes; forward SIGTERM/SIGINT; wait for them all."""
    common = ["--prefix", args.prefix, "--ttl", str(args.ttl)]
    if args.endpoints:
        common += ["--endpoints", args.endpoints]
    procs = [
        subprocess.Popen([sys.executable, __file__, "--worker-id", f"w{i}", *common])
        for i in range(1, args.workers + 1)
    ]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return 0 if all(code == 0 for code in codes) else 1


def main() -> int:
    """Parse the options; run a supervisor (``--workers N``) or one worker (``--worker-id``)."""
    p = argparse.ArgumentParser(description="Workers with one leader-elected scheduler.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--workers", type=int, default=3, help="start N workers (default 3)")
    mode.add_argument("--worker-id", help="run one worker with this id")
    p.add_argument("--endpoints", default=os.environ.get("AIOELECT_ENDPOINTS"))
    p.add_argument("--prefix", default=os.environ.get("AIOELECT_PREFIX", "/aioelect-workers"))
    p.add_argument("--ttl", type=int, default=int(os.environ.get("AIOELECT_TTL", "10")))
    args = p.parse_args()
    if args.worker_id is None:
        return supervise(args)
    anyio.run(worker, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
