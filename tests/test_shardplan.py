"""The shard assignment function: pure, table-driven, no I/O."""

from __future__ import annotations

import itertools
import random

import pytest

from aioelect._shardplan import minimum_moves, plan


def counts(targets: tuple[str | None, ...]) -> dict[str | None, int]:
    out: dict[str | None, int] = {}
    for t in targets:
        out[t] = out.get(t, 0) + 1
    return out


def settle(size: int, members: list[str], owners: list[str | None]) -> tuple[list[str | None], int]:
    """Apply the plan's moves one shard at a time (re-planning after each, as members
    do) until nothing moves; return the final owners and how many shards moved."""
    owners = list(owners)
    moved = 0
    first = plan(size, members, owners).targets
    for _ in range(4 * size + 4):
        targets = plan(size, members, owners).targets
        assert targets == first, "the plan changed while its own moves happened"
        pending = [s for s in range(size) if owners[s] != targets[s]]
        if not pending:
            return owners, moved
        s = pending[len(pending) // 2]  # some order other than the index order
        if owners[s] is not None:
            moved += 1
        owners[s] = targets[s]
    raise AssertionError("did not settle")


CASES = [
    # (size, members, owners, quotas, moves)
    (4, ["a"], [None] * 4, {"a": 4}, 0),
    (4, ["a", "b"], ["a"] * 4, {"a": 2, "b": 2}, 2),
    (5, ["a", "b"], ["a"] * 5, {"a": 3, "b": 2}, 2),
    (5, ["a", "b"], ["b"] * 5, {"a": 2, "b": 3}, 2),
    (3, ["a", "b", "c"], ["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, 0),
    (3, ["a", "b"], ["a", "b", "c"], {"a": 2, "b": 1}, 1),  # c left: only its shard moves
    (1, ["a", "b", "c"], ["c"], {"a": 0, "b": 0, "c": 1}, 0),  # sticky: c keeps it
    (2, ["b", "a"], [None, None], {"a": 1, "b": 1}, 0),
    (6, ["a", "b", "c"], ["a", "a", "a", "b", "b", "b"], {"a": 2, "b": 2, "c": 2}, 2),
]


@pytest.mark.parametrize(("size", "members", "owners", "quotas", "moves"), CASES)
def test_table(
    size: int, members: list[str], owners: list[str | None], quotas: dict[str, int], moves: int
) -> None:
    """Quotas, moves and their minimum for hand-checked cases."""
    p = plan(size, members, owners)
    assert p.quotas == quotas
    assert p.moves == moves == minimum_moves(size, members, owners)
    got = counts(p.targets)
    assert {m: got.get(m, 0) for m in quotas} == quotas


def test_no_members() -> None:
    """No live member: nobody is targeted."""
    assert plan(3, [], ["a", None, "b"]).targets == (None, None, None)


def test_owners_length_checked() -> None:
    """owners must have one entry per shard."""
    with pytest.raises(ValueError, match="owners"):
        plan(3, ["a"], [None])


def test_join_moves_the_minimum() -> None:
    """5 members own 64 shards evenly; a 6th joins: only the excess of the others moves."""
    members = ["m1", "m2", "m3", "m4", "m5"]
    owners, _ = settle(64, members, [None] * 64)
    assert sorted(counts(tuple(owners)).values()) == [12, 13, 13, 13, 13]
    joined = [*members, "m0"]  # sorts first: must not cost extra moves
    final, moved = settle(64, joined, owners)
    assert moved == minimum_moves(64, joined, owners) == 64 - 5 * 10 - 4  # 10
    assert sorted(counts(tuple(final)).values()) == [10, 10, 11, 11, 11, 11]
    kept = sum(1 for a, b in zip(owners, final, strict=False) if a == b)
    assert kept == 64 - moved


def test_leave_moves_only_the_leavers_shards() -> None:
    """A member leaves: exactly its shards move, nothing else."""
    members = [f"m{i}" for i in range(5)]
    owners, _ = settle(64, members, [None] * 64)
    rest = members[:2] + members[3:]
    final, moved = settle(64, rest, owners)
    leaver = sum(1 for o in owners if o == "m2")
    assert moved == leaver
    assert all(a == b for a, b in zip(owners, final, strict=False) if a != "m2")
    assert max(counts(tuple(final)).values()) - min(counts(tuple(final)).values()) <= 1


@pytest.mark.parametrize("seed", range(40))
def test_random_states(seed: int) -> None:
    """Random owners and members: balanced, minimal, deterministic, and stable under its moves."""
    rng = random.Random(seed)
    size = rng.choice([1, 2, 7, 16, 64, 100])
    pool = [f"m{i:02d}" for i in range(rng.randint(1, 12))]
    members = rng.sample(pool, rng.randint(1, len(pool)))
    owners: list[str | None] = [rng.choice([*pool, None, "gone"]) for _ in range(size)]
    p = plan(size, members, owners)
    # determinism: member order does not matter
    shuffled = members[:]
    rng.shuffle(shuffled)
    assert plan(size, shuffled, owners) == p
    # balance
    c = counts(p.targets)
    sizes = [c.get(m, 0) for m in set(members)]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == size
    # minimal moves; stickiness: a shard whose owner stays within quota keeps it
    assert p.moves == minimum_moves(size, members, owners)
    for s, o in enumerate(owners):
        if o in members and c.get(o, 0) >= sum(1 for x in owners if x == o):
            assert p.targets[s] == o
    # no ping-pong: applying the moves one by one never changes the plan
    final, moved = settle(size, members, owners)
    assert tuple(final) == p.targets
    assert moved == p.moves


def test_minimum_is_a_lower_bound() -> None:
    """No balanced assignment moves fewer shards than minimum_moves (exhaustive, small)."""
    members = ["a", "b", "c"]
    for owners in itertools.product(["a", "b", "c", None, "x"], repeat=4):
        best = min(
            sum(1 for o, t in zip(owners, targets, strict=False) if o is not None and o != t)
            for targets in itertools.product(members, repeat=4)
            if max(targets.count(m) for m in members) - min(targets.count(m) for m in members) <= 1
        )
        assert minimum_moves(4, members, list(owners)) == best
        assert plan(4, members, list(owners)).moves == best
