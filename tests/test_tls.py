"""TLS to etcd: server-authenticated TLS and mutual TLS, against etcd serving https.

Certificates are made per module with trustme; etcd gets them through
``EtcdProcess(tls=(cert, key, ca_or_None))`` (with a CA, etcd requires client
certificates). Every failure must be a clear aioelect error within a bounded
time, never a hang.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from aioelect import ConfigError, EtcdError, EtcdUnavailable, TLSConfig
from aioelect._connection import Connection
from aioelect._embedded import EtcdProcess

#: Request deadline of the clients here; failures must come within it plus this slack.
TIMEOUT = 2.0
SLACK = 3.0


@dataclass(frozen=True)
class PKI:
    """Files of one test PKI."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str
    other_client_cert: str
    other_client_key: str
    named_cert: str  # a server certificate for etcd.example.test only
    named_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA with server and client certificates, and an unrelated CA with a client cert."""
    d = tmp_path_factory.mktemp("pki")

    def write(name: str, blob: trustme.Blob) -> str:
        path = d / name
        blob.write_to_path(str(path))
        return str(path)

    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("aioelect-client")
    other_client = other.issue_cert("aioelect-client")
    named = ca.issue_cert("etcd.example.test")
    return PKI(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        other_client_cert=write("other-client.pem", other_client.cert_chain_pems[0]),
        other_client_key=write("other-client.key", other_client.private_key_pem),
        named_cert=write("named.pem", named.cert_chain_pems[0]),
        named_key=write("named.key", named.private_key_pem),
    )


def _serve(tls: tuple[str, str, str | None]) -> Iterator[EtcdProcess]:
    proc = EtcdProcess(heartbeat_ms=10, election_ms=100, tls=tls)
    try:
        proc.start()
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture(scope="module")
def tls_etcd(pki: PKI) -> Iterator[EtcdProcess]:
    """etcd serving https with a server certificate; no client certificates required."""
    yield from _serve((pki.server_cert, pki.server_key, None))


@pytest.fixture(scope="module")
def mtls_etcd(pki: PKI) -> Iterator[EtcdProcess]:
    """etcd serving https that requires client certificates signed by the test CA."""
    yield from _serve((pki.server_cert, pki.server_key, pki.ca))


@pytest.fixture(scope="module")
def named_etcd(pki: PKI) -> Iterator[EtcdProcess]:
    """etcd serving https with a certificate for etcd.example.test (not for 127.0.0.1)."""
    yield from _serve((pki.named_cert, pki.named_key, None))


@asynccontextmanager
async def connected(endpoints: object, **kwargs: object) -> AsyncIterator[Connection]:
    """A connected Connection, closed on exit."""
    conn = Connection.create(endpoints, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    try:
        await conn.connect()
        yield conn
    finally:
        await conn.close()


async def roundtrip(conn: Connection, key: str) -> None:
    """Write a key and read it back through ``conn``."""
    k = key.encode()
    await conn.txn([], [Connection.op_put(k, b"over-tls")])
    got = await conn.range(k)
    assert [kv.value for kv in got.kvs] == [b"over-tls"]


async def expect_failure(conn: Connection) -> EtcdError:
    """A request on ``conn`` fails with an EtcdError within the deadline (not a hang)."""
    start = time.monotonic()
    with pytest.raises(EtcdError) as info:
        await conn.status()
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT + SLACK, f"took {elapsed:.1f} s"
    return info.value


@pytest.mark.asyncio
async def test_https_url_with_ca(tls_etcd: EtcdProcess, pki: PKI, etcd_prefix: str) -> None:
    """An https:// endpoint with the CA file connects and reads its own write."""
    async with connected(tls_etcd.client_url, tls=TLSConfig(ca_file=pki.ca)) as conn:
        await roundtrip(conn, f"{etcd_prefix}/a")


@pytest.mark.asyncio
async def test_host_port_with_tls_config(tls_etcd: EtcdProcess, pki: PKI, etcd_prefix: str) -> None:
    """A bare host:port endpoint with a TLSConfig speaks TLS."""
    async with connected(tls_etcd.endpoint, tls=TLSConfig(ca_file=pki.ca)) as conn:
        await roundtrip(conn, f"{etcd_prefix}/b")


@pytest.mark.asyncio
async def test_localhost_name_is_verified(
    tls_etcd: EtcdProcess, pki: PKI, etcd_prefix: str
) -> None:
    """The certificate's DNS name (localhost) verifies as well as its IP address."""
    url = f"https://localhost:{tls_etcd.client_port}"
    async with connected(url, tls=TLSConfig(ca_file=pki.ca)) as conn:
        await roundtrip(conn, f"{etcd_prefix}/c")


