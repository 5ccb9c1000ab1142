"""The test machinery itself: etcd processes, clusters, the fault proxy, EmbeddedEtcd and the
pytest fixtures start quickly, do what they say, and leave no process, port, temp dir or
thread behind."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import eventually, eventually_blocking

import aioelect
from aioelect import EtcdError, EtcdUnavailable
from aioelect._connection import Connection
from aioelect._embedded import EtcdProcess, process_of
from aioelect.testing import EtcdCluster, EtcdServer, FaultProxy

pytest_plugins = ("pytester",)

BOUND = 10.0  # seconds: "within this, not a hang"


# -- helpers -----------------------------------------------------------------------------


def pid_gone(pid: int) -> bool:
    """Whether no process has ``pid`` any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as etcd would, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def assert_left_nothing(pids: list[int], ports: list[int], dirs: list[Path]) -> None:
    """Every pid is gone, every port can be listened on again, every dir is removed."""
    assert pids and ports and dirs
    assert [p for p in pids if not pid_gone(p)] == []
    assert [p for p in ports if not port_free(p)] == []
    assert [d for d in dirs if d.exists()] == []


def process_footprint(proc: EtcdProcess) -> tuple[list[int], list[int], list[Path]]:
    """The pid, ports and temp dir of a running etcd process."""
    assert proc.pid is not None
    return [proc.pid], [proc.client_port, proc.peer_port], [proc.log_path.parent]


@asynccontextmanager
async def connected(endpoint: str, timeout: float = 2.0) -> AsyncIterator[Connection]:
    """A connected Connection, closed on exit."""
    conn = Connection.create(endpoint, timeout=timeout)
    try:
        await conn.connect()
        yield conn
    finally:
        await conn.close()


async def value_once_back(conn: Connection, key: bytes, what: str) -> bytes:
    """The value of ``key`` once etcd answers again (EtcdError retried for up to BOUND)."""
    return await eventually(lambda: get(conn, key, timeout=0.5), BOUND, what, retry_on=EtcdError)


async def get(conn: Connection, key: bytes, timeout: float | None = None) -> bytes | None:
    """The value of ``key``, None when absent."""
    kvs = (await conn.range(key, timeout=timeout)).kvs
    return kvs[0].value if kvs else None


async def put(conn: Connection, key: bytes, value: bytes, timeout: float | None = None) -> None:
    """Write ``key``."""
    await conn.txn([], [Connection.op_put(key, value)], timeout=timeout)


# -- EtcdProcess, EtcdCluster, EmbeddedEtcd ------------------------------------------------


def test_etcd_process_cleanup_leaves_nothing() -> None:
    """EtcdProcess.cleanup() leaves no process, port or temp dir, even when paused."""
    proc = EtcdProcess(heartbeat_ms=10, election_ms=100)
    try:
        start = time.monotonic()
        proc.start()
        print(f"\nEtcdProcess start: {(time.monotonic() - start) * 1000:.0f} ms")
        assert proc.running
        footprint = process_footprint(proc)
        assert footprint[2][0].is_dir()
        proc.pause()  # cleanup must cope with a frozen process
    finally:
        start = time.monotonic()
        proc.cleanup()
        print(f"EtcdProcess cleanup (paused): {(time.monotonic() - start) * 1000:.0f} ms")
    assert not proc.running
    assert_left_nothing(*footprint)
    proc.cleanup()  # idempotent


def test_etcd_cluster_cleanup_leaves_nothing() -> None:
    """EtcdCluster.cleanup() leaves no member process, port or temp dir."""
    cluster = EtcdCluster(3)
    try:
        start = time.monotonic()
        cluster.start()
        print(f"\nEtcdCluster(3) start: {(time.monotonic() - start) * 1000:.0f} ms")
        assert len(cluster.pids()) == 3
        assert cluster.endpoint == ",".join(cluster.endpoints)
        assert cluster.member(cluster.endpoints[1]) is cluster.members[1]
        pids: list[int] = []
        ports: list[int] = []
        dirs: list[Path] = []
        for m in cluster.members:
            p, o, d = process_footprint(m)
            pids += p
            ports += o
            dirs += d
    finally:
        start = time.monotonic()
        cluster.cleanup()
        print(f"EtcdCluster(3) cleanup: {(time.monotonic() - start) * 1000:.0f} ms")
    assert_left_nothing(pids, ports, dirs)


