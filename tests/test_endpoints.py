"""Endpoints: parsing, and clear errors within a bounded time for endpoints that are wrong,
closed, or not etcd."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import aioelect
from aioelect import ConfigError, EtcdError, EtcdUnavailable, TLSConfig
from aioelect._connection import Connection
from aioelect._embedded import free_port
from aioelect._endpoints import Endpoint, parse_endpoints
from aioelect.testing import EtcdServer, FaultProxy

TIMEOUT = 1.0  # request deadline of the clients here
SLACK = 2.0  # failures must come within TIMEOUT + SLACK

# -- parsing (no I/O) ----------------------------------------------------------------------

VALID: list[tuple[object, list[Endpoint]]] = [
    ("127.0.0.1:2379", [Endpoint("127.0.0.1", 2379, None)]),
    ("localhost:2379", [Endpoint("localhost", 2379, None)]),
    ("http://etcd-1:2379", [Endpoint("etcd-1", 2379, False)]),
    ("https://etcd.example.com:443", [Endpoint("etcd.example.com", 443, True)]),
    ("HTTPS://Etcd:1", [Endpoint("etcd", 1, True)]),
    ("[::1]:2379", [Endpoint("::1", 2379, None)]),
    ("https://[2001:db8::1]:2379", [Endpoint("2001:db8::1", 2379, True)]),
    ("h:2379/", [Endpoint("h", 2379, None)]),
    ("h:65535", [Endpoint("h", 65535, None)]),
    (" a:1 , b:2 ", [Endpoint("a", 1, None), Endpoint("b", 2, None)]),
    (["a:1", "http://b:2"], [Endpoint("a", 1, None), Endpoint("b", 2, False)]),
    (("https://a:1", "b:2"), [Endpoint("a", 1, True), Endpoint("b", 2, None)]),
]


@pytest.mark.parametrize(("given", "expected"), VALID, ids=[repr(v[0]) for v in VALID])
def test_valid_endpoints_parse(given: object, expected: list[Endpoint]) -> None:
    """host:port, http://host:port, https://host:port (one, a comma list or a list) parse."""
    assert list(parse_endpoints(given)) == expected


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        ("127.0.0.1:2379", "127.0.0.1:2379"),
        ("http://h:1", "http://h:1"),
        ("https://[::1]:2379", "https://[::1]:2379"),
    ],
)
def test_endpoint_str_round_trips(endpoint: str, text: str) -> None:
    """str(Endpoint) gives the endpoint back in canonical form (as errors name it)."""
    (parsed,) = parse_endpoints(endpoint)
    assert str(parsed) == text


INVALID: list[tuple[object, str]] = [
    # (given, a fragment the message must contain)
    ("", "non-empty"),
    ("a:1,", "non-empty"),
    ([], "at least one"),
    ([""], "non-empty"),
    (["a:1", 5], "non-empty str"),
    (5, "str or a list"),
    (None, "str or a list"),
    (b"a:1", "str or a list"),
    ("localhost", "host:port"),  # no port
    ("http://etcd", "host:port"),  # no port
    (":2379", "host:port"),  # no host
    ("[::1]", "host:port"),
    ("h:0", "host:port"),
    ("h:99999", "out of range"),
    ("h:abc", "cannot parse"),
    ("h:-1", "cannot parse"),
    ("h:1:2", "cannot parse"),
    ("::1:2379", "cannot parse"),  # IPv6 without brackets
    ("[::1:2379", "cannot parse"),
    ("ftp://h:1", "scheme"),
    ("unix:///tmp/etcd.sock", "scheme"),
    ("grpc://h:1", "scheme"),
    ("etcd://h:1", "scheme"),
    ("http:/h:1", "host:port"),
    ("http://h:1/v3", "path"),
    ("h:1?x=1", "path or query"),
    ("h:1#frag", "path or query"),
    ("http://a:1,https://b:2", "mix"),
    (["https://a:1", "http://b:2"], "mix"),
    ("user@h:1", "user info"),
    ("http://root:hunter2@h:1", "user info"),
    ("a b:1", "whitespace"),
]


@pytest.mark.parametrize(("given", "fragment"), INVALID, ids=[repr(v[0]) for v in INVALID])
def test_invalid_endpoints_are_config_errors(given: object, fragment: str) -> None:
    """A bad endpoint is a ConfigError (a ValueError) naming the field ``endpoints``."""
    with pytest.raises(ConfigError) as info:
        Connection.create(given)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == "endpoints"
    assert str(err).startswith("endpoints: ")
    assert fragment in str(err)


def test_user_info_password_is_not_echoed() -> None:
    """An endpoint with user:password@ is refused without repeating the password."""
    with pytest.raises(ConfigError) as info:
        parse_endpoints("http://root:hunter2@h:1")
    assert "hunter2" not in str(info.value)


def test_http_endpoint_with_tls_is_refused() -> None:
    """http:// with tls=True is a ConfigError naming endpoints (TLS needs https://)."""
    with pytest.raises(ConfigError, match="https://") as info:
        Connection.create("http://h:1", tls=True)
    assert info.value.field == "endpoints"