@pytest.mark.asyncio
async def test_server_name_override(named_etcd: EtcdProcess, pki: PKI, etcd_prefix: str) -> None:
    """TLSConfig.server_name checks the certificate against that name instead of the host."""
    good = TLSConfig(ca_file=pki.ca, server_name="etcd.example.test")
    async with connected(named_etcd.client_url, tls=good) as conn:
        await roundtrip(conn, f"{etcd_prefix}/d")
    async with connected(named_etcd.client_url, tls=TLSConfig(ca_file=pki.ca)) as conn:
        err = await expect_failure(conn)
    assert named_etcd.endpoint in str(err)


@pytest.mark.asyncio
async def test_system_trust_store_rejects_test_ca(tls_etcd: EtcdProcess) -> None:
    """Without the CA the handshake fails: EtcdUnavailable naming the endpoint, in time."""
    async with connected(tls_etcd.client_url) as conn:
        err = await expect_failure(conn)
    assert isinstance(err, EtcdUnavailable)
    assert err.endpoints == (tls_etcd.client_url,)
    assert tls_etcd.client_url in str(err)
    print(f"\nno CA: {err}")


@pytest.mark.asyncio
async def test_wrong_ca_is_rejected(tls_etcd: EtcdProcess, pki: PKI) -> None:
    """A CA that did not sign the server certificate fails the handshake with EtcdUnavailable."""
    async with connected(tls_etcd.client_url, tls=TLSConfig(ca_file=pki.other_ca)) as conn:
        err = await expect_failure(conn)
    assert isinstance(err, EtcdUnavailable)
    assert tls_etcd.client_url in str(err)


@pytest.mark.asyncio
async def test_plaintext_client_to_tls_server(tls_etcd: EtcdProcess) -> None:
    """A plaintext client against an https etcd gets a clear EtcdError within the deadline."""
    async with connected(tls_etcd.endpoint) as conn:
        err = await expect_failure(conn)
    assert tls_etcd.endpoint in str(err)
    print(f"\nplaintext to TLS: {err!r}")


@pytest.mark.asyncio
async def test_mtls_with_client_cert(mtls_etcd: EtcdProcess, pki: PKI, etcd_prefix: str) -> None:
    """With a client certificate signed by the trusted CA, mutual TLS works."""
    tls = TLSConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    async with connected(mtls_etcd.client_url, tls=tls) as conn:
        await roundtrip(conn, f"{etcd_prefix}/e")


@pytest.mark.asyncio
async def test_mtls_without_client_cert(mtls_etcd: EtcdProcess, pki: PKI) -> None:
    """Without a client certificate, mTLS etcd gives a clear EtcdError in time."""
    async with connected(mtls_etcd.client_url, tls=TLSConfig(ca_file=pki.ca)) as conn:
        err = await expect_failure(conn)
    assert mtls_etcd.client_url in str(err)
    print(f"\nmTLS, no client cert: {err!r}")


@pytest.mark.asyncio
async def test_mtls_client_cert_from_other_ca(mtls_etcd: EtcdProcess, pki: PKI) -> None:
    """A client certificate from an untrusted CA is rejected with a clear EtcdError."""
    tls = TLSConfig(ca_file=pki.ca, cert_file=pki.other_client_cert, key_file=pki.other_client_key)
    async with connected(mtls_etcd.client_url, tls=tls) as conn:
        err = await expect_failure(conn)
    assert mtls_etcd.client_url in str(err)


def test_tls_config_checks_files(tmp_path: Path, pki: PKI) -> None:
    """TLSConfig names the field of a missing file, and wants cert and key together."""
    with pytest.raises(ConfigError, match=r"tls\.ca_file") as info:
        TLSConfig(ca_file=tmp_path / "missing.pem")
    assert info.value.field == "tls.ca_file"
    with pytest.raises(ConfigError, match="together") as info:
        TLSConfig(cert_file=pki.client_cert)
    assert info.value.field == "tls"
    with pytest.raises(ConfigError, match=r"tls\.key_file"):
        TLSConfig(cert_file=pki.client_cert, key_file=tmp_path / "missing.key")


def test_http_endpoint_with_tls_is_config_error(pki: PKI) -> None:
    """An http:// endpoint with a TLSConfig is a ConfigError naming endpoints."""
    with pytest.raises(ConfigError, match="endpoints") as info:
        Connection.create("http://127.0.0.1:2379", tls=TLSConfig(ca_file=pki.ca))
    assert info.value.field == "endpoints"
