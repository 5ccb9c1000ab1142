"""Interop with etcd's Go recipe: ``etcdctl elect`` and aioelect share one election."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from helpers import ElectorFactory, eventually

import aioelect
from aioelect._embedded import find_etcd_binary
from aioelect.testing import EtcdServer

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def etcdctl_elect(
    etcd: EtcdServer, election: str, *args: str
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream]]:
    """Run ``etcdctl elect`` (Go's concurrency.Election); SIGINT it on exit."""
    cmd = [find_etcd_binary("etcdctl"), "--endpoints", etcd.endpoint, "elect", election, *args]
    async with await anyio.open_process(cmd, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        try:
            yield proc, BufferedByteReceiveStream(proc.stdout)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                with anyio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


async def _line(stream: BufferedByteReceiveStream) -> bytes:
    with anyio.fail_after(10):
        return await stream.receive_until(b"\n", 65536)


async def test_go_leader_then_python(
    etcd: EtcdServer, etcd_prefix: str, make_elector: ElectorFactory
) -> None:
    """A Go candidate elected first keeps Python waiting; observe() sees it; Python follows."""
    a = await make_elector()
    elected = anyio.Event()
    async with etcdctl_elect(etcd, f"{etcd_prefix}/job", "go-1") as (proc, out):
        go_key = await _line(out)
        assert go_key.startswith(f"{etcd_prefix}/job/".encode())
        assert await _line(out) == b"go-1"
        async with a.observe("job") as leaders:
            first = await anext(aiter(leaders))
            assert first is not None
            assert first.value == b"go-1"
            assert first.key == go_key

            async def python() -> None:
                async with a.hold("job", "py-1") as term:
                    assert term.token > first.token
                    elected.set()
                    await anyio.sleep_forever()

            async with anyio.create_task_group() as tg:
                tg.start_soon(python)

                async def queued() -> bool:
                    return len(await a.candidates("job")) == 2

                await eventually(queued, what="python candidate queued behind go")
                assert not elected.is_set()
                proc.send_signal(signal.SIGINT)  # Go resigns
                await elected.wait()
                nxt = await anext(aiter(leaders))
                assert nxt is not None
                assert nxt.value == b"py-1"
                tg.cancel_scope.cancel()


async def test_python_leader_then_go(
    etcd: EtcdServer, etcd_prefix: str, make_elector: ElectorFactory
) -> None:
    """A Python leader keeps the Go candidate waiting; on resign Go is elected; Go listens right."""
    a = await make_elector()
    async with a.hold("job", "py-1") as term:
        async with etcdctl_elect(etcd, f"{etcd_prefix}/job", "-l") as (_, listen):
            assert await _line(listen) == term.key
            assert await _line(listen) == b"py-1"
            async with etcdctl_elect(etcd, f"{etcd_prefix}/job", "go-1") as (_, out):

                async def queued() -> bool:
                    return len(await a.candidates("job")) == 2

                await eventually(queued, what="go candidate queued behind python")
                candidates = await a.candidates("job")
                assert [c.value for c in candidates] == [b"py-1", b"go-1"]
                await term.resign()
                go_key = await _line(out)
                assert go_key == candidates[1].key
                assert await _line(out) == b"go-1"
                leader = await a.leader("job")
                assert leader is not None
                assert leader.value == b"go-1"


async def test_mutual_exclusion_with_go(
    etcd: EtcdServer, etcd_prefix: str, make_elector: ElectorFactory
) -> None:
    """Go and Python alternate several times; never two leaders at once (per etcd's order)."""
    a = await make_elector()
    for i in range(3):
        async with etcdctl_elect(etcd, f"{etcd_prefix}/job", f"go-{i}") as (proc, out):
            await _line(out)
            assert await _line(out) == f"go-{i}".encode()
            entered = anyio.Event()

            async def python(n: int = i, entered: anyio.Event = entered) -> None:
                async with a.hold("job", f"py-{n}"):
                    entered.set()
                    info = await a.leader("job")
                    assert info is not None
                    assert info.value == f"py-{n}".encode()

            async with anyio.create_task_group() as tg:
                tg.start_soon(python)

                async def queued() -> bool:
                    return len(await a.candidates("job")) == 2

                await eventually(queued)
                assert not entered.is_set()
                proc.send_signal(signal.SIGINT)
    assert await a.leader("job") is None
    assert isinstance(a, aioelect.Elector)
