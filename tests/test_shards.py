"""Shard groups against a real etcd: exclusive, balanced, sticky, graceful leave."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import pytest
import pytest_asyncio
from helpers import ElectorFactory, eventually

import aioelect
import aioelect.testing
from aioelect._connection import Connection
from aioelect._keys import prefix_range_end
from aioelect._shardinfo import members_prefix

pytestmark = pytest.mark.asyncio


async def ownership(conn: Connection, prefix: str, group: str) -> dict[int, str | None]:
    """Each shard's owner (member id) as etcd has it now: one read, one revision."""
    root = f"{prefix}/".encode()
    kvs = (await conn.range_all(root, prefix_range_end(root))).kvs
    mpre = members_prefix(prefix, group)
    by_lease = {kv.lease: kv.key[len(mpre) :].decode() for kv in kvs if kv.key.startswith(mpre)}
    first: dict[int, tuple[int, bytes, int]] = {}
    spre = f"{prefix}/{group}.shard-".encode()
    for kv in kvs:
        if not kv.key.startswith(spre):
            continue
        index = int(kv.key[len(spre) :].split(b"/", 1)[0])
        rank = (kv.create_revision, kv.key, kv.lease)
        if index not in first or rank < first[index]:
            first[index] = rank
    return {i: by_lease.get(first[i][2], "?") for i in first}


def balanced(owners: dict[int, str | None], size: int, members: list[str]) -> bool:
    if len(owners) != size or any(o not in members for o in owners.values()):
        return False
    counts = Counter(owners.values())
    sizes = [counts.get(m, 0) for m in members]
    return max(sizes) - min(sizes) <= 1


async def wait_balanced(
    conn: Connection, prefix: str, group: str, size: int, groups: list[aioelect.ShardGroup]
) -> dict[int, str | None]:
    """Until etcd shows every shard owned, balanced within one, and each member owning
    exactly what its own view says (valid terms)."""
    members = [g.member_id for g in groups]
    last: dict[int, str | None] = {}

    async def check() -> bool:
        nonlocal last
        last = await ownership(conn, prefix, group)
        if not balanced(last, size, members):
            return False
        return all(set(g.owned) == {i for i, o in last.items() if o == g.member_id} for g in groups)

    await eventually(check, timeout=20, what=f"balance over {members}")
    return last


@pytest_asyncio.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def test_bad_input_raises_before_io(make_elector: ElectorFactory) -> None:
    """Bad size, group, value, callback or duration: ConfigError naming the field, no I/O."""
    elector = await make_elector()
    for kwargs, field in [
        ({"size": 0}, "size"),
        ({"size": 10_001}, "size"),
        ({"size": True}, "size"),
        ({"size": "8"}, "size"),
        ({"group": "a/b"}, "group"),
        ({"group": ""}, "group"),
        ({"value": 3}, "value"),
        ({"on_assigned": lambda s: None}, "on_assigned"),
        ({"claim_delay": -1}, "claim_delay"),
        ({"member_id": "x/y"}, "member_id"),
    ]:
        args = {"group": "g", "size": 4, "value": "v", **kwargs}
        group = args.pop("group")
        with pytest.raises(aioelect.ConfigError) as info:
            elector.shards(group, **args)  # type: ignore[arg-type]
        assert info.value.field == field, kwargs
    assert elector.statistics().campaigns == 0


async def test_balance_join_leave(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str, stack: AsyncExitStack
) -> None:
    """64 shards over 3, then 4 members (a join moves only what balance needs), then a
    graceful leave moves only the leaver's shards; every handover keeps the barrier."""
    size = 64
    events: list[tuple[str, str, int, int]] = []  # (kind, member, shard, token)
    active: dict[int, str] = {}
    overlaps: list[int] = []

    def make_callbacks(member: str):  # type: ignore[no-untyped-def]
        async def assigned(shard: aioelect.Shard) -> None:
            if shard.index in active:
                overlaps.append(shard.index)
            active[shard.index] = member
            events.append(("assigned", member, shard.index, shard.token))

        async def revoked(shard: aioelect.Shard) -> None:
            await anyio.sleep(0.01)  # cleanup that takes a while: the successor must wait
            if active.get(shard.index) == member:
                del active[shard.index]
            events.append(("revoked", member, shard.index, shard.token))

        return assigned, revoked

    groups: list[aioelect.ShardGroup] = []

    async def join(member: str) -> aioelect.ShardGroup:
        elector = await make_elector()
        assigned, revoked = make_callbacks(member)
        g = elector.shards(
            "jobs",
            size=size,
            value=member,
            member_id=member,
            on_assigned=assigned,
            on_revoked=revoked,
        )
        await stack.enter_async_context(g)
        groups.append(g)
        return g

    for m in ("m1", "m2", "m3"):
        await join(m)
    before = await wait_balanced(raw, etcd_prefix, "jobs", size, groups)
    assert sorted(Counter(before.values()).values()) == [21, 21, 22]

    await join("m0")  # sorts first
    after = await wait_balanced(raw, etcd_prefix, "jobs", size, groups)
    moved = sum(1 for i in range(size) if before[i] != after[i])
    assert moved == 64 - 3 * 16  # each old member gives up exactly its excess: 16 moves
    assert all(after[i] == before[i] for i in range(size) if after[i] != "m0")

    leaver = groups[1]  # m2
    gone = {i for i, o in after.items() if o == leaver.member_id}
    await leaver.__aexit__(None, None, None)
    groups.remove(leaver)
    final = await wait_balanced(raw, etcd_prefix, "jobs", size, groups)
    changed = {i for i in range(size) if after[i] != final[i]}
    assert changed == gone
    assert not overlaps
    # tokens only grow per shard
    last: dict[int, int] = {}
    for kind, _, shard, token in events:
        if kind == "assigned":
            assert token > last.get(shard, 0)
            last[shard] = token


