"""Network partitions between etcd members (Linux network namespaces, ``etcd_partition_cluster``).

Every etcd member and every candidate process runs in a network namespace of its
own; the nemesis cuts links between them while every process stays alive. The
case Jepsen found most etcd-client bugs with is a client whose member is alive
and answers TCP and gRPC pings but sits in the minority: its requests time out
or fail with "no leader", and nothing at the transport level tells it to leave.

The invariant is checked from etcd's own history, as in the rest of the chaos
suite: at most one leader per revision, every fenced write landed in its own
term, and the candidates' validity windows never overlap.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from _support import (
    CandidateProc,
    History,
    Procs,
    analyse,
    check_intervals,
    check_logs_against_history,
    leading_periods,
    report,
    unmatched_elections,
)
from anyio.streams.buffered import BufferedByteReceiveStream
from helpers import eventually, keys_under

from aioelect import EtcdError
from aioelect._connection import KV, Connection
from aioelect.testing import (
    NetnsError,
    Network,
    PartitionCluster,
    netem_unavailable,
    netns_unavailable,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.chaos, pytest.mark.partition]

TTL = 2
RENEW_DEADLINE = TTL * 2 / 3  # the elector's default
#: etcd expires a lease up to 0.5 s after its TTL (its expiry scan); the successor then
#: needs its watch event and one read. Generous for a loaded 2-core machine.
SUCCESSOR_SLACK = 4.0
#: How long a client whose member is cut off from the others may take to work again
#: through another member while the partition lasts.
REJOIN_BOUND = 15.0


@asynccontextmanager
async def observer(cluster: PartitionCluster, member: str) -> AsyncIterator[Connection]:
    """The test's own connection to ``member`` (its unix socket: no partition cuts it)."""
    conn = cluster.connection(member)
    await conn.connect()
    try:
        yield conn
    finally:
        await conn.close()


def spawn(
    procs: Procs,
    cluster: PartitionCluster,
    ident: str,
    client: str,
    member: str,
    prefix: str,
    elections: list[str],
    ttl: int = TTL,
    interval: float = 0.05,
    endpoints: list[str] | None = None,
) -> CandidateProc:
    """A candidate process in ``client``'s namespace, with every member's endpoint,
    ``member``'s first (pick_first connects to it), unless ``endpoints`` are given."""
    return procs.spawn(
        ident=ident,
        endpoints=endpoints or cluster.endpoints_from(member),
        prefix=prefix,
        elections=elections,
        ttl=ttl,
        interval=interval,
        wrapper=cluster.exec_prefix(client),
    )


async def candidates(conn: Connection, prefix: str, election: str) -> list[KV]:
    """The election's candidate keys; none while the observer's member cannot answer
    (it has no raft leader for a moment: a heal may start a raft election, on etcd 3.4
    without pre-vote always)."""
    try:
        return await keys_under(conn, f"{prefix}/{election}/")
    except EtcdError:
        return []


def verify(procs: Procs, history: History, lines: list[str]) -> None:
    """The invariant, from etcd's history and from the candidates' own reports."""
    analysis = analyse(history)
    events = procs.events()
    assert not analysis.violations, analysis.violations
    assert not check_logs_against_history(events, analysis)
    periods, open_terms = leading_periods(events)
    assert not open_terms, open_terms
    assert not check_intervals(periods), check_intervals(periods)
    assert not unmatched_elections(events, set())
    failed = [e for e in events if e["event"] in ("run_failed", "garbage")]
    assert not failed, failed
    lines.append(f"etcd history: {analysis.summary()}")


async def settle_raft(cluster: PartitionCluster) -> str:
    """Wait until a majority names one raft leader; return it."""
    found: list[str] = []

    async def has_leader() -> bool:
        leader = await cluster.raft_leader()
        if leader is not None:
            found[:] = [leader]
        return leader is not None

    await eventually(has_leader, timeout=20, what="a raft leader")
    return found[0]


