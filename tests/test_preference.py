"""Preferred leaders and health-gated candidacy, against a real etcd."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from helpers import ElectorFactory, eventually, keys_under
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_cli import _cli
from test_interop import _line, etcdctl_elect

import aioelect
import aioelect.prometheus
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect._few import add
from aioelect._keys import preference_key, split_key, split_preference_key
from aioelect._leadership import candidacy_of
from aioelect._preference import decode_record, version_priority
from aioelect.testing import EtcdServer


async def _queue(elector: aioelect.Elector, n: int) -> list[str] | None:
    """The values of election "job"'s candidates, read from etcd, once there are ``n``."""
    values = [c.value.decode() for c in await elector.candidates("job")]
    return values if len(values) == n else None


def _records(elector: aioelect.Elector, name: str) -> int:
    view = core_of(elector).mirror.views.get(name)
    return 0 if view is None or view.records is None else len(view.records)


@pytest.mark.asyncio
async def test_higher_priority_joiner_preempts_a_hold_block(
    make_elector: ElectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A waiting candidate of higher priority takes over after the leader's minimum term."""
    caplog.set_level(logging.INFO, logger="aioelect")
    a = await make_elector()
    b = await make_elector()
    a_in = anyio.Event()
    b_in = anyio.Event()
    a_out = anyio.Event()
    lost: list[str] = []
    started: list[float] = []
    ended: list[float] = []

    async def leader() -> None:
        with pytest.raises(aioelect.LeadershipLost) as info:
            async with a.hold("job", "a", priority=0, min_term=0.5, settle=0.1) as term:
                started.append(term.started_at)
                a_in.set()
                await anyio.sleep_forever()
        ended.append(time.monotonic())
        lost.append(info.value.reason)
        a_out.set()

    async def challenger() -> None:
        async with b.hold("job", "b", priority=10) as term:
            assert term.is_valid
            b_in.set()
            await anyio.sleep_forever()

    c = await make_elector()
    seen: list[bytes | None] = []
    b_seen = anyio.Event()

    async def observer() -> None:
        async with c.observe("job") as leaders:
            async for info in leaders:
                seen.append(None if info is None else info.value)
                if info is not None and info.value == b"b":
                    b_seen.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await a_in.wait()
        tg.start_soon(observer)
        tg.start_soon(challenger)
        await b_in.wait()
        await a_out.wait()
        await b_seen.wait()
        # One leader change, no vacancy in between. (observe() may first report a
        # stale None on etcd < 3.5.8, whose progress notifications can run ahead of
        # events (etcd #15220): a known issue of observe(), not of the handover.)
        assert seen[seen.index(b"a") :] == [b"a", b"b"]
        assert lost == ["preempted by 'b' (priority 10)"]
        # The minimum term is a guarantee: the leader was not preempted before it.
        assert ended[0] - started[0] >= 0.5
        infos = await b.candidates("job")
        assert [(c.value, c.priority) for c in infos] == [(b"b", 10)]
        assert a.statistics().preemptions == 1
        assert "election 'job': preempted by 'b' (priority 10): handing over" in caplog.messages
        registry = CollectorRegistry()
        aioelect.prometheus.register(a, registry=registry)
        text = generate_latest(registry).decode()
        assert "aioelect_preemptions_total" in text
        assert [
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "aioelect_preemptions_total"
        ] == [1.0]
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_not_preemptible_by_default(make_elector: ElectorFactory) -> None:
    """A hold() without a priority is never preempted: the challenger waits (FIFO)."""
    a = await make_elector()
    b = await make_elector()
    async with a.hold("job", "a", min_term=0, settle=0) as term:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_hold_forever, b, "job", "b", 10)
            # The leader evaluates on every mirror change: once it has seen the
            # challenger's record, a preemption would have happened by now.
            await eventually(lambda: _records(a, "job") == 1, what="record mirrored")
            await eventually(lambda: len(core_of(a).mirror.view("job").kvs) == 2, what="b queued")
            assert term.is_valid
            infos = await a.candidates("job")
            assert [(c.value, c.priority) for c in infos] == [(b"a", 0), (b"b", 10)]
            tg.cancel_scope.cancel()


async def _hold_forever(elector: aioelect.Elector, name: str, value: str, priority: int) -> None:
    async with elector.hold(name, value, priority=priority):
        await anyio.sleep_forever()


