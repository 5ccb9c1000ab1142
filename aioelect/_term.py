"""A term: one continuous period of leadership of one election.

A term is valid from the moment its candidate was confirmed leader until the
first of: its session's ``valid_until`` passes without a renewal, etcd says
the lease is gone, the leader key is deleted or overwritten by someone else,
the term resigns, or the elector closes. Every leader-only write is a
transaction guarded by ``create_revision(key) == token``, so a write from a
term that etcd no longer considers leader never lands.

Size: over 400 lines because :class:`Term` is public: the docstrings of
every blocking call (what cancels it, what it leaves behind) take half.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._backoff import Backoff
from ._config import check_candidate_size, to_bytes, value_limit
from ._connection import KV
from ._errors import no_task_cancel
from ._exceptions import EtcdError, NoSuchCandidate, NotLeader
from ._few import Few, add, each, remove
from ._keys import election_prefix, prefix_range_end, transfer_key

if TYPE_CHECKING:
    from ._core import Core
    from ._session import Session
    from ._view import ElectionView

__all__ = (
    "RESIGNED",
    "Term",
    "add_on_end",
    "attach",
    "cancellation_was_ours",
    "drop_scope",
    "ended",
    "hard_deadline",
    "on_renewed",
    "open_scope",
    "session_of",
    "transfer_to",
)

log = logging.getLogger("aioelect")

RESIGNED = "resigned"
_DEADLINE_PASSED = "lease not renewed before renew_deadline"


class Term:
    """One continuous period of leadership, handed out by :meth:`Elector.hold`.

    Attributes:
        name: the election's name.
        key: the leader key, ``{prefix}/{name}/{lease hex}``.
        token: the leader key's create revision: a fencing token that only
            grows from one leader to the next. Pass it to the systems you
            write to, and let them refuse smaller tokens.
        lease_id: the session lease the key is attached to.
    """

    __slots__ = (
        "__weakref__",
        "_core",
        "_ended",
        "_lost",
        "_on_end",
        "_own_values",
        "_resigning",
        "_scopes",
        "_session",
        "_value",
        "_view",
        "key",
        "lease_id",
        "name",
        "started_at",
        "token",
    )

    def __init__(
        self, core: Core, session: Session, name: str, key: bytes, value: bytes, token: int
    ) -> None:
        self._core = core
        self._session = session
        self.name = name
        self.key = key
        self._value = value
        self.token = token
        self.lease_id = session.lease_id
        self.started_at = time.monotonic()
        self._ended: str | None = None
        self._resigning = False
        # Few objects per term (thousands of terms may live in one process):
        # the Event, the callbacks and extra scopes are only made when needed.
        self._lost: anyio.Event | None = None
        self._scopes: Few[anyio.CancelScope] = None
        self._own_values: tuple[bytes, ...] = (value,)
        self._on_end: list[Callable[[Term, str], None]] | None = None
        self._view: ElectionView | None = None  # the mirrored election, once attached

    # -- wiring (called by the campaign) -------------------------------------------

    def _attach(self) -> bool:
        """Start following the leader key (the elector ends its terms when the session
        is lost); return False, leaving nothing behind, if the term is already over.
        """
        view = self._core.mirror.view(self.name)
        kv = view.kvs.get(self.key)
        if self._session.is_lost or kv is None or kv.create_revision != self.token:
            self._ended = "leader key deleted"
            return False
        self._core.mirror.use(self.name)  # watched while the term lasts
        view.listen_key(self.key, self)
        self._view = view
        self._core.term_started(self, self._session)
        return True

    def session_lost(self, reason: str) -> None:
        """Called by the elector when this term's session is lost."""
        self._end(f"session lost: {reason}")

    def key_changed(self, is_put: bool, kv: KV) -> None:
        """Called by the mirror on every change of the leader key."""
        if self._resigning:
            if not is_put:
                self._end(RESIGNED)
        elif not is_put:
            self._end("leader key deleted")
        elif (
            kv.create_revision != self.token
            or kv.lease != self.lease_id
            or kv.value not in self._own_values
        ):
            self._end("leader key overwritten by someone else")
        else:
            self._value = kv.value

    def _end(self, reason: str) -> None:
        if self._ended is not None:
            return
        if reason != RESIGNED and time.monotonic() >= self._session.valid_until:
            # The deadline passed first (e.g. the process was paused): that is why
            # the term ended, whatever was noticed first on waking up.
            reason = _DEADLINE_PASSED
        self._ended = reason
        if self._lost is not None:
            self._lost.set()
        if reason != RESIGNED:
            for scope in each(self._scopes):
                scope.cancel()
        view, self._view = self._view, None
        if view is not None:
            view.unlisten_key(self.key, self)
            self._core.term_ended(self, reason, resigned=reason == RESIGNED)
        try:
            for callback in self._on_end or ():
                callback(self, reason)
        finally:
            if view is not None:
                self._core.mirror.unuse(view)  # after the callbacks, which may read it

    def _scope(self) -> anyio.CancelScope:
        """A cancel scope that is cancelled when the term ends.

        No deadline of its own: the session's keepalive loop wakes at
        ``valid_until`` and ends every term of the session then, so one timer
        serves all terms (instead of re-arming one per term at every renewal).
        """
        scope = anyio.CancelScope()
        self._scopes = add(self._scopes, scope)
        if self._ended is not None and self._ended != RESIGNED:
            scope.cancel()
        return scope

    def _drop_scope(self, scope: anyio.CancelScope) -> None:
        self._scopes = remove(self._scopes, scope)

    def _add_on_end(self, callback: Callable[[Term, str], None]) -> None:
        if self._on_end is None:
            self._on_end = []
        self._on_end.append(callback)

    def _hard_deadline(self) -> float:
        """The monotonic instant before which etcd cannot expire this term's lease."""
        return self._session.hard_deadline

    def _on_renewed(self, callback: Callable[[float], None]) -> Callable[[], None]:
        """Call ``callback(hard_deadline)`` after each renewal of the lease."""
        return self._session.on_renewed(callback)

    # -- public ------------------------------------------------------------------

    @property
    def value(self) -> bytes:
        """The leader's current value (changed by :meth:`proclaim`)."""
        return self._value

    @property
    def is_valid(self) -> bool:
        """Whether this term still leads, checked against the clock now.

        False as soon as the session's renew deadline passes, even before the
        event loop has run any timer, as soon as :meth:`resign` or
        :meth:`transfer` starts (before etcd has answered: the successor may
        already lead), and after the term ended for any reason.
        """
        return (
            self._ended is None
            and not self._resigning
            and time.monotonic() < self._session.valid_until
        )

    @property
    def end_reason(self) -> str | None:
        """Why the term ended, or None while it lasts."""
        if self._ended is None and time.monotonic() >= self._session.valid_until:
            return _DEADLINE_PASSED
        return self._ended

    def expires_in(self) -> float:
        """Seconds this term stays valid without another renewal (0 once ended)."""
        if self._ended is not None:
            return 0.0
        return max(0.0, self._session.valid_until - time.monotonic())

    async def wait_lost(self) -> None:
        """Wait until the term ends, for any reason (cancelling the wait changes nothing)."""
        if self._ended is not None:
            return
        if self._lost is None:
            self._lost = anyio.Event()
        lost = self._lost
        scope = self._scope()
        try:
            with scope:
                await lost.wait()
        finally:
            self._drop_scope(scope)

    def _check_valid(self) -> None:
        if not self.is_valid:
            raise NotLeader(
                f"term {self.token} of election {self.name!r} no longer leads: {self.end_reason}"
            )

    async def proclaim(self, value: str | bytes) -> None:
        """Change the leader's value without giving up leadership.

        Raises:
            NotLeader: the term no longer leads (nothing is written).
            ConfigError: the value is not str or bytes, or too large for etcd's
                request limit (``max_request_bytes``); nothing is sent.
            EtcdUnavailable: etcd did not answer; the value may or may not be set.
        """
        limit = self._core.config.max_request_bytes
        data = to_bytes(value, limit=value_limit(limit))
        check_candidate_size(self._core.prefix, self.name, data, limit)
        self._check_valid()
        conn = self._core.conn
        self._own_values = (*self._own_values, data)
        resp = await conn.txn(
            [conn.cmp_create(self.key, self.token)],
            [conn.op_put(self.key, data, self.lease_id)],
        )
        if not resp.succeeded:
            self._end("leader key deleted")
            raise NotLeader(f"term {self.token} of election {self.name!r}: leader key is gone")
        self._value = data
        self._own_values = (data,)

    async def transaction(
        self, compare: Sequence[Any] = (), success: Sequence[Any] = (), failure: Sequence[Any] = ()
    ) -> tuple[bool, list[Any]]:
        """Run an etcd transaction only while this term leads.

        Takes aetcd's compare and operation objects (``client.transactions``)
        and returns what ``aetcd.Client.transaction`` returns for them. The
        guard ``create_revision(key) == token`` is added around them: etcd
        applies nothing if this term's key is gone.

        Raises:
            NotLeader: the term is no longer valid (nothing is sent), or etcd
                refused the guard (nothing was applied).
            EtcdUnavailable: etcd did not answer in time; the transaction may
                or may not have been applied.
            RequestTooLarge: the transaction is over etcd's request limit
                (``max_request_bytes``, or etcd's own); nothing was applied.
        """
        conn = self._core.conn
        inner = conn.txn_request(
            conn.user_compares(compare, "compare"),
            conn.user_ops(success, "success"),
            conn.user_ops(failure, "failure"),
        )
        self._check_valid()
        resp = await conn.txn([conn.cmp_create(self.key, self.token)], [inner])
        if not resp.succeeded:
            self._end("leader key deleted")
            raise NotLeader(f"term {self.token} of election {self.name!r}: leader key is gone")
        return conn.txn_results(resp.responses[0].response_txn)

    async def find_candidate(self, value: str | bytes) -> KV:
        """The live candidate (other than this term) whose value is ``value``.

        Raises:
            NoSuchCandidate: no live candidate has that value.
        """
        data = to_bytes(value, limit=value_limit(self._core.config.max_request_bytes))
        conn = self._core.conn
        eprefix = election_prefix(self._core.prefix, self.name)
        result = await conn.range_all(eprefix, prefix_range_end(eprefix))  # paginated
        for kv in sorted(result.kvs, key=lambda kv: (kv.create_revision, kv.key)):
            if kv.value == data and kv.key != self.key:
                return kv
        raise NoSuchCandidate(f"no live candidate of election {self.name!r} has value {data!r}")

    async def transfer(self, value: str | bytes) -> None:
        """Hand leadership to the live candidate whose value is ``value``.

        In one transaction, guarded by this term's token and the target's,
        this term resigns and records the transfer. Other aioelect candidates
        then let the target lead (those queued before it move to the back);
        if the target has not taken over within one TTL, the record expires
        and the normal order resumes. Go candidates do not know transfer
        records: one queued before the target may win. The term ends as by
        :meth:`resign`.

        Raises:
            NoSuchCandidate: no live candidate has that value.
            NotLeader: this term no longer leads.
        """
        self._check_valid()
        target = await self.find_candidate(value)
        await self._transfer_to(target)

    async def _transfer_to(self, target: KV) -> None:
        core = self._core
        conn = core.conn
        self._check_valid()
        record_lease, _ = await conn.grant(int(core.config.ttl))
        self._resigning = True
        try:
            resp = await conn.txn(
                [conn.cmp_create(self.key, self.token),
                 conn.cmp_create(target.key, target.create_revision)],
                [conn.op_put(transfer_key(core.prefix, self.name), target.key, record_lease),
                 conn.op_delete(self.key)],
            )  # fmt: skip
        except BaseException:
            self._resigning = False
            raise
        if not resp.succeeded:
            self._resigning = False
            await conn.revoke(record_lease)
            kv = core.mirror.view(self.name).kvs.get(self.key)
            if kv is None or kv.create_revision != self.token:
                self._end("leader key deleted")
                raise NotLeader(f"term {self.token} of election {self.name!r}: key is gone")
            raise NoSuchCandidate(
                f"the candidate {target.key!r} of election {self.name!r} left meanwhile"
            )
        log.info("election %r: leadership transferred to %r", self.name, target.key)
        self._end(RESIGNED)

    async def resign(self) -> None:
        """Give up leadership now: delete the leader key (guarded by its create revision).

        Retried with back-off for up to ``request_timeout`` when etcd does
        not answer; if it still fails, the elector abandons the session (its
        lease then expires and the key with it). The term ends either way.
        Resigning an ended term does nothing. Shield it to resign while
        being cancelled.
        """
        if self._ended is not None:
            return
        self._resigning = True
        conn = self._core.conn
        backoff = Backoff(initial=0.02, cap=0.5)
        deadline = time.monotonic() + max(conn.timeout, 1.0)
        try:
            while True:
                try:
                    await conn.txn(
                        [conn.cmp_create(self.key, self.token)], [conn.op_delete(self.key)]
                    )
                    break
                except EtcdError as exc:
                    if time.monotonic() + 0.02 >= deadline:
                        log.warning(
                            "resign of %r failed (%s): abandoning session %x",
                            self.name,
                            exc,
                            self.lease_id,
                        )
                        self._session.mark_lost(f"resign of {self.name!r} failed")
                        break
                    log.debug("resign of %r failed, retrying: %s", self.name, exc)
                    await anyio.sleep(backoff.next())
        finally:
            self._end(RESIGNED)

    def __repr__(self) -> str:
        state = "valid" if self.is_valid else f"ended ({self.end_reason})"
        return f"<Term {self.name!r} token={self.token} lease={self.lease_id:x} {state}>"


