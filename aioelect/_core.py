"""The core below the Elector: one connection, one session lease, one mirror.

Theory of operation: a :class:`Core` owns what every election of one
:class:`~aioelect.Elector` shares: the connection, the session lease and its
re-grant loop, the mirror of the elections in use (one watch stream), the batcher, the
validated config, the registry of terms and observers, and the TaskGroup of
the background work (run by a task of the core's own, so that entering and
exiting may happen in different tasks). The election modules above it
(term, campaign, hold, observe, leadership) take a Core and use only its
methods and attributes named here; none of them knows the Elector, which is
a thin facade that owns one Core. Etcd's Go recipe is laid out alike: an
``Election`` holds a ``*Session``.

Opening grants the session lease (always the same id, retried: one lease
however many attempts) and checks that the prefix can be read; the mirror
reads each election when it is first used. The background task keeps
the lease alive and re-grants a new one when it is lost. Closing ends every
term, revokes the lease (deleting every key of this elector at once) and
leaves no task behind.

Size: over 400 lines because it gathers, on purpose, the state the facade
and the election modules share (lifecycle, session re-grant loop, term and
observer registry, statistics, leader() and candidates()); the session loop
could move to :mod:`._session` later.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from ._backoff import Backoff
from ._batch import Batcher
from ._config import ElectorConfig, check_name
from ._connection import KV, Connection
from ._embedded import EmbeddedEtcd
from ._exceptions import AioelectError, ConfigError, ElectorClosed, EtcdError, EtcdUnavailable
from ._keys import election_prefix, prefix_range_end, transfer_key
from ._mirror import Mirror, leader_info
from ._models import CandidateInfo, ElectorStatistics, LeaderInfo
from ._observe import Observer
from ._preference import PreferenceCounters, preference_records
from ._session import Session

__all__ = ("Core", "CoreOwner", "HeldTerm", "Reservation", "core_of", "find_core")

log = logging.getLogger("aioelect")


class HeldTerm(Protocol):
    """What the core's term registry needs of a term (``_term.Term``, one layer up)."""

    name: str
    token: int
    lease_id: int

    def session_lost(self, reason: str) -> None: ...


