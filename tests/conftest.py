"""Shared test helpers: the aioelect pytest plugin provides the etcd fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest_asyncio
from helpers import ElectorFactory

import aioelect
from aioelect._connection import Connection
from aioelect.testing import EtcdServer


@pytest_asyncio.fixture
async def raw(etcd: EtcdServer) -> AsyncIterator[Connection]:
    """A plain connection to the test etcd, to look at and tamper with keys."""
    conn = Connection.create(etcd.endpoints, timeout=5)
    await conn.connect()
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def make_elector(etcd: EtcdServer, etcd_prefix: str) -> AsyncIterator[ElectorFactory]:
    """A factory of entered electors on the test etcd and prefix, all closed at the end."""
    async with AsyncExitStack() as stack:

        async def make(**kwargs: Any) -> aioelect.Elector:
            kwargs.setdefault("endpoints", etcd.endpoints)
            kwargs.setdefault("prefix", etcd_prefix)
            kwargs.setdefault("ttl", 2)
            return await stack.enter_async_context(aioelect.Elector(**kwargs))

        yield make
