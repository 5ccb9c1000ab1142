"""N workers consuming S partitions of a queue, each partition owned by exactly one worker.

::

    export AIOELECT_ENDPOINTS=127.0.0.1:2379
    python examples/shard_workers.py --workers 3 --partitions 16 --items 10   # a demo run
    python examples/shard_workers.py --worker-id w1                           # one worker, forever

The queue lives in etcd under ``{prefix}-queue/``: item ``n`` of partition
``p`` is ``items/{p:04d}/{n:08d}``, and ``offset/{p:04d}`` is the next item
to process. Each worker joins the shard group ``queue`` (one shard per
partition) and, for every partition it owns, processes the items in order.
Processing an item is one transaction fenced by the partition's term
(:meth:`aioelect.Term.transaction`): it advances the offset only if it still
has the value read and only while this worker owns the partition, and records
who processed the item. A worker that lost a partition (paused, cut off,
rebalanced away) cannot process anything of it any more, so every item is
processed exactly once, in order, whatever the moves.

The demo run starts ``--workers`` workers (each with its own Elector, as
separate processes would have), fills the queue, lets one worker leave
gracefully half-way (its partitions move to the others in milliseconds) and
exits 0 once every item is processed, after printing one JSON line per event
(``assigned``, ``revoked``, ``processed``, ``left``) and a ``summary``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import anyio

import aioelect

GROUP = "queue"


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def keys(queue: str, partition: int, n: int) -> tuple[bytes, bytes, bytes]:
    """The offset key, item ``n``'s key and its 'processed' record of a partition."""
    return (
        f"{queue}offset/{partition:04d}".encode(),
        f"{queue}items/{partition:04d}/{n:08d}".encode(),
        f"{queue}done/{partition:04d}/{n:08d}".encode(),
    )


async def consume(elector: aioelect.Elector, shard: aioelect.Shard, queue: str, me: str) -> None:
    """Process partition ``shard.index`` in order while this worker owns it."""
    client = elector.client
    tx = client.transactions
    offset_key = keys(queue, shard.index, 0)[0]
    while True:
        # (aetcd's own errors from these reads end on_assigned: aioelect logs them,
        # resigns the partition and claims it again after a back-off.)
        got = await client.get(offset_key)
        n = int(got.value) if got is not None else 0
        _, item_key, done_key = keys(queue, shard.index, n)
        item = await client.get(item_key)
        if item is None:
            await anyio.sleep(0.05)  # nothing queued: poll (a watch would do too)
            continue
        # Fenced by the shard's term, and guarded by the offset we read. Shielded: an
        # item begun is finished (or refused) before the partition is handed over,
        # so its outcome is known (the handover waits for it: the per-shard barrier).
        same = tx.value(offset_key) == str(n).encode() if n else tx.version(offset_key) == 0
        with anyio.CancelScope(shield=True):
            try:
                ok, _ = await shard.term.transaction(
                    compare=[same],
                    success=[
                        tx.put(offset_key, str(n + 1).encode()),
                        tx.put(done_key, me.encode()),
                    ],
                )
            except aioelect.NotLeader:
                return  # no longer ours: the next owner goes on from the offset
            except aioelect.EtcdError:
                ok = False  # e.g. etcd unreachable: read the offset again and retry
            if ok:
                emit("processed", worker=me, partition=shard.index, item=n, token=shard.token)


async def worker(
    endpoints: str, prefix: str, ttl: int, partitions: int, me: str, leave: anyio.Event
) -> None:
    """One worker: join the group, consume owned partitions until ``leave`` is set."""
    queue = f"{prefix}-queue/"
    async with aioelect.Elector(endpoints=endpoints, prefix=prefix, ttl=ttl) as elector:

        async def assigned(shard: aioelect.Shard) -> None:
            emit("assigned", worker=me, partition=shard.index, token=shard.token)
            await consume(elector, shard, queue, me)  # cancelled when the shard moves

        async def revoked(shard: aioelect.Shard) -> None:
            emit("revoked", worker=me, partition=shard.index, token=shard.token)

        group = elector.shards(
            GROUP,
            size=partitions,
            value=me,
            member_id=me,
            on_assigned=assigned,
            on_revoked=revoked,
        )
        async with group:  # leaving the block hands every partition over at once
            await leave.wait()
    emit("left", worker=me)


async def produce(endpoints: str, prefix: str, partitions: int, items: int) -> None:
    async with aioelect.Elector(endpoints=endpoints, prefix=prefix, ttl=5) as elector:
        for n in range(items):
            for p in range(partitions):
                _, item_key, _ = keys(f"{prefix}-queue/", p, n)
                await elector.client.put(item_key, f"payload {p}/{n}".encode())


async def processed(endpoints: str, prefix: str) -> dict[bytes, bytes]:
    async with aioelect.Elector(endpoints=endpoints, prefix=prefix, ttl=5) as elector:
        done = await elector.client.get_prefix(f"{prefix}-queue/done/".encode())
        return {kv.key: kv.value for kv in done}


async def until_processed(args: argparse.Namespace, count: int) -> dict[bytes, bytes]:
    """Poll the queue's 'processed' records until there are ``count`` of them."""
    while True:
        done = await processed(args.endpoints, args.prefix)
        if len(done) >= count:
            return done
        await anyio.sleep(0.1)


async def demo(args: argparse.Namespace) -> int:
    total = args.partitions * args.items
    leaves = {f"w{i + 1}": anyio.Event() for i in range(args.workers)}
    done: dict[bytes, bytes] = {}
    async with anyio.create_task_group() as tg:
        for me, leave in leaves.items():
            tg.start_soon(worker, args.endpoints, args.prefix, args.ttl, args.partitions, me, leave)
        await produce(args.endpoints, args.prefix, args.partitions, args.items)
        with anyio.fail_after(60):
            await until_processed(args, total // 2)
            leaves["w1"].set()  # one worker leaves half-way: its partitions move on
            done = await until_processed(args, total)
        for leave in leaves.values():
            leave.set()
    by_worker: dict[str, int] = {}
    for value in done.values():
        by_worker[value.decode()] = by_worker.get(value.decode(), 0) + 1
    emit("summary", items=total, processed=len(done), by_worker=by_worker)
    return 0 if len(done) == total else 1


async def forever(args: argparse.Namespace) -> int:
    await worker(
        args.endpoints, args.prefix, args.ttl, args.partitions, args.worker_id, anyio.Event()
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--endpoints", default=os.environ.get("AIOELECT_ENDPOINTS"))
    p.add_argument("--prefix", default=os.environ.get("AIOELECT_PREFIX", "/aioelect-shards"))
    p.add_argument("--ttl", type=int, default=int(os.environ.get("AIOELECT_TTL", "10")))
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--workers", type=int, default=3, help="demo: how many workers")
    p.add_argument("--items", type=int, default=10, help="demo: items per partition")
    p.add_argument("--worker-id", help="run one worker with this id until stopped")
    args = p.parse_args()
    if not args.endpoints:
        p.error("no etcd: pass --endpoints or set AIOELECT_ENDPOINTS")
    try:
        return anyio.run(forever if args.worker_id else demo, args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