@pytest.mark.parametrize("role", ["follower", "raft_leader"])
async def test_leader_client_on_isolated_member(
    role: str, etcd_partition_cluster: PartitionCluster, procs: Procs, etcd_prefix: str
) -> None:
    """The election leader's member is cut off from the other members (the client still
    reaches all three). Either the leader's term ends by its renew deadline and a candidate
    on the majority side leads within TTL + a bound, or the leader keeps its term through a
    majority member (its fenced writes keep landing); either way its elections work
    through the majority while the partition lasts: a hand-over to b and back to a."""
    cluster = etcd_partition_cluster
    raft = await settle_raft(cluster)
    others = [m for m in cluster.member_names if m != raft]
    # The member to isolate, and one that stays in the majority with it gone.
    target, majority = (others[0], raft) if role == "follower" else (raft, others[0])
    with report(f"election leader's member ({role} {target}) isolated, ttl={TTL}") as lines:
        async with (
            observer(cluster, majority) as conn,
            History(conn, etcd_prefix) as history,
        ):
            a = spawn(procs, cluster, "a", "c0", target, etcd_prefix, ["job"])
            first = await a.wait("elected", timeout=30)
            b = spawn(procs, cluster, "b", "c1", majority, etcd_prefix, ["job"])
            await b.wait("ready", timeout=30)
            await eventually(
                lambda: _count(conn, etcd_prefix, "job", 2), timeout=20, what="b queued"
            )
            cluster.isolate_member(target)
            cut = time.monotonic()
            token = first["token"]
            # Outcome 1: a's term ends (and b leads); outcome 2: a keeps leading through a
            # majority member (a write acknowledged after the cut went through the majority:
            # the isolated member commits nothing).
            with anyio.fail_after(TTL + SUCCESSOR_SLACK + REJOIN_BOUND):
                while True:
                    ended = a.find("ended", token=token)
                    later = a.find("write", token=token, t=lambda t: t > cut + RENEW_DEADLINE)
                    if ended or later:
                        break
                    await anyio.sleep(0.01)
            if ended:
                e = ended[0]
                successor = await b.wait("elected", timeout=30)
                lines.append(
                    f"a's term ended {e['t'] - cut:.3f} s after the cut "
                    f"(noticed {e['noticed'] - cut:.3f} s), reason: {e['reason']}"
                )
                lines.append(
                    f"b (majority side) elected {successor['t'] - cut:.3f} s after the cut"
                )
                # Valid no longer than the renew deadline past the last renewal, sent before
                # the cut.
                assert e["t"] <= cut + RENEW_DEADLINE
                assert e["t"] <= successor["t"]
                assert successor["t"] - cut <= TTL + SUCCESSOR_SLACK
                # While the partition lasts: a campaigns again (a new key in etcd).
                await eventually(
                    lambda: _queued_again(conn, etcd_prefix, first["token"]),
                    timeout=REJOIN_BOUND + 15,
                    what="a campaigns again while partitioned",
                )
                rejoined = time.monotonic() - cut
                lines.append(
                    f"a campaigns again through the majority {rejoined:.3f} s after the cut"
                )
            else:
                through = min(
                    w["t"] for w in a.find("write", token=token, t=lambda t: t > cut + 0.1)
                )
                rejoined = through - cut
                lines.append(
                    f"a kept its term: its first write through the majority landed "
                    f"{rejoined:.3f} s after the cut"
                )
                # Hand over to b and back, all through the majority.
                a.send("resign job")
                successor = await b.wait("elected", timeout=30)
                lines.append(f"a resigned: b elected {successor['t'] - cut:.3f} s after the cut")
            b.send("stop job")
            again = await a.wait("elected", timeout=30, token=lambda t: t > successor["token"])
            lines.append(
                f"a leads again while partitioned: {again['t'] - cut:.3f} s after the cut "
                f"(token {again['token']})"
            )
            await a.wait("write", timeout=15, token=again["token"])
            assert cluster.network.cuts, "the partition lasted throughout"
            assert rejoined <= REJOIN_BOUND, (
                f"the cut-off client took {rejoined:.1f} s to work again through a "
                f"majority member (bound {REJOIN_BOUND:g} s)"
            )
            cluster.heal()
            for p in (a, b):
                assert p.exit() == 0, p.stderr_tail()
        verify(procs, history, lines)


