"""The seed's callback API (Leadership) against a real etcd."""

from __future__ import annotations

import logging
import time
import traceback

import anyio
import pytest
from helpers import ElectorFactory, eventually, keys_under

import aioelect
from aioelect import health
from aioelect._connection import Connection
from aioelect._keys import candidate_key
from aioelect._leadership import run_state
from aioelect.testing import EtcdServer, FaultProxy

pytestmark = pytest.mark.asyncio


class Recorder:
    """Callbacks that record what happened, with events to wait on."""

    def __init__(self, name: str, decline: int = 0) -> None:
        self.name = name
        self.decline = decline
        self.elected: list[aioelect.Term] = []
        self.stepped_down: list[aioelect.Term] = []
        self.elected_at: list[float] = []
        self.down_done_at: list[float] = []
        self.changes: list[aioelect.LeaderInfo | None] = []
        self.elected_event = anyio.Event()
        self.down_event = anyio.Event()
        self.change_event = anyio.Event()

    async def on_elected(self, term: aioelect.Term) -> bool:
        self.elected.append(term)
        self.elected_at.append(time.monotonic())
        self.elected_event.set()
        if self.decline > 0:
            self.decline -= 1
            return False
        return True

    async def on_stepped_down(self, term: aioelect.Term) -> None:
        self.stepped_down.append(term)
        self.down_done_at.append(time.monotonic())
        self.down_event.set()

    async def on_leader_change(self, info: aioelect.LeaderInfo | None) -> None:
        self.changes.append(info)
        self.change_event.set()

    def kwargs(self) -> dict[str, object]:
        return {
            "on_elected": self.on_elected,
            "on_stepped_down": self.on_stepped_down,
            "on_leader_change": self.on_leader_change,
        }

    async def wait_elected(self, n: int = 1) -> None:
        with anyio.fail_after(15):
            while len(self.elected) < n:
                self.elected_event = anyio.Event()
                if len(self.elected) >= n:
                    break
                await self.elected_event.wait()

    async def wait_change(self, pred) -> None:  # type: ignore[no-untyped-def]
        with anyio.fail_after(15):
            while not any(pred(c) for c in self.changes):
                self.change_event = anyio.Event()
                await self.change_event.wait()


async def test_run_elects_then_stop_steps_down(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """run() campaigns and leads; stop() calls on_stepped_down, resigns and returns."""
    a = await make_elector()
    rec = Recorder("a")
    lead = a.leadership("job", "a", **rec.kwargs())  # type: ignore[arg-type]
    assert repr(lead) == "<Leadership 'job' FOLLOWER>"
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        await rec.wait_elected()
        assert lead.is_leader
        assert lead.check()
        term = lead.term
        assert term is not None
        assert f"LEADER token={term.token}" in repr(lead)
        assert await lead.current_leader() == (b"a", term.token)
        lease = lead.get_lease()
        assert lease is not None
        assert lease.id == term.lease_id
        assert 0 < lease.expires_in() <= a.config.renew_deadline
        assert not lease.is_expired()
        lead.stop()
    assert rec.stepped_down == rec.elected
    assert not lead.is_leader
    assert lead.get_lease() is None
    assert await keys_under(raw, a.prefix + "/") == []


async def test_decline_resigns_and_campaigns_again(make_elector: ElectorFactory) -> None:
    """on_elected returning False resigns, lets others lead, and campaigns again later."""
    a = await make_elector()
    b = await make_elector()
    rec_a = Recorder("a", decline=1)
    rec_b = Recorder("b")
    lead_a = a.leadership("job", "a", **rec_a.kwargs())  # type: ignore[arg-type]
    lead_b = b.leadership("job", "b", **rec_b.kwargs())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead_a.run)
        await rec_a.wait_elected()
        tg.start_soon(lead_b.run)
        await rec_b.wait_elected()
        assert len(rec_a.stepped_down) == 1
        lead_b.stop()
        await rec_a.wait_elected(2)
        assert lead_a.is_leader
        lead_a.stop()
    assert len(rec_a.elected) == len(rec_a.stepped_down) == 2


