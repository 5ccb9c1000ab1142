"""The core election against a real etcd: order, handover, loss, phantom wins, cleanup."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import anyio
import pytest
from helpers import ElectorFactory, eventually, keys_under, live_leases, watched

import aioelect
from aioelect._connection import Connection, WatchBatch
from aioelect._core import core_of
from aioelect._term import scopes_open

pytestmark = pytest.mark.asyncio


async def _hold_forever(elector: aioelect.Elector, name: str) -> None:
    async with elector.hold(name, "x"):
        await anyio.sleep_forever()


async def _queue_length(elector: aioelect.Elector, name: str, n: int) -> None:
    async def check() -> bool:
        return len(await elector.candidates(name)) >= n

    await eventually(check, what=f"{n} candidates")


async def test_fifo_order_of_three_candidates(make_elector: ElectorFactory) -> None:
    """Three candidates lead in the order they campaigned, each handing over on exit."""
    electors = [await make_elector() for _ in range(3)]
    order: list[str] = []
    entered = [anyio.Event() for _ in range(3)]
    release = [anyio.Event() for _ in range(3)]

    async def candidate(i: int) -> None:
        async with electors[i].hold("job", f"c{i}") as term:
            order.append(term.value.decode())
            entered[i].set()
            await release[i].wait()

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(candidate, i)
            await _queue_length(electors[0], "job", i + 1)
        for i in range(3):
            await entered[i].wait()
            assert order == [f"c{j}" for j in range(i + 1)]
            release[i].set()
    assert order == ["c0", "c1", "c2"]


async def test_graceful_handover_without_ttl_wait(make_elector: ElectorFactory) -> None:
    """A leader leaving its block hands over at once: far sooner than the TTL."""
    a = await make_elector(ttl=10)
    b = await make_elector(ttl=10)
    elected = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with a.hold("job", "a") as term_a:

            async def follower() -> None:
                async with b.hold("job", "b") as term_b:
                    assert term_b.token > term_a.token
                    elected.set()

            tg.start_soon(follower)
            await _queue_length(a, "job", 2)
            left = time.monotonic()
        await elected.wait()
        took = time.monotonic() - left
    assert took < 10 / 2, f"handover took {took:.3f} s"


async def test_leader_key_deleted_cancels_body(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """Someone deleting the leader key cancels the body and raises LeadershipLost."""
    a = await make_elector()
    inside = anyio.Event()
    cancelled = anyio.Event()
    keys: list[bytes] = []

    async def intruder() -> None:
        await inside.wait()
        await raw.txn([], [raw.op_delete(keys[0])])

    async def leader() -> None:
        async with a.hold("job", "a") as term:
            keys.append(term.key)
            inside.set()
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(intruder)
        with pytest.raises(aioelect.LeadershipLost, match="deleted") as info:
            await leader()
    assert cancelled.is_set()
    assert info.value.name == "job"


async def test_every_waiter_of_a_term_wakes_when_it_ends(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """Several tasks waiting in ``wait_lost()`` (each with its cancel scope on the term,
    besides the hold's): all return when the key is deleted, and the body is cancelled."""
    a = await make_elector()
    woke: list[int] = []
    waiting = anyio.Event()

    async def waiter(term: aioelect.Term, i: int) -> None:
        await term.wait_lost()
        woke.append(i)

    with pytest.raises(aioelect.LeadershipLost, match="deleted"):
        async with a.hold("job", "a") as term:
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(waiter, term, i)
                tg.start_soon(_after_all_blocked, waiting)
                await waiting.wait()
                await raw.txn([], [raw.op_delete(term.key)])
                await anyio.sleep_forever()
    assert sorted(woke) == [0, 1, 2]
    assert scopes_open(term) == 0  # every scope was dropped from the term


async def _after_all_blocked(event: anyio.Event) -> None:
    await anyio.wait_all_tasks_blocked()
    event.set()


async def test_leader_key_overwritten_cancels_body(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """Someone overwriting the leader key (value and lease) ends the term."""
    a = await make_elector()
    with pytest.raises(aioelect.LeadershipLost, match="overwritten"):
        async with a.hold("job", "a") as term:
            await raw.txn([], [raw.op_put(term.key, b"intruder")])
            await term.wait_lost()
            await anyio.sleep_forever()
    assert term.end_reason is not None


async def test_waiting_candidate_whose_key_vanished_never_wins_on_it(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """A waiter whose key is deleted (with the leader's, in one txn) re-campaigns with a new key."""
    a = await make_elector()
    b = await make_elector()
    won = anyio.Event()
    tokens: list[int] = []

    async def waiter() -> None:
        async with b.hold("job", "b") as term_b:
            tokens.append(term_b.token)
            kvs = await keys_under(raw, f"{b.prefix}/job/")
            assert [kv.create_revision for kv in kvs] == [term_b.token]
            won.set()

    async with anyio.create_task_group() as tg:
        with pytest.raises(aioelect.LeadershipLost):
            async with a.hold("job", "a") as term_a:
                tg.start_soon(waiter)
                await _queue_length(a, "job", 2)
                old_b = (await a.candidates("job"))[1]
                await raw.txn([], [raw.op_delete(term_a.key), raw.op_delete(old_b.key)])
                await anyio.sleep_forever()
    assert won.is_set()
    assert tokens[0] > old_b.token


async def _waiting_behind(a: aioelect.Elector, b: aioelect.Elector) -> aioelect.CandidateInfo:
    """Once b's campaign for "job" waits behind a's term: b's candidate."""
    await _queue_length(a, "job", 2)
    old_b = (await a.candidates("job"))[1]

    async def mirrored() -> bool:
        return old_b.key in core_of(b).mirror.view("job").kvs

    await eventually(mirrored, what="b's key mirrored")
    await anyio.wait_all_tasks_blocked()  # b's campaign has seen its key and waits
    return old_b


@pytest.mark.parametrize("case", ["alive", "delete lost", "read failed"])
async def test_a_win_after_the_watch_restarted_is_confirmed_by_a_read(
    make_elector: ElectorFactory, raw: Connection, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A waiter whose mirror resynced (or whose watch restarted) while it waited cannot
    rule out a lost event (etcd #18089 dropped a delete on a resumed watch): it confirms
    its win with one read. Its key alive, it wins on it; its key deleted but the delete
    lost, it does not win on the vanished key (a phantom win) but campaigns again; the
    read failed, the retry (same key) confirms again instead of trusting the mirror."""
    a = await make_elector()
    b = await make_elector()
    won: list[int] = []
    reads: list[int] = []
    original_read = core_of(b).batcher.read

    async def read(ops: object) -> object:
        reads.append(1)
        if case == "read failed" and len(reads) == 1:
            raise aioelect.EtcdError("the confirming read failed", retryable=True)
        return await original_read(ops)  # type: ignore[arg-type]

    async def waiter() -> None:
        async with b.hold("job", "b") as term:
            won.append(term.token)

    async with anyio.create_task_group() as tg:
        async with a.hold("job", "a"):
            tg.start_soon(waiter)
            old_b = await _waiting_behind(a, b)
            monkeypatch.setattr(core_of(b).batcher, "read", read)
            view = core_of(b).mirror.view("job")
            epoch = view.epoch
            await core_of(b).mirror.resync()  # a resync, as after a compacted watch
            assert view.epoch != epoch
            if case == "delete lost":
                mirror = core_of(b).mirror
                apply = mirror.apply_batch

                def dropping(batch: WatchBatch) -> None:
                    events = [(p, kv) for p, kv in batch.events if p or kv.key != old_b.key]
                    apply(dataclasses.replace(batch, events=events))

                monkeypatch.setattr(mirror, "apply_batch", dropping)
                await raw.txn([], [raw.op_delete(old_b.key)])
    if case == "delete lost":
        assert reads == [1]  # the new campaign after it needs none
        assert len(won) == 1 and won[0] > old_b.token
    else:
        assert reads == ([1] if case == "alive" else [1, 1])
        assert won == [old_b.token]


@pytest.mark.parametrize("point", ["txn", "mirror"])
async def test_cancel_at_each_await_point_leaves_no_key(
    make_elector: ElectorFactory, raw: Connection, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled at each await of the campaign (after its key exists), hold() leaves no key:
    after its create returned, and while the create waits for the mirror to see the key.

    (The wait for a predecessor has its own test below.)
    """
    a = await make_elector()
    reached = anyio.Event()
    if point == "txn":  # the create answered: the campaign looks at its turn next
        from aioelect import _campaign

        async def gate(*args: Any) -> None:
            reached.set()
            await anyio.sleep_forever()

        monkeypatch.setattr(_campaign, "_wait_turn", gate)
    else:  # the watch delivers nothing: the create landed, its answer waits for the mirror
        await watched(a, "job")
        monkeypatch.setattr(core_of(a).mirror, "apply_batch", lambda batch: None)
        send = core_of(a).batcher._send_creates

        async def landed(chunk: Any) -> None:
            await send(chunk)
            reached.set()

        monkeypatch.setattr(core_of(a).batcher, "_send_creates", landed)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_hold_forever, a, "job")
        await reached.wait()
        assert len(await keys_under(raw, f"{a.prefix}/job/")) == 1
        tg.cancel_scope.cancel()
    monkeypatch.undo()
    assert await keys_under(raw, f"{a.prefix}/") == []


async def test_cancel_while_waiting_to_see_a_reused_key_leaves_no_key(
    make_elector: ElectorFactory, raw: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key left by an earlier attempt of the same lease makes the batched create fail: the
    campaign reuses the key and waits for its mirror to see it. Cancelled there, it deletes it."""
    from aioelect import _campaign

    a = await make_elector()
    session = await core_of(a).wait_session()
    mirror = core_of(a).mirror
    view = mirror.use("job")  # watched (and read) before the key is written
    await mirror.ready(view)
    monkeypatch.setattr(mirror, "apply_batch", lambda batch: None)  # the mirror sees nothing
    key = f"{a.prefix}/job/{session.lease_id:x}".encode()
    await raw.txn([], [raw.op_put(key, b"x", session.lease_id)])
    reached = anyio.Event()
    original = _campaign._see_own_key

    async def gate(*args: Any) -> bool:
        reached.set()
        return await original(*args)

    monkeypatch.setattr(_campaign, "_see_own_key", gate)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_hold_forever, a, "job")
        await reached.wait()
        assert [kv.key for kv in await keys_under(raw, f"{a.prefix}/job/")] == [key]
        tg.cancel_scope.cancel()
    monkeypatch.undo()
    mirror.unuse(view)
    assert await keys_under(raw, f"{a.prefix}/") == []


async def test_cancel_while_creating_alone_deletes_exactly_that_key(
    make_elector: ElectorFactory, raw: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key left by an earlier attempt makes the batched create fail, and the campaign
    writes (or reuses) its key in a transaction of its own. Cancelled while that is in
    flight, it lets it finish and deletes the key guarded by its create revision."""
    a = await make_elector()
    await watched(a, "job")  # read already: the campaign sends its create alone
    session = await core_of(a).wait_session()
    key = f"{a.prefix}/job/{session.lease_id:x}".encode()
    await raw.txn([], [raw.op_put(key, b"earlier", session.lease_id)])
    conn = core_of(a).conn
    original = conn.txn
    calls: list[tuple[int, int]] = []  # (compares, ops) of each transaction
    alone, proceed = anyio.Event(), anyio.Event()

    async def txn(compare: list[object], success: list[object], *args: object) -> object:
        calls.append((len(compare), len(success)))
        if len(args) == 1:  # the lone create (put if absent, else get): in flight until told
            alone.set()
            await proceed.wait()
        return await original(compare, success, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(conn, "txn", txn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_hold_forever, a, "job")
        await alone.wait()
        tg.cancel_scope.cancel()
        proceed.set()
    assert await keys_under(raw, f"{a.prefix}/") == []
    # The lone create, its rewrite of the value, then the delete guarded by the token.
    assert calls == [(1, 1), (1, 1), (1, 1)]


async def test_cancel_during_the_back_off_after_an_error_leaves_no_key(
    make_elector: ElectorFactory, raw: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An etcd error after the key was written sends the campaign into a back-off sleep;
    cancelled there, it still deletes its key (found by review: it used to stay)."""
    from aioelect import _campaign

    a = await make_elector()
    failed = anyio.Event()

    async def failing_wait_turn(*args: object, **kwargs: object) -> None:
        failed.set()
        raise aioelect.EtcdError("a read failed", retryable=True)

    monkeypatch.setattr(_campaign, "_wait_turn", failing_wait_turn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_hold_forever, a, "job")
        await failed.wait()  # the campaign runs on into its back-off sleep before we do
        assert len(await keys_under(raw, f"{a.prefix}/job/")) == 1
        tg.cancel_scope.cancel()
    assert await keys_under(raw, f"{a.prefix}/") == []


async def test_cancel_while_the_create_lands_deletes_exactly_that_key(
    make_elector: ElectorFactory, raw: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled after its batched create was sent, the campaign waits for it to land and
    deletes the key guarded by the create revision it got (a delete landing late can then
    never remove a later key of the same name)."""
    a = await make_elector()
    await watched(a, "job")  # read already: the campaign sends its create alone
    conn = core_of(a).conn
    original, original_create = conn.txn, conn.create_keys
    calls: list[tuple[int, int]] = []  # (compares, ops) of each transaction (a create: n, n)
    sent = anyio.Event()

    async def txn(compare: list[object], success: list[object], *args: object) -> object:
        calls.append((len(compare), len(success)))
        sent.set()
        return await original(compare, success, *args)  # type: ignore[arg-type]

    async def create_keys(items: list[object], *args: object) -> object:
        calls.append((len(items), len(items)))
        sent.set()
        return await original_create(items, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(conn, "txn", txn)
    monkeypatch.setattr(conn, "create_keys", create_keys)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_hold_forever, a, "job")
        await sent.wait()  # the batched create is on its way, not yet answered
        tg.cancel_scope.cancel()
    assert await keys_under(raw, f"{a.prefix}/") == []
    assert calls == [(1, 1), (1, 1)]  # the create, then the guarded delete


async def test_cancel_while_waiting_for_predecessor_leaves_no_key(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """Cancelled while waiting behind a leader, hold() deletes its key; the leader stays."""
    a = await make_elector()
    b = await make_elector()
    async with b.hold("job", "leader") as term_b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_hold_forever, a, "job")
            await _queue_length(a, "job", 2)
            tg.cancel_scope.cancel()
        assert [kv.key for kv in await keys_under(raw, f"{a.prefix}/")] == [term_b.key]


async def test_elector_exit_leaves_nothing(etcd_prefix: str, raw: Connection, etcd) -> None:  # type: ignore[no-untyped-def]
    """Leaving the elector removes every key under the prefix and its lease."""
    async with aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=5) as a:
        lease = a.statistics().lease_id
        assert lease in await live_leases(raw)
        async with anyio.create_task_group() as tg:
            for name in ("one", "two", "three"):
                tg.start_soon(_hold_forever, a, name)
            await eventually(lambda: _count(raw, etcd_prefix, 3), what="three leaders")
            tg.cancel_scope.cancel()
        async with a.hold("four", "x"):
            pass
        async with a.hold("five", "x"):
            assert len(await keys_under(raw, etcd_prefix + "/")) == 1
    assert await keys_under(raw, etcd_prefix + "/") == []
    assert lease not in await live_leases(raw)


async def _count(raw: Connection, prefix: str, n: int) -> bool:
    return len(await keys_under(raw, prefix + "/")) == n


async def test_term_transaction_is_fenced(make_elector: ElectorFactory, raw: Connection) -> None:
    """Term.transaction applies while leading and is refused (NotLeader) once the term ended."""
    a = await make_elector()
    tx = a.client.transactions
    key = f"{a.prefix}-data/x".encode()
    with pytest.raises(aioelect.LeadershipLost):
        async with a.hold("job", "a") as term:
            ok, _ = await term.transaction(success=[tx.put(key, b"1")])
            assert ok
            ok, results = await term.transaction(
                compare=[tx.value(key) == b"2"], success=[], failure=[tx.get(key)]
            )
            assert not ok
            assert results[0][0][0] == b"1"
            await raw.txn([], [raw.op_delete(term.key)])
            await term.wait_lost()
            with pytest.raises(aioelect.NotLeader):
                await term.transaction(success=[tx.put(key, b"late")])
    assert (await raw.range(key)).kvs[0].value == b"1"
    await raw.txn([], [raw.op_delete(key)])


async def test_stale_term_transaction_refused_by_etcd(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """A transaction whose guard etcd refuses (key gone, not yet noticed) raises NotLeader."""
    a = await make_elector()
    tx = a.client.transactions
    key = f"{a.prefix}-data/y".encode()
    with pytest.raises(aioelect.LeadershipLost):
        async with a.hold("job", "a") as term:
            # Delete and re-create the key under the same lease: the token no longer matches.
            await raw.txn(
                [],
                [
                    raw.op_delete(term.key),
                ],
            )
            with pytest.raises(aioelect.NotLeader):
                await term.transaction(success=[tx.put(key, b"stale")])
            await anyio.sleep_forever()
    assert (await raw.range(key)).kvs == []


async def test_proclaim_changes_value_and_observers_see_it(make_elector: ElectorFactory) -> None:
    """proclaim() changes the leader's value; observe() reports leader, proclaim and vacancy."""
    a = await make_elector()
    b = await make_elector()
    seen: list[bytes | None] = []
    async with b.observe("job") as leaders:
        it = aiter(leaders)
        assert await anext(it) is None
        async with a.hold("job", "v1") as term:
            first = await anext(it)
            assert first is not None and first.value == b"v1" and first.token == term.token
            await term.proclaim("v2")
            assert term.value == b"v2"
            second = await anext(it)
            assert second is not None and second.value == b"v2" and second.token == term.token
            seen.append(second.value)
        assert await anext(it) is None
    assert (await a.leader("job")) is None
    assert seen == [b"v2"]


async def test_an_observe_block_is_used_once_at_a_time_and_can_be_entered_again(
    make_elector: ElectorFactory,
) -> None:
    """An observe() block is its own iterator: it gives nothing before it is entered, refuses
    a second entry while in use, ends its iteration on exit, and starts afresh when entered
    again (the current leader first, nothing left over from its first use)."""
    a = await make_elector()
    block = a.observe("job")
    assert [info async for info in block] == []  # not entered: ends at once
    async with a.hold("job", "v1") as term:
        async with block as leaders:
            with pytest.raises(aioelect.ConfigError, match="in use"):
                await block.__aenter__()
            first = await anext(aiter(leaders))
            assert first is not None and first.token == term.token
            await term.proclaim("v2")

            async def queued() -> bool:
                return block.pending() > 0

            await eventually(queued, what="v2 queued")  # and never read
        await term.proclaim("v3")
        async with block as again:
            info = await anext(aiter(again))
            assert info is not None and info.value == b"v3"  # the leader now, not v2
        assert [info async for info in block] == []  # exited: iteration ends
    assert core_of(a).observers == set()


async def test_leader_and_candidates(make_elector: ElectorFactory) -> None:
    """leader() and candidates() report the live candidates in election order."""
    a = await make_elector()
    b = await make_elector()
    assert await a.leader("job") is None
    assert await a.candidates("job") == []
    async with a.hold("job", b"a-value") as term, anyio.create_task_group() as tg:
        tg.start_soon(_hold_forever, b, "job")
        await _queue_length(a, "job", 2)
        leader = await b.leader("job")
        assert leader is not None
        assert (leader.key, leader.value, leader.token) == (term.key, b"a-value", term.token)
        names = await b.candidates("job")
        assert [c.value for c in names] == [b"a-value", b"x"]
        assert names[0].token < names[1].token
        tg.cancel_scope.cancel()


async def test_is_valid_false_once_deadline_passes_without_timer(
    make_elector: ElectorFactory,
) -> None:
    """is_valid turns false when the renew deadline passes, even if the loop never ran a timer."""
    a = await make_elector(ttl=2)
    with pytest.raises(aioelect.LeadershipLost):
        async with a.hold("job", "a") as term:
            assert term.is_valid
            remaining = term.expires_in()
            assert 0 < remaining <= a.config.renew_deadline
            time.sleep(remaining + 0.05)  # noqa: ASYNC251 - block the loop: no timer can run
            assert not term.is_valid
            # Read against the clock too, before any callback could end the term.
            assert term.expires_in() == 0.0
            assert term.end_reason == "lease not renewed before renew_deadline"
            await anyio.sleep_forever()


async def test_statistics_snapshot(make_elector: ElectorFactory) -> None:
    """statistics() counts terms won and held, and reports the lease."""
    a = await make_elector()
    s0 = a.statistics()
    assert s0.terms_won == 0 and s0.lease_id is not None and s0.sessions_granted == 1
    async with a.hold("job", "a"):
        s1 = a.statistics()
        assert s1.terms_held == 1 and s1.terms_won == 1
        with pytest.raises(AttributeError):
            s1.terms_won = 5  # type: ignore[misc]
    s2 = a.statistics()
    assert s2.terms_held == 0 and s2.terms_lost == 0


async def test_lost_term_with_aetcd_call_in_body_raises_leadership_lost(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """A body blocked in a raw aetcd call still gets LeadershipLost, not a stray CancelledError."""
    a = await make_elector()
    with pytest.raises(aioelect.LeadershipLost):
        async with a.hold("job", "a") as term:
            await raw.txn([], [raw.op_delete(term.key)])
            while True:
                await a.client.get(b"/some/key")


async def test_hold_without_waiting_is_a_try_lock(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """hold(wait=False) leads at once when free, and raises NotLeader leaving no key when not."""
    a = await make_elector()
    b = await make_elector()
    async with a.hold("job", "a", wait=False) as term:
        with pytest.raises(aioelect.NotLeader, match="'a'"):
            async with b.hold("job", "b", wait=False):
                pytest.fail("must not lead")
        assert [kv.key for kv in await keys_under(raw, a.prefix + "/")] == [term.key]
    with pytest.raises(aioelect.ConfigError, match="wait"):
        async with a.hold("job", "a", wait=1):  # type: ignore[arg-type]
            pytest.fail("must not lead")