class Core:
    """What the elections of one Elector share (see the module docstring).

    Args:
        conn: the connection (not yet connected; closed by :meth:`close`), or
            None with ``embedded``.
        config: the validated timing settings.
        prefix: the checked key prefix.
        embedded: an :class:`EmbeddedEtcd` to start on :meth:`open` (the
            connection is then made to it there) and to stop on :meth:`close`.
    """

    conn: Connection
    mirror: Mirror
    batcher: Batcher

    def __init__(
        self,
        conn: Connection | None,
        config: ElectorConfig,
        prefix: str,
        embedded: EmbeddedEtcd | None = None,
    ) -> None:
        self.config = config
        self.prefix = prefix
        self.root = (prefix + "/").encode()
        self.embedded = embedded
        #: Whether conn, mirror and batcher exist (an embedded etcd's: from entry on).
        self._wired = False
        if conn is not None:
            self._use(conn)
        elif embedded is None:
            raise ValueError("a Core needs a connection or an embedded etcd")
        #: "new", "opening", "open", "closing", "closed".
        self.state = "new"
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self.session: Session | None = None
        #: The id of the session lease being granted (chosen here: a grant whose
        #: answer was lost is retried, or revoked, by this id instead of leaking).
        self._granting: int | None = None
        self._session_changed = anyio.Event()
        self._busy: set[str] = set()
        self._terms: dict[HeldTerm, Session] = {}
        self.observers: set[Observer] = set()
        self.campaigns = 0
        self._terms_won = 0
        self._terms_lost = 0
        self._sessions_granted = 0
        self._sessions_lost = 0
        self._keepalives = 0
        self._keepalive_failures = 0
        self._latency_sum = 0.0
        self._callback_errors: dict[tuple[str, str], int] = {}  # (election, callback) -> n
        #: Preemptions and health transitions of the candidacies (see _preference.py).
        self.preference = PreferenceCounters()

    def _use(self, conn: Connection) -> None:
        self.conn = conn
        self.mirror = Mirror(conn, self.root)
        self.batcher = Batcher(conn, barrier_key=self.root, seen=self.mirror.when_keys_seen)
        self._wired = True

    def client(self) -> Any:
        """The aetcd client.

        Raises:
            AioelectError: an embedded etcd's elector before its entry (no client yet).
        """
        if not self._wired:
            raise AioelectError("the embedded etcd is not started: enter the Elector first")
        return self.conn.client

    def endpoint_names(self) -> tuple[str, ...]:
        """The endpoints, as given (``("embedded",)`` before an embedded etcd started)."""
        return self.conn.endpoint_names if self._wired else ("embedded",)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the core is not (or no longer) open."""
        return self.state != "open"

    async def open(self) -> None:
        """Start the embedded etcd (if any), connect, grant the session, start the tasks.

        A failed or cancelled open closes what it opened (revoking the lease).
        """
        if self.state == "closed":
            raise ElectorClosed("this Elector was closed; create a new one")
        if self.state != "new":
            raise AioelectError("this Elector is already entered; enter an Elector only once")
        self.state = "opening"
        self._loop = asyncio.get_running_loop()
        try:
            if self.embedded is not None:
                await self.embedded.__aenter__()
                self._use(
                    Connection.create(
                        self.embedded.endpoint,
                        timeout=self.config.request_timeout,
                        max_request_bytes=self.config.max_request_bytes,
                    )
                )
            await self._connect()
        except BaseException:
            await self._teardown()
            self.state = "closed"
            raise
        self.state = "open"

    async def _connect(self) -> None:
        """Connect, grant the session lease, check the prefix is readable; retry what a
        retry can fix.

        Every attempt grants the SAME lease id (one lease however many attempts),
        and a failed or cancelled entry revokes it (``_teardown``): no lease is
        left behind. Permanent errors (auth, permission, too large) are raised
        at once.
        """
        cfg = self.config
        deadline = time.monotonic() + cfg.connect_timeout
        backoff = Backoff(initial=0.05, cap=1.0)
        last: EtcdError | None = None
        readable = False
        with anyio.move_on_after(cfg.connect_timeout):
            while True:
                try:
                    await self.conn.connect()
                    if self.session is None:
                        await self._grant()
                    # A read of one key under the prefix (permissions): not of a range,
                    # whose count etcd would compute over every key under the prefix.
                    await self.conn.range(self.root)
                    readable = True
                    break
                except EtcdError as exc:
                    if not exc.retryable:
                        raise
                    last = exc
                    log.debug("connecting to etcd: %s", exc)
                    await anyio.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
        if self.session is None or not readable:
            if isinstance(last, EtcdUnavailable):
                cause = last.cause
            else:
                cause = str(last) if last is not None else "timed out"
            raise EtcdUnavailable(
                self.conn.endpoint_names, f"not ready within {cfg.connect_timeout:g} s: {cause}"
            ) from last
        started = anyio.Event()
        assert self._loop is not None
        self._runner = self._loop.create_task(self._run(started), name=f"aioelect {self.prefix}")
        self._runner.add_done_callback(self._runner_done)
        await started.wait()

    async def _run(self, started: anyio.Event) -> None:
        """The core's own task: it owns the TaskGroup of the background work.

        A task of its own (not the caller's), so that entering and exiting the
        elector may happen in different tasks (pytest fixtures, app hooks).
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._run_sessions)
            tg.start_soon(self.mirror.run)
            started.set()

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.failure = task.exception()
        log.error("aioelect background task failed; every term ends", exc_info=self.failure)
        if self.session is not None:
            self.session.mark_lost("elector failed")
        self._session_changed.set()

    async def close(self) -> None:
        """End every term, revoke the lease, stop the tasks (if open; shielded)."""
        if self.state != "open":
            return
        self.state = "closing"
        try:
            await self._teardown()
        finally:
            self.state = "closed"

    async def _teardown(self) -> None:
        """End terms, revoke the lease, stop the tasks, close what we opened (all shielded)."""
        session = self.session
        # A lease being granted (its answer lost, or the grant cancelled) may exist too.
        lease_ids = [session.lease_id] if session is not None else []
        if self._granting is not None:
            lease_ids.append(self._granting)
        with anyio.CancelScope(shield=True):
            if session is not None:
                session.mark_lost("elector closed")
            for observer in list(self.observers):
                observer.close()
            self._session_changed.set()
            for lease_id in lease_ids:
                with anyio.move_on_after(self.config.request_timeout):
                    try:
                        await self.conn.revoke(lease_id)
                    except EtcdError as exc:
                        log.warning("could not revoke lease %x on exit: %s", lease_id, exc)
        with anyio.CancelScope(shield=True):
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            if self._runner is not None:
                await asyncio.wait([self._runner])
            self._tg = None
            try:
                if self._wired:
                    self.batcher.close()
                    await self.conn.close()
            finally:
                if self.embedded is not None:
                    await self.embedded.__aexit__(None, None, None)
        if self.failure is not None:
            raise AioelectError("the elector's background task failed") from self.failure

    def check_usable(self) -> None:
        """Raise unless the core is open, on this event loop, and its tasks did not fail.

        Raises:
            ElectorClosed: not open.
            AioelectError: another event loop, or the background task failed.
        """
        if self.state != "open":
            raise ElectorClosed(
                "the Elector is not open: use it inside 'async with Elector(...) as elector'"
            )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise AioelectError("aioelect runs on asyncio only") from None
        if loop is not self._loop:
            raise AioelectError("this Elector belongs to another event loop")
        if self.failure is not None:
            raise AioelectError("the elector's background task failed") from self.failure

    def spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> bool:
        """Run ``func(*args)`` in the core's TaskGroup; False (not started) once closed."""
        if self._tg is None:
            return False
        self._tg.start_soon(func, *args)
        return True

    # -- sessions --------------------------------------------------------------------

    async def _grant(self) -> Session:
        """Grant a session lease: of the id in ``_granting`` (chosen if None), so that
        a retry after a lost answer grants no second lease."""
        if self._granting is None:
            self._granting = secrets.randbelow(2**63 - 1) + 1  # etcd's ids are int64 > 0
        sent = time.monotonic()
        # Shielded (bounded by its own deadline): a grant cut short could still land in
        # etcd after the revoke that follows a failed entry; one that ran to its end (or
        # its deadline) is ahead of that revoke on the wire by a whole request timeout.
        granted: tuple[int, int] | None = None
        with anyio.CancelScope(shield=True):
            granted = await self.conn.grant(int(self.config.ttl), self._granting)
        assert granted is not None  # a shielded scope does not swallow exceptions
        lease_id, ttl = granted
        self._granting = None
        session = Session(self.conn, self.config, lease_id, ttl, sent)
        session.on_lost(lambda reason: self._end_terms(session, reason))
        self.session = session
        self._sessions_granted += 1
        changed, self._session_changed = self._session_changed, anyio.Event()
        changed.set()
        log.debug("session lease %x granted (ttl %d s)", lease_id, ttl)
        return session

    async def _run_sessions(self) -> None:
        while True:
            session = self.session
            assert session is not None
            try:
                await session.run()
            finally:
                self._keepalives += session.keepalives
                self._keepalive_failures += session.failures
                self._latency_sum += session.latency_sum
            self._sessions_lost += 1
            log.warning("session lease %x lost: %s", session.lease_id, session.lost_reason)
            self.spawn(self._revoke_quietly, session.lease_id)
            backoff = Backoff(initial=0.05, cap=min(2.0, self.config.ttl / 2))
            while True:
                try:
                    await self._grant()
                    break
                except EtcdError as exc:
                    log.debug("granting a new session failed: %s", exc)
                    await anyio.sleep(backoff.next())

    async def _revoke_quietly(self, lease_id: int) -> None:
        """Revoke a lost session's lease, retrying until etcd answers.

        A restarted etcd restores leases with a fresh TTL, so a lease lost
        during an outage would otherwise hold its keys for another TTL.
        """
        backoff = Backoff(initial=0.05, cap=1.0)
        while True:
            try:
                await self.conn.revoke(lease_id)
                return
            except EtcdError as exc:
                log.debug("revoking lost lease %x: %s", lease_id, exc)
                await anyio.sleep(backoff.next())

    @property
    def session_changed(self) -> anyio.Event:
        """Set when a new session is granted, the core closes or its task fails."""
        return self._session_changed

    def live_session(self) -> Session | None:
        """The live session, or None while it is being re-granted."""
        self.check_usable()
        session = self.session
        return session if session is not None and session.is_live() else None

    async def wait_session(self) -> Session:
        """The live session, waiting for a new one while it is being re-granted."""
        while True:
            session = self.live_session()
            if session is not None:
                return session
            await self._session_changed.wait()

    # -- elections -------------------------------------------------------------------

    def reserve(self, name: str) -> Reservation:
        """Reserve election ``name`` for one campaign-and-term of this core.

        Raises:
            ConfigError: this core already campaigns in or leads ``name``.
        """
        if name in self._busy:
            raise ConfigError(
                "name", f"this Elector already campaigns in or leads election {name!r}"
            )
        self._busy.add(name)
        return Reservation(self, name)

    def in_use(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that are reserved now (see :meth:`reserve`)."""
        return [name for name in names if name in self._busy]

    def term_started(self, term: HeldTerm, session: Session) -> None:
        """Register a won term (it ends when ``session`` is lost)."""
        self._terms[term] = session
        self._terms_won += 1
        log.info("won election %r (token %d, lease %x)", term.name, term.token, term.lease_id)

    def _end_terms(self, session: Session, reason: str) -> None:
        for term in [t for t, s in self._terms.items() if s is session]:
            term.session_lost(reason)

    def term_ended(self, term: HeldTerm, reason: str, *, resigned: bool) -> None:
        """Unregister a term that ended (``resigned``: by its own choice)."""
        self._terms.pop(term, None)
        if resigned:
            log.info("resigned election %r (token %d)", term.name, term.token)
        else:
            self._terms_lost += 1
            log.info("lost election %r (token %d): %s", term.name, term.token, reason)

    def terms(self) -> list[HeldTerm]:
        """The terms registered now."""
        return list(self._terms)

    def add_observer(self, observer: Observer) -> None:
        """Register an observer (closed when the core closes)."""
        self.observers.add(observer)

    def discard_observer(self, observer: Observer) -> None:
        self.observers.discard(observer)

    def callback_failed(self, name: str, callback: str) -> None:
        """Count an error of ``callback`` of election ``name``."""
        key = (name, callback)
        self._callback_errors[key] = self._callback_errors.get(key, 0) + 1

    def callback_error_counts(self) -> dict[tuple[str, str], int]:
        """Callback errors by (election, callback) (a copy: scrapes may run in a thread)."""
        return dict(self._callback_errors)

    async def leader(self, name: str) -> LeaderInfo | None:
        """The current leader of election ``name``, or None (see :meth:`Elector.leader`)."""
        self.check_usable()
        name = check_name(name)
        conn = self.conn
        eprefix = election_prefix(self.prefix, name)
        record_key = transfer_key(self.prefix, name)
        _, responses = await self.batcher.read(
            [conn.op_first(eprefix, prefix_range_end(eprefix)), conn.op_get(record_key)]
        )
        firsts = responses[0].response_range.kvs
        if not firsts:
            return None
        first = KV.from_pb(firsts[0])
        records = responses[1].response_range.kvs
        if records and records[0].value != first.key:
            # A transfer is under way: nobody leads until its target (if alive) is first.
            target = await conn.range(records[0].value)
            if target.kvs:
                return None
        return leader_info(name, first)

    async def candidates(self, name: str) -> list[CandidateInfo]:
        """The live candidates of ``name`` in election order (see :meth:`Elector.candidates`)."""
        self.check_usable()
        name = check_name(name)
        eprefix = election_prefix(self.prefix, name)
        # Paginated, in key order (one snapshot); election order is by create revision,
        # then key (keys written by one transaction share it), as the mirror orders them.
        result = await self.conn.range_all(eprefix, prefix_range_end(eprefix))
        kvs = sorted(result.kvs, key=lambda kv: (kv.create_revision, kv.key))
        records = await preference_records(self.conn, self.prefix, name)
        return [
            CandidateInfo(
                name,
                kv.key,
                kv.value,
                kv.create_revision,
                kv.lease,
                *records.get(kv.lease, (0, None)),
            )
            for kv in kvs
        ]

    def statistics(self) -> ElectorStatistics:
        """A snapshot of the counters (see :meth:`Elector.statistics`)."""
        session = self.session
        live = session is not None and not session.is_lost
        return ElectorStatistics(
            campaigns=self.campaigns,
            terms_held=len(self._terms),
            terms_won=self._terms_won,
            terms_lost=self._terms_lost,
            leader_changes=self.mirror.leader_changes if self._wired else 0,
            sessions_granted=self._sessions_granted,
            sessions_lost=self._sessions_lost,
            keepalives=self._keepalives + (session.keepalives if live and session else 0),
            keepalive_failures=self._keepalive_failures
            + (session.failures if live and session else 0),
            keepalive_latency=session.latency if session is not None else None,
            keepalive_latency_sum=self._latency_sum
            + (session.latency_sum if live and session else 0.0),
            lease_expires_in=max(0.0, session.hard_deadline - time.monotonic())
            if live and session is not None
            else None,
            lease_id=session.lease_id if live and session is not None else None,
            callback_errors=sum(self.callback_error_counts().values()),
            preemptions=self.preference.preemptions,
            unhealthy_transitions=self.preference.unhealthy_transitions,
            unhealthy_candidates=len(self.preference.unhealthy),
        )


class Reservation:
    """One election reserved by :meth:`Core.reserve`, until :meth:`release`.

    ``with reservation.campaigning():`` counts the campaign in the
    ``campaigns`` gauge while it runs.
    """

    __slots__ = ("_core", "name")

    def __init__(self, core: Core, name: str) -> None:
        self._core = core
        self.name = name

    def campaigning(self) -> Reservation:
        return self

    def __enter__(self) -> None:
        self._core.campaigns += 1

    def __exit__(self, *exc_info: object) -> None:
        self._core.campaigns -= 1

    def release(self) -> None:
        """Free the name (idempotent)."""
        self._core._busy.discard(self.name)


class CoreOwner:
    """The base of :class:`~aioelect.Elector`: the owner of one :class:`Core`.

    Lets the modules below the facade tell an Elector from other objects
    without importing it.
    """

    __slots__ = ()
    _core: Core


def core_of(elector: object) -> Core:
    """The :class:`Core` that ``elector`` (an Elector) owns.

    Raises:
        TypeError: ``elector`` is not an Elector.
    """
    core = find_core(elector)
    if core is None:
        raise TypeError(f"{elector!r} is not an aioelect.Elector")
    return core


def find_core(obj: object) -> Core | None:
    """The :class:`Core` that ``obj`` owns if it is an Elector, else None."""
    return obj._core if isinstance(obj, CoreOwner) else None
