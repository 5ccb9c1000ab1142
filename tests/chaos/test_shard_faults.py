"""Shard groups of real processes under faults: exclusive (etcd's history), balanced again.

Each member is an OS process (``shard_member.py``) owning shards of a group of
64 and making fenced writes for each owned shard. The evidence is etcd's own
history: :func:`_support.analyse` replays who owned each shard at every
revision and checks that every fenced write landed in its own term; the
members' reported ownership periods (one monotonic clock) never overlap.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from _support import (
    HERE,
    CandidateProc,
    Event,
    History,
    Procs,
    analyse,
    check_intervals,
    check_logs_against_history,
    explain_overlaps,
    leading_periods,
    report,
)
from helpers import eventually

from aioelect._connection import Connection
from aioelect._embedded import EtcdProcess
from aioelect._exceptions import EtcdError
from aioelect._keys import prefix_range_end
from aioelect._shardinfo import members_prefix
from aioelect.testing import EtcdServer, FaultProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos]

SIZE = 64
GROUP = "jobs"
MEMBER = HERE / "shard_member.py"


class ShardProc(CandidateProc):
    """One ``shard_member.py`` process (CandidateProc's event reader, pause and kill)."""

    def __init__(
        self, *, ident: str, endpoints: Iterable[str], prefix: str, ttl: int, log_dir: Path
    ) -> None:
        self.ident = ident
        self.stderr_path = log_dir / f"{ident}-{uuid.uuid4().hex[:6]}.stderr"
        cmd = [
            sys.executable, str(MEMBER), "--id", ident, "--endpoints", ",".join(endpoints),
            "--prefix", prefix, "--group", GROUP, "--size", str(SIZE), "--ttl", str(ttl),
        ]  # fmt: skip
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=HERE
            )
        self.events = []
        self.killed_at = None
        self.paused_at = None
        self.pauses = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"stdout {ident}", daemon=True)
        self._reader.start()


def spawn(procs: Procs, **kwargs: object) -> ShardProc:
    proc = ShardProc(log_dir=procs.log_dir, **kwargs)  # type: ignore[arg-type]
    procs.all.append(proc)
    return proc


async def ownership(conn: Connection, prefix: str) -> dict[int, str]:
    """Each shard's owner (member id) in one read of etcd."""
    root = f"{prefix}/".encode()
    kvs = (await conn.range_all(root, prefix_range_end(root))).kvs
    mpre = members_prefix(prefix, GROUP)
    by_lease = {kv.lease: kv.key[len(mpre) :].decode() for kv in kvs if kv.key.startswith(mpre)}
    first: dict[int, tuple[int, bytes, int]] = {}
    spre = f"{prefix}/{GROUP}.shard-".encode()
    for kv in kvs:
        if kv.key.startswith(spre):
            i = int(kv.key[len(spre) :].split(b"/", 1)[0])
            rank = (kv.create_revision, kv.key, kv.lease)
            if i not in first or rank < first[i]:
                first[i] = rank
    return {i: by_lease.get(r[2], "?") for i, r in first.items()}


async def balanced(
    conn: Connection, prefix: str, members: list[str], timeout: float
) -> dict[int, str]:
    """Wait until etcd shows all shards owned by ``members``, each with 64/N +- 1."""
    last: dict[int, str] = {}

    async def check() -> bool:
        nonlocal last
        try:
            last = await ownership(conn, prefix)
        except EtcdError:  # etcd restarting
            return False
        if len(last) != SIZE or set(last.values()) != set(members):
            return False
        counts = Counter(last.values()).values()
        return max(counts) - min(counts) <= 1

    try:
        await eventually(check, timeout=timeout, what=f"balance over {members}")
    except AssertionError:
        raise AssertionError(f"not balanced over {members}: {Counter(last.values())}") from None
    return last


def verify(procs: Procs, events: list[Event], history: History, lines: list[str]) -> None:
    """``events``: taken before the history's end (later writes are not in it)."""
    analysis = analyse(history)
    assert not analysis.violations, analysis.violations[:5]
    assert not check_logs_against_history(events, analysis)
    kills = {i: p.killed_at for i, p in enumerate(procs.all) if p.killed_at is not None}
    periods, _ = leading_periods(events, kills)
    # A term starts when its campaign wins (its session live) and ends at the latest at
    # its renew deadline: a period ending before it starts is a measurement error.
    inverted = [p for p in periods if p.end < p.start]
    assert not inverted, inverted[:5]
    problems = check_intervals(periods)
    if problems:
        timeline = [
            {"t": p.killed_at, "action": "kill", "id": p.ident}
            for p in procs.all
            if p.killed_at is not None
        ] + [
            {"t": t, "action": action, "id": p.ident}
            for p in procs.all
            for stop, cont in p.pauses
            for t, action in ((stop, "pause"), (cont, "resume"))
        ]
        story = explain_overlaps(problems, events, timeline, history)
        raise AssertionError(f"{problems[:5]}\n{story}")
    lines.append(f"etcd history: {analysis.summary()}")


