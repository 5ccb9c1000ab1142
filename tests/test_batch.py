"""The Batcher: requests of one loop turn share transactions, each caller gets its own answer."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import ElectorFactory, eventually, keys_under, watched

import aioelect
from aioelect._batch import Batcher
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect.testing import EtcdServer

pytestmark = pytest.mark.asyncio


async def test_concurrent_reads_share_transactions_and_get_their_own_slice(
    raw: Connection, etcd_prefix: str
) -> None:
    batcher = Batcher(raw)
    n = 300
    for i in range(n):
        await raw.txn([], [raw.op_put(f"{etcd_prefix}/r/{i:04d}".encode(), str(i).encode())])
    answers: dict[int, tuple[int, bytes]] = {}

    async def read(i: int) -> None:
        revision, (resp,) = await batcher.read([raw.op_get(f"{etcd_prefix}/r/{i:04d}".encode())])
        answers[i] = (revision, resp.response_range.kvs[0].value)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(read, i)
    assert {i: v for i, (_, v) in answers.items()} == {i: str(i).encode() for i in range(n)}
    # The first read went alone; the other 299 share ceil(299 / 128) = 3 transactions.
    assert batcher.batches == 3
    assert batcher.requests == n - 1
    assert len({rev for rev, _ in answers.values()}) <= 4


async def test_concurrent_creates_share_one_revision_and_each_key_exists(
    raw: Connection, etcd_prefix: str
) -> None:
    batcher = Batcher(raw)
    lease, _ = await raw.grant(10)
    tokens: dict[int, int | None] = {}

    async def create(i: int) -> None:
        tokens[i] = await batcher.create(f"{etcd_prefix}/c/{i}".encode(), b"v", lease)

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(create, i)
    assert batcher.batches == 2  # 128 + 72
    kvs = await keys_under(raw, f"{etcd_prefix}/c/")
    assert len(kvs) == 200
    by_key = {kv.key: kv for kv in kvs}
    for i, token in tokens.items():
        kv = by_key[f"{etcd_prefix}/c/{i}".encode()]
        assert token == kv.create_revision
        assert kv.lease == lease
    await raw.revoke(lease)


async def test_a_campaign_takes_one_request_contested_or_not(
    make_elector: ElectorFactory, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign sends one request, its create, besides the read of an election its elector
    did not watch yet; a candidate that waited for a predecessor sends no more: the mirror
    shows it first and alive in one revision (no confirming read). Every request of either
    elector counts: transactions and ranges."""
    a = await make_elector()
    b = await make_elector()
    sent: list[str] = []
    for elector, who in ((a, "a"), (b, "b")):
        for method in ("txn", "range", "create_keys"):
            original = getattr(core_of(elector).conn, method)

            async def call(
                *args: Any, _original: Any = original, _who: str = who, **kw: Any
            ) -> Any:
                sent.append(_who)
                return await _original(*args, **kw)

            monkeypatch.setattr(core_of(elector).conn, method, call)
    async with anyio.create_task_group() as tg:
        async with a.hold("job", "a"):
            assert sent == ["a", "a"]  # the election's first read, its create
            won = anyio.Event()
            b_sent: list[int] = []

            async def follower() -> None:
                async with b.hold("job", "b"):
                    b_sent.append(sent.count("b"))
                    won.set()

            tg.start_soon(follower)
            await eventually(lambda: _queued(a, "job", 2), what="b queued")
        await won.wait()
    assert b_sent == [2]  # the election's first read, its create: nothing once a had left
    sent.clear()
    async with a.hold("job", "a"):  # watched still (the elector lingers): the create alone
        assert sent == ["a"]


async def _queued(elector: aioelect.Elector, name: str, n: int) -> bool:
    return len(core_of(elector).mirror.view(name).kvs) == n


async def test_a_batch_with_an_existing_key_tells_every_caller_to_check_alone(
    raw: Connection, etcd_prefix: str
) -> None:
    batcher = Batcher(raw)
    await raw.txn([], [raw.op_put(f"{etcd_prefix}/e/3".encode(), b"old")])
    results: dict[int, int | None] = {}

    async def create(i: int) -> None:
        results[i] = await batcher.create(f"{etcd_prefix}/e/{i}".encode(), b"new", 0)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(create, i)
    assert results == dict.fromkeys(range(5))
    # Nothing of the failed batch was written.
    kvs = await keys_under(raw, f"{etcd_prefix}/e/")
    assert [(kv.key, kv.value) for kv in kvs] == [(f"{etcd_prefix}/e/3".encode(), b"old")]


async def test_batches_shrink_when_etcd_refuses_their_size(
    raw: Connection, etcd_prefix: str
) -> None:
    """etcd refuses more than --max-txn-ops (128 by default) ops: halve and resend."""
    batcher = Batcher(raw, max_ops=300)
    tokens: list[int | None] = []

    async def create(i: int) -> None:
        token = await batcher.create(f"{etcd_prefix}/s/{i}".encode(), b"v", 0)
        tokens.append(token)

    async with anyio.create_task_group() as tg:
        for i in range(250):
            tg.start_soon(create, i)
    assert batcher.max_ops <= 128
    assert len(tokens) == 250
    assert None not in tokens
    assert len(await keys_under(raw, f"{etcd_prefix}/s/")) == 250