# -- the package's own API of a Term (functions, so that Term shows no more public
# names; only this module touches a Term's underscored attributes) ------------------


def attach(term: Term) -> bool:
    """Start following the leader key and register the term with the core.

    Returns False, leaving nothing behind, if the term is already over.
    """
    return term._attach()


def open_scope(term: Term) -> anyio.CancelScope:
    """A cancel scope that is cancelled when ``term`` ends (give it back with
    :func:`drop_scope`)."""
    return term._scope()


def drop_scope(term: Term, scope: anyio.CancelScope) -> None:
    """Forget a scope from :func:`open_scope`."""
    term._drop_scope(scope)


def scopes_open(term: Term) -> int:
    """How many scopes from :func:`open_scope` were not dropped yet."""
    return sum(1 for _ in each(term._scopes))


def add_on_end(term: Term, callback: Callable[[Term, str], None]) -> None:
    """Call ``callback(term, reason)`` once, when ``term`` ends."""
    term._add_on_end(callback)


def ended(term: Term) -> str | None:
    """Why ``term`` ended, or None while it was not noticed to end (unlike
    :attr:`Term.end_reason`, not checked against the clock)."""
    return term._ended


def session_of(term: Term) -> Session:
    """The session whose lease holds ``term``'s key."""
    return term._session


def hard_deadline(term: Term) -> float:
    """The monotonic instant before which etcd cannot expire ``term``'s lease."""
    return term._hard_deadline()


def on_renewed(term: Term, callback: Callable[[float], None]) -> Callable[[], None]:
    """Call ``callback(hard_deadline)`` after each renewal of ``term``'s lease;
    returns the function that stops it."""
    return term._on_renewed(callback)


async def transfer_to(term: Term, target: KV) -> None:
    """Hand ``term``'s leadership to the candidate key ``target`` (see :meth:`Term.transfer`)."""
    await term._transfer_to(target)


def cancellation_was_ours(term: Term) -> bool:
    """Whether a CancelledError that escaped a term's cancelled scope came from that scope.

    grpc.aio (e.g. an aetcd call in the body) replaces a scope's cancellation
    with a bare CancelledError that the scope does not recognise. It is ours
    when the term ended and nobody else asked to cancel the task.
    """
    if term._ended is None or term._ended == RESIGNED:
        return False
    return no_task_cancel()
