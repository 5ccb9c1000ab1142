"""Leader-only jobs (leader_only), the lifespan runner (LeadershipRunner) and node_identity,
against a real etcd."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import anyio
import pytest
from helpers import ElectorFactory, eventually, keys_under

import aioelect
from aioelect._connection import Connection

pytestmark = pytest.mark.asyncio


async def lead(runner: aioelect.LeadershipRunner) -> aioelect.Term:
    """Wait until the runner leads; return its term."""
    await until(lambda: runner.term is not None, "elected")
    assert runner.term is not None
    return runner.term


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait until a local state is reached (polled: it has no event of its own)."""

    async def check() -> bool:
        return predicate()

    await eventually(check, timeout=15, what=what)


# -- node_identity ----------------------------------------------------------------------


async def test_node_identity_is_host_and_pid() -> None:
    """node_identity() is '{host name}-{pid}', computed at call time."""
    assert aioelect.node_identity() == f"{socket.gethostname()}-{os.getpid()}"


async def test_runner_value_defaults_to_node_identity(make_elector: ElectorFactory) -> None:
    """A runner without a value campaigns as node_identity()."""
    elector = await make_elector()
    async with aioelect.LeadershipRunner(elector, "jobs") as runner:
        term = await lead(runner)
        assert term.value == aioelect.node_identity().encode()
        info = await elector.leader("jobs")
        assert info is not None and info.value == term.value


# -- leader_only -----------------------------------------------------------------------


