"""Who should own which shard: a pure, deterministic function (no I/O).

Theory of operation: every member of a shard group reads the same snapshot
(the live members and the current owner of each shard, from one revision of
its mirror) and computes the same target assignment with :func:`plan`. Each
member then campaigns only for the shards targeted to it and hands over the
shards it owns that are targeted elsewhere; exclusivity comes from the
shards' elections, never from this function.

The plan is balanced (every member's quota is ``S // N`` or ``S // N + 1``),
moves as few shards as balance allows, and stays the same while the moves it
asks for happen (no ping-pong: a shard moves once per membership change):

1. Quotas. ``S % N`` members get one extra shard. Members that own more than
   ``S // N`` shards come first (each extra one given to them saves a move),
   then members in id order. A member chosen this way stays chosen while the
   moves happen: its count never drops below its quota, and a member not
   chosen never grows above ``S // N``.
2. Keeping. Each member keeps its lowest-numbered shards, up to its quota.
3. Filling. Every other shard (beyond a quota, unowned, or owned by a key of
   no live member, e.g. a member that is leaving) goes to the members below
   their quota: the free shards in index order, to the members in id order,
   each taking as many as it lacks. A free shard that reaches its target
   leaves the free list and the target's deficit together, so the other
   targets stay the same.

The moves :func:`plan` asks for are exactly :func:`minimum_moves`: the shards
owned by a live member above its (best) quota, plus those owned by keys of no
live member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ("Plan", "minimum_moves", "plan")


@dataclass(frozen=True)
class Plan:
    """A target assignment.

    Attributes:
        targets: the target member of each shard (None only with no members).
        quotas: each live member's quota.
        moves: shards that have an owner and are targeted to another member.
    """

    targets: tuple[str | None, ...]
    quotas: dict[str, int]
    moves: int


def plan(size: int, members: Sequence[str], owners: Sequence[str | None]) -> Plan:
    """The target owner of each of ``size`` shards.

    Args:
        size: the number of shards (S).
        members: the live members' ids (any order; duplicates ignored).
        owners: the current owner of each shard: a member id, None when
            unowned, or any other string (a key of no live member).

    Returns:
        The same :class:`Plan` for the same arguments, whatever the order of
        ``members``.
    """
    if len(owners) != size:
        raise ValueError(f"owners has {len(owners)} entries for {size} shards")
    ids = sorted(set(members))
    if not ids:
        return Plan((None,) * size, {}, 0)
    live = set(ids)
    owned: dict[str, list[int]] = {m: [] for m in ids}
    for shard, owner in enumerate(owners):
        if owner is not None and owner in live:
            owned[owner].append(shard)
    quotas = _quotas(size, ids, {m: len(s) for m, s in owned.items()})
    targets: list[str | None] = [None] * size
    for member in ids:
        for shard in owned[member][: quotas[member]]:  # lowest-numbered first
            targets[shard] = member
    free = iter([s for s in range(size) if targets[s] is None])
    for member in ids:
        for _ in range(quotas[member] - min(len(owned[member]), quotas[member])):
            targets[next(free)] = member
    moves = sum(1 for s, o in enumerate(owners) if o is not None and targets[s] != o)
    return Plan(tuple(targets), quotas, moves)


def _quotas(size: int, ids: list[str], counts: dict[str, int]) -> dict[str, int]:
    base, extra = divmod(size, len(ids))
    # Members above the base first (an extra shard there saves a move), then id order.
    ranked = sorted(ids, key=lambda m: (counts[m] <= base, m))
    lucky = set(ranked[:extra])
    return {m: base + (m in lucky) for m in ids}


def minimum_moves(size: int, members: Sequence[str], owners: Sequence[str | None]) -> int:
    """The fewest shards that must change owner to balance ``owners`` over ``members``.

    Shards held by keys of no live member must all move; unowned shards are
    claims, not moves.
    """
    ids = sorted(set(members))
    if not ids:
        return 0
    live = set(ids)
    counts = dict.fromkeys(ids, 0)
    orphans = 0
    for owner in owners:
        if owner is None:
            continue
        if owner in live:
            counts[owner] += 1
        else:
            orphans += 1
    base, extra = divmod(size, len(ids))
    above = sorted((c for c in counts.values()), reverse=True)
    excess = 0
    for rank, count in enumerate(above):
        excess += max(0, count - (base + (rank < extra)))
    return excess + orphans
