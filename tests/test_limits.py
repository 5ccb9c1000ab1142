"""Real-world limits against etcd: requests over its size limit raise RequestTooLarge at
once, big prefixes are read in pages, bad input writes nothing, and a failed entry
leaves no lease."""

from __future__ import annotations

import logging
from typing import Any

import aetcd
import anyio
import pytest
from helpers import ElectorFactory, eventually, keys_under, live_leases, watched

import aioelect
from aioelect import (
    ConfigError,
    EtcdUnavailable,
    PermissionDenied,
    RequestTooLarge,
)
from aioelect._config import (
    DEFAULT_MAX_REQUEST_BYTES,
)
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect.testing import EtcdServer, FaultProxy

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024


# -- against etcd ------------------------------------------------------------------------


async def test_bad_input_writes_nothing_to_etcd(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """Bad names, values and sizes are refused before I/O: no key, no lease is added."""
    elector = await make_elector()
    leases = await live_leases(raw)
    for name, value in (
        ("job\ud800", "v"),
        ("job", "v\ud800"),
        ("job", b"x" * (MiB + 1)),
        ("j" * 5000, "v"),
    ):
        with pytest.raises(ConfigError):
            async with elector.hold(name, value):
                pytest.fail("must not be elected")
    assert await keys_under(raw, etcd_prefix) == []
    assert await live_leases(raw) == leases
    assert elector.statistics().sessions_granted == 1


async def test_hold_over_etcds_request_limit_raises_at_once(
    make_elector: ElectorFactory,
    raw: Connection,
    etcd_prefix: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 600 KB prefix with a 512 KiB value (a create carries the key twice or thrice:
    over etcd's 1.5 MiB) raises RequestTooLarge from etcd at once, not retried forever,
    when max_request_bytes claims more than etcd accepts; with the default limit the
    Elector refuses the prefix itself before any I/O."""
    long_prefix = etcd_prefix + "/" + "p" * 600_000
    with pytest.raises(ConfigError) as info:
        aioelect.Elector(endpoints="127.0.0.1:1", prefix=long_prefix)
    assert info.value.field == "prefix"

    elector = await make_elector(prefix=long_prefix, max_request_bytes=4 * MiB)
    await watched(elector, "job")  # its read is done: what follows is the campaign's
    sent: list[int] = []
    unary = core_of(elector).conn._unary_now

    async def counting(method: Any, request: Any, timeout: float | None) -> Any:
        sent.append(request.ByteSize())
        return await unary(method, request, timeout)

    monkeypatch.setattr(core_of(elector).conn, "_unary_now", counting)
    caplog.set_level(logging.DEBUG, logger="aioelect")
    with anyio.fail_after(10), pytest.raises(RequestTooLarge) as raised:
        async with elector.hold("job", b"v" * (512 * 1024)):
            pytest.fail("must not be elected")
    assert raised.value.size is not None and raised.value.size > DEFAULT_MAX_REQUEST_BYTES
    assert not raised.value.retryable
    assert "retrying" not in caplog.text
    assert len(sent) <= 2  # the batched create, and at most the lone one: no retry loop
    assert await keys_under(raw, long_prefix) == []


@pytest.mark.parametrize("limit", [DEFAULT_MAX_REQUEST_BYTES, 8 * MiB], ids=["ours", "etcds"])
async def test_a_too_large_transaction_raises_request_too_large(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str, limit: int
) -> None:
    """A 2.5 MiB put in term.transaction() raises RequestTooLarge (nothing applied), not
    EtcdUnavailable: refused before I/O at our limit, or by etcd's gRPC server when
    max_request_bytes claims more than etcd accepts."""
    elector = await make_elector(max_request_bytes=limit)
    key = f"{etcd_prefix}-data".encode()
    async with elector.hold("job", "a") as term:
        ops = elector.client.transactions
        with anyio.fail_after(10), pytest.raises(RequestTooLarge) as info:
            await term.transaction(success=[ops.put(key, b"x" * (5 * MiB // 2))])
        assert term.is_valid
    assert info.value.size is not None and info.value.size > DEFAULT_MAX_REQUEST_BYTES
    assert info.value.limit is not None
    assert not (await raw.range(key)).kvs


async def test_a_request_over_etcds_raft_limit_raises_request_too_large(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """A 1.6 MiB put (under etcd's gRPC limit, over its --max-request-bytes) is refused by
    etcd itself ("request is too large"): RequestTooLarge naming our size."""
    elector = await make_elector(max_request_bytes=8 * MiB)
    key = f"{etcd_prefix}-data".encode()
    async with elector.hold("job", "a") as term:
        ops = elector.client.transactions
        with anyio.fail_after(10), pytest.raises(RequestTooLarge, match="too large") as info:
            await term.transaction(success=[ops.put(key, b"x" * (1_600_000))])
    assert info.value.size is not None and info.value.size > 1_600_000
    assert not (await raw.range(key)).kvs


async def _fill(raw: Connection, prefix: str, n: int, size: int) -> list[bytes]:
    """Write ``n`` candidate keys of election "big" with values of ``size`` bytes."""
    keys = [f"{prefix}/big/{i + 1:x}".encode() for i in range(n)]
    for i, key in enumerate(keys):
        await raw.txn([], [raw.op_put(key, bytes([65 + i]) * size)])
    return keys


async def test_a_prefix_over_4_mib_lets_a_new_elector_enter(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """Five candidates of 1 MiB values (over gRPC's default 4 MiB receive limit): a new
    Elector enters, watches the election (its mirror reads it in pages) and reads leader()
    and candidates()."""
    keys = await _fill(raw, etcd_prefix, 5, MiB)
    try:
        elector = await make_elector()
        view = await watched(elector, "big")
        assert list(view.kvs) == keys
        leader = await elector.leader("big")
        assert leader is not None and leader.key == keys[0] and leader.value == b"A" * MiB
        candidates = await elector.candidates("big")
        assert [c.key for c in candidates] == keys
        assert [c.value[:1] for c in candidates] == [b"A", b"B", b"C", b"D", b"E"]
    finally:
        await raw.txn([], [raw.op_delete(k) for k in keys])


async def test_a_resync_of_a_prefix_over_4_mib_after_a_broken_watch(
    fault_proxy: FaultProxy, make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """A watch broken (connections reset) while the 5 MiB prefix changed: the resync reads
    it in pages and the mirror matches etcd again."""
    keys = await _fill(raw, etcd_prefix, 5, MiB)
    keys_elsewhere: list[bytes] = []
    try:
        elector = await make_elector(endpoints=[fault_proxy.endpoint], ttl=10)
        mirror = core_of(elector).mirror
        await watched(elector, "big")
        other = await watched(elector, "other")
        # The watch is live: it delivered an event written after the entry.
        marker = f"{etcd_prefix}/other/1".encode()
        written = await raw.txn([], [raw.op_put(marker, b"x")])
        await mirror.sync(other, int(written.header.revision))
        keys_elsewhere = [marker]
        resyncs = mirror.resyncs
        fault_proxy.blackhole()
        fault_proxy.reset()
        await raw.txn([], [raw.op_delete(keys[0])])
        keys.append(f"{etcd_prefix}/big/ff".encode())
        await raw.txn([], [raw.op_put(keys[-1], b"F" * MiB)])
        fault_proxy.heal()

        async def resynced() -> bool:
            return mirror.resyncs > resyncs

        await eventually(resynced, timeout=20, what="a resync")
        view = mirror.view("big")
        assert list(view.kvs) == keys[1:]
        assert view.kvs[keys[-1]].value == b"F" * MiB
        leader = await elector.leader("big")
        assert leader is not None and leader.key == keys[1]
    finally:
        await raw.txn([], [raw.op_delete(k) for k in keys + keys_elsewhere])


async def _fill_elections(raw: Connection, prefix: str, n: int, size: int) -> list[bytes]:
    """One candidate key in each of ``n`` elections ``e{i}``, values of ``size`` bytes
    (written 100 keys per transaction)."""
    keys = [f"{prefix}/e{i:05d}/1".encode() for i in range(n)]
    for at in range(0, n, 100):
        await raw.txn([], [raw.op_put(k, b"v" * size) for k in keys[at : at + 100]])
    return keys


async def test_ten_thousand_elections_of_1_kib_enter_and_resync(
    fault_proxy: FaultProxy, make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """10,000 elections with 1 KiB values (about 10 MiB under the prefix): a new Elector
    uses all of them (its mirror switches to the prefix's watch and reads it in pages),
    sees every one, and after its watch broke while keys changed, resyncs to match etcd
    again."""
    n = 10_000
    keys = await _fill_elections(raw, etcd_prefix, n, 1024)
    try:
        elector = await make_elector(endpoints=[fault_proxy.endpoint], ttl=10)
        mirror = core_of(elector).mirror
        names = [f"e{i:05d}" for i in range(n)]
        for view in [mirror.use(name) for name in names]:
            await mirror.ready(view)
        assert mirror.prefix is not None
        assert all(
            list(mirror.view(name).kvs) == [key] for name, key in zip(names, keys, strict=True)
        )
        leader = await elector.leader(names[-1])
        assert leader is not None and leader.key == keys[-1] and len(leader.value) == 1024
        resyncs = mirror.resyncs
        fault_proxy.blackhole()
        fault_proxy.reset()
        await raw.txn([], [raw.op_delete(keys[0])])
        await raw.txn([], [raw.op_put(keys[1], b"w" * 1024)])
        fault_proxy.heal()

        async def resynced() -> bool:
            return mirror.resyncs > resyncs

        await eventually(resynced, timeout=30, what="a resync")
        assert not mirror.view(names[0]).kvs
        assert mirror.view(names[1]).kvs[keys[1]].value == b"w" * 1024
        assert all(
            list(mirror.view(name).kvs) == [key]
            for name, key in zip(names[2:], keys[2:], strict=True)
        )
        assert await elector.leader(names[0]) is None
    finally:
        for at in range(0, n, 100):
            await raw.txn([], [raw.op_delete(k) for k in keys[at : at + 100]])


async def test_range_all_pages_form_one_snapshot(raw: Connection, etcd_prefix: str) -> None:
    """range_all reads in pages at the first page's revision: a key written between two
    pages is not in the result, and every key is read once."""
    root = f"{etcd_prefix}/".encode()
    keys = [root + f"k{i:04d}".encode() for i in range(250)]
    await raw.txn([], [raw.op_put(k, b"v") for k in keys[:100]])
    await raw.txn([], [raw.op_put(k, b"v") for k in keys[100:200]])
    await raw.txn([], [raw.op_put(k, b"v") for k in keys[200:]])
    pages: list[int] = []
    original = raw.range

    async def spying(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        pages.append(len(result.kvs))
        if len(pages) == 1:  # between the first and second page
            await raw.txn([], [raw.op_put(root + b"k0150x", b"late")])
        return result

    raw.range = spying  # type: ignore[method-assign]
    try:
        result = await raw.range_all(root, root[:-1] + b"0")
    finally:
        del raw.range
    assert len(pages) >= 2
    assert [kv.key for kv in result.kvs] == keys
    late = await raw.range(root + b"k0150x")
    assert late.revision > result.revision


# -- no lease left by a failed entry -----------------------------------------------------


@pytest.mark.parametrize("how", ["timed out", "cancelled"])
async def test_a_failed_entry_leaves_no_lease(
    etcd: EtcdServer, etcd_prefix: str, raw: Connection, fault_proxy: FaultProxy, how: str
) -> None:
    """Entering through a link slower than the request timeout: every grant lands in etcd
    but its answer comes too late, attempt after attempt. The entry fails (or is
    cancelled) and leaves no lease: every attempt granted the same lease id, revoked at
    the end (the revoke too lands before its own deadline cuts it)."""
    before = await live_leases(raw)
    fault_proxy.delay(0.3)  # a round trip takes 0.6 s: over the 0.4 s request timeout
    elector = aioelect.Elector(
        endpoints=[fault_proxy.endpoint],
        prefix=etcd_prefix,
        ttl=60,
        request_timeout=0.4,
        connect_timeout=3 if how == "timed out" else 60,
    )
    attempts: list[int] = []
    grant = core_of(elector).conn.grant

    async def counting(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        return await grant(*args, **kwargs)

    core_of(elector).conn.grant = counting  # type: ignore[method-assign]
    seen: set[int] = set()  # leases granted meanwhile (polled directly, not via the proxy)

    async def watch_leases() -> None:
        while True:
            seen.update(await live_leases(raw) - before)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_leases)
        if how == "timed out":
            with pytest.raises(EtcdUnavailable):
                async with elector:
                    pytest.fail("must not enter")
        else:
            with anyio.move_on_after(3):
                async with elector:
                    pytest.fail("must not enter")
        tg.cancel_scope.cancel()
    assert len(attempts) >= 2  # several grants were sent...
    assert len(seen) == 1  # ...and landed in etcd, all as one lease

    async def no_new_lease() -> bool:
        return not (await live_leases(raw) - before)

    await eventually(no_new_lease, timeout=5, what="no lease left by the failed entry")


async def test_an_entry_refused_after_its_grant_leaves_no_lease(
    etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """A permanent error after the grant (no read permission on the prefix, with auth):
    the entry raises PermissionDenied at once, not after connect_timeout, and revokes
    its lease."""
    from test_auth import ALICE_PASSWORD, ROOT_PASSWORD, auth_enabled_etcd, connected

    with auth_enabled_etcd() as proc:
        async with connected(proc.endpoint, "root", ROOT_PASSWORD) as root:
            before = await live_leases(root)
            elector = aioelect.Elector(
                endpoints=[proc.endpoint],
                prefix="/not-alice",
                username="alice",
                password=ALICE_PASSWORD,
                connect_timeout=30,
            )
            with anyio.fail_after(10), pytest.raises(PermissionDenied):
                async with elector:
                    pytest.fail("must not enter")
            assert elector.statistics().sessions_granted == 1  # refused after the grant
            assert await live_leases(root) == before


async def test_a_callers_client_with_grpcs_default_receive_limit_enters_too(
    etcd: EtcdServer, raw: Connection, etcd_prefix: str
) -> None:
    """A caller's aetcd client keeps gRPC's 4 MiB receive limit: a page over it is read
    again in smaller pages, so entering over a 5 MiB prefix still works."""
    keys = await _fill(raw, etcd_prefix, 5, MiB)
    host, _, port = etcd.endpoints[0].rpartition(":")
    client = aetcd.Client(host=host, port=int(port), timeout=10)
    try:
        async with aioelect.Elector(client=client, prefix=etcd_prefix, ttl=5) as elector:
            assert list((await watched(elector, "big")).kvs) == keys
            assert [c.key for c in await elector.candidates("big")] == keys
    finally:
        await client.close()
        await raw.txn([], [raw.op_delete(k) for k in keys])


async def test_a_campaign_on_a_revoked_session_lease_campaigns_again(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """'lease not found' on a campaign's create means its session is lost (revoked before
    the keepalive noticed), not a permanent error: it campaigns on a new session."""
    elector = await make_elector(ttl=10)
    old = elector.statistics().lease_id
    assert old is not None
    await raw.revoke(old)
    with anyio.fail_after(10):
        async with elector.hold("job", "a") as term:
            assert term.lease_id != old
    assert elector.statistics().sessions_granted == 2