def test_https_endpoint_turns_tls_on() -> None:
    """An https:// endpoint without a TLSConfig uses TLS with the system trust store."""
    conn = Connection.create("https://h:1")
    assert conn.tls == TLSConfig()
    assert conn.endpoint_names == ("https://h:1",)


@pytest.mark.asyncio
async def test_unresolvable_host_in_a_list_is_config_error_on_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With several endpoints, host names are resolved on entry in a worker thread, never in
    the constructor; one that does not resolve is a ConfigError naming it, raised on entry."""
    threads: list[threading.Thread] = []
    real = socket.getaddrinfo

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    elector = aioelect.Elector(endpoints=["nonexistent.invalid:2379", "127.0.0.1:2379"])
    assert threads == []  # nothing resolved (nor blocked) in the constructor
    with pytest.raises(ConfigError, match=r"nonexistent\.invalid") as info:
        async with elector:
            pass
    assert info.value.field == "endpoints"
    assert threads and threading.main_thread() not in threads


# -- endpoints that do not answer as etcd -------------------------------------------------


async def fails_clearly(endpoints: object) -> EtcdError:
    """A request to ``endpoints`` fails with an EtcdError within TIMEOUT + SLACK."""
    conn = Connection.create(endpoints, timeout=TIMEOUT)
    try:
        start = time.monotonic()
        with pytest.raises(EtcdError) as info:
            await conn.connect()
            await conn.status()
        elapsed = time.monotonic() - start
    finally:
        await conn.close()
    assert elapsed < TIMEOUT + SLACK, f"took {elapsed:.2f} s"
    return info.value


@pytest.mark.asyncio
async def test_closed_port_is_etcd_unavailable() -> None:
    """A port nobody listens on is EtcdUnavailable naming it, within the request deadline."""
    endpoint = f"127.0.0.1:{free_port()}"
    err = await fails_clearly(endpoint)
    assert isinstance(err, EtcdUnavailable)
    assert err.endpoints == (endpoint,)
    assert endpoint in str(err)
    assert err.cause


@pytest.mark.asyncio
async def test_all_closed_ports_are_named() -> None:
    """With several closed endpoints, EtcdUnavailable names every one."""
    endpoints = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    err = await fails_clearly(endpoints)
    assert isinstance(err, EtcdUnavailable)
    assert err.endpoints == tuple(endpoints)
    for endpoint in endpoints:
        assert endpoint in str(err)


@pytest.mark.asyncio
async def test_unresolvable_host_is_etcd_unavailable() -> None:
    """A host that does not resolve is EtcdUnavailable naming it, within the deadline."""
    err = await fails_clearly("nonexistent.invalid:2379")
    assert isinstance(err, EtcdUnavailable)
    assert "nonexistent.invalid:2379" in str(err)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _send_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\xffthis is not HTTP/2\r\n\r\n" * 4)
    await writer.drain()


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    pass


async def _stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # read the client's bytes until it gives up, answer nothing


async def _answer_http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(64)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    await writer.drain()


@asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[str]:
    """A plain TCP server on a free loopback port running ``handler`` per connection (then
    closing it); yields its endpoint and closes every connection on exit."""
    writers: set[asyncio.StreamWriter] = set()
    tasks: set[asyncio.Task[None]] = set()
    closing = False

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if closing:  # accepted while shutting down
            writer.transport.abort()
            return
        writers.add(writer)  # now, not in the task: it may be cancelled before it runs
        task = asyncio.get_running_loop().create_task(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        closing = True
        server.close()
        await asyncio.sleep(0)  # let connections accepted just before close() be set up
        for writer in writers:
            writer.transport.abort()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "handler",
    [_send_garbage, _close_at_once, _stay_silent, _answer_http1],
    ids=["garbage", "closes", "silent", "http1"],
)
async def test_non_etcd_server_is_clear_error(handler: Handler) -> None:
    """A TCP server that is not etcd gives an EtcdError naming it within the deadline."""
    async with tcp_server(handler) as endpoint:
        err = await fails_clearly(endpoint)
    assert endpoint in str(err)
    print(f"\n{handler.__name__}: {err}")


@pytest.mark.asyncio
async def test_dead_endpoint_before_live_one(etcd: EtcdServer) -> None:
    """A closed endpoint listed before a live etcd is skipped: requests succeed."""
    dead = f"127.0.0.1:{free_port()}"
    conn = Connection.create([dead, *etcd.endpoints], timeout=TIMEOUT)
    try:
        await conn.connect()
        start = time.monotonic()
        assert await conn.status() > 0
        assert time.monotonic() - start < TIMEOUT + SLACK
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_slow_link_answers_first_request(fault_proxy: FaultProxy) -> None:
    """Over a slow link (200 ms round trip) the first request is answered, not failed early."""
    fault_proxy.delay(0.1)
    conn = Connection.create(fault_proxy.endpoint, timeout=5.0)
    try:
        await conn.connect()
        start = time.monotonic()
        assert await conn.status() > 0
        assert time.monotonic() - start >= 0.2  # it really went over the slow link
    finally:
        await conn.close()