async def _count(conn: Connection, prefix: str, election: str, n: int) -> bool:
    return len(await candidates(conn, prefix, election)) >= n


async def _queued_again(conn: Connection, prefix: str, first_key_revision: int) -> bool:
    return any(
        kv.value == b"a" and kv.create_revision > first_key_revision
        for kv in await candidates(conn, prefix, "job")
    )


async def test_client_cut_off_with_its_member(
    etcd_partition_cluster: PartitionCluster, procs: Procs, etcd_prefix: str
) -> None:
    """The leader's client and its member are cut off together from the majority (nothing
    it can reach has a quorum): its term ends by its renew deadline, before its lease can
    expire, and a candidate on the majority side leads within TTL + a bound; after the heal
    the cut-off client campaigns again."""
    cluster = etcd_partition_cluster
    raft = await settle_raft(cluster)
    target = next(m for m in cluster.member_names if m != raft)
    rest = [m for m in cluster.member_names if m != target]
    with report(f"client c0 and its member {target} cut off together, ttl={TTL}") as lines:
        async with (
            observer(cluster, raft) as conn,
            History(conn, etcd_prefix) as history,
        ):
            a = spawn(procs, cluster, "a", "c0", target, etcd_prefix, ["job"])
            first = await a.wait("elected", timeout=30)
            b = spawn(procs, cluster, "b", "c1", raft, etcd_prefix, ["job"])
            await b.wait("ready", timeout=30)
            await eventually(
                lambda: _count(conn, etcd_prefix, "job", 2), timeout=20, what="b queued"
            )
            cluster.network.partition({"c0", target}, {"c1", "c2", *rest})
            cut = time.monotonic()
            ended = await a.wait("ended", timeout=30, token=first["token"])
            successor = await b.wait("elected", timeout=30)
            lines.append(
                f"a's term ended {ended['t'] - cut:.3f} s after the cut "
                f"(noticed {ended['noticed'] - cut:.3f} s): {ended['reason']}"
            )
            lines.append(f"b elected {successor['t'] - cut:.3f} s after the cut")
            assert ended["t"] <= cut + RENEW_DEADLINE
            assert ended["t"] <= successor["t"]
            assert successor["t"] - cut <= TTL + SUCCESSOR_SLACK
            cluster.heal()
            healed = time.monotonic()
            await eventually(
                lambda: _queued_again(conn, etcd_prefix, first["token"]),
                timeout=30,
                what="a campaigns again after the heal",
            )
            lines.append(f"heal -> a campaigns again: {time.monotonic() - healed:.3f} s")
            for p in (a, b):
                assert p.exit() == 0, p.stderr_tail()
        verify(procs, history, lines)


FLAP_SECONDS = 20.0
FLAP_ELECTIONS = [f"e{i}" for i in range(4)]


