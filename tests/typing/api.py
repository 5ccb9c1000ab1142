"""Exercises the public API under mypy --strict: fails type checking if the API drifts."""

from __future__ import annotations

from datetime import timedelta

import aioelect


async def block_style(elector: aioelect.Elector) -> int:
    async with elector.hold("scheduler", "worker-1") as term:
        token: int = term.token
        valid: bool = term.is_valid
        left: float = term.expires_in()
        await term.proclaim(b"worker-1b")
        ok, _results = await term.transaction(compare=(), success=(), failure=())
        assert valid or ok or left >= 0
        return token


async def callback_style(elector: aioelect.Elector) -> None:
    async def on_elected(term: aioelect.Term) -> bool | None:
        return None

    async def on_stepped_down(term: aioelect.Term) -> None:
        return None

    async def on_leader_change(info: aioelect.LeaderInfo | None) -> None:
        return None

    leadership: aioelect.Leadership = elector.leadership(
        "scheduler",
        "worker-1",
        on_elected=on_elected,
        on_stepped_down=on_stepped_down,
        on_leader_change=on_leader_change,
        handover_barrier=False,
        restart_on_error=True,
        error_backoff=(0.5, timedelta(seconds=30)),
    )
    lease: aioelect.LeaderLease | None = leadership.get_lease()
    current: tuple[bytes, int] | None = await leadership.current_leader()
    leadership.stop()
    await leadership.run()
    del lease, current


async def observation(elector: aioelect.Elector) -> list[bytes]:
    leader: aioelect.LeaderInfo | None = await elector.leader("scheduler")
    names: list[aioelect.CandidateInfo] = await elector.candidates("scheduler")
    async with elector.observe("scheduler") as leaders:
        async for info in leaders:
            if info is None:
                break
    stats: aioelect.ElectorStatistics = elector.statistics()
    assert stats.terms_won >= 0 and leader is None
    return [c.value for c in names]


def construction() -> list[aioelect.Elector]:
    return [
        aioelect.Elector(endpoints="127.0.0.1:2379", ttl=timedelta(seconds=5)),
        aioelect.Elector(
            endpoints=["https://a:2379", "https://b:2379"],
            tls=aioelect.TLSConfig(ca_file="ca.pem"),
            renew_deadline=3.0,
        ),
        aioelect.Elector.embedded(ttl=1, election_timeout=0.1),
    ]


async def errors(elector: aioelect.Elector) -> str:
    try:
        async with elector.hold("scheduler", b"x" * 1024):
            pass
    except aioelect.RequestTooLarge as exc:
        size: int | None = exc.size
        limit: int | None = exc.limit
        return f"{size} > {limit}"
    except aioelect.EtcdError as exc:
        retry: bool = exc.retryable
        return str(retry)
    big = aioelect.Elector(endpoints="127.0.0.1:2379", max_request_bytes=8 * 1024 * 1024)
    return str(big.config.max_request_bytes)


async def web_service(elector: aioelect.Elector) -> int | None:
    identity: str = aioelect.node_identity()

    async def job(x: int, term: aioelect.Term) -> int:
        return x + term.token

    async with aioelect.LeadershipRunner(
        elector, "jobs", identity, graceful_leave=True, leave_wait=timedelta(seconds=3)
    ) as runner:
        leading: bool = runner.is_leader
        guarded = runner.leader_only(job, due=lambda: 0.0)
        result: int | None = await guarded(1)
        guard: aioelect.LeaderOnly = aioelect.leader_only(elector, "jobs", pass_term=False)
        stats: aioelect.LeaderOnlyStatistics = guard.statistics()
        report: dict[str, object] = runner.health()
        assert leading or stats.runs >= 0 or report
        return result


async def shard_group(elector: aioelect.Elector) -> int:
    async def assigned(shard: aioelect.Shard) -> None:
        token: int = shard.token
        term: aioelect.Term = shard.term
        assert token == term.token

    group: aioelect.ShardGroup = elector.shards(
        "partitions", size=64, value="w1", on_assigned=assigned, claim_delay=timedelta(seconds=1)
    )
    async with group:
        owned: dict[int, aioelect.Shard] = group.owned
        stats: aioelect.ShardGroupStatistics = group.statistics()
        async for event in group.events():
            kind: str = event.kind
            assert kind in ("assigned", "revoked")
            break
        report: dict[str, object] = group.health()
        assert report
        return len(owned) + len(stats.owned)


async def preference(elector: aioelect.Elector) -> None:
    async def healthy() -> bool:
        return True

    leadership: aioelect.Leadership = elector.leadership(
        "scheduler",
        "worker-1",
        priority=aioelect.version_priority("1.4.2", prefer="newest"),
        min_term=timedelta(seconds=5),
        settle=1,
        health_check=healthy,
        health_interval=5.0,
        health_timeout=timedelta(seconds=2),
        unhealthy_after=3,
        healthy_after=2,
    )
    leadership.set_priority(leadership.priority + 1)
    ok: bool | None = leadership.healthy
    async with elector.hold("scheduler", "worker-1", priority=3, preemptible=True) as term:
        del term
    infos = await elector.candidates("scheduler")
    levels: list[tuple[int, bool | None]] = [(c.priority, c.healthy) for c in infos]
    stats = elector.statistics()
    counts: tuple[int, int, int] = (
        stats.preemptions,
        stats.unhealthy_transitions,
        stats.unhealthy_candidates,
    )
    del ok, levels, counts