@pytest.mark.asyncio
async def test_embedded_etcd_leaves_nothing() -> None:
    """aioelect.EmbeddedEtcd serves inside async with and leaves nothing behind after it."""
    start = time.monotonic()
    async with aioelect.EmbeddedEtcd(heartbeat_interval=0.01, election_timeout=0.1) as etcd:
        print(f"\nEmbeddedEtcd enter: {(time.monotonic() - start) * 1000:.0f} ms")
        assert etcd.endpoints == [etcd.endpoint]
        proc = process_of(etcd)  # the package's way to see its pid and temp dir
        assert proc is not None
        footprint = process_footprint(proc)
        async with connected(etcd.endpoint) as conn:
            await put(conn, b"/embedded/a", b"1")
            assert await get(conn, b"/embedded/a") == b"1"
    assert_left_nothing(*footprint)
    assert "stopped" in repr(etcd)
    with pytest.raises(aioelect.AioelectError, match="not running"):
        _ = etcd.endpoint


@pytest.mark.asyncio
async def test_embedded_etcd_keeps_given_data_dir(tmp_path: Path) -> None:
    """With data_dir=, EmbeddedEtcd keeps that dir on exit and a new one serves its data."""
    data = tmp_path / "etcd-data"
    async with aioelect.EmbeddedEtcd(
        data_dir=data, heartbeat_interval=0.01, election_timeout=0.1
    ) as etcd:
        proc = process_of(etcd)
        assert proc is not None
        own_tmp = proc.log_path.parent
        async with connected(etcd.endpoint) as conn:
            await put(conn, b"/kept/a", b"survives")
    assert (data / "member").is_dir()
    assert not own_tmp.exists()
    async with aioelect.EmbeddedEtcd(
        data_dir=data, heartbeat_interval=0.01, election_timeout=0.1
    ) as etcd:
        async with connected(etcd.endpoint) as conn:
            assert await get(conn, b"/kept/a") == b"survives"
    assert (data / "member").is_dir()


@pytest.mark.asyncio
async def test_etcd_process_pause_resume_kill_restart(
    etcd_process: EtcdProcess, etcd_prefix: str
) -> None:
    """pause/resume/kill/restart work, and restart serves the data written before."""
    key = f"{etcd_prefix}/a".encode()
    async with connected(etcd_process.endpoint) as conn:
        await put(conn, key, b"before")

        etcd_process.pause()
        with pytest.raises(EtcdUnavailable):
            await get(conn, key, timeout=0.3)
        etcd_process.resume()
        assert await value_once_back(conn, key, "after resume") == b"before"

        old_pid = etcd_process.pid
        assert old_pid is not None
        etcd_process.kill()
        assert not etcd_process.running
        assert pid_gone(old_pid)
        with pytest.raises(EtcdUnavailable):
            await get(conn, key, timeout=0.3)

        port = etcd_process.client_port
        start = time.monotonic()
        await anyio.to_thread.run_sync(etcd_process.restart)
        print(f"\nEtcdProcess restart: {(time.monotonic() - start) * 1000:.0f} ms")
        assert etcd_process.running
        assert etcd_process.pid != old_pid
        assert etcd_process.client_port == port
        # The same client reconnects by itself; the write survived SIGKILL.
        assert await value_once_back(conn, key, "after restart") == b"before"


# -- the pytest fixtures -------------------------------------------------------------------