async def test_a_create_cancelled_before_its_batch_is_sent_writes_nothing(
    raw: Connection, etcd_prefix: str
) -> None:
    batcher = Batcher(raw)
    with anyio.CancelScope() as scope:
        scope.cancel()  # cancelled at its first await: before the flush
        await batcher.create(f"{etcd_prefix}/x".encode(), b"v", 0)
    await anyio.lowlevel.checkpoint()  # one loop turn: the flush, scheduled before, runs first
    assert batcher.batches == 0
    assert await keys_under(raw, f"{etcd_prefix}/x") == []


async def test_many_holds_and_observers_start_with_few_requests(
    make_elector: ElectorFactory,
) -> None:
    """500 holds and 500 observers of distinct elections: a few dozen transactions."""
    elector = await make_elector(ttl=10)
    n = 500
    running = 0
    all_running = anyio.Event()
    stop = anyio.Event()

    def one_more() -> None:
        nonlocal running
        running += 1
        if running == 2 * n:
            all_running.set()

    async def hold(i: int) -> None:
        async with elector.hold(f"m{i}", "v"):
            one_more()
            await stop.wait()

    async def observe(i: int) -> None:
        async with elector.observe(f"m{i}") as leaders:
            async for info in leaders:
                if info is not None:
                    break
            one_more()
            await stop.wait()

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(hold, i)
            tg.start_soon(observe, i)
        await all_running.wait()
        stats = core_of(elector).batcher
        # Creates: batches of <= 128; the observers' barriers: a few more. No
        # confirming read, so at most n creates + n barriers.
        assert n <= stats.requests <= 2 * n
        assert stats.batches <= 40
        assert len(elector.terms()) == n
        stop.set()


async def test_lone_barrier_is_sent_without_a_batch_and_sees_the_last_write(
    raw: Connection, etcd_prefix: str
) -> None:
    batcher = Batcher(raw, barrier_key=etcd_prefix.encode())
    put = await raw.txn([], [raw.op_put(f"{etcd_prefix}/b".encode(), b"v")])
    revision, responses = await batcher.read([])
    assert revision >= put.header.revision
    assert responses == []
    assert batcher.batches == 0


