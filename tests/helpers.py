"""Helpers for the tests: inspect etcd and wait for external state."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from aetcd import rpc

import aioelect
from aioelect._connection import KV, Connection
from aioelect._keys import prefix_range_end

ElectorFactory = Callable[..., Awaitable[aioelect.Elector]]


async def keys_under(conn: Connection, prefix: str | bytes) -> list[KV]:
    """Every key under ``prefix`` (in create order)."""
    p = prefix if isinstance(prefix, bytes) else prefix.encode()
    return (await conn.range(p, prefix_range_end(p), sort_create="ascend")).kvs


async def live_leases(conn: Connection) -> set[int]:
    """The ids of every lease etcd holds."""
    resp = await conn._unary(conn.client.leasestub.LeaseLeases, rpc.LeaseLeasesRequest(), None)
    return {int(lease.ID) for lease in resp.leases}


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` (external state, e.g. etcd) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await anyio.sleep(0.01)