class _Recorder:
    """A plugin for an inner pytest session: gives its test a dict to record into."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    @pytest.fixture
    def record(self) -> dict[str, Any]:
        return self.data


_INNER_TEST = """
def test_use_every_fixture(record, etcd, etcd_process, etcd_cluster, fault_proxy, etcd_prefix):
    procs = [etcd.process, etcd_process, *etcd_cluster.members]
    record["pids"] = [p.pid for p in procs]
    record["ports"] = [p.client_port for p in procs] + [p.peer_port for p in procs]
    record["ports"].append(fault_proxy.port)
    record["dirs"] = [p.log_path.parent for p in procs]
    record["thread"] = fault_proxy.thread
    record["prefix"] = etcd_prefix
    assert etcd.backend == "embedded"
    assert all(p.running for p in procs)
    assert fault_proxy.thread.is_alive()
"""


def test_fixtures_leave_nothing_behind(pytester: pytest.Pytester) -> None:
    """The etcd, etcd_process, etcd_cluster and fault_proxy fixtures leave nothing behind."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_inner=_INNER_TEST)
    recorder = _Recorder()
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--aioelect-backend=embedded", plugins=[recorder]
    )
    result.assert_outcomes(passed=1)
    rec = recorder.data
    assert len(rec["pids"]) == 5
    assert rec["prefix"].startswith("/aioelect-test/")
    assert_left_nothing(rec["pids"], rec["ports"], rec["dirs"])
    thread = rec["thread"]
    assert not thread.is_alive()
    assert thread not in threading.enumerate()


def test_etcd_prefix_is_unique(etcd_prefix: str) -> None:
    """etcd_prefix is a fresh key prefix under /aioelect-test/."""
    assert etcd_prefix.startswith("/aioelect-test/")
    assert not etcd_prefix.endswith("/")


def test_etcd_server_endpoint_joins_endpoints() -> None:
    """EtcdServer.endpoint is the comma-separated list of its endpoints."""
    server = EtcdServer(["127.0.0.1:1", "127.0.0.1:2"], "env")
    assert server.endpoint == "127.0.0.1:1,127.0.0.1:2"


# -- FaultProxy ----------------------------------------------------------------------------


def test_fault_proxy_close_leaves_nothing(etcd: EtcdServer) -> None:
    """FaultProxy.close() stops its thread, frees its port, closes connections; idempotent."""
    host, _, port = etcd.endpoints[0].rpartition(":")
    proxy = FaultProxy(host, int(port))
    start = time.monotonic()
    proxy.start()
    print(f"\nFaultProxy start: {(time.monotonic() - start) * 1000:.2f} ms")
    thread = proxy.thread
    assert thread is not None and thread.is_alive() and thread.daemon
    assert proxy.endpoint == f"127.0.0.1:{proxy.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=BOUND) as client:
        eventually_blocking(
            lambda: proxy.open_connections >= 1, BOUND, "connection seen by the proxy"
        )
        proxy.close()
        # The proxy's end is gone: the client reads EOF or a reset, not a hang.
        with suppress(ConnectionResetError):
            assert client.recv(1) == b""
    assert not thread.is_alive()
    assert thread not in threading.enumerate()
    assert port_free(proxy.port)
    proxy.close()
    assert "closed" in repr(proxy)
    for call in (proxy.heal, proxy.blackhole, proxy.reset):
        with pytest.raises(RuntimeError, match="not running"):
            call()
    with pytest.raises(RuntimeError):
        proxy.start()


def test_fault_proxy_validates() -> None:
    """delay() wants seconds >= 0; control calls on a proxy not running raise RuntimeError."""
    proxy = FaultProxy("127.0.0.1", 9)
    assert proxy.endpoint == ""
    assert "not started" in repr(proxy)
    with pytest.raises(RuntimeError, match="not running"):
        proxy.blackhole()
    with FaultProxy("127.0.0.1", 9) as running:
        with pytest.raises(ValueError, match="delay"):
            running.delay(-1)
        running.delay(0.5)
        assert running.current_delay == 0.5
        running.blackhole()
        assert running.blackholed
        running.heal()
        assert not running.blackholed and running.current_delay == 0
    assert running.thread is not None and not running.thread.is_alive()
    proxy.close()
    with pytest.raises(RuntimeError):
        proxy.start()


