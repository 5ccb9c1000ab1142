"""Elections end to end over TLS and mutual TLS, and as an etcd user confined by RBAC to
the election prefix; no password or auth token in logs, reprs or errors."""

from __future__ import annotations

import logging
import subprocess
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest
import trustme
from helpers import eventually, keys_under, live_leases

import aioelect
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect._embedded import EtcdProcess, find_etcd_binary

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos]

ROOT_PW = "Root-chaos-pw-93be1d"
USER_PW = "Elect-chaos-pw-2c7a45"
WRONG_PW = "Wrong-chaos-pw-e0f3b8"
PREFIX = "/rbac-elect"


@dataclass(frozen=True)
class PKI:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("chaos-pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("aioelect-chaos-client")

    def write(name: str, blob: trustme.Blob) -> str:
        blob.write_to_path(str(d / name))
        return str(d / name)

    return PKI(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
    )


@pytest.fixture(scope="module", params=["tls", "mtls"])
def secure(
    request: pytest.FixtureRequest, pki: PKI
) -> Iterator[tuple[EtcdProcess, aioelect.TLSConfig]]:
    """etcd serving https (``mtls``: requiring client certificates) and the client's TLSConfig."""
    if request.param == "tls":
        tls = aioelect.TLSConfig(ca_file=pki.ca)
        server_ca = None
    else:
        tls = aioelect.TLSConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        server_ca = pki.ca
    proc = EtcdProcess(
        heartbeat_ms=10, election_ms=100, tls=(pki.server_cert, pki.server_key, server_ca)
    )
    try:
        proc.start()
        yield proc, tls
    finally:
        proc.cleanup()


async def test_election_over_tls(
    secure: tuple[EtcdProcess, aioelect.TLSConfig], etcd_prefix: str
) -> None:
    """Over TLS and mutual TLS: hold, queue, observe, fenced write and handover all work."""
    proc, tls = secure
    url = f"https://127.0.0.1:{proc.client_port}"
    seen: list[bytes | None] = []
    async with (
        aioelect.Elector(endpoints=url, tls=tls, prefix=etcd_prefix, ttl=2) as a,
        aioelect.Elector(endpoints=url, tls=tls, prefix=etcd_prefix, ttl=2) as b,
    ):
        b_won = anyio.Event()

        async def observe(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with b.observe("job") as leaders:
                task_status.started()
                async for info in leaders:
                    seen.append(info.value if info is not None else None)

        async def follower() -> None:
            async with b.hold("job", "b") as term:
                assert term.is_valid
                b_won.set()

        async with anyio.create_task_group() as tg:
            await tg.start(observe)
            async with a.hold("job", "a") as term_a:
                key = f"{etcd_prefix}-data/x".encode()
                ok, _ = await term_a.transaction(success=[a.client.transactions.put(key, b"1")])
                assert ok
                tg.start_soon(follower)
                await eventually(lambda: _queued(a, 2), what="b queued")
            with anyio.fail_after(10):
                await b_won.wait()
            await eventually(lambda: b"b" in seen, timeout=15, what="the observer saw b")
            tg.cancel_scope.cancel()
    assert [v for v in seen if v is not None][:2] == [b"a", b"b"]


async def _queued(elector: aioelect.Elector, n: int) -> bool:
    return len(await elector.candidates("job")) >= n


def etcdctl(endpoint: str, *args: str, user: str | None = None) -> str:
    """Run one etcdctl command; fail the test with its output if it fails."""
    cmd = [find_etcd_binary("etcdctl"), "--endpoints", endpoint, "--dial-timeout", "5s"]
    if user is not None:
        cmd += ["--user", user]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"etcdctl {args[:3]}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def rbac_etcd() -> Iterator[EtcdProcess]:
    """etcd with auth: root, and user 'elect' with readwrite on the PREFIX/ range only."""
    proc = EtcdProcess(heartbeat_ms=10, election_ms=100)
    try:
        proc.start()
        ep = proc.endpoint
        etcdctl(ep, "user", "add", f"root:{ROOT_PW}", "--interactive=false")
        etcdctl(ep, "user", "grant-role", "root", "root")
        etcdctl(ep, "role", "add", "elect-role")
        etcdctl(
            ep, "role", "grant-permission", "elect-role", "--prefix=true", "readwrite",
            f"{PREFIX}/",
        )  # fmt: skip
        etcdctl(ep, "user", "add", f"elect:{USER_PW}", "--interactive=false")
        etcdctl(ep, "user", "grant-role", "elect", "elect-role")
        etcdctl(ep, "auth", "enable")
        yield proc
    finally:
        proc.cleanup()


@asynccontextmanager
async def as_root(proc: EtcdProcess) -> AsyncIterator[Connection]:
    conn = Connection.create(proc.endpoint, username="root", password=ROOT_PW, timeout=5)
    try:
        await conn.connect()
        yield conn
    finally:
        await conn.close()


def _user_elector(proc: EtcdProcess, prefix: str = PREFIX, pw: str = USER_PW) -> aioelect.Elector:
    return aioelect.Elector(
        endpoints=proc.endpoint, prefix=prefix, ttl=2, username="elect", password=pw
    )


async def test_rbac_user_elects_within_its_prefix_only(rbac_etcd: EtcdProcess) -> None:
    """A user allowed only PREFIX/ runs every kind of election call (hold, Leadership with
    callbacks, observe, proclaim, transfer) touching no key outside it, and is refused
    elsewhere with PermissionDenied, leaving no lease behind."""
    async with as_root(rbac_etcd) as root:
        everything = await keys_under(root, "/")
        leases = await live_leases(root)
        changes: list[aioelect.LeaderInfo | None] = []
        async with _user_elector(rbac_etcd) as a, _user_elector(rbac_etcd) as b:
            b_elected = anyio.Event()

            async def on_elected(term: aioelect.Term) -> None:
                b_elected.set()

            async def on_change(info: aioelect.LeaderInfo | None) -> None:
                changes.append(info)

            lead_b = b.leadership("job", "b", on_elected=on_elected, on_leader_change=on_change)
            async with anyio.create_task_group() as tg:
                async with a.hold("job", "a") as term:
                    tg.start_soon(lead_b.run)
                    await eventually(lambda: _queued(a, 2), what="b queued")
                    await term.proclaim("a2")
                    assert (await b.leader("job")).value == b"a2"  # type: ignore[union-attr]
                    during = await keys_under(root, "/")
                    assert {kv.key for kv in during} - {kv.key for kv in everything}
                    assert all(
                        kv.key.startswith(f"{PREFIX}/".encode())
                        for kv in during
                        if kv not in everything
                    ), [kv.key for kv in during]
                    await term.transfer("b")  # writes the transfer record inside the prefix
                with anyio.fail_after(10):
                    await b_elected.wait()
                lead_b.stop()
            assert any(c is not None and c.value == b"b" for c in changes)
            with pytest.raises(aioelect.PermissionDenied):
                await core_of(a).conn.range(b"/elsewhere/key")
        with pytest.raises(aioelect.PermissionDenied):
            async with _user_elector(rbac_etcd, prefix="/elsewhere"):
                pytest.fail("must not enter")
        assert await keys_under(root, "/") == everything
        assert await live_leases(root) <= leases


def _assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret leaked into {text[:200]!r}"


def _exception_texts(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    e: BaseException | None = exc
    while e is not None:
        texts += [str(e), repr(e)]
        e = e.__cause__ or e.__context__
    return texts


async def test_no_secret_in_logs_reprs_or_errors(
    rbac_etcd: EtcdProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the password nor the auth token appears in DEBUG logs, in reprs of the
    Elector, Term, Leadership, lease, statistics, or in any error raised meanwhile."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    secrets = [USER_PW, WRONG_PW, ROOT_PW]
    async with as_root(rbac_etcd) as root:
        async with _user_elector(rbac_etcd) as a:
            token = dict(a.client.metadata)["token"]
            secrets.append(token)
            elected = anyio.Event()

            async def on_elected(term: aioelect.Term) -> None:
                elected.set()

            lead = a.leadership("cron", "a", on_elected=on_elected)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lead.run)
                await elected.wait()
                lease = lead.get_lease()
                texts += [repr(a), str(a), repr(lead), repr(lead.term), repr(lease)]
                lead.stop()
            with pytest.raises(aioelect.LeadershipLost) as lost:
                async with a.hold("job", "a") as term:
                    texts.append(repr(term))
                    await root.txn([], [root.op_delete(term.key)])
                    await term.wait_lost()
                    await anyio.sleep_forever()
            texts += _exception_texts(lost.value)
            with pytest.raises(aioelect.NotLeader) as refused:
                await term.proclaim("x")
            texts += _exception_texts(refused.value)
            with pytest.raises(aioelect.PermissionDenied) as denied:
                await core_of(a).conn.range(b"/elsewhere/key")
            texts += _exception_texts(denied.value)
            texts += [repr(a.statistics()), repr(a.config), repr(core_of(a).conn), repr(a.client)]
        texts.append(repr(a))
        with pytest.raises(aioelect.AuthenticationFailed) as failed:
            async with _user_elector(rbac_etcd, pw=WRONG_PW):
                pytest.fail("must not enter")
        texts += _exception_texts(failed.value)
    texts.append(caplog.text)
    assert "lost" in caplog.text  # the logs did cover the interesting parts
    for text in texts:
        _assert_no_secret(text, secrets)