@pytest.mark.asyncio
async def test_equal_priority_keeps_fifo(make_elector: ElectorFactory) -> None:
    """Equal priorities do not preempt: the leader keeps leading."""
    a = await make_elector()
    b = await make_elector()
    async with a.hold("job", "a", priority=5, min_term=0, settle=0) as term:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_hold_forever, b, "job", "b", 5)
            await eventually(lambda: _records(a, "job") == 2, what="both records mirrored")
            await eventually(lambda: len(core_of(a).mirror.view("job").kvs) == 2, what="b queued")
            assert term.is_valid
            tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_highest_challenger_wins_ties_fifo(make_elector: ElectorFactory) -> None:
    """Among challengers the highest priority wins; equal ones in FIFO order."""
    electors = [await make_elector() for _ in range(4)]
    elected: list[str] = []
    changed = anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        elected.append(term.value.decode())
        changed.set()

    leaderships = [
        e.leadership("job", v, priority=p, on_elected=on_elected, min_term=0, settle=0)
        for e, v, p in zip(electors, "abcd", (20, 5, 10, 10), strict=True)
    ]
    async with anyio.create_task_group() as tg:
        tg.start_soon(leaderships[0].run)
        await changed.wait()
        for leadership in leaderships[1:]:
            tg.start_soon(leadership.run)
        view = core_of(electors[0]).mirror.view("job")
        await eventually(lambda: len(view.kvs) == 4 and _records(electors[0], "job") == 4)
        assert elected == ["a"]
        queue = [c.value.decode() for c in await electors[0].candidates("job")]
        first_best = next(v for v in queue if v in "cd")  # c and d tie: FIFO
        changed = anyio.Event()
        leaderships[0].set_priority(0)  # now b, c and d outrank a
        await changed.wait()
        assert elected == ["a", first_best]
        # a campaigned again, behind; as with transfer(), candidates queued before
        # the target moved to the back, those after it kept their place.
        order = await eventually(lambda: _queue(electors[0], 4), what="a queued again")
        after = queue[queue.index(first_best) + 1 :]
        assert order[: 1 + len(after)] == [first_best, *after]
        assert sorted(order) == ["a", "b", "c", "d"]
        for leadership in leaderships:
            leadership.stop()


@pytest.mark.asyncio
async def test_leadership_steps_down_and_campaigns_again_behind(
    make_elector: ElectorFactory,
) -> None:
    """A preempted Leadership runs on_stepped_down before the successor's on_elected."""
    a = await make_elector()
    b = await make_elector()
    log: list[str] = []
    b_elected = anyio.Event()
    a_elected = anyio.Event()

    async def a_on_elected(term: aioelect.Term) -> None:
        log.append("a elected")
        a_elected.set()

    async def a_stepped_down(term: aioelect.Term) -> None:
        log.append("a stepped down")

    async def b_on_elected(term: aioelect.Term) -> None:
        log.append("b elected")
        b_elected.set()

    la = a.leadership(
        "job", "a", on_elected=a_on_elected, on_stepped_down=a_stepped_down, min_term=0, settle=0
    )
    lb = b.leadership("job", "b", on_elected=b_on_elected)
    async with anyio.create_task_group() as tg:
        tg.start_soon(la.run)
        await a_elected.wait()
        tg.start_soon(lb.run)
        await eventually(lambda: len(core_of(a).mirror.view("job").kvs) == 2, what="b queued")
        assert not b_elected.is_set()
        lb.set_priority(3)
        await b_elected.wait()
        assert log == ["a elected", "a stepped down", "b elected"]
        assert lb.priority == 3
        await eventually(lambda: _queue(a, 2), what="a queued again")
        infos = await a.candidates("job")
        assert [(c.value, c.priority) for c in infos] == [(b"b", 3), (b"a", 0)]
        la.stop()
        lb.stop()


class _Switch:
    """A health check whose answer the test sets; it records every answer."""

    def __init__(self) -> None:
        self.ok = True
        self.hang = False
        self.answers: list[bool] = []

    async def __call__(self) -> bool:
        if self.hang:
            await anyio.sleep_forever()
        self.answers.append(self.ok)
        return self.ok