@pytest.mark.asyncio
async def test_proxy_forwards_etcd_traffic(fault_proxy: FaultProxy, etcd_prefix: str) -> None:
    """Through the proxy etcd works, and the counters see the connection and bytes."""
    key = f"{etcd_prefix}/a".encode()
    async with connected(fault_proxy.endpoint) as conn:
        await put(conn, key, b"via-proxy")
        assert await get(conn, key) == b"via-proxy"
        assert fault_proxy.connections >= 1
        assert fault_proxy.open_connections >= 1
        assert fault_proxy.bytes_up > 0
        assert fault_proxy.bytes_down > 0


@pytest.mark.asyncio
async def test_proxy_blackhole_and_heal(fault_proxy: FaultProxy, etcd_prefix: str) -> None:
    """Blackholed: requests fail with EtcdUnavailable, connections stay open; heal() restores."""
    key = f"{etcd_prefix}/a".encode()
    async with connected(fault_proxy.endpoint) as conn:
        await put(conn, key, b"1")
        fault_proxy.blackhole()
        start = time.monotonic()
        with pytest.raises(EtcdUnavailable) as info:
            await get(conn, key, timeout=0.5)
        assert time.monotonic() - start < 0.5 + 2.0
        assert fault_proxy.endpoint in str(info.value)
        assert fault_proxy.open_connections >= 1  # nothing was closed
        fault_proxy.heal()
        assert await value_once_back(conn, key, "after heal") == b"1"


@pytest.mark.asyncio
async def test_proxy_blackhole_holds_new_connections(fault_proxy: FaultProxy) -> None:
    """A connection made while blackholed gets nothing until heal(), then its answer."""
    fault_proxy.blackhole()
    reader, writer = await asyncio.open_connection("127.0.0.1", fault_proxy.port)
    try:
        writer.write(b"GET /version HTTP/1.0\r\nHost: etcd\r\n\r\n")
        await writer.drain()
        with pytest.raises(asyncio.TimeoutError):  # 3.10: not the builtin TimeoutError
            await asyncio.wait_for(reader.read(1), 0.3)
        assert fault_proxy.open_connections >= 1
        assert fault_proxy.bytes_up == 0
        fault_proxy.heal()
        response = await asyncio.wait_for(reader.read(), BOUND)  # HTTP/1.0: until EOF
        assert response.startswith(b"HTTP/1.")
        assert b"etcdserver" in response
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_proxy_reset_aborts_connections(fault_proxy: FaultProxy, etcd_prefix: str) -> None:
    """reset() aborts open connections with a RST; a gRPC client then reconnects by itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fault_proxy.port)
    try:
        await eventually(
            lambda: fault_proxy.open_connections >= 1, BOUND, "connection seen by the proxy"
        )
        fault_proxy.reset()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), BOUND)
    finally:
        writer.close()

    key = f"{etcd_prefix}/a".encode()
    async with connected(fault_proxy.endpoint) as conn:
        await put(conn, key, b"1")
        before = fault_proxy.connections
        fault_proxy.reset()
        assert await value_once_back(conn, key, "after reset") == b"1"
        assert fault_proxy.connections > before  # the old connection was gone


@pytest.mark.asyncio
async def test_proxy_delay_adds_latency(fault_proxy: FaultProxy) -> None:
    """delay(d) makes a request/response round trip take at least 2*d (d each way)."""
    async with connected(fault_proxy.endpoint) as conn:
        await conn.status()  # connected before the delay is measured
        fault_proxy.delay(0.15)
        start = time.monotonic()
        await conn.status()
        assert time.monotonic() - start >= 0.3
        fault_proxy.heal()
        assert fault_proxy.current_delay == 0


def test_docker_backend_without_testcontainers_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without testcontainers, starting the docker backend names what is missing (it
    used to fail with an UnboundLocalError)."""
    from aioelect.testing._docker import DockerEtcd

    monkeypatch.setitem(sys.modules, "testcontainers.core.docker_client", None)  # not importable
    container = DockerEtcd(image="etcd:never-pulled")
    with pytest.raises(aioelect.AioelectError, match="needs testcontainers") as caught:
        container.start()
    assert "choose another --aioelect-backend" in str(caught.value)
    assert container.client_port == 0  # nothing started