async def test_shards_under_process_and_network_faults(
    procs: Procs, etcd: EtcdServer, fault_proxy: FaultProxy, etcd_prefix: str, raw: Connection
) -> None:
    """64 shards over 4 processes (one behind a proxy): SIGKILL, SIGSTOP past the TTL,
    a blackhole past the TTL, a join and a graceful leave; balanced within one after each,
    the leave moves only the leaver's shards, and no shard had two owners (etcd's history)."""
    ttl = 2
    bound = ttl + 8.0  # TTL, claim delay, re-grant back-off, process wake-up: generous
    with report("shards: 4 processes x 64 shards, kill/stop/blackhole/join/leave") as lines:
        async with History(raw, etcd_prefix) as history:
            common = dict(prefix=etcd_prefix, ttl=ttl)
            a = spawn(procs, ident="a", endpoints=etcd.endpoints, **common)
            b = spawn(procs, ident="b", endpoints=etcd.endpoints, **common)
            c = spawn(procs, ident="c", endpoints=etcd.endpoints, **common)
            spawn(procs, ident="d", endpoints=[fault_proxy.endpoint], **common)
            t0 = time.monotonic()
            await balanced(raw, etcd_prefix, ["a", "b", "c", "d"], timeout=20)
            lines.append(f"cold start of 4 processes balanced in {time.monotonic() - t0:.2f} s")

            t0 = time.monotonic()
            c.kill()
            await balanced(raw, etcd_prefix, ["a", "b", "d"], timeout=bound)
            lines.append(f"SIGKILL: balanced again in {time.monotonic() - t0:.2f} s")

            t0 = time.monotonic()
            b.pause()
            await balanced(raw, etcd_prefix, ["a", "d"], timeout=bound)
            b.resume()
            await b.wait("woke")
            await balanced(raw, etcd_prefix, ["a", "b", "d"], timeout=bound)
            lines.append(
                f"SIGSTOP past the TTL and back: balanced in {time.monotonic() - t0:.2f} s"
            )

            t0 = time.monotonic()
            fault_proxy.blackhole()
            await balanced(raw, etcd_prefix, ["a", "b"], timeout=bound)
            fault_proxy.heal()
            await balanced(raw, etcd_prefix, ["a", "b", "d"], timeout=bound + 5)
            lines.append(
                f"blackhole past the TTL and back: balanced in {time.monotonic() - t0:.2f} s"
            )

            t0 = time.monotonic()
            spawn(procs, ident="e", endpoints=etcd.endpoints, **common)
            before = await balanced(raw, etcd_prefix, ["a", "b", "d", "e"], timeout=bound)
            lines.append(f"join: balanced in {time.monotonic() - t0:.2f} s")

            t0 = time.monotonic()
            await anyio.to_thread.run_sync(a.exit)
            after = await balanced(raw, etcd_prefix, ["b", "d", "e"], timeout=bound)
            lines.append(f"graceful leave: balanced in {time.monotonic() - t0:.2f} s")
            moved = {i for i in range(SIZE) if before[i] != after[i]}
            assert moved == {i for i in range(SIZE) if before[i] == "a"}
            assert a.proc.returncode == 0
            await anyio.sleep(0.3)  # a few fenced writes in the final layout
            events = procs.events()
        verify(procs, events, history, lines)


async def test_shards_survive_an_etcd_restart(
    procs: Procs, etcd_process: EtcdProcess, etcd_prefix: str
) -> None:
    """etcd killed and restarted (data kept): the members own all 64 shards again, balanced,
    and no shard had two owners across the restart (etcd's history)."""
    proc = etcd_process
    conn = Connection.create([proc.endpoint], timeout=5)
    await conn.connect()
    try:
        with report("shards: etcd restart under 3 processes x 64 shards") as lines:
            async with History(conn, etcd_prefix) as history:
                common = dict(endpoints=[proc.endpoint], prefix=etcd_prefix, ttl=2)
                for ident in ("a", "b", "c"):
                    spawn(procs, ident=ident, **common)
                await balanced(conn, etcd_prefix, ["a", "b", "c"], timeout=20)
                proc.kill()
                await anyio.sleep(1.0)
                t0 = time.monotonic()
                await anyio.to_thread.run_sync(proc.restart)
                await balanced(conn, etcd_prefix, ["a", "b", "c"], timeout=20)
                lines.append(f"etcd down 1 s: balanced {time.monotonic() - t0:.2f} s after restart")
                await anyio.sleep(0.3)
                events = procs.events()
            verify(procs, events, history, lines)
    finally:
        await conn.close()