async def test_observe_only_reports_leaders_without_campaigning(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """campaign=False reports every leader change (value, proclaim, vacancy) and writes nothing."""
    a = await make_elector()
    b = await make_elector()
    rec = Recorder("b")
    watcher = b.leadership("job", "b", campaign=False, **rec.kwargs())  # type: ignore[arg-type]
    assert "OBSERVER" in repr(watcher)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        await rec.wait_change(lambda c: c is None)
        async with a.hold("job", "a1") as term:
            await rec.wait_change(lambda c: c is not None and c.value == b"a1")
            await term.proclaim("a2")
            await rec.wait_change(lambda c: c is not None and c.value == b"a2")
            assert [kv.value for kv in await keys_under(raw, a.prefix + "/")] == [b"a2"]
        # The vacancy after a1/a2: a second None.
        await rec.wait_change(lambda c: rec.changes.count(None) >= 2)
        watcher.stop()
    assert rec.elected == []
    values = [c.value if c else None for c in rec.changes]
    assert values == [None, b"a1", b"a2", None]


@pytest.mark.parametrize("barrier", [True, False])
async def test_handover_barrier_orders_callbacks(
    make_elector: ElectorFactory, barrier: bool
) -> None:
    """With the barrier the successor's on_elected starts after the predecessor's
    on_stepped_down returned; without it the successor is elected meanwhile."""
    a = await make_elector(ttl=5)
    b = await make_elector(ttl=5)
    rec_b = Recorder("b")
    a_elected = anyio.Event()
    a_down_started: list[float] = []
    a_down_done: list[float] = []
    b_was_elected_during_a_down: list[bool] = []

    async def a_on_elected(term: aioelect.Term) -> None:
        a_elected.set()

    async def a_on_stepped_down(term: aioelect.Term) -> None:
        a_down_started.append(time.monotonic())
        if barrier:
            await anyio.sleep(0.2)  # simulated clean-up work
        else:
            with anyio.fail_after(5):
                await rec_b.elected_event.wait()  # the key went first
        b_was_elected_during_a_down.append(bool(rec_b.elected))
        a_down_done.append(time.monotonic())

    lead_a = a.leadership(
        "job", "a", on_elected=a_on_elected, on_stepped_down=a_on_stepped_down,
        handover_barrier=barrier,
    )  # fmt: skip
    lead_b = b.leadership("job", "b", handover_barrier=barrier, **rec_b.kwargs())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead_a.run)
        await a_elected.wait()
        tg.start_soon(lead_b.run)
        await eventually(lambda: _n_candidates(a, 2), what="b queued")
        lead_a.stop()
        await rec_b.wait_elected()
        lead_b.stop()
    if barrier:
        assert b_was_elected_during_a_down == [False]
        assert rec_b.elected_at[0] >= a_down_done[0]
    else:
        assert b_was_elected_during_a_down == [True]
        assert rec_b.elected_at[0] < a_down_done[0]


async def _n_candidates(elector: aioelect.Elector, n: int) -> bool:
    return len(await elector.candidates("job")) == n


async def test_transfer_to_each_of_five_candidates(make_elector: ElectorFactory) -> None:
    """change_leader_to() hands leadership to any live candidate, in mixed order."""
    electors = [await make_elector(ttl=5) for _ in range(5)]
    recs = [Recorder(f"n{i}") for i in range(5)]
    leads = [
        e.leadership("job", f"n{i}", handover_barrier=False, **r.kwargs())  # type: ignore[arg-type]
        for i, (e, r) in enumerate(zip(electors, recs, strict=True))
    ]
    async with anyio.create_task_group() as tg:
        for i, lead in enumerate(leads):
            tg.start_soon(lead.run)
            await eventually(lambda n=i + 1: _n_candidates(electors[0], n), what="queued")
        await recs[0].wait_elected()
        current = 0
        for target in [3, 1, 4, 0, 2]:
            if target == current:
                continue
            # A transfer moves the candidates queued before the target to the back (delete,
            # then create again): wait until every one of them is queued once more.
            await eventually(lambda: _n_candidates(electors[0], 5), what="all queued again")
            counts = [len(r.elected) for r in recs]
            await leads[current].change_leader_to(f"n{target}")
            await recs[target].wait_elected(counts[target] + 1)
            assert leads[target].is_leader
            leader = await electors[0].leader("job")
            assert leader is not None
            assert leader.value == f"n{target}".encode()
            others = [
                len(r.elected) - c
                for i, (r, c) in enumerate(zip(recs, counts, strict=True))
                if i != target
            ]
            assert others == [0, 0, 0, 0], "only the target may be elected"
            current = target
        for lead in leads:
            lead.stop()