@pytest.mark.parametrize("hang", [False, True], ids=["fails", "hangs"])
@pytest.mark.asyncio
async def test_unhealthy_leader_hands_over_and_returns_after_successes(
    make_elector: ElectorFactory,
    raw: Connection,
    etcd_prefix: str,
    hang: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A leader whose check fails (or hangs) N times resigns; it campaigns after M successes."""
    caplog.set_level(logging.INFO, logger="aioelect")
    a = await make_elector()
    b = await make_elector()
    check = _Switch()
    a_elected = anyio.Event()
    b_elected = anyio.Event()
    stepped_down = anyio.Event()

    async def on_a(term: aioelect.Term) -> None:
        a_elected.set()

    async def on_a_down(term: aioelect.Term) -> None:
        stepped_down.set()

    async def on_b(term: aioelect.Term) -> None:
        b_elected.set()

    la = a.leadership(
        "job",
        "a",
        on_elected=on_a,
        on_stepped_down=on_a_down,
        health_check=check,
        health_interval=0.05,
        health_timeout=0.1,
        unhealthy_after=2,
        healthy_after=3,
    )
    lb = b.leadership("job", "b", on_elected=on_b)
    async with anyio.create_task_group() as tg:
        tg.start_soon(la.run)
        await a_elected.wait()
        tg.start_soon(lb.run)
        await eventually(lambda: len(core_of(a).mirror.view("job").kvs) == 2, what="b queued")
        assert la.healthy is True
        if hang:
            check.hang = True
        else:
            check.ok = False
        await stepped_down.wait()
        await b_elected.wait()
        assert la.healthy is False
        report = aioelect.health(a, la)
        assert report["leaderships"][0]["healthy"] is False
        assert report["ready"] is False  # withdrawn: not ready
        why = "did not answer within 0.1 s" if hang else "returned False"
        assert [m for m in caplog.messages if "stepping down" in m] == [
            f"election 'job': stepping down: 2 health checks in a row failed (health check {why})"
        ]
        assert a.statistics().unhealthy_candidates == 1
        registry = CollectorRegistry()
        aioelect.prometheus.register(a, registry=registry)
        gauges = [
            s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples
            if s.name == "aioelect_unhealthy_candidates"
        ]
        assert gauges == [1.0]
        # Withdrawn: only b's candidate key is left.
        infos = await b.candidates("job")
        assert [c.value for c in infos] == [b"b"]
        # When a's new key shows up, how many checks in a row had passed.
        candidacy = candidacy_of(la)
        gate = candidacy.gate if candidacy is not None else None
        assert gate is not None
        view = core_of(b).mirror.view("job")
        back: list[int] = []

        def on_change() -> None:
            if len(view.kvs) == 2 and not back:
                back.append(gate.successes)

        view.change_listeners = add(view.change_listeners, on_change)
        check.hang = False
        check.ok = True
        await eventually(lambda: back, what="a back in line")
        assert back[0] >= 3  # campaigned again only after M successes in a row
        assert la.healthy is True
        stats = a.statistics()
        assert stats.unhealthy_transitions == 1
        assert stats.unhealthy_candidates == 0
        la.stop()
        lb.stop()
    assert await keys_under(raw, f"{etcd_prefix}/job/") == []


@pytest.mark.asyncio
async def test_unhealthy_hold_block_is_ended(make_elector: ElectorFactory) -> None:
    """A hold() block whose health check fails is cancelled; LeadershipLost says why."""
    a = await make_elector()
    check = _Switch()
    entered = anyio.Event()
    with pytest.raises(aioelect.LeadershipLost, match="unhealthy: 1 health checks in a row"):
        async with a.hold(
            "job", "a", health_check=check, health_interval=0.05, unhealthy_after=1
        ) as term:
            entered.set()
            check.ok = False
            await anyio.sleep_forever()
    assert not term.is_valid
    assert await a.leader("job") is None


@pytest.mark.asyncio
async def test_candidates_show_health(make_elector: ElectorFactory) -> None:
    """candidates() reports each candidate's published priority and health."""
    a = await make_elector()

    async def ok() -> bool:
        return True

    async with a.hold("job", "a", priority=7, health_check=ok, health_interval=0.05):
        await eventually(lambda: _records(a, "job") == 1, what="record")
        infos = await a.candidates("job")
        assert [(c.priority, c.healthy) for c in infos] == [(7, True)]


@pytest.mark.asyncio
async def test_preference_leaves_no_key(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """The preference record goes with the block."""
    a = await make_elector()
    async with a.hold("job", "a", priority=7):
        await eventually(lambda: _records(a, "job") == 1, what="record")
    await eventually(lambda: _records(a, "job") == 0, what="record deleted")
    assert await keys_under(raw, f"{etcd_prefix}/") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"priority": "high"}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 2**63}, "priority"),
        ({"preemptible": "yes"}, "preemptible"),
        ({"min_term": -1}, "min_term"),
        ({"settle": float("nan")}, "settle"),
        ({"health_check": lambda: True}, "health_check"),
        ({"health_interval": 0}, "health_interval"),
        ({"health_timeout": "1"}, "health_timeout"),
        ({"unhealthy_after": 0}, "unhealthy_after"),
        ({"healthy_after": 1.5}, "healthy_after"),
    ],
)
@pytest.mark.asyncio
async def test_bad_options_are_refused_before_io(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str, kwargs: dict, field: str
) -> None:
    """Bad preference or health options raise ConfigError naming the field, leaving nothing."""
    a = await make_elector()
    for make in (
        lambda: a.hold("job", "a", **kwargs),
        lambda: a.leadership("job", "a", **kwargs),
        lambda: aioelect.LeadershipRunner(a, "job", "a", **kwargs),
    ):
        with pytest.raises(aioelect.ConfigError) as info:
            make()
        assert info.value.field == field
    assert await keys_under(raw, f"{etcd_prefix}/") == []


