"""Failover between the members of a 3-member cluster at the connection level.

A ``Connection.create(cluster.endpoints)`` client uses one member at a time
(gRPC pick_first over all endpoints). When that member is killed (SIGKILL)
or hangs (SIGSTOP), requests must succeed again through another member within
a bounded time, without any action by the caller. Recovery times are printed
(run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from helpers import eventually

from aioelect import EtcdError, EtcdUnavailable
from aioelect._connection import Connection
from aioelect._embedded import EtcdProcess
from aioelect.testing import EtcdCluster

#: Deadline of each request; a failover must complete within RECOVERY_BOUND.
REQUEST_TIMEOUT = 1.0
#: gRPC drops a hung member after its keepalive (5 s ping + 3 s timeout): 15 s is ample.
RECOVERY_BOUND = 15.0

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds the member in use through /proc"
)


def connected_ports() -> set[int]:
    """Remote ports of this process's ESTABLISHED TCP connections (from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                    ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def connected_members(cluster: EtcdCluster) -> list[EtcdProcess]:
    """The members this process has an established TCP connection to."""
    ports = connected_ports()
    return [m for m in cluster.members if m.client_port in ports]


def member_in_use(cluster: EtcdCluster) -> EtcdProcess:
    """The one member this process's client is connected to (pick_first: one at a time)."""
    used = connected_members(cluster)
    assert len(used) == 1, f"expected one connected member, got {[m.name for m in used]}"
    return used[0]


def assert_moved_off(cluster: EtcdCluster, victim: EtcdProcess) -> None:
    """The client is connected to a member other than ``victim`` (a reconnect attempt to a
    paused victim may briefly hold a TCP connection to it as well)."""
    assert [m for m in connected_members(cluster) if m is not victim]


@asynccontextmanager
async def cluster_client(cluster: EtcdCluster) -> AsyncIterator[Connection]:
    """A connection to every member of ``cluster``, closed on exit."""
    conn = Connection.create(cluster.endpoints, timeout=REQUEST_TIMEOUT)
    try:
        await conn.connect()
        yield conn
    finally:
        await conn.close()


async def put_until_success(
    conn: Connection, key: bytes, value: bytes, since: float
) -> tuple[float, list[str]]:
    """Retry a put until one succeeds; return the seconds from ``since`` to that success
    and the errors of the failed attempts.

    Fails the test if none succeeds within RECOVERY_BOUND of ``since``.
    """
    failures: list[str] = []

    async def put() -> bool:
        try:
            await conn.txn([], [Connection.op_put(key, value)])
        except EtcdError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            return False
        return True

    await eventually(
        put,
        since + RECOVERY_BOUND - time.monotonic(),
        lambda: f"a request succeeding ({len(failures)} failures, last: {failures[-1:]})",
        interval=0.02,  # a fast-failing request must not spin
    )
    return time.monotonic() - since, failures


async def read(conn: Connection, key: bytes) -> bytes | None:
    """The value of ``key`` (a linearizable read), None when absent."""
    kvs = (await conn.range(key)).kvs
    return kvs[0].value if kvs else None


@pytest.mark.asyncio
async def test_client_survives_sigkill_of_its_member(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    """After SIGKILL of the member in use, a request succeeds through another within 15 s."""
    key = f"{etcd_prefix}/kill".encode()
    async with cluster_client(etcd_cluster) as conn:
        await conn.txn([], [Connection.op_put(key, b"before")])
        victim = member_in_use(etcd_cluster)
        start = time.monotonic()
        victim.kill()
        recovery, failed = await put_until_success(conn, key, b"after", start)
        print(f"\nfailover after SIGKILL of {victim.name}: {recovery * 1000:.0f} ms, {failed}")
        assert recovery < RECOVERY_BOUND
        assert await read(conn, key) == b"after"
        assert_moved_off(etcd_cluster, victim)


@pytest.mark.asyncio
async def test_client_survives_sigstop_of_its_member(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    """After SIGSTOP of the member in use, a request succeeds via another within 15 s."""
    key = f"{etcd_prefix}/pause".encode()
    async with cluster_client(etcd_cluster) as conn:
        await conn.txn([], [Connection.op_put(key, b"before")])
        victim = member_in_use(etcd_cluster)
        start = time.monotonic()
        victim.pause()
        try:
            recovery, failed = await put_until_success(conn, key, b"after", start)
            print(f"\nfailover after SIGSTOP of {victim.name}: {recovery * 1000:.0f} ms")
            print(f"failed attempts: {len(failed)}, last {failed[-1:]}")
            assert recovery < RECOVERY_BOUND
            assert await read(conn, key) == b"after"
            assert_moved_off(etcd_cluster, victim)
        finally:
            victim.resume()


@pytest.mark.asyncio
async def test_first_endpoint_down_and_full_outage(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    """A dead first endpoint is skipped; a full outage is EtcdUnavailable, then heals by itself."""
    key = f"{etcd_prefix}/outage".encode()
    first = etcd_cluster.members[0]
    first.kill()
    async with cluster_client(etcd_cluster) as conn:
        start = time.monotonic()
        recovery, _ = await put_until_success(conn, key, b"1", start)
        print(f"\nfirst request with the first endpoint dead: {recovery * 1000:.0f} ms")
        assert_moved_off(etcd_cluster, first)

        for m in etcd_cluster.members:
            m.kill()
        start = time.monotonic()
        with pytest.raises(EtcdUnavailable) as info:
            await conn.txn([], [Connection.op_put(key, b"2")])
        assert time.monotonic() - start < REQUEST_TIMEOUT + 2.0
        assert info.value.endpoints == tuple(etcd_cluster.endpoints)
        for endpoint in etcd_cluster.endpoints:
            assert endpoint in str(info.value)

        # A member serves only once a quorum is up: start all, then wait for each.
        for m in etcd_cluster.members:
            m.spawn()
        start = time.monotonic()
        for m in etcd_cluster.members:
            await anyio.to_thread.run_sync(m.wait_ready, RECOVERY_BOUND)
        recovery, _ = await put_until_success(conn, key, b"3", start)
        print(f"requests work again {recovery * 1000:.0f} ms after the restart")
        assert await read(conn, key) == b"3"