async def test_guard_skips_when_not_leading_and_runs_when_leading(
    make_elector: ElectorFactory,
) -> None:
    """Skipped (None, counted) before the term; run with the term passed while leading."""
    elector = await make_elector()
    leadership = elector.leadership("jobs", "a")
    seen: list[int] = []

    @aioelect.leader_only(leadership)
    async def job(x: int, term: aioelect.Term) -> int:
        seen.append(term.token)
        return x * 2

    guard: aioelect.LeaderOnly = job.leader_only  # type: ignore[attr-defined]
    assert await job(1) is None
    assert guard.statistics() == aioelect.LeaderOnlyStatistics(0, 1, 0, 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(leadership.run)
        await until(lambda: leadership.term is not None, "elected")
        assert await job(21) == 42
        assert leadership.term is not None
        assert seen == [leadership.term.token]
        leadership.stop()
    assert await job(3) is None
    assert guard.statistics() == aioelect.LeaderOnlyStatistics(1, 2, 0, 0)


async def test_guard_passes_term_by_annotation_or_not_at_all(
    make_elector: ElectorFactory,
) -> None:
    """The term goes to a parameter annotated Term (any name); a function without one gets none."""
    elector = await make_elector()
    async with elector.hold("jobs", "a") as term:
        got: list[object] = []

        @aioelect.leader_only(elector, "jobs")
        async def annotated(t: aioelect.Term) -> None:
            got.append(t)

        @aioelect.leader_only(elector, "jobs")
        async def plain() -> str:
            return "ran"

        await annotated()
        assert got == [term]
        assert await plain() == "ran"
        # The guarded function's signature hides the term (schedulers check signatures).
        import inspect

        assert list(inspect.signature(annotated).parameters) == []
    assert await plain() is None


async def test_term_end_cancels_the_job_and_raises_leadership_lost(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """The leader key deleted while a job runs: the job is cancelled at its await, and the
    call raises LeadershipLost (not CancelledError)."""
    elector = await make_elector()
    started, cancelled = anyio.Event(), anyio.Event()

    async def job() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    guarded = aioelect.leader_only(elector, "jobs")(job)
    reasons: list[str] = []

    async def call() -> None:
        try:
            await guarded()
        except aioelect.LeadershipLost as exc:
            reasons.append(exc.reason)

    async with anyio.create_task_group() as tg:
        with pytest.raises(aioelect.LeadershipLost):
            async with elector.hold("jobs", "a") as term:
                tg.start_soon(call)
                await started.wait()
                await raw.txn([], [raw.op_delete(term.key)])
                await anyio.sleep_forever()  # cancelled by the term's end
    assert reasons == ["leader key deleted"]
    assert cancelled.is_set()
    assert guarded.leader_only.statistics().lost == 1  # type: ignore[attr-defined]


async def test_due_before_the_term_began_is_skipped(make_elector: ElectorFactory) -> None:
    """A call due before the current term began is skipped; one due after it runs."""
    elector = await make_elector()
    due = [0.0]
    runs: list[float] = []

    async def tick() -> None:
        runs.append(due[0])

    guarded = aioelect.leader_only(elector, "jobs", due=lambda: due[0])(tick)
    async with elector.hold("jobs", "a"):
        due[0] = time.time() - 5
        assert await guarded() is None
        due[0] = time.time()
        await guarded()
    assert runs == [due[0]]


async def test_guard_bad_input(make_elector: ElectorFactory) -> None:
    """Bad sources, options and functions raise ConfigError naming the field."""
    elector = await make_elector()

    def sync() -> None:  # not async
        pass

    async def no_term() -> None:
        pass

    with pytest.raises(aioelect.ConfigError, match="name"):
        aioelect.leader_only(elector)
    with pytest.raises(aioelect.ConfigError, match="source"):
        aioelect.leader_only(object())  # type: ignore[arg-type]
    with pytest.raises(aioelect.ConfigError, match="func"):
        aioelect.leader_only(elector, "jobs")(sync)  # type: ignore[arg-type]
    with pytest.raises(aioelect.ConfigError, match="pass_term"):
        aioelect.leader_only(elector, "jobs", pass_term=True)(no_term)
    with pytest.raises(aioelect.ConfigError, match="pass_term"):
        aioelect.leader_only(elector, "jobs", pass_term="fence")(no_term)
    with pytest.raises(aioelect.ConfigError, match="leave_wait"):
        aioelect.LeadershipRunner(elector, "jobs", leave_wait=-1)
    with pytest.raises(aioelect.ConfigError, match="name"):
        aioelect.LeadershipRunner(elector, "a/b")


# -- LeadershipRunner ------------------------------------------------------------------


async def test_runner_leads_runs_jobs_and_resigns_on_exit(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """Entering campaigns in the background; guarded jobs run while leading; exiting resigns."""
    elector = await make_elector()
    async with aioelect.LeadershipRunner(elector, "jobs", "a") as runner:
        assert runner.is_running or runner.term is None  # returns before being elected

        @runner.leader_only
        async def job(term: aioelect.Term) -> int:
            return term.token

        term = await lead(runner)
        assert await job() == term.token
        assert runner.is_running and runner.is_leader
        report = runner.health(require_leader=True)
        assert report["ready"] is True
        assert report["runner"] == {"running": True, "errors": 0, "last_error": None}
    assert await keys_under(raw, f"{etcd_prefix}/jobs/") == []
    assert term.end_reason == "resigned"
    assert not runner.is_running


async def test_runner_restarts_after_run_fails(
    make_elector: ElectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """run() raising (here: the elector already campaigns in the election) is logged at ERROR,
    counted, and retried with back-off until it works; the caller's block goes on."""
    elector = await make_elector()
    caplog.set_level(logging.ERROR, "aioelect")
    hold = elector.hold("jobs", "held")
    await hold.__aenter__()
    runner = aioelect.LeadershipRunner(elector, "jobs", "a")
    async with runner:
        await until(lambda: runner.errors > 0, "an error")
        assert isinstance(runner.last_error, aioelect.ConfigError)
        assert not runner.is_leader
        report = runner.health()
        assert report["runner"]["errors"] >= 1
        assert "ConfigError" in report["runner"]["last_error"]
        await hold.__aexit__(None, None, None)
        term = await lead(runner)
        assert term.value == b"a"
    assert any("campaigning again" in r.getMessage() for r in caplog.records)


async def test_runner_survives_its_elector_closing(make_elector: ElectorFactory) -> None:
    """The elector closed under a running runner: the block exits without raising."""
    elector = await make_elector()
    async with aioelect.LeadershipRunner(elector, "jobs", "a") as runner:
        await lead(runner)
        await elector.__aexit__(None, None, None)
        await until(lambda: not runner.is_running, "run() stopped")
    assert runner.term is None


async def test_running_jobs_end_before_the_successor_is_elected(
    make_elector: ElectorFactory,
) -> None:
    """On exit, a guarded job still running is cancelled and finished before the next
    candidate's term begins (the handover barrier)."""
    e1, e2 = await make_elector(), await make_elector()
    ended: list[str] = []
    started = anyio.Event()

    async def long_job() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            ended.append("job")

    async def successor_elected(term: aioelect.Term) -> None:
        ended.append("successor elected")

    async with aioelect.LeadershipRunner(e1, "jobs", "a") as r1:
        await lead(r1)
        async with aioelect.LeadershipRunner(e2, "jobs", "b", on_elected=successor_elected) as r2:
            await eventually(lambda: _count(e1, 2), what="b queued")
            guarded = r1.leader_only(long_job)
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    with pytest.raises(aioelect.LeadershipLost):
                        await guarded()

                tg.start_soon(call)
                await started.wait()
                await r1.__aexit__(None, None, None)
            await lead(r2)
    assert ended == ["job", "successor elected"]


async def _count(elector: aioelect.Elector, n: int) -> bool:
    return len(await elector.candidates("jobs")) == n


async def test_graceful_leave_hands_over_to_the_youngest_candidate(
    make_elector: ElectorFactory,
) -> None:
    """The leader leaving hands over to the most recently started candidate, not the next
    in line; a candidate leaving withdraws at once."""
    e1, e2, e3 = await make_elector(), await make_elector(), await make_elector()
    r1 = aioelect.LeadershipRunner(e1, "jobs", "old-leader")
    r2 = aioelect.LeadershipRunner(e2, "jobs", "old")
    r3 = aioelect.LeadershipRunner(e3, "jobs", "new")
    async with r1:
        await lead(r1)
        async with r2:
            await eventually(lambda: _count(e1, 2), what="old queued")
            async with r3:
                await eventually(lambda: _count(e1, 3), what="new queued")
                await r1.__aexit__(None, None, None)
                term = await lead(r3)
                assert r2.term is None
                # 'old', queued before the target, moves to the back (delete, create).
                await eventually(lambda: _count(e1, 2), what="old queued again")
                names = [c.value for c in await e1.candidates("jobs")]
                assert names == [b"new", b"old"]
                await r2.__aexit__(None, None, None)
                assert [c.value for c in await e1.candidates("jobs")] == [b"new"]
                assert term.is_valid


async def test_leave_wait_waits_for_a_newcomer(make_elector: ElectorFactory) -> None:
    """With leave_wait, a leaving leader waits for a candidate that campaigns after it began
    to leave (a new worker) rather than handing over to one that was already there."""
    e1, e2, e3 = await make_elector(), await make_elector(), await make_elector()
    r1 = aioelect.LeadershipRunner(e1, "jobs", "leader", leave_wait=30)
    async with r1:
        await lead(r1)
        async with aioelect.LeadershipRunner(e2, "jobs", "old") as r2:
            await eventually(lambda: _count(e1, 2), what="old queued")
            async with anyio.create_task_group() as tg:
                tg.start_soon(r1.__aexit__, None, None, None)
                await anyio.wait_all_tasks_blocked()
                assert r1.is_leader  # waiting for a newcomer meanwhile
                async with aioelect.LeadershipRunner(e3, "jobs", "new") as r3:
                    term = await lead(r3)
                    assert r2.term is None
                    assert term.value == b"new"