def test_version_priority_orders_versions() -> None:
    """Newer versions get higher priorities (lower with prefer='oldest')."""
    versions = ["1.2.3", "1.10.0", "v2.0", "1.2.10-rc1", "1.2.3+build"]
    assert sorted(versions, key=version_priority) == [
        "1.2.3",
        "1.2.3+build",
        "1.2.10-rc1",
        "1.10.0",
        "v2.0",
    ]
    assert version_priority("1.2.3", prefer="oldest") == -version_priority("1.2.3")
    assert version_priority("1") == version_priority("1.0.0")
    for bad, field in (("one", "version"), ("1.2.3.4.x", "version"), ("1.2", "prefer")):
        with pytest.raises(aioelect.ConfigError) as info:
            version_priority(bad, prefer="best" if field == "prefer" else "newest")
        assert info.value.field == field


def test_record_codec() -> None:
    """Records that are not aioelect's are ignored, not fatal."""
    assert decode_record(b'{"priority":3,"healthy":false}') == (3, False)
    assert decode_record(b'{"priority":3}') == (3, None)
    assert decode_record(b"garbage") is None
    assert decode_record(b'{"priority":"x"}') is None
    assert decode_record(b"[1]") is None


@pytest.mark.asyncio
async def test_cli_candidates_show_priority_and_health(
    make_elector: ElectorFactory, etcd: EtcdServer, etcd_prefix: str
) -> None:
    """'aioelect candidates' prints each candidate's priority and health."""
    a = await make_elector()

    async def ok() -> bool:
        return True

    async with a.hold("job", "a", priority=7, health_check=ok, health_interval=0.05):
        await eventually(lambda: _records(a, "job") == 1, what="record")
        text = await anyio.run_process(_cli(etcd, etcd_prefix, "candidates", "job"))
        fields = text.stdout.decode().strip().split("\t")
        assert fields[0] == "a"
        assert fields[-2:] == ["priority=7", "healthy=yes"]
        out = await anyio.run_process(_cli(etcd, etcd_prefix, "candidates", "job", "--json"))
        row = json.loads(out.stdout)
        assert (row["value"], row["priority"], row["healthy"]) == ("a", 7, True)


@pytest.mark.asyncio
async def test_go_candidate_keeps_its_fifo_place(
    make_elector: ElectorFactory, raw: Connection, etcd: EtcdServer, etcd_prefix: str
) -> None:
    """An etcdctl elect candidate queued behind a preempting one is never disturbed: its key
    stays, and it leads next, before the preempted leader that campaigned again."""
    a = await make_elector()
    b = await make_elector()
    a_elected = anyio.Event()
    b_elected = anyio.Event()

    async def on_a(term: aioelect.Term) -> None:
        a_elected.set()

    async def on_b(term: aioelect.Term) -> None:
        b_elected.set()

    la = a.leadership("job", "a", on_elected=on_a, min_term=0, settle=0)
    lb = b.leadership("job", "b", on_elected=on_b)
    async with anyio.create_task_group() as tg:
        tg.start_soon(la.run)
        await a_elected.wait()
        tg.start_soon(lb.run)
        await eventually(lambda: len(core_of(a).mirror.view("job").kvs) == 2, what="b queued")
        async with etcdctl_elect(etcd, f"{etcd_prefix}/job", "go-1") as (proc, out):
            await eventually(lambda: len(core_of(a).mirror.view("job").kvs) == 3, what="go queued")
            go = [c for c in await a.candidates("job") if c.value == b"go-1"]
            assert [c.priority for c in go] == [0]
            b_elected_before = b_elected.is_set()
            lb.set_priority(9)  # b now outranks a: a hands over to b, go keeps its place
            await b_elected.wait()
            assert not b_elected_before
            await eventually(lambda: _queue(a, 3), what="a queued")
            infos = await a.candidates("job")
            assert [c.value for c in infos] == [b"b", b"go-1", b"a"]
            assert [c.token for c in infos if c.value == b"go-1"] == [go[0].token]
            lb.stop()  # b resigns: the Go candidate is next, then a
            assert await _line(out) == go[0].key
            assert await _line(out) == b"go-1"
            leader = await a.leader("job")
            assert leader is not None
            assert leader.value == b"go-1"
            la.stop()
            proc.send_signal(signal.SIGINT)
    assert await keys_under(raw, f"{etcd_prefix}/job/") == []