async def test_transfer_to_unknown_value_raises(make_elector: ElectorFactory) -> None:
    """Transferring to a value no live candidate has raises NoSuchCandidate; still leader."""
    a = await make_elector()
    async with a.hold("job", "a") as term:
        with pytest.raises(aioelect.NoSuchCandidate):
            await term.transfer("nobody")
        assert term.is_valid
    lead = a.leadership("job", "a")
    with pytest.raises(aioelect.NotLeader):
        await lead.change_leader_to("x")


async def test_transfer_target_dies_normal_order_resumes(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """If the transfer target never takes over (its process died), the others resume the
    normal order once its lease is gone, within about one TTL."""
    a = await make_elector(ttl=2)
    b = await make_elector(ttl=2)
    dead_lease, _ = await raw.grant(2)  # a candidate whose process just died: no keepalives
    b_won = anyio.Event()
    won_tokens: list[int] = []

    async def follower() -> None:
        async with b.hold("job", "b") as term_b:
            won_tokens.append(term_b.token)
            b_won.set()

    async with anyio.create_task_group() as tg:
        async with a.hold("job", "a") as term_a:
            tg.start_soon(follower)
            await eventually(lambda: _n_candidates(a, 2), what="b queued")
            dead_key = candidate_key(a.prefix, "job", dead_lease)
            dead = await raw.txn([], [raw.op_put(dead_key, b"dead", dead_lease)])
            await term_a.transfer("dead")
        transferred_at = time.monotonic()
        with anyio.fail_after(a.ttl * 3):
            await b_won.wait()
        waited = time.monotonic() - transferred_at
    assert won_tokens[0] > dead.header.revision  # b stepped to the back behind the target
    assert (await raw.range(dead_key)).kvs == []  # and won only once the target was gone
    assert waited < a.ttl + 1.5


async def test_two_leaderships_of_one_elector(make_elector: ElectorFactory) -> None:
    """One elector leads two elections at once on its one lease."""
    a = await make_elector()
    r1, r2 = Recorder("one"), Recorder("two")
    l1 = a.leadership("one", "a", **r1.kwargs())  # type: ignore[arg-type]
    l2 = a.leadership("two", "a", **r2.kwargs())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(l1.run)
        tg.start_soon(l2.run)
        await r1.wait_elected()
        await r2.wait_elected()
        assert l1.is_leader
        assert l2.is_leader
        assert r1.elected[0].lease_id == r2.elected[0].lease_id
        l1.stop()
        l2.stop()


async def test_do_if_leader_refused_after_term_ended(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """do_if_leader works while leading and raises NotLeader once the term ended."""
    a = await make_elector()
    rec = Recorder("a")
    lead = a.leadership("job", "a", **rec.kwargs())  # type: ignore[arg-type]
    tx = a.client.transactions
    key = f"{a.prefix}-data/z".encode()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        await rec.wait_elected()
        ok, _ = await lead.do_if_leader(success=[tx.put(key, b"1")])
        assert ok
        lead.stop()
    with pytest.raises(aioelect.NotLeader):
        await lead.do_if_leader(success=[tx.put(key, b"2")])
    assert (await raw.range(key)).kvs[0].value == b"1"
    await raw.txn([], [raw.op_delete(key)])


class Boom(Exception):
    pass


@pytest.mark.parametrize("which", ["on_elected", "on_stepped_down"])
async def test_callback_exception_propagates_after_resign(
    make_elector: ElectorFactory, raw: Connection, which: str
) -> None:
    """With restart_on_error=False, an exception in a callback propagates out of run(),
    after the term was resigned."""
    a = await make_elector()
    seen_down: list[aioelect.Term] = []

    async def on_elected(term: aioelect.Term) -> None:
        if which == "on_elected":
            raise Boom("elected")
        lead.stop()

    async def on_stepped_down(term: aioelect.Term) -> None:
        seen_down.append(term)
        if which == "on_stepped_down":
            raise Boom("down")

    lead = a.leadership(
        "job", "a", on_elected=on_elected, on_stepped_down=on_stepped_down, restart_on_error=False
    )
    with pytest.raises(Boom):
        await lead.run()
    assert len(seen_down) == 1
    assert await keys_under(raw, a.prefix + "/") == []


async def test_reclaim_stale_key_of_previous_incarnation(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """With reclaim_stale, a restarted node removes its old key instead of waiting its TTL."""
    a = await make_elector()
    stale_lease, _ = await raw.grant(60)  # the previous incarnation's lease, still alive
    stale_key = candidate_key(a.prefix, "job", stale_lease)
    await raw.txn([], [raw.op_put(stale_key, b"node-1", stale_lease)])
    rec = Recorder("a")
    lead = a.leadership("job", "node-1", reclaim_stale=True, **rec.kwargs())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        with anyio.fail_after(5):  # far below the stale lease's 60 s
            await rec.wait_elected()
        lead.stop()
    assert (await raw.range(stale_key)).kvs == []
    await raw.revoke(stale_lease)


async def test_without_reclaim_stale_key_blocks(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """Without reclaim_stale, a stale key with our value keeps leading (values may repeat)."""
    a = await make_elector()
    stale_lease, _ = await raw.grant(60)
    stale_key = candidate_key(a.prefix, "job", stale_lease)
    await raw.txn([], [raw.op_put(stale_key, b"node-1", stale_lease)])
    rec = Recorder("a")
    lead = a.leadership("job", "node-1", **rec.kwargs())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        await eventually(lambda: _n_candidates(a, 2), what="queued behind the stale key")
        assert rec.elected == []
        lead.stop()
    await raw.revoke(stale_lease)


async def test_leader_lease_close_ends_the_term(make_elector: ElectorFactory) -> None:
    """LeaderLease.close() revokes the lease: the term ends and on_stepped_down runs."""
    a = await make_elector()
    rec = Recorder("a")
    lead = a.leadership("job", "a", **rec.kwargs())  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        await rec.wait_elected()
        lease = lead.get_lease()
        assert lease is not None
        await lease.close()
        assert lease.is_expired()
        with anyio.fail_after(5):
            await rec.down_event.wait()
        lead.stop()
    assert rec.stepped_down[0] is rec.elected[0]


async def test_on_stepped_down_cut_short_inside_a_raw_etcd_call(
    make_elector: ElectorFactory, fault_proxy: FaultProxy
) -> None:
    """on_stepped_down is cut short at the TTL even while it waits in an aetcd call of its
    own: grpc.aio turns that cut into a bare CancelledError, which must not end run()
    (found by the long soak). run() goes on campaigning, and stop() later returns."""
    a = await make_elector(ttl=1)
    hung = Connection.create(fault_proxy.endpoint, timeout=60)
    await hung.connect()
    fault_proxy.blackhole()  # every call of `hung` now waits until cancelled
    elected = 0
    cut: list[bool] = []

    async def on_elected(term: aioelect.Term) -> bool:
        nonlocal elected
        elected += 1
        if elected == 1:
            return False  # decline: on_stepped_down runs, and hangs
        lead.stop()
        return True

    async def on_stepped_down(term: aioelect.Term) -> None:
        if elected == 1:
            try:
                await hung.client.get(b"anything")  # raw aetcd: no grpc_await
            except BaseException:
                cut.append(True)
                raise

    lead = a.leadership("job", "a", on_elected=on_elected, on_stepped_down=on_stepped_down)
    try:
        with anyio.fail_after(15):
            await lead.run()  # returns normally: no CancelledError escapes
    finally:
        fault_proxy.heal()
        await hung.close()
    assert cut == [True]
    assert elected == 2


# -- callback errors: restart_on_error ---------------------------------------------------


def _boom_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERROR records of the aioelect logger that carry a Boom traceback."""
    return [
        r
        for r in caplog.records
        if r.name == "aioelect"
        and r.levelno == logging.ERROR
        and r.exc_info is not None
        and isinstance(r.exc_info[1], Boom)
    ]


async def test_every_replica_fails_once_then_one_leads_again(
    make_elector: ElectorFactory, raw: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Three replicas whose on_elected fails on their first term (a database blip): each
    error is logged at ERROR with its traceback and counted, each term is resigned so the
    next replica leads at once, and a replica that backed off leads again."""
    caplog.set_level(logging.INFO, logger="aioelect")
    backoff = (0.2, 0.4)
    electors = [await make_elector() for _ in range(3)]
    all_queued = anyio.Event()
    failed: list[str] = []
    failed_tokens: list[int] = []
    stepped_down: list[str] = []
    led: list[tuple[str, int]] = []
    led_again = anyio.Event()

    def replica(name: str) -> aioelect.Leadership:
        first = True

        async def on_elected(term: aioelect.Term) -> None:
            nonlocal first
            if first:
                first = False
                await all_queued.wait()
                failed.append(name)
                failed_tokens.append(term.token)
                raise Boom(f"{name}: database unreachable")
            led.append((name, term.token))
            led_again.set()

        async def on_stepped_down(term: aioelect.Term) -> None:
            stepped_down.append(name)

        elector = electors[int(name[1:])]
        return elector.leadership(
            "job",
            name,
            on_elected=on_elected,
            on_stepped_down=on_stepped_down,
            error_backoff=backoff,
        )

    leads = [replica(f"r{i}") for i in range(3)]
    async with anyio.create_task_group() as tg:
        for i, lead in enumerate(leads):
            tg.start_soon(lead.run)
            await eventually(lambda n=i + 1: _n_candidates(electors[0], n), what="queued")
        all_queued.set()
        with anyio.fail_after(15):  # a guard only: the back-off is at most 0.4 s
            await led_again.wait()
        assert failed == ["r0", "r1", "r2"]  # election order: each led once and failed
        assert stepped_down[:3] == ["r0", "r1", "r2"]  # every failed term was ended
        [(winner, token)] = led
        assert winner in ("r0", "r1", "r2")
        assert token > max(failed_tokens)  # a new term, after every failed one
        assert [e.statistics().callback_errors for e in electors] == [1, 1, 1]
        assert all(health(e, lead)["ready"] for e, lead in zip(electors, leads, strict=True))
        for lead in leads:
            lead.stop()
    records = _boom_records(caplog)
    assert sorted(str(r.exc_info[1]) for r in records if r.exc_info) == [
        f"r{i}: database unreachable" for i in range(3)
    ]
    assert all("on_elected of election 'job'" in r.getMessage() for r in records)
    assert await keys_under(raw, electors[0].prefix + "/") == []


async def test_without_restart_run_raises_and_health_is_not_ready(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """With restart_on_error=False every replica whose on_elected failed leaves run() with
    the error; health() then reports it not ready, with that error; before run() started
    it was not ready either."""
    electors = [await make_elector() for _ in range(3)]
    all_queued = anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        await all_queued.wait()
        raise Boom(f"{term.value.decode()}: database unreachable")

    leads = [
        e.leadership("job", f"r{i}", on_elected=on_elected, restart_on_error=False)
        for i, e in enumerate(electors)
    ]
    before = health(electors[0], leads[0])
    assert before["ready"] is False
    assert before["leaderships"][0]["state"] == "new"
    assert before["leaderships"][0]["last_error"] is None
    raised: dict[str, BaseException] = {}
    ended = anyio.Event()

    async def run(lead: aioelect.Leadership) -> None:
        try:
            await lead.run()
        except Boom as exc:
            raised[lead.value.decode()] = exc
            if len(raised) == 3:
                ended.set()

    async with anyio.create_task_group() as tg:
        for i, lead in enumerate(leads):
            tg.start_soon(run, lead)
            await eventually(lambda n=i + 1: _n_candidates(electors[0], n), what="queued")
        assert all(health(e, lead)["ready"] for e, lead in zip(electors, leads, strict=True))
        all_queued.set()
        with anyio.fail_after(15):
            await ended.wait()
    assert sorted(raised) == ["r0", "r1", "r2"]
    for i, (elector, lead) in enumerate(zip(electors, leads, strict=True)):
        report = health(elector, lead)
        assert report["ready"] is False
        entry = report["leaderships"][0]
        assert (entry["ready"], entry["state"], entry["callback_errors"]) == (False, "failed", 1)
        error = entry["last_error"]
        assert error is not None
        assert error["callback"] == "on_elected"
        assert error["type"] == f"{__name__}.Boom"
        assert error["message"] == f"r{i}: database unreachable"
        assert error["age"] >= 0
        assert elector.statistics().callback_errors == 1
    assert await keys_under(raw, electors[0].prefix + "/") == []


@pytest.mark.parametrize("restart", [False, True])
async def test_second_callback_error_keeps_the_first(
    make_elector: ElectorFactory, caplog: pytest.LogCaptureFixture, restart: bool
) -> None:
    """on_elected raises, then on_stepped_down raises too: the caller gets the second with
    the first as its __context__ (restart_on_error=False), or both are logged and counted
    and the loop goes on (the default)."""
    caplog.set_level(logging.ERROR, logger="aioelect")
    a = await make_elector()
    calls = 0
    again = anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Boom("elected")
        again.set()

    async def on_stepped_down(term: aioelect.Term) -> None:
        if calls == 1:
            raise Boom("down")

    lead = a.leadership(
        "job", "a", on_elected=on_elected, on_stepped_down=on_stepped_down,
        restart_on_error=restart, error_backoff=(0.05, 0.1),
    )  # fmt: skip
    if not restart:
        with pytest.raises(Boom) as info:
            await lead.run()
        assert str(info.value) == "down"
        first = info.value.__context__
        assert isinstance(first, Boom)
        assert str(first) == "elected"
        assert not info.value.__suppress_context__
        text = "".join(traceback.format_exception(info.value))
        assert "Boom: elected" in text and "Boom: down" in text
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lead.run)
            with anyio.fail_after(15):
                await again.wait()
            entry = health(a, lead)["leaderships"][0]
            lead.stop()
        assert entry["callback_errors"] == 2
        assert entry["last_error"] is not None
        assert (entry["last_error"]["callback"], entry["last_error"]["message"]) == (
            "on_stepped_down",
            "down",
        )
        messages = [str(r.exc_info[1]) for r in _boom_records(caplog) if r.exc_info]
        assert messages == ["elected", "down"]
    assert a.statistics().callback_errors == 2


@pytest.mark.parametrize("campaign", [True, False])
async def test_failing_on_leader_change_does_not_end_the_loop(
    make_elector: ElectorFactory, caplog: pytest.LogCaptureFixture, campaign: bool
) -> None:
    """An on_leader_change that raises is logged and counted, then called again with the
    current leader after a back-off; the term it reported on is not ended."""
    caplog.set_level(logging.ERROR, logger="aioelect")
    a = await make_elector()
    b = await make_elector()
    seen: list[bytes | None] = []
    called_again = anyio.Event()
    elected: list[aioelect.Term] = []

    async def on_leader_change(info: aioelect.LeaderInfo | None) -> None:
        seen.append(info.value if info else None)
        if info is not None and len([v for v in seen if v is not None]) == 1:
            raise Boom("leader change")
        if info is not None:
            called_again.set()

    async def on_elected(term: aioelect.Term) -> None:
        elected.append(term)

    lead = a.leadership(
        "job", "a", campaign=campaign, on_elected=on_elected,
        on_leader_change=on_leader_change, error_backoff=(0.05, 0.1),
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        if not campaign:
            tg.start_soon(_hold_forever, b)
        tg.start_soon(lead.run)
        with anyio.fail_after(15):
            await called_again.wait()
        leader = await a.leader("job")
        assert leader is not None
        assert seen[-1] == leader.value  # called again with the current leader
        if campaign:
            assert len(elected) == 1  # still the first term: it was not ended
            assert lead.term is elected[0]
        report = health(a, lead)
        assert report["ready"] is True
        assert report["leaderships"][0]["state"] == "running"
        assert report["leaderships"][0]["last_error"]["callback"] == "on_leader_change"  # type: ignore[index]
        lead.stop()
        tg.cancel_scope.cancel()
    assert a.statistics().callback_errors == 1
    assert [str(r.exc_info[1]) for r in _boom_records(caplog) if r.exc_info] == ["leader change"]


async def _hold_forever(elector: aioelect.Elector) -> None:
    async with elector.hold("job", "b"):
        await anyio.sleep_forever()


@pytest.mark.parametrize("how", ["stop", "cancel", "close"])
async def test_back_off_ends_at_once_on_stop_cancel_or_close(
    make_elector: ElectorFactory, etcd: EtcdServer, etcd_prefix: str, how: str
) -> None:
    """A leadership backing off after an error (here for 60 s) ends at once on stop()
    (returns), on cancellation, and when its elector closes (ElectorClosed)."""
    elector = aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2)
    await elector.__aenter__()
    try:
        failed = anyio.Event()

        async def on_elected(term: aioelect.Term) -> None:
            failed.set()
            raise Boom("elected")

        lead = elector.leadership("job", "a", on_elected=on_elected, error_backoff=(60, 60))
        outcome: list[str] = []

        async def run() -> None:
            try:
                await lead.run()
                outcome.append("returned")
            except aioelect.ElectorClosed:
                outcome.append("closed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await failed.wait()
            await eventually(lambda: _backing_off(lead), what="backing off")
            entry = health(elector, lead)["leaderships"][0]
            assert (entry["ready"], entry["state"]) == (True, "backing_off")
            assert entry["retry_in"] is not None and 0 < entry["retry_in"] <= 60
            with anyio.fail_after(5):  # far below the 30-60 s back-off
                if how == "stop":
                    lead.stop()
                elif how == "cancel":
                    tg.cancel_scope.cancel()
                else:
                    await elector.__aexit__(None, None, None)
                await eventually(lambda: _not_running(lead), what="run() ended")
        expected = {"stop": ["returned"], "cancel": [], "close": ["closed"]}[how]
        assert outcome == expected
        state = run_state(lead).state
        assert state == ("failed" if how == "close" else "stopped")
        assert health(elector, lead)["leaderships"][0]["ready"] is False
    finally:
        await elector.__aexit__(None, None, None)


async def _backing_off(lead: aioelect.Leadership) -> bool:
    return run_state(lead).retry_at is not None


async def _not_running(lead: aioelect.Leadership) -> bool:
    return not run_state(lead).running


async def test_cancelled_while_on_stepped_down_fails_the_cancellation_wins(
    make_elector: ElectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling run() while on_stepped_down raises: run() ends cancelled (the error does
    not replace the cancellation), and the error is logged at ERROR, not lost."""
    caplog.set_level(logging.ERROR, logger="aioelect")
    a = await make_elector()
    elected = anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        elected.set()
        await anyio.sleep_forever()

    async def on_stepped_down(term: aioelect.Term) -> None:
        raise Boom("down")

    lead = a.leadership(
        "job", "a", on_elected=on_elected, on_stepped_down=on_stepped_down,
        restart_on_error=False,
    )  # fmt: skip
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lead.run)
            await elected.wait()
            tg.cancel_scope.cancel()
    assert [str(r.exc_info[1]) for r in _boom_records(caplog) if r.exc_info] == ["down"]
    assert run_state(lead).state == "stopped"
    assert a.statistics().callback_errors == 1
    assert await a.leader("job") is None