async def test_block_style_events_and_statistics(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str
) -> None:
    """async with: events() reports assignments, owned has valid terms, statistics agree."""
    elector = await make_elector()
    async with elector.shards("solo", size=4, value="a") as group:
        stream = group.events()
        seen: set[int] = set()
        async for event in stream:
            assert event.kind == "assigned"
            seen.add(event.shard.index)
            if len(seen) == 4:
                break
        owned = group.owned
        assert set(owned) == {0, 1, 2, 3}
        assert all(s.term.is_valid for s in owned.values())
        ok, _ = await owned[2].term.transaction(
            success=[elector.client.transactions.put(f"{etcd_prefix}-data/2".encode(), b"x")]
        )
        assert ok
        stats = group.statistics()
        assert stats.owned == (0, 1, 2, 3)
        assert stats.targeted == (0, 1, 2, 3)
        assert stats.members == 1
    # left: every key of the group is gone at once
    root = f"{etcd_prefix}/".encode()
    assert (await raw.range_all(root, prefix_range_end(root))).kvs == []
    assert group.statistics().revoked == 4


async def test_brief_session_loss_is_sticky(
    make_elector: ElectorFactory, raw: Connection, etcd_prefix: str, stack: AsyncExitStack
) -> None:
    """A member whose lease is revoked (a lost session) re-registers on a new session and
    gets its very shards back (nobody took them within claim_delay: sticky). Crashes are
    in tests/chaos/test_shard_faults.py."""
    size = 16
    groups = []
    electors = []
    for m in ("a", "b"):
        elector = await make_elector()
        electors.append(elector)
        g = elector.shards("s", size=size, value=m, member_id=m)
        await stack.enter_async_context(g)
        groups.append(g)
    before = await wait_balanced(raw, etcd_prefix, "s", size, groups)
    lease = electors[1].statistics().lease_id
    assert lease is not None
    await raw.revoke(lease)  # b's session is lost; it re-registers with a new one
    await eventually(
        lambda: _later(electors[1].statistics().lease_id not in (None, lease)), what="new session"
    )
    after = await wait_balanced(raw, etcd_prefix, "s", size, groups)
    assert after == before


async def _later(value: bool) -> bool:
    return value


async def test_cli_health_and_metrics(
    make_elector: ElectorFactory, etcd: aioelect.testing.EtcdServer, etcd_prefix: str
) -> None:
    """`aioelect shards GROUP` lists members and owners; health() and the Prometheus gauge agree."""
    import json
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry

    import aioelect.prometheus

    elector = await make_elector()
    async with elector.shards("cli", size=6, value="worker-1", member_id="w1") as group:
        await eventually(lambda: _later(len(group.owned) == 6), what="all 6 shards")
        registry = CollectorRegistry()
        aioelect.prometheus.register(elector, registry=registry)
        try:
            owned = registry.get_sample_value(
                "aioelect_shards_owned",
                {"prefix": etcd_prefix, "group": "cli", "member": "w1"},
            )
        finally:
            aioelect.prometheus.unregister(elector, registry=registry)
        assert owned == 6.0
        report = group.health()
        assert report["ready"] is True
        assert report["owned"] == 6
        assert json.loads(json.dumps(report)) == report
        base = [
            sys.executable,
            "-m",
            "aioelect",
            "--endpoints",
            etcd.endpoint,
            "--prefix",
            etcd_prefix,
        ]
        out = await anyio.to_thread.run_sync(
            lambda: subprocess.run([*base, "shards", "cli"], capture_output=True, check=True)
        )
        assert out.stdout.decode().split("\t")[:3] == ["w1", "worker-1", "6 shards"]
        out = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [*base, "shards", "cli", "--json"], capture_output=True, check=True
            )
        )
        rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
        assert [r["shard"] for r in rows] == list(range(6))
        assert {r["member"] for r in rows} == {"w1"}
    assert group.health()["ready"] is False


async def test_on_assigned_error_resigns_the_shard_and_claims_it_again(
    make_elector: ElectorFactory,
) -> None:
    """on_assigned raising: logged, counted, the shard resigned (its term ends) and claimed
    again after the back-off, with a new token; the other shards are untouched."""
    elector = await make_elector()
    calls: list[tuple[int, int]] = []
    again = anyio.Event()

    async def assigned(shard: aioelect.Shard) -> None:
        calls.append((shard.index, shard.token))
        if shard.index == 1 and len([c for c in calls if c[0] == 1]) == 1:
            raise RuntimeError("boom")
        if shard.index == 1:
            again.set()

    async with elector.shards("err", size=3, value="v", on_assigned=assigned) as group:
        with anyio.fail_after(10):
            await again.wait()
        tokens = [t for i, t in calls if i == 1]
        assert len(tokens) == 2
        assert tokens[1] > tokens[0]
        assert set(group.owned) == {0, 1, 2}
        stats = group.statistics()
        assert stats.callback_errors == 1
        assert stats.revoked == 1