async def test_a_batch_failing_unexpectedly_fails_its_callers_instead_of_hanging(
    raw: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = Batcher(raw)

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("channel closed")

    monkeypatch.setattr(raw, "txn", broken)
    errors: list[BaseException] = []

    async def read() -> None:
        try:
            await batcher.read([raw.op_get(b"/k")])
        except RuntimeError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(read)
    assert len(errors) == 3  # the lone one and the two batched


async def test_closing_the_batcher_fails_waiting_callers_with_elector_closed(
    raw: Connection,
) -> None:
    batcher = Batcher(raw)
    raised: list[BaseException] = []

    async def create(i: int) -> None:
        try:
            await batcher.create(f"/never/{i}".encode(), b"v", 0)
        except aioelect.ElectorClosed as exc:
            raised.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(create, i)
        await anyio.lowlevel.checkpoint()  # the three wait for their (not yet sent) batch
        batcher.close()
    assert len(raised) == 3
    assert batcher.batches == 0


async def test_campaign_waiting_for_its_own_event_ends_when_the_elector_closes(
    etcd: EtcdServer, etcd_prefix: str, raw: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch delivers nothing (stalled): closing the elector ends the campaign, no hang."""
    created = anyio.Event()
    outcome: list[BaseException] = []
    async with aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2) as elector:
        await watched(elector, "stalled")  # then nothing more comes
        monkeypatch.setattr(core_of(elector).mirror, "apply_batch", lambda batch: None)
        original = core_of(elector).batcher._send_creates

        async def send_creates(chunk: Any) -> None:
            await original(chunk)
            created.set()  # landed; its caller waits for the mirror to see it

        monkeypatch.setattr(core_of(elector).batcher, "_send_creates", send_creates)

        async def campaign() -> None:
            try:
                async with elector.hold("stalled", "v"):
                    pass
            except aioelect.ElectorClosed as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(campaign)
            await created.wait()
            assert len(await keys_under(raw, f"{etcd_prefix}/stalled/")) == 1
            with anyio.fail_after(10):
                await elector.__aexit__(None, None, None)
    assert len(outcome) == 1
    assert await keys_under(raw, f"{etcd_prefix}/stalled/") == []


async def test_a_batched_create_answers_once_the_mirror_has_seen_its_key(
    make_elector: ElectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the elector's mirror, a create's caller is answered only when the mirror shows
    its key (one wait per batch, not per caller), so the campaign has nothing more to wait for."""
    elector = await make_elector()
    session = await core_of(elector).wait_session()
    mirror = core_of(elector).mirror
    mirror.prefix_watch_at = 0  # one watch of the whole prefix: one scope for every view
    views = [mirror.use(f"c{i}") for i in range(200)]
    for view in views:
        await mirror.ready(view)
    assert mirror.prefix is not None
    seen: list[tuple[int, int, bool]] = []  # (token, view's seen revision, key in the view)
    # Hold the watch's responses back until every batch has landed.
    held_back: list[Any] = []
    apply = mirror.apply_batch
    monkeypatch.setattr(mirror, "apply_batch", held_back.append)
    send, landed = core_of(elector).batcher._send_creates, 0
    all_landed = anyio.Event()

    async def send_creates(chunk: Any) -> None:
        nonlocal landed
        await send(chunk)
        landed += len(chunk)
        if landed == 200:
            all_landed.set()

    monkeypatch.setattr(core_of(elector).batcher, "_send_creates", send_creates)

    async def create(i: int) -> None:
        key = f"{elector.prefix}/c{i}/{session.lease_id:x}".encode()
        token = await core_of(elector).batcher.create(key, b"v", session.lease_id)
        assert token is not None
        view = mirror.view(f"c{i}")
        kv = view.kvs.get(key)
        seen.append((token, view.seen, kv is not None and kv.create_revision == token))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(create, i)
        await all_landed.wait()
        await anyio.lowlevel.checkpoint()
        assert seen == []  # landed, but the mirror has not seen the keys
        assert mirror.prefix.seen_waiters is not None
        assert len(mirror.prefix.seen_waiters._heap) == 2  # one wait per batch (128 + 72)
        monkeypatch.setattr(mirror, "apply_batch", apply)
        for batch in held_back:  # later ones are applied as they come
            apply(batch)
    assert len(seen) == 200
    assert all(revision >= token and shown for token, revision, shown in seen)
    assert len(mirror.prefix.seen_waiters._heap) == 0
    for view in views:
        mirror.unuse(view)


async def test_observers_entering_a_watched_election_share_one_read_and_wait_for_it(
    make_elector: ElectorFactory, raw: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Observers entering an election already watched: those of one loop turn share one
    barrier read; none returns before its view has applied a write made before the call;
    a cancelled one leaves the others unharmed."""
    elector = await make_elector()
    batcher, mirror = core_of(elector).batcher, core_of(elector).mirror
    view = mirror.use("w")  # watched already
    await mirror.ready(view)
    # Hold the watch's responses (events and progress alike) back.
    held_back: list[Any] = []
    apply = mirror.apply_batch
    monkeypatch.setattr(mirror, "apply_batch", held_back.append)
    put = await raw.txn([], [raw.op_put(f"{elector.prefix}/w/k".encode(), b"v")])
    written = int(put.header.revision)
    reached: list[int] = []
    read_done = anyio.Event()
    send_reads = batcher._send_reads
    before = (batcher.batches, batcher.requests)

    async def sending(chunk: Any) -> None:
        await send_reads(chunk)
        read_done.set()

    monkeypatch.setattr(batcher, "_send_reads", sending)

    async def lone() -> None:  # in flight while the others come: they form a batch
        await batcher.read(())

    async def observer() -> None:
        async with elector.observe("w") as leaders:
            async for info in leaders:
                assert info is not None and info.value == b"v"
                reached.append(view.seen)
                break

    cancelled = anyio.CancelScope()

    async def leaving() -> None:
        with cancelled:
            async with elector.observe("w"):
                pass
        reached.append(-1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lone)
        await anyio.lowlevel.checkpoint()  # lone's read is in flight now
        for _ in range(50):
            tg.start_soon(observer)
        tg.start_soon(leaving)
        await anyio.lowlevel.checkpoint()  # all 51 joined; the group's read is not sent yet
        cancelled.cancel()
        await read_done.wait()
        await anyio.lowlevel.checkpoint()
        assert reached == [-1]  # read, but the view has not caught up: nobody returned
        monkeypatch.setattr(mirror, "apply_batch", apply)
        for batch in held_back:  # later ones are applied as they come
            apply(batch)
    done = [revision for revision in reached if revision != -1]
    assert len(done) == 50
    assert min(done) >= written
    # One transaction for the whole group (the lone read went before it).
    assert batcher.batches - before[0] == 1
    mirror.unuse(view)


async def test_batches_cancelled_before_they_started_fail_their_callers(
    raw: Connection,
) -> None:
    """close() in the loop turn of a flush cancels batch tasks before their first step:
    their callers still get ElectorClosed instead of waiting forever."""
    batcher = Batcher(raw)
    raised: list[str] = []

    async def create(i: int) -> None:
        try:
            await batcher.create(f"/never/{i}".encode(), b"v", 0)
        except aioelect.ElectorClosed:
            raised.append("create")

    async def read() -> None:
        try:
            await batcher.read(())
        except aioelect.ElectorClosed:
            raised.append("barrier")

    async def lone() -> None:  # keeps the barriers from going alone
        await batcher.read(())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lone)
            await anyio.lowlevel.checkpoint()
            for i in range(3):
                tg.start_soon(create, i)
                tg.start_soon(read)
            await anyio.lowlevel.checkpoint()  # all queued, the flushes not run yet
            batcher._flush_creates()
            batcher._flush_reads()
            batcher.close()  # cancels the two batch tasks before their first step
    assert sorted(raised) == ["barrier"] * 3 + ["create"] * 3