async def test_flapping_partitions(
    etcd_partition_cluster: PartitionCluster, procs: Procs, etcd_prefix: str
) -> None:
    """A 20 s soak of partitions changing every 1-3 s (an isolated member, the raft leader
    isolated, a bridge, one-way drops, a client cut off with its member, heals), with a
    candidate on each member: at most one leader per election throughout (etcd's history),
    no task lost, and after the last heal every election has a leader again."""
    cluster = etcd_partition_cluster
    members = cluster.member_names
    seed = time.time_ns() % 1_000_000
    rng = random.Random(seed)
    actions: list[str] = []
    with report(f"flapping partitions for {FLAP_SECONDS:g} s, seed {seed}") as lines:
        async with (
            observer(cluster, members[0]) as conn,
            History(conn, etcd_prefix) as history,
        ):
            cands = [
                spawn(procs, cluster, f"p{i}", f"c{i}", m, etcd_prefix, FLAP_ELECTIONS)
                for i, m in enumerate(members)
            ]
            for c in cands:
                await c.wait("ready", timeout=30)
            deadline = time.monotonic() + FLAP_SECONDS
            while time.monotonic() < deadline:
                kind = rng.choice(
                    ["isolate", "isolate_leader", "bridge", "one_way", "client_too", "heal"]
                )
                if kind == "client_too":
                    i = rng.randrange(len(members))
                    rest = {*members, *cluster.client_names} - {members[i], f"c{i}"}
                    cluster.network.partition({members[i], f"c{i}"}, rest)
                    actions.append(f"cut c{i}+{members[i]}")
                elif kind == "isolate":
                    m = rng.choice(members)
                    cluster.isolate_member(m)
                    actions.append(f"isolate {m}")
                elif kind == "isolate_leader":
                    m = await cluster.raft_leader() or rng.choice(members)
                    cluster.isolate_member(m)
                    actions.append(f"isolate leader {m}")
                elif kind == "bridge":
                    left, via, right = rng.sample(members, 3)
                    cluster.network.bridge({left}, {right}, via)
                    actions.append(f"bridge {left}|{via}|{right}")
                elif kind == "one_way":
                    src, dst = rng.sample(members, 2)
                    cluster.network.partition()
                    cluster.network.drop(src, dst)
                    actions.append(f"drop {src}->{dst}")
                else:
                    cluster.heal()
                    actions.append("heal")
                await anyio.sleep(rng.uniform(1.0, 3.0))
            cluster.heal()
            healed = time.monotonic()
            lines.append(f"actions: {', '.join(actions)}")
            for name in FLAP_ELECTIONS:
                await eventually(
                    lambda name=name: _has_leader(conn, etcd_prefix, name),
                    timeout=30,
                    what=f"a leader of {name} after the heal",
                )
            lines.append(
                f"every election led again {time.monotonic() - healed:.3f} s after the heal"
            )
            for c in cands:
                assert c.exit() == 0, c.stderr_tail()
        events = procs.events()
        lines.append(
            "elected per candidate: "
            + ", ".join(f"{c.ident}={len(c.find('elected'))}" for c in cands)
        )
        ends = [e for e in events if e["event"] == "ended"]
        lines.append(f"terms ended: {len(ends)}; reasons: {sorted({e['reason'] for e in ends})}")
        verify(procs, history, lines)


async def _has_leader(conn: Connection, prefix: str, election: str) -> bool:
    return bool(await candidates(conn, prefix, election))


LOSS_WINDOW = 10.0


