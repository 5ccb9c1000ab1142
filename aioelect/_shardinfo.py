"""Shard groups' pure parts: key layout, the data a member hands out, one read of etcd.

See :mod:`._shards` for how a group works. The key layout (no I/O): shard
``i`` of group ``g`` is the election ``g.shard-{i:04d}``; members announce
themselves under ``{prefix}/g`` + ``\\0members/``, outside every election.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._config import check_name
from ._connection import KV
from ._term import Term

if TYPE_CHECKING:
    from ._core import Core

__all__ = (
    "MAX_SHARDS",
    "MEMBERS",
    "OnShard",
    "Shard",
    "ShardEvent",
    "ShardGroupStatistics",
    "ShardOwner",
    "members_prefix",
    "read_shards",
    "shard_name",
)

#: The most shards a group may have (indices are 4 digits in the key names).
MAX_SHARDS = 10_000
MEMBERS = "\x00members"


def shard_name(group: str, index: int) -> str:
    """The election name of shard ``index`` of ``group``: ``{group}.shard-{index:04d}``."""
    return f"{group}.shard-{index:04d}"


def members_prefix(prefix: str, group: str) -> bytes:
    """Where the members of ``group`` announce themselves: ``{prefix}/{group}\\0members/``."""
    return f"{prefix}/{group}{MEMBERS}/".encode()


OnShard = Callable[["Shard"], Awaitable[None]]


@dataclass(frozen=True)
class Shard:
    """One shard owned by this member.

    Attributes:
        group: the shard group's name.
        index: the shard's number, 0 to ``size - 1``.
        name: its election's name (``{group}.shard-{index:04d}``).
        term: the term of ownership: ``term.token`` is its fencing token,
            ``term.transaction()`` writes only while it is owned, and work
            done inside the callbacks is cancelled when it ends.
    """

    group: str
    index: int
    name: str
    term: Term

    @property
    def token(self) -> int:
        """The fencing token of this ownership (the term's token)."""
        return self.term.token


@dataclass(frozen=True)
class ShardEvent:
    """A change of the shards this member owns (see :meth:`ShardGroup.events`).

    Attributes:
        kind: ``"assigned"`` (after the term began, as ``on_assigned`` starts)
            or ``"revoked"`` (after ``on_revoked`` returned).
        shard: the shard.
        reason: why it was revoked (``"moved to member ..."``, the term's end
            reason); empty for an assignment.
    """

    kind: Literal["assigned", "revoked"]
    shard: Shard
    reason: str = ""


@dataclass(frozen=True)
class ShardGroupStatistics:
    """A snapshot of one member of a shard group.

    Attributes:
        group: the group's name.
        member: this member's id.
        size: the number of shards.
        members: live members seen in the mirror (this one included once joined).
        owned: the shards this member owns now (valid terms), in order.
        targeted: the shards the current plan gives this member.
        balanced: every live member owns its planned shards (nothing to move).
        assigned: shards assigned to this member since it started.
        revoked: shards revoked from it (handed over or lost).
        handed_over: revoked shards handed over to a queued target.
        callback_errors: exceptions raised by ``on_assigned`` and ``on_revoked``
            (logged at ERROR; a shard whose ``on_assigned`` raised is resigned
            and claimed again after a back-off of 1 s, doubling up to 30 s).
    """

    group: str
    member: str
    size: int
    members: int
    owned: tuple[int, ...]
    targeted: tuple[int, ...]
    balanced: bool
    assigned: int
    revoked: int
    handed_over: int
    callback_errors: int


@dataclass(frozen=True)
class ShardOwner:
    """Who owns one shard, as etcd has it (see :func:`read_shards`).

    Attributes:
        index: the shard's number.
        member: the owner's member id, or None when the owner's key belongs
            to no live member (e.g. ``etcdctl elect``, or a member leaving).
        value: the owner key's value.
        token: the owner's fencing token (its key's create revision).
        queued: candidates waiting behind the owner.
    """

    index: int
    member: str | None
    value: bytes
    token: int
    queued: int


async def read_shards(core: Core, group: str) -> tuple[dict[str, bytes], list[ShardOwner]]:
    """The live members of ``group`` (id -> value) and the owner of each owned shard.

    One paginated read at one revision (shards without any candidate are left
    out); cancelling it leaves nothing behind.
    """
    core.check_usable()
    group = check_name(group, "group")
    root = f"{core.prefix}/{group}".encode()
    # The members (``{group}\\0members/``) and the shards (``{group}.shard-``) sort
    # between ``{group}\\0`` and ``{group}/``.
    kvs = (await core.conn.range_all(root + b"\x00", root + b"/")).kvs
    mpre = members_prefix(core.prefix, group)
    spre = root + b".shard-"
    members: dict[str, bytes] = {}
    by_lease: dict[int, str] = {}
    shards: dict[int, list[KV]] = {}
    for kv in kvs:
        if kv.key.startswith(mpre):
            member = kv.key[len(mpre) :].decode(errors="replace")
            members[member] = kv.value
            by_lease[kv.lease] = member
        elif kv.key.startswith(spre):
            digits, slash, _ = kv.key[len(spre) :].partition(b"/")
            if slash and digits.isdigit():
                shards.setdefault(int(digits), []).append(kv)
    owners = []
    for index in sorted(shards):
        first = min(shards[index], key=lambda kv: (kv.create_revision, kv.key))
        owners.append(
            ShardOwner(
                index,
                by_lease.get(first.lease),
                first.value,
                first.create_revision,
                len(shards[index]) - 1,
            )
        )
    return members, owners