@pytest.mark.asyncio
async def test_runner_leaves_to_the_highest_priority(make_elector: ElectorFactory) -> None:
    """A leaving LeadershipRunner hands over to the highest priority, not the youngest."""
    a, b, c = [await make_elector() for _ in range(3)]
    elected = {v: anyio.Event() for v in "abc"}

    def on(value: str) -> Callable[[aioelect.Term], Awaitable[None]]:
        async def on_elected(term: aioelect.Term) -> None:
            elected[value].set()

        return on_elected

    view = core_of(a).mirror.view("job")
    async with AsyncExitStack() as stack:
        async with aioelect.LeadershipRunner(a, "job", "a", priority=9, on_elected=on("a")):
            await elected["a"].wait()
            await stack.enter_async_context(
                aioelect.LeadershipRunner(b, "job", "b", priority=5, on_elected=on("b"))
            )
            await eventually(lambda: len(view.kvs) == 2, what="b queued")
            await stack.enter_async_context(
                aioelect.LeadershipRunner(c, "job", "c", on_elected=on("c"))
            )
            await eventually(lambda: len(view.kvs) == 3 and _records(a, "job") == 2)
        # a left: b (priority 5) was chosen over the youngest, c (no priority).
        await elected["b"].wait()
        assert not elected["c"].is_set()
        infos = await a.candidates("job")
        assert [c.value for c in infos][:1] == [b"b"]


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (b"/p/job\x00pref\x00a1b2", "job"),
        (b"/p/job/a1b2", None),  # a candidate key
        (b"/p/job\x00transfer", None),  # a transfer record
        (b"/p/\x00pref\x00a1", None),  # no name
        (b"/p/job\x00pref\x00", None),  # no lease
        (b"/p/a/b\x00pref\x001", None),  # a name with '/'
        (b"/q/job\x00pref\x001", None),  # another prefix
    ],
)
def test_preference_key_layout(key: bytes, name: str | None) -> None:
    """Preference records are recognised by their key alone, and never as candidates."""
    assert split_preference_key(b"/p/", key) == name
    assert preference_key("/p", "job", 0xA1B2) == b"/p/job\x00pref\x00a1b2"
    if name is not None:
        assert split_key(b"/p/", key) is None


@pytest.mark.asyncio
async def test_waiting_hold_withdraws_while_unhealthy(make_elector: ElectorFactory) -> None:
    """A waiting hold() whose check fails withdraws its key; healthy again, it queues anew."""
    a = await make_elector()
    b = await make_elector()
    check = _Switch()
    entered = anyio.Event()

    async def waiter() -> None:
        async with b.hold(
            "job", "b", health_check=check, health_interval=0.05, unhealthy_after=1, healthy_after=1
        ):
            entered.set()
            await anyio.sleep_forever()

    async with a.hold("job", "a"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            first = await eventually(lambda: _queue(a, 2), what="b queued")
            assert first == ["a", "b"]
            token = [c.token for c in await a.candidates("job") if c.value == b"b"]
            check.ok = False
            await eventually(lambda: _queue(a, 1), what="b withdrawn")
            check.ok = True
            await eventually(lambda: _queue(a, 2), what="b queued again")
            again = [c.token for c in await a.candidates("job") if c.value == b"b"]
            assert again[0] > token[0]  # a new key, at the back
            assert not entered.is_set()
            tg.cancel_scope.cancel()