@pytest.mark.parametrize(
    ("loss", "delay"),
    [(0.1, 0.0), (0.2, 0.0), (0.3, 0.0), (0.2, 0.05), (0.1, 0.2)],
    ids=["loss10", "loss20", "loss30", "loss20-delay50ms", "loss10-delay200ms"],
)
async def test_lossy_link(
    loss: float,
    delay: float,
    etcd_partition_cluster: PartitionCluster,
    procs: Procs,
    etcd_prefix: str,
) -> None:
    """Random loss (and latency) on every link of the leader's client, both ways, TTL 5 s
    (renew deadline 3.3 s: several TCP retransmissions), for 10 s. No false loss of
    leadership: the leader's term ends only by its renew deadline (no renewal got through
    for 3.3 s), never for another reason, and then b takes over; elections stay live (fenced
    writes land). How often terms end at each loss level is a measurement, not a pass/fail
    bound: bench/partition_loss.py (none at 10-20 %, they start ending at 30 %).

    Where the kernel has no netem, a's connections go through relays in its namespace
    (``PartitionCluster.relayed_endpoints``) that add the delay, per direction, to each
    chunk of bytes; the loss is still dropped packets on the relays' connections."""
    cluster = etcd_partition_cluster
    raft = await settle_raft(cluster)
    ttl = 5
    relayed = bool(delay) and netem_unavailable() is not None
    how = " (userspace relays: no netem)" if relayed else ""
    title = f"lossy link: loss {loss:.0%}, delay {delay * 1000:g} ms{how}, ttl={ttl}"
    with report(title) as lines:
        async with (
            observer(cluster, raft) as conn,
            History(conn, etcd_prefix) as history,
        ):
            endpoints = cluster.relayed_endpoints("c0", raft) if relayed else None
            a = spawn(
                procs, cluster, "a", "c0", raft, etcd_prefix, ["job"], ttl=ttl, endpoints=endpoints
            )
            first = await a.wait("elected", timeout=30)
            b = spawn(procs, cluster, "b", "c1", raft, etcd_prefix, ["job"], ttl=ttl)
            await b.wait("ready", timeout=30)
            for m in cluster.member_names:
                cluster.network.impair("c0", m, loss=loss, delay=delay)
            start = time.monotonic()
            await anyio.sleep(LOSS_WINDOW)  # the impairment must last this long
            ended = a.find("ended", token=first["token"])
            writes = [e for p in (a, b) for e in p.find("write", t=lambda t: t > start)]
            cluster.heal()
            lines.append(
                f"{len(writes)} fenced writes in {LOSS_WINDOW:g} s; a's term ended: "
                + (f"after {ended[0]['t'] - start:.3f} s ({ended[0]['reason']})" if ended else "no")
            )
            assert writes, "no fenced write got through"
            if ended:
                assert "renew" in ended[0]["reason"], f"false loss of leadership: {ended[0]}"
                successor = await b.wait("elected", timeout=30)
                assert successor["t"] >= ended[0]["t"]
            for p in (a, b):
                assert p.exit() == 0, p.stderr_tail()
        verify(procs, history, lines)


ECHO_SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
while data := conn.recv(65536):
    conn.sendall(data)
"""
ROUND_TRIP = """
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=20)
s.sendall(b"x"); assert s.recv(1) == b"x"  # connected through to the server
t = time.monotonic(); s.sendall(b"y"); assert s.recv(1) == b"y"
print(time.monotonic() - t)
"""


async def test_link_delay_through_a_relay() -> None:
    """A delay on a link holds what a relay carries (netem or not): a round trip from
    n0 through its relay to n1's echo server takes at least the delay each way. Without
    netem, a delay on a link no relay carries is refused and changes nothing."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"no network partitions here: {reason}")
    with Network(["n0", "n1", "n2"]) as net:
        async with await anyio.open_process(
            [*net.exec_prefix("n1"), sys.executable, "-c", ECHO_SERVER, net.address("n1")]
        ) as server:
            try:
                assert server.stdout is not None
                port = int(await BufferedByteReceiveStream(server.stdout).receive_until(b"\n", 16))
                endpoint = net.relay("n0", "n1", port)
                assert net.relay("n0", "n1", port) == endpoint  # one relay per link and port
                net.impair("n0", "n1", delay=0.1, both_ways=False)
                net.impair("n1", "n0", delay=0.15, both_ways=False)
                if netem_unavailable() is not None:
                    with pytest.raises(NetnsError, match=r"no Network\.relay\(\) carries n0->n2"):
                        net.impair("n0", "n2", delay=0.1)
                out = await anyio.run_process(
                    [*net.exec_prefix("n0"), sys.executable, "-c", ROUND_TRIP, endpoint]
                )
                assert float(out.stdout) >= 0.25, out.stdout
            finally:
                with contextlib.suppress(ProcessLookupError):  # it ends with its client
                    server.kill()
