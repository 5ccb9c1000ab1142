"""The campaign's decision (``_campaign.next_step``): every row, on made-up views (no etcd)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from aioelect._campaign import (
    CONFIRM,
    EXPIRED,
    GONE,
    LIVE,
    LOST,
    NOT_LEADER,
    STEP_BACK,
    WAIT,
    WIN,
    next_step,
)
from aioelect._connection import KV
from aioelect._mirror import ElectionView

ROOT = b"/p/"


def _kv(name: str, rev: int, lease: int = 1, value: bytes = b"v") -> KV:
    return KV(ROOT + b"job/" + name.encode(), value, rev, rev, lease)


A, B, C = _kv("a", 10), _kv("b", 20), _kv("c", 30)
B_TIED = _kv("0b", 10)  # created by the same transaction as A, its key sorts first
B_AGAIN = _kv("b", 25)  # B deleted and created again (a new campaign of the same lease)


@dataclass(frozen=True)
class Row:
    why: str
    alive: tuple[KV, ...]  # the mirrored candidates, in creation order
    own: KV  # our key and token (the token may be stale: own.create_revision)
    expected: str
    expected_kv: KV | None = None
    transfer_to: KV | None = None  # a transfer record naming this key
    epoch_moved: bool = False
    session: str = LIVE
    wait: bool = True


ROWS = [
    Row("alone and first: win", (A,), A, WIN, A),
    Row("behind a live predecessor: wait on it", (A, B), B, WAIT, A),
    Row("behind two: wait on the one just before us", (A, B, C), C, WAIT, B),
    Row("wait=False behind a predecessor: not leader", (A, B), B, NOT_LEADER, A, wait=False),
    Row("wait=False and first: win", (A, B), A, WIN, A, wait=False),
    Row("tie on create revision, our key sorts last: wait", (B_TIED, A), A, WAIT, B_TIED),
    Row("tie on create revision, our key sorts first: win", (B_TIED, A), B_TIED, WIN, B_TIED),
    Row("own key deleted (with its predecessor, etcd #11051): gone", (C,), B, GONE),
    Row("own key deleted, predecessor alive: gone", (A,), B, GONE),
    Row("own key re-created at another revision: gone", (A, B_AGAIN), B, GONE),
    Row("watch restarted since our create, no predecessor (etcd #18089): confirm",
        (A,), A, CONFIRM, epoch_moved=True),
    Row("watch restarted, a predecessor alive: wait on it", (A, B), B, WAIT, A, epoch_moved=True),
    Row("session lost: gone", (A,), A, GONE, session=LOST),
    Row("session lost behind a predecessor: gone", (A, B), B, GONE, session=LOST),
    Row("session past its renew deadline, first: gone, never win", (A,), A, GONE, session=EXPIRED),
    Row("session past its deadline, behind: wait (the loss wakes us)",
        (A, B), B, WAIT, A, session=EXPIRED),
    Row("session past its deadline, epoch moved: confirm first", (A,), A, CONFIRM,
        epoch_moved=True, session=EXPIRED),
    Row("transfer to a candidate behind us: step back", (A, B, C), B, STEP_BACK, transfer_to=C),
    Row("transfer to a candidate behind the leader: the leader steps back",
        (A, B), A, STEP_BACK, transfer_to=B),
    Row("transfer to a candidate before us: wait", (A, B, C), C, WAIT, B, transfer_to=A),
    Row("transfer to us, a predecessor still there: wait", (A, B), B, WAIT, A, transfer_to=B),
    Row("transfer to us, first: win", (B,), B, WIN, B, transfer_to=B),
    Row("transfer to a candidate that is gone: the normal order", (A, B), B, WAIT, A,
        transfer_to=C),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.why for row in ROWS])
def test_next_step(row: Row) -> None:
    """Each row of the decision: the action, and the key it concerns."""
    view = ElectionView("job", ROOT)
    for kv in row.alive:
        view.apply(True, kv)
    if row.transfer_to is not None:
        view.apply(True, KV(view.transfer_key, row.transfer_to.key, 40, 40, 9))
    step = next_step(
        view, row.own.key, row.own.create_revision, 1, 2 if row.epoch_moved else 1,
        row.session, row.wait,
    )  # fmt: skip
    assert (step.action, step.kv) == (row.expected, row.expected_kv)


def test_every_action_has_a_row() -> None:
    """The table covers every action the decision can return."""
    actions = {CONFIRM, GONE, NOT_LEADER, STEP_BACK, WAIT, WIN}
    assert {row.expected for row in ROWS} == actions
