"""Shard groups (never a test): time to balance and moves against the minimum.

``python bench/_shards.py`` runs, on an embedded etcd of its own, two
configurations: 5 members x 64 shards and 20 members x 1,024 shards. Every
member is a separate OS process (this file with ``--member``) with its own
Elector (TTL 2 s). For each configuration it measures the time until etcd
shows every shard owned and every live member owning floor(S/N) or ceil(S/N)
shards:

- cold start: N members (already connected) join at once;
- join: one more member joins;
- graceful leave: one member leaves (``ShardGroup.stop()``);
- crash: one member is SIGKILLed (its shards wait for its lease: TTL 2 s).

The ownership is replayed from one etcd watch of the whole prefix (every
owner change, in revision order), so "moves" counts every change of a
shard's owner from one member to another (a ping-pong would count twice),
and "minimum" is :func:`aioelect._shardplan.minimum_moves` of the owners and
members just before the change. Prints a table and one JSON object on its
last line (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import aioelect
from aioelect._connection import KV, Connection
from aioelect._embedded import EtcdProcess
from aioelect._exceptions import EtcdError
from aioelect._keys import prefix_range_end
from aioelect._shardinfo import members_prefix
from aioelect._shardplan import minimum_moves

GROUP = "bench"
PREFIX = "/bench-shards"
TTL = 2


# -- a member process ------------------------------------------------------------------------


async def member_main(args: argparse.Namespace) -> None:
    async with aioelect.Elector(endpoints=args.endpoint, prefix=PREFIX, ttl=TTL) as elector:
        group = elector.shards(GROUP, size=args.size, value=args.id, member_id=args.id)
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() != "go":
            return
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def serve() -> None:
                await group.run()
                done.set()

            tg.start_soon(serve)
            await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)  # EOF: leave
            group.stop()
            await done.wait()


# -- the driver ----------------------------------------------------------------------------


class Member:
    def __init__(self, ident: str, endpoint: str, size: int) -> None:
        self.ident = ident
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--member", "--id", ident, "--endpoint", endpoint,
             "--size", str(size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"member {self.ident} did not start: {line!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def leave(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Replay:
    """Each shard's owner, replayed from one watch of the prefix."""

    def __init__(self, conn: Connection, size: int) -> None:
        self.conn = conn
        self.size = size
        self.mpre = members_prefix(PREFIX, GROUP)
        self.spre = f"{PREFIX}/{GROUP}.shard-".encode()
        self.members: dict[int, str] = {}  # lease -> member id
        self.keys: dict[int, dict[bytes, KV]] = {i: {} for i in range(size)}
        self.owner: list[str | None] = [None] * size  # member id (None: unowned / unknown)
        self.moves = 0
        self.resyncs = 0
        self.changed = anyio.Event()

    def _apply(self, is_put: bool, kv: KV) -> int | None:
        if kv.key.startswith(self.mpre):
            if is_put:
                self.members[kv.lease] = kv.key[len(self.mpre) :].decode()
            else:
                self.members = {k: v for k, v in self.members.items() if k != kv.lease}
            return None
        if not kv.key.startswith(self.spre):
            return None
        i = int(kv.key[len(self.spre) :].split(b"/", 1)[0])
        if is_put:
            self.keys[i][kv.key] = kv
        else:
            self.keys[i].pop(kv.key, None)
        return i

    def _owner(self, i: int) -> str | None:
        kvs = self.keys[i]
        if not kvs:
            return None
        first = min(kvs.values(), key=lambda kv: (kv.create_revision, kv.key))
        return self.members.get(first.lease, f"~{first.lease:x}")

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except EtcdError as exc:  # e.g. a ping timeout on a loaded machine: resync
                print(f"replay: {exc}; resync", file=sys.stderr, flush=True)
                self.resyncs += 1

    async def _follow(self) -> None:
        root = f"{PREFIX}/".encode()
        result = await self.conn.range_all(root, prefix_range_end(root))
        self.members = {}
        self.keys = {i: {} for i in range(self.size)}
        for kv in result.kvs:
            self._apply(True, kv)
        self.owner = [self._owner(i) for i in range(self.size)]
        stream = self.conn.watch_stream(root, prefix_range_end(root), result.revision + 1)
        try:
            while True:
                batch = await stream.read()
                touched = {
                    i for is_put, kv in batch.events if (i := self._apply(is_put, kv)) is not None
                }
                for i in touched:
                    new = self._owner(i)
                    old = self.owner[i]
                    if new is not None and old is not None and new != old:
                        self.moves += 1
                    if new is not None or old is None or old not in self.members.values():
                        self.owner[i] = new
                    elif new is None:
                        self.owner[i] = None
                changed, self.changed = self.changed, anyio.Event()
                changed.set()
        finally:
            stream.close()

    def live(self) -> list[str]:
        return sorted(set(self.members.values()))

    def balanced(self, members: list[str]) -> bool:
        if any(o not in members for o in self.owner):
            return False
        counts = Counter(self.owner)
        sizes = [counts.get(m, 0) for m in members]
        return max(sizes) - min(sizes) <= 1

    async def wait_balanced(self, members: list[str], timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        report = time.monotonic() + 5
        while not self.balanced(members):
            with anyio.move_on_after(1.0):
                await self.changed.wait()
            now = time.monotonic()
            if now > report:
                report = now + 5
                counts = Counter(self.owner)
                print(
                    f"  waiting for balance over {len(members)}: {sorted(counts.items(), key=str)}",
                    file=sys.stderr,
                    flush=True,
                )
            if now > deadline:
                raise TimeoutError(f"not balanced over {members}: {Counter(self.owner)}")
        return time.monotonic()


async def measure(endpoint: str, n: int, size: int) -> dict[str, Any]:
    conn = Connection.create(endpoint, timeout=10)
    await conn.connect()
    members: list[Member] = []
    out: dict[str, Any] = {"members": n, "shards": size, "ttl": TTL, "processes": n + 1}
    try:
        replay = Replay(conn, size)
        async with anyio.create_task_group() as tg:
            tg.start_soon(replay.run)

            def start(ident: str) -> Member:
                m = Member(ident, endpoint, size)
                members.append(m)
                return m

            cold = [start(f"m{i:02d}") for i in range(n)]
            for m in cold:
                await anyio.to_thread.run_sync(m.wait_ready)
            ids = [m.ident for m in cold]
            t0 = time.monotonic()
            for m in cold:
                m.go()
            t1 = await replay.wait_balanced(ids)
            out["cold_start_s"] = round(t1 - t0, 3)
            out["cold_start_moves"] = replay.moves
            await anyio.sleep(0.5)

            async def step(name: str, action: Any, expect: list[str], crashed: str = "") -> None:
                # A crashed member's shards are claims once its lease expires, not moves.
                before = [None if o == crashed else o for o in replay.owner]
                moves0 = replay.moves
                live_after = expect
                minimum = minimum_moves(size, live_after, before)
                t0 = time.monotonic()
                action()
                t1 = await replay.wait_balanced(expect)
                await anyio.sleep(0.3)  # late moves (a ping-pong) would still count
                out[name] = {
                    "seconds": round(t1 - t0, 3),
                    "moves": replay.moves - moves0,
                    "minimum": minimum,
                }

            joiner = start(f"m{n:02d}")
            await anyio.to_thread.run_sync(joiner.wait_ready)
            await step("join", joiner.go, [*ids, joiner.ident])
            ids.append(joiner.ident)

            leaver = cold[1]
            ids.remove(leaver.ident)
            await step("graceful_leave", leaver.leave, list(ids))

            victim = cold[2]
            ids.remove(victim.ident)
            # A crash's shards are claims once the lease expires, not moves: 0 moves expected.
            await step("crash", victim.kill, list(ids), crashed=victim.ident)
            out["crash"]["claimed"] = sum(1 for o in replay.owner if o is not None)
            out["watch_resyncs"] = replay.resyncs
            tg.cancel_scope.cancel()
    finally:
        for m in members:
            m.cleanup()
        await conn.close()
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| members x shards | cold start | join (moves / min) | graceful leave | crash (TTL 2 s) |",
        "|---|---|---|---|---|",
    ]

    def cell(r: dict[str, Any], name: str) -> str:
        s = r[name]
        return f"{s['seconds']:.2f} s ({s['moves']} / {s['minimum']})"

    for r in results:
        rows.append(
            f"| {r['members']} x {r['shards']} | {r['cold_start_s']:.2f} s | {cell(r, 'join')} | "
            f"{cell(r, 'graceful_leave')} | {cell(r, 'crash')} |"
        )
    return "\n".join(rows)


async def driver(args: argparse.Namespace) -> dict[str, Any]:
    etcd = EtcdProcess(heartbeat_ms=10, election_ms=100)
    etcd.start()
    try:
        results = []
        for n, size in args.configs:
            results.append(await measure(etcd.endpoint, n, size))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        etcd.cleanup()
    print(table(results))
    summary = {"shards": results, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(summary))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--member", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--id", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument(
        "--config",
        action="append",
        dest="configs",
        type=lambda text: tuple(int(x) for x in text.split("x")),
        help="MEMBERSxSHARDS (repeatable; default 5x64 and 20x1024)",
    )
    args = p.parse_args()
    args.configs = args.configs or [(5, 64), (20, 1024)]
    if args.member:
        asyncio.run(member_main(args))
    else:
        summary = asyncio.run(driver(args))
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
