"""One client cut off from etcd by the fault proxy (blackhole: TCP stays open, nothing flows)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from _support import (
    EventLog,
    History,
    Member,
    analyse,
    check_intervals,
    check_logs_against_history,
    leading_periods,
    report,
)
from helpers import ElectorFactory, eventually, keys_under

import aioelect
from aioelect import _connection
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect.testing import FaultProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos]


async def test_cut_off_leader_steps_down_before_its_lease_can_expire(
    fault_proxy: FaultProxy, make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """A leader cut off by a blackhole ends its term by its local deadline, before etcd can
    expire its lease and before the successor is elected; healed, it campaigns and leads again."""
    log = EventLog()
    with report("blackholed leader (ttl=2)") as lines:
        async with History(raw, etcd_prefix) as history:
            a = await make_elector(ttl=2, endpoints=[fault_proxy.endpoint])
            b = await make_elector(ttl=2)
            ma = Member(a, ident="a", emit=log, interval=0.02)
            mb = Member(b, ident="b", emit=log, interval=0.02)
            async with anyio.create_task_group() as tg:
                ma.start(tg, "job")
                first = await log.wait("elected", id="a")
                mb.start(tg, "job")
                await eventually(lambda: _has_candidates(raw, etcd_prefix, 2), what="b queued")
                session = core_of(a).session
                assert session is not None
                fault_proxy.blackhole()
                cut = time.monotonic()
                ended = await log.wait("ended", id="a", token=first["token"])
                body = await log.wait("body_cancelled", id="a", token=first["token"])
                successor = await log.wait("elected", id="b")
                # The cut-off leader's term ended, and its body was cancelled, by its local
                # deadline: before etcd could expire its lease (last renewal sent + TTL),
                # hence before anyone else could be elected.
                stopped = max(ended["noticed"], body["t"])
                assert stopped < session.hard_deadline
                assert stopped < successor["t"]
                assert "renew" in ended["reason"]
                assert not body["is_valid"]
                lines.append(
                    f"blackhole -> cut-off leader's term ended: {ended['noticed'] - cut:.3f} s, "
                    f"body cancelled: {body['t'] - cut:.3f} s"
                )
                lines.append(
                    f"that was {session.hard_deadline - stopped:.3f} s before the lease's hard "
                    f"deadline, {successor['t'] - stopped:.3f} s before the successor was "
                    f"elected ({successor['t'] - cut:.3f} s after the blackhole)"
                )
                fault_proxy.heal()
                healed = time.monotonic()
                await eventually(
                    lambda: _has_value(raw, etcd_prefix, b"a"), what="a campaigns again"
                )
                lines.append(
                    f"heal -> cut-off client queued again: {time.monotonic() - healed:.3f} s"
                )
                await mb.stop("job")
                again = await log.wait("elected", id="a", token=lambda t: t > successor["token"])
                lines.append(f"... and leads again (token {again['token']})")
                stats = a.statistics()
                assert stats.sessions_lost >= 1
                assert stats.sessions_granted >= 2
                assert ma.running == {"job": True}
                ma.closing = mb.closing = True
                await ma.stop_all()
                tg.cancel_scope.cancel()
        analysis = analyse(history)
        assert not analysis.violations, analysis.violations
        assert not check_logs_against_history(log.events, analysis)
        periods, open_terms = leading_periods(log.events)
        assert not open_terms
        assert not check_intervals(periods)
        assert not ma.failures and not mb.failures
        lines.append(f"etcd history: {analysis.summary()}")


async def _has_candidates(raw: Connection, prefix: str, n: int) -> bool:
    return len(await keys_under(raw, f"{prefix}/job/")) >= n


async def _has_value(raw: Connection, prefix: str, value: bytes) -> bool:
    return any(kv.value == value for kv in await keys_under(raw, f"{prefix}/job/"))


class RequestCounter:
    """Counts the requests one Connection sends: unary calls, keepalives, watch creations
    and progress requests."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, conn: Connection) -> None:
        self.conn = conn
        self.counts: dict[str, int] = {}
        self.active = False
        counter = self

        original_unary = Connection._unary

        async def unary(self: Connection, method: Any, request: Any, timeout: Any) -> Any:
            if self is counter.conn:
                counter.hit(f"unary {type(request).__name__}")
            return await original_unary(self, method, request, timeout)

        original_keepalive = _connection.KeepAliveStream.keepalive

        async def keepalive(self: _connection.KeepAliveStream, lease_id: int) -> int:
            if self._conn is counter.conn:
                counter.hit("keepalive")
            return await original_keepalive(self, lease_id)

        original_create = _connection.WatchStream.create

        async def create(self: _connection.WatchStream, *args: Any) -> None:
            if self._conn is counter.conn:
                counter.hit("watch create")
            await original_create(self, *args)

        original_progress = _connection.WatchStream.request_progress

        async def progress(self: _connection.WatchStream) -> None:
            if self._conn is counter.conn:
                counter.hit("watch progress")
            await original_progress(self)

        monkeypatch.setattr(Connection, "_unary", unary)
        monkeypatch.setattr(_connection.KeepAliveStream, "keepalive", keepalive)
        monkeypatch.setattr(_connection.WatchStream, "create", create)
        monkeypatch.setattr(_connection.WatchStream, "request_progress", progress)

    def hit(self, what: str) -> None:
        if self.active:
            self.counts[what] = self.counts.get(what, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def test_blackholed_client_backs_off(
    fault_proxy: FaultProxy,
    make_elector: ElectorFactory,
    raw: Connection,
    etcd_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client blackholed for 10 s while leading, waiting, holding and observing sends few
    requests (every retry loop is bounded and backs off) and burns little CPU."""
    log = EventLog()
    window = 10.0
    with report("back-off while blackholed for 10 s (ttl=2)") as lines:
        a = await make_elector(ttl=2, endpoints=[fault_proxy.endpoint])
        b = await make_elector(ttl=2)
        counter = RequestCounter(monkeypatch, core_of(a).conn)
        ma = Member(a, ident="a", emit=log, interval=0.02)
        mb = Member(b, ident="b", emit=log, interval=0.02)
        async with anyio.create_task_group() as tg:
            ma.start(tg, "job")  # a leads job
            await log.wait("elected", id="a", election="job")
            mb.start(tg, "other")  # b leads other, a waits
            await log.wait("elected", id="b", election="other")
            ma.start(tg, "other")

            async def hold_third() -> None:
                async with b.hold("third", "b"):
                    await anyio.sleep_forever()

            async def wait_third() -> None:
                async with a.hold("third", "a"):
                    await anyio.sleep_forever()

            observing = anyio.Event()

            async def observe() -> None:
                async with a.observe("job") as leaders:
                    async for _ in leaders:
                        observing.set()

            tg.start_soon(hold_third)
            await eventually(lambda: _leader_is(b, "third"), what="b holds third")
            tg.start_soon(wait_third)
            tg.start_soon(observe)
            await observing.wait()  # its first read done: the outage starts after
            await eventually(
                lambda: _count(raw, f"{etcd_prefix}/other/", 2), what="a waits in other"
            )
            await eventually(
                lambda: _count(raw, f"{etcd_prefix}/third/", 2), what="a waits in third"
            )
            conns_before = fault_proxy.connections
            cpu_before = time.process_time()
            fault_proxy.blackhole()
            counter.active = True
            await anyio.sleep(window)  # the outage must last this long
            counter.active = False
            cpu = time.process_time() - cpu_before
            new_conns = fault_proxy.connections - conns_before
            fault_proxy.heal()
            counts = dict(sorted(counter.counts.items()))
            lines.append(f"requests sent in {window:g} s: {counter.total} {counts}")
            lines.append(
                f"new TCP connections: {new_conns}; CPU time of the test process: {cpu:.2f} s"
            )
            assert counter.total < 200
            assert new_conns < 20
            assert cpu < window / 2
            # After the heal the elector recovers by itself: a new session, campaigns resume.
            await eventually(lambda: _live_session(a), timeout=15, what="a new session")
            assert ma.running == {"job": True, "other": True}
            ma.closing = mb.closing = True
            await ma.stop_all()
            await mb.stop_all()
            tg.cancel_scope.cancel()
        assert not ma.failures and not mb.failures


async def _leader_is(elector: aioelect.Elector, name: str) -> bool:
    return await elector.leader(name) is not None


async def _count(raw: Connection, prefix: str, n: int) -> bool:
    return len(await keys_under(raw, prefix)) >= n


async def _live_session(elector: aioelect.Elector) -> bool:
    stats = elector.statistics()
    return stats.sessions_granted >= 2 and stats.lease_id is not None


async def test_resigning_term_is_invalid_once_successor_leads(
    fault_proxy: FaultProxy, make_elector: ElectorFactory
) -> None:
    """A term that is resigning is no longer valid once its successor has been elected."""
    a = await make_elector(ttl=5, endpoints=[fault_proxy.endpoint])
    b = await make_elector(ttl=5)
    seen: list[bool] = []
    a_in = anyio.Event()
    terms: list[aioelect.Term] = []

    async def successor() -> None:
        async with b.hold("job", "b"):
            # The predecessor's key is gone in etcd (that is how b won).
            seen.append(terms[0].is_valid)

    async with anyio.create_task_group() as tg:
        async with a.hold("job", "a") as term:
            terms.append(term)
            a_in.set()
            tg.start_soon(successor)
            await eventually(lambda: _count_job(a, 2), what="b queued")
            # a's requests now take 0.5 s each way: its resign lands 0.5 s before a hears so.
            fault_proxy.delay(0.5)
    assert seen == [False]


async def _count_job(elector: aioelect.Elector, n: int) -> bool:
    return len(await elector.candidates("job")) >= n


async def test_cut_off_leader_stops_work_before_its_lease_can_expire(
    fault_proxy: FaultProxy, make_elector: ElectorFactory
) -> None:
    """A Leadership cut off from etcd calls on_stepped_down (stop work) before etcd can expire
    its lease, i.e. before anyone else can be elected and start working."""
    a = await make_elector(ttl=2, endpoints=[fault_proxy.endpoint])
    elected = anyio.Event()
    down_at: list[float] = []
    stepped_down = anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        elected.set()

    async def on_stepped_down(term: aioelect.Term) -> None:
        down_at.append(time.monotonic())
        stepped_down.set()

    lead = a.leadership("job", "a", on_elected=on_elected, on_stepped_down=on_stepped_down)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        await elected.wait()
        session = core_of(a).session
        assert session is not None
        fault_proxy.blackhole()
        with anyio.fail_after(10):
            await stepped_down.wait()
        hard_deadline = session.hard_deadline
        fault_proxy.heal()
        lead.stop()
    assert down_at[0] < hard_deadline, f"{down_at[0] - hard_deadline:.3f} s late"
