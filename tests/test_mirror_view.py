"""The mirror's per-election bookkeeping, on made-up keys (pure logic, no etcd)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import anyio
import pytest

from aioelect._connection import KV
from aioelect._mirror import ElectionView, leader_info, resync_events
from aioelect._models import LeaderInfo
from aioelect._observe import Observer


class _Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[bool, bytes]] = []

    def key_changed(self, is_put: bool, kv: KV) -> None:
        self.changes.append((is_put, kv.key))


def _kv(key: bytes, rev: int) -> KV:
    return KV(key, b"v", rev, rev, 7)


def test_key_listeners_are_called_and_removed_one_by_one() -> None:
    """One, two and three listeners on a key: each hears each change, in order, until it
    stops listening; a listener of another key hears nothing."""
    view = ElectionView("e", b"/p/")
    a, b, c, other = _Recorder(), _Recorder(), _Recorder(), _Recorder()
    view.listen_key(b"/p/e/1", a)
    view.listen_key(b"/p/e/2", other)
    view.apply(True, _kv(b"/p/e/1", 10))
    view.listen_key(b"/p/e/1", b)
    view.listen_key(b"/p/e/1", c)
    view.apply(True, _kv(b"/p/e/1", 10))
    view.unlisten_key(b"/p/e/1", b)
    view.unlisten_key(b"/p/e/1", b)  # not listening any more: nothing happens
    view.apply(True, _kv(b"/p/e/1", 10))
    view.unlisten_key(b"/p/e/1", a)
    view.apply(False, _kv(b"/p/e/1", 10))
    view.unlisten_key(b"/p/e/1", c)
    view.apply(True, _kv(b"/p/e/1", 11))
    assert a.changes == [(True, b"/p/e/1")] * 3
    assert b.changes == [(True, b"/p/e/1")]
    assert c.changes == [(True, b"/p/e/1")] * 2 + [(False, b"/p/e/1")]
    assert other.changes == []
    assert b"/p/e/1" not in view.key_listeners
    view.unlisten_key(b"/p/e/2", a)  # someone else's key: its listener stays
    assert view.key_listeners[b"/p/e/2"] is other


def test_views_share_one_dict_of_key_listeners() -> None:
    shared: dict[bytes, object] = {}
    one = ElectionView("one", b"/p/", shared)  # type: ignore[arg-type]
    two = ElectionView("two", b"/p/", shared)  # type: ignore[arg-type]
    r = _Recorder()
    one.listen_key(b"/p/one/1", r)
    assert two.key_listeners is one.key_listeners
    two.apply(True, _kv(b"/p/two/1", 5))
    one.apply(True, _kv(b"/p/one/1", 6))
    assert r.changes == [(True, b"/p/one/1")]


@pytest.mark.asyncio
async def test_observer_queues_changes_and_drops_consecutive_duplicates() -> None:
    observer = Observer()
    first = LeaderInfo("e", b"/p/e/1", b"a", 1, 7)
    second = LeaderInfo("e", b"/p/e/2", b"b", 2, 7)
    for info in (first, first, None, second, second):
        observer.leader_changed(info)
    got = [await observer.__anext__() for _ in range(3)]
    assert got == [first, None, second]

    async def next_item() -> None:
        got.append(await observer.__anext__())
        done.set()

    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(next_item)
        await anyio.wait_all_tasks_blocked()
        assert len(got) == 3  # nothing new yet: it waits
        observer.leader_changed(first)
        await done.wait()
    assert got[-1] == first
    observer.close()
    assert [item async for item in observer] == []


@pytest.mark.parametrize("order", ["b first", "a first"])
def test_keys_created_in_one_transaction_lead_by_key(order: str) -> None:
    """Two candidate keys with one create revision (one outside transaction wrote both):
    the lower key is the other's predecessor, and leads, whichever order the mirror got
    them in (events in the transaction's order, or a range read in key order)."""
    view = ElectionView("e", b"/p/")
    older, low, high = _kv(b"/p/e/0", 3), _kv(b"/p/e/a", 9), _kv(b"/p/e/b", 9)
    for kv in (older, high, low) if order == "b first" else (older, low, high):
        view.apply(True, kv)
    assert view.predecessor(9, low.key) == older
    assert view.predecessor(9, high.key) == low
    assert view.predecessor(12, b"/p/e/c") == high
    view.apply(False, older)
    assert view.predecessor(9, low.key) is None
    assert view.leader() == low


@pytest.mark.asyncio
async def test_observer_keeps_what_a_lagging_consumer_has_not_read() -> None:
    """A consumer far behind gets every change in order (the queue drops only what it
    read), and after close() still gets what was queued, then the end."""
    observer = Observer()
    infos = [LeaderInfo("e", b"/p/e/%d" % i, b"v", i, 7) for i in range(200)]
    for info in infos[:150]:
        observer.leader_changed(info)
    got = [await observer.__anext__() for _ in range(100)]
    for info in infos[150:]:
        observer.leader_changed(info)
    observer.close()
    observer.leader_changed(None)  # after close: ignored
    got += [item async for item in observer]
    assert got == infos


def test_leader_info_equals_the_dataclass_built_the_usual_way() -> None:
    """The mirror's fast LeaderInfo (filled through the slots) reads, compares, hashes,
    prints, copies and pickles like one built by its constructor, on every Python."""
    kv = KV(b"/p/job/1a", b"value", 7, 9, 0x1A)
    info = leader_info("job", kv)
    assert info is not None
    # Each field reads back (Python 3.10's slots=True on the subclass hid them).
    assert (info.name, info.key, info.value, info.token, info.lease_id) == (
        "job", b"/p/job/1a", b"value", 7, 0x1A
    )  # fmt: skip
    assert not hasattr(info, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.token = 8  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(info)) == info
    assert copy.deepcopy(info) == info
    assert dataclasses.replace(info, token=8).token == 8
    assert info == LeaderInfo("job", b"/p/job/1a", b"value", 7, 0x1A)
    assert type(info) is LeaderInfo
    assert hash(info) == hash(LeaderInfo("job", b"/p/job/1a", b"value", 7, 0x1A))
    assert repr(info) == repr(LeaderInfo("job", b"/p/job/1a", b"value", 7, 0x1A))
    assert leader_info("job", None) is None


def _name_of(key: bytes) -> str | None:
    parts = key.split(b"/")
    return parts[2].decode() if len(parts) == 4 and parts[1] == b"p" else None


def test_resync_events_turn_the_mirror_into_the_fresh_read() -> None:
    """A resync's diff: deletes first (keys missing, or re-created at another revision), in
    the mirror's order; then puts of new or changed keys by create revision; nothing for
    an unchanged key or a key of no election."""
    kept, changed = _kv(b"/p/e/kept", 5), _kv(b"/p/e/changed", 6)
    gone, recreated = _kv(b"/p/f/gone", 7), _kv(b"/p/e/recreated", 8)
    changed_now = KV(changed.key, b"proclaimed", 6, 12, 7)
    recreated_now = _kv(recreated.key, 11)
    new_other = _kv(b"/p/g/new", 9)
    stray = _kv(b"/elsewhere", 3)
    events = resync_events(
        [kept, changed, recreated, gone],
        [stray, kept, changed_now, new_other, recreated_now],
        _name_of,
    )
    assert events == [
        (False, recreated),
        (False, gone),
        (True, changed_now),  # create revision 6
        (True, new_other),  # 9
        (True, recreated_now),  # 11
    ]
    assert resync_events([kept], [kept], _name_of) == []
    assert resync_events([], [], _name_of) == []
