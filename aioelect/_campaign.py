"""The campaign recipe: how a candidate becomes leader (etcd's Go layout, fixed).

1. Write ``{prefix}/{name}/{lease hex}`` if absent (a transaction on its
   create revision; if present, e.g. after a timed-out write that landed
   anyway, reuse it). Its create revision is the candidate's token.
2. Wait until the elector's mirror has seen that revision, then look up the
   predecessor: the live key just before ours by create revision (then by
   key, for keys written by one transaction: every process orders them alike).
   While there is one, wait for a change of the predecessor's key (or
   of our own) in the mirror: each waiter follows only its predecessor.
3. With no predecessor left, win only if the mirror shows our key alive with
   our token in the same revision in which the last predecessor is gone: no
   phantom win on a key that vanished (etcd #11051), e.g. deleted together
   with its predecessor. The mirror is the election's ordered watch (or a range
   read after a resync), so that is a consistent snapshot of the election at
   that revision, and no read is needed: no later key can get a lower create
   revision, and a later loss of our key reaches us like any leader's, within
   one watch latency (and a lost lease by the local deadline, first). Only
   if the mirror's watch restarted or resynced since our key's create (a
   resumed watch is where etcd #18089 could drop an event) does one
   linearizable read confirm the win: our key alive with our token, and no
   key created before it. (aioelect trusts etcd's watch otherwise, for
   waiting candidates and sitting leaders alike.)
4. Our key gone while waiting (deleted by someone, or a compaction resync
   shows it missing): campaign again with a new key, at the back. Session
   lost: campaign again on the next session.

Cancellation at any point deletes the candidate key (shielded, bounded).

Size: about 400 lines: the pure step and its action table beside the loop
that performs them, so that each action is read next to its effect.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import anyio

from ._backoff import Backoff
from ._config import check_candidate_size
from ._connection import KV
from ._exceptions import EtcdError, NotLeader
from ._keys import candidate_key, election_prefix, prefix_range_end
from ._mirror import ElectionView
from ._session import Session
from ._term import Term, attach

if TYPE_CHECKING:
    from ._core import Core

__all__ = ("Step", "campaign", "next_step", "session_state")

log = logging.getLogger("aioelect")


# -- the decision: pure, no I/O (tests/test_campaign_step.py checks every row) ----------

#: Our key is gone (deleted, overwritten, expired) or the session is lost or past its
#: renew deadline: campaign again (with a new key, on the live session).
GONE = "gone"
#: A transfer hands leadership to a candidate queued behind us: delete our key (guarded
#: by its token) and campaign again, at the back.
STEP_BACK = "step back"
#: No predecessor in the mirror, but its watch restarted (or it resynced) since our key
#: was created: confirm with one linearizable read before winning (etcd #18089).
CONFIRM = "confirm"
#: Our key is alive with our token and has no predecessor, in one revision of the
#: mirror (so never a key deleted with its predecessor, etcd #11051): we lead.
WIN = "win"
#: A predecessor is alive: wait for a change of its key (or of ours, or the transfer
#: record), or the session's loss, then decide again.
WAIT = "wait"
#: ``wait=False`` and a predecessor is alive: raise NotLeader (the key is deleted).
NOT_LEADER = "not leader"

#: The states of the session, as :func:`next_step` sees them.
LIVE, EXPIRED, LOST = "live", "expired", "lost"


class Step(NamedTuple):
    """What the campaign does next (see :func:`next_step`)."""

    action: str
    #: Our own key for WIN; the predecessor for WAIT and NOT_LEADER; else None.
    kv: KV | None = None


_GONE, _STEP_BACK, _CONFIRM = Step(GONE), Step(STEP_BACK), Step(CONFIRM)


def session_state(session: Session) -> str:
    """LOST (lost for good), EXPIRED (past its renew deadline, not yet noticed) or LIVE."""
    if session.is_lost:
        return LOST
    return LIVE if session.is_live() else EXPIRED


def next_step(
    view: ElectionView,
    key: bytes,
    token: int,
    epoch: int,
    mirror_epoch: int,
    session: str,
    wait: bool,
) -> Step:
    """The campaign's next action, from the mirror's view of the election alone.

    Args:
        view: the mirrored election (candidates in election order, the transfer
            record).
        key: our candidate key; ``token`` its create revision.
        epoch: the mirror's epoch from before our key was created (or from the
            last confirming read); ``mirror_epoch`` the mirror's epoch now.
        session: :func:`session_state` of the session our key is attached to.
        wait: False for a try (``hold(wait=False)``): never WAIT.

    The rows, in order: a lost session, or our key gone or re-created (another
    create revision), is GONE. A transfer to a live candidate other than us
    and created after us is STEP_BACK. With no predecessor: CONFIRM if the
    mirror's epoch moved, else GONE if the session is past its renew deadline,
    else WIN. With a predecessor: NOT_LEADER without ``wait``, else WAIT.
    """
    if session == LOST:
        return _GONE
    own = view.kvs.get(key)
    if own is None or own.create_revision != token:
        return _GONE
    target = view.transfer_target()
    if target is not None and target.key != key and token < target.create_revision:
        return _STEP_BACK
    pred = view.predecessor(token, key)
    if pred is None:
        if mirror_epoch != epoch:
            return _CONFIRM
        if session != LIVE:
            return _GONE
        return Step(WIN, own)
    return Step(WAIT if wait else NOT_LEADER, pred)


async def campaign(
    core: Core, name: str, value: bytes, *, reclaim_stale: bool = False, wait: bool = True
) -> Term:
    """Campaign until elected; return the (attached) term.

    With ``reclaim_stale``, candidate keys of other leases that carry our
    (unique) value are taken for a previous incarnation of this process and
    deleted, guarded by their create revision, instead of waiting out their TTL.

    Cancelling deletes the candidate key. Raises ElectorClosed when the
    elector closes meanwhile, and NotLeader (leaving no key) when ``wait`` is
    False and another candidate comes first. Retryable etcd errors are retried
    with backoff; permanent ones (``EtcdError`` with ``retryable`` False, e.g.
    ``RequestTooLarge``, ``PermissionDenied``) are raised at once, leaving no key.
    A candidate whose requests would be over ``max_request_bytes`` raises
    ConfigError before any I/O.
    """
    # Refused before any I/O: a request etcd must refuse would fail every retry.
    check_candidate_size(core.prefix, name, value, core.config.max_request_bytes)
    mirror = core.mirror
    view = mirror.use(name)  # watched while the campaign runs (the term uses it too)
    try:
        return await _campaign(core, view, value, wait, reclaim_stale)
    finally:
        mirror.unuse(view)


async def _campaign(
    core: Core, view: ElectionView, value: bytes, wait: bool, reclaim_stale: bool
) -> Term:
    conn = core.conn
    mirror = core.mirror
    name = view.name
    await mirror.ready(view)
    backoff: Backoff | None = None  # made on the first error
    # The mirror's epoch from before the create of the key we hold now (kept while a
    # retry reuses that key): a watch restart since then makes the win confirm.
    held: tuple[int, int] | None = None  # (token, epoch)
    while True:
        session = core.live_session() or await core.wait_session()
        key = candidate_key(core.prefix, name, session.lease_id)
        token: int | None = None
        pending = None  # the batched create, until it answers
        try:
            try:
                if reclaim_stale:
                    await _reclaim(core, name, value, session.lease_id)
                epoch = view.epoch
                pending = core.batcher.create(key, value, session.lease_id)
                token = await pending
                pending = None
                if token is None:
                    token = await _create_alone(core, key, value, session.lease_id)
                    if token is None:
                        continue
                if held is not None and held[0] == token:
                    epoch = held[1]  # the same key as before: keep its older epoch
                held = (token, epoch)
                term = await _wait_turn(core, session, view, key, token, epoch, wait, value)
                if term is not None:
                    return term
                log.debug("campaign for %r: key %r gone or session lost; again", name, key)
                continue
            except EtcdError as exc:
                if "requested lease not found" in str(exc):
                    # Our session's lease is gone (revoked, or expired before the keepalive
                    # noticed): the session is lost; campaign again on the next one.
                    log.debug("campaign for %r: session lease %x gone", name, session.lease_id)
                    session.mark_lost("lease not found (revoked or expired)")
                    continue
                if not exc.retryable:  # a retry cannot help: raised at once (key deleted)
                    raise
                log.debug("campaign for %r: %s; retrying", name, exc)
            # Inside the outer try: cancelled during the back-off, the key (which may
            # exist, e.g. written before a failed read) is deleted too.
            if backoff is None:
                backoff = Backoff(initial=0.05, cap=min(2.0, core.config.ttl / 2))
            await anyio.sleep(backoff.next())
        except BaseException:
            if token is None and pending is not None:  # stopped waiting for the create
                token = await core.batcher.landing(pending)
            if core.closing:
                # The elector is closing: its lease revoke deletes the key (a delete of
                # our own could race the connection's close, which grpc reports as a
                # bare CancelledError).
                raise
            # Guarded by our token when we know it: a delete that times out here may
            # still land later, and must not remove a later campaign's key (same
            # lease, same key name) that won meanwhile.
            guard = [] if token is None else [conn.cmp_create(key, token)]
            with anyio.CancelScope(shield=True), anyio.move_on_after(conn.timeout):
                try:
                    await conn.txn(guard, [conn.op_delete(key)])
                except EtcdError as exc:
                    log.debug("campaign for %r: could not delete %r: %s", name, key, exc)
            raise


async def _create_alone(core: Core, key: bytes, value: bytes, lease_id: int) -> int | None:
    """Create ``key`` or reuse it if it exists (e.g. an earlier write that timed out but landed).

    Returns its create revision, or None if it vanished meanwhile (try again).
    Shielded (each request has its deadline): a campaign cancelled meanwhile learns
    the key's create revision, and its clean-up follows this write instead of
    overtaking it with an unguarded delete.
    """
    conn = core.conn
    token: int | None = None
    with anyio.CancelScope(shield=True):
        resp = await conn.txn(
            [conn.cmp_create(key, 0)], [conn.op_put(key, value, lease_id)], [conn.op_get(key)]
        )
        kvs = resp.responses[0].response_range.kvs
        if resp.succeeded:
            token = int(resp.header.revision)
        elif kvs:
            token = int(kvs[0].create_revision)
            if kvs[0].value != value:
                await conn.txn([conn.cmp_create(key, token)], [conn.op_put(key, value, lease_id)])
    return token


async def _reclaim(core: Core, name: str, value: bytes, lease_id: int) -> None:
    conn = core.conn
    eprefix = election_prefix(core.prefix, name)
    for kv in (await conn.range_all(eprefix, prefix_range_end(eprefix))).kvs:
        if kv.value == value and kv.lease != lease_id:
            log.info("reclaiming stale key %r of election %r", kv.key, name)
            await conn.txn([conn.cmp_create(kv.key, kv.create_revision)], [conn.op_delete(kv.key)])


async def _wait_turn(
    core: Core,
    session: Session,
    view: ElectionView,
    key: bytes,
    token: int,
    epoch: int,
    wait: bool = True,
    value: bytes | None = None,
) -> Term | None:
    """Wait until ``key`` (created at ``token``) leads; None if it is gone or the session
    was lost. ``epoch``: the mirror's epoch from before the key was created; ``value``:
    the value the campaign wrote (the mirror may not show it yet: a key reused from an
    earlier attempt is rewritten, and its rewrite may arrive after the win)."""
    conn = core.conn
    mirror = core.mirror
    # (A batched create answers once the mirror has seen it: no wait here.)
    if view.seen < token and not await _see_own_key(core, session, view, key, token):
        return None
    while True:
        step = next_step(view, key, token, epoch, view.epoch, session_state(session), wait)
        action = step.action
        if action == GONE:
            own = view.kvs.get(key)
            if own is None or own.create_revision != token:  # (else: the session)
                log.debug("campaign for %r: own key gone", view.name)
            return None
        if action == STEP_BACK:
            # Leadership is being handed to a candidate behind us: step to the back.
            await conn.txn([conn.cmp_create(key, token)], [conn.op_delete(key)])
            return None
        if action == CONFIRM:
            # The watch restarted meanwhile: confirm with one linearizable read that
            # our key lives with our token and that no key was created before it.
            log.debug("campaign for %r: the watch restarted meanwhile: confirming", view.name)
            before = view.epoch
            eprefix = election_prefix(core.prefix, view.name)
            before_us = conn.op_created_before(eprefix, prefix_range_end(eprefix), token)
            revision, (mine, ahead) = await core.batcher.read([conn.op_get(key), before_us])
            kvs = mine.response_range.kvs
            if not kvs or kvs[0].create_revision != token:
                log.debug("campaign for %r: the confirming read shows our key gone", view.name)
                return None
            if not ahead.response_range.kvs:
                epoch = before  # confirmed: re-check the mirror, and win if it agrees
            else:  # a predecessor the mirror does not show yet: let it catch up
                await mirror.sync(view, revision)
                if view.predecessor(token, key) is None:  # still not: pace the reads
                    await anyio.sleep(0.05)
            continue
        if action == WIN:
            # The mirror shows our key alive and no predecessor, in one revision: we
            # lead (see step 3 of the module docstring).
            assert step.kv is not None
            written = step.kv.value if value is None else value
            term = Term(core, session, view.name, key, written, token)
            if not attach(term):
                return None
            record = view.transfer
            if record is not None and record.value == key:
                # The transfer reached us: drop its record (and its lease), in the background.
                core.spawn(_drop_record, core, view.name, record.lease)
            return term
        pred = step.kv
        assert pred is not None
        if action == NOT_LEADER:
            raise NotLeader(
                f"election {view.name!r} is held or awaited by {pred.value!r} (token "
                f"{pred.create_revision})"
            )
        wake = _Wake()
        watched = (pred.key, key, view.transfer_key)
        for k in watched:
            view.listen_key(k, wake)
        unsubscribe = session.on_lost(wake)
        try:
            await wake.wait()
        finally:
            unsubscribe()
            for k in watched:
                view.unlisten_key(k, wake)


async def _see_own_key(
    core: Core, session: Session, view: ElectionView, key: bytes, token: int
) -> bool:
    """Wait until the mirror has applied every event up to our key's creation.

    Waits for events, never for a bare revision: etcd before 3.5.8 may send a
    progress notification ahead of the events it covers (etcd #15220). A
    compaction resync (a range read) also counts. Returns False when our key
    is gone by then (deleted, or its lease expired), or the session is lost.
    """
    future = core.mirror.seen_future(view, token)
    if future is not None:

        def lost(_reason: str) -> None:
            if not future.done():
                future.set_result(None)

        unsubscribe = session.on_lost(lost)
        try:
            await future
        finally:
            unsubscribe()
    if session.is_lost:
        return False
    own = view.kvs.get(key)
    return own is not None and own.create_revision == token


async def _drop_record(core: Core, name: str, lease_id: int) -> None:
    try:
        await core.conn.revoke(lease_id)
    except EtcdError as exc:
        log.debug("could not drop the transfer record of %r: %s", name, exc)


class _Wake:
    """Wakes a waiting campaign on a change of a key it follows or a lost session."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def key_changed(self, is_put: bool, kv: KV) -> None:
        self._event.set()

    def __call__(self, reason: str) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
