"""The Elector: one connection, one session lease, one watch, many elections.

Entering an elector grants its session lease and starts, in one anyio
TaskGroup that the elector owns, the keepalive (re-granting the session when
it is lost) and the watch that mirrors every election under the prefix.
Campaigns run in the callers' tasks; they wait on the mirror, never on a
watch of their own. Exiting ends every term, revokes the lease (deleting
every key of this elector at once) and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from typing_extensions import Self

from ._backoff import Backoff
from ._batch import Batcher
from ._callbacks import ERROR_BACKOFF, OnElected, OnLeaderChange, OnSteppedDown
from ._config import (
    DEFAULT_MAX_REQUEST_BYTES,
    Duration,
    ElectorConfig,
    check_name,
    check_prefix,
)
from ._connection import KV, Connection, TLSConfig
from ._embedded import EmbeddedEtcd
from ._exceptions import (
    AioelectError,
    ConfigError,
    ElectorClosed,
    EtcdError,
    EtcdUnavailable,
)
from ._healthgate import HealthCheck
from ._hold import HoldBlock, ObserveBlock
from ._keys import election_prefix, prefix_range_end, transfer_key
from ._leadership import Leadership
from ._mirror import Mirror, leader_info
from ._models import CandidateInfo, ElectorStatistics, LeaderInfo
from ._observe import Observer
from ._preference import (
    DEFAULT_MIN_TERM,
    DEFAULT_SETTLE,
    PreferenceCounters,
    preference_options,
    preference_records,
)
from ._session import Session
from ._shardinfo import OnShard
from ._shards import ShardGroup
from ._term import RESIGNED, Term

__all__ = ("Elector",)

log = logging.getLogger("aioelect")


class Elector:
    """Leader elections under one key prefix, sharing one etcd session.

    Args:
        client: an ``aetcd.Client`` to use (the elector does not close it).
            Give either this or ``endpoints``.
        endpoints: ``host:port``, ``http://host:port`` or ``https://host:port``,
            a list of them, or a comma-separated str; several endpoints fail
            over. Default: the ``AIOELECT_ENDPOINTS`` env var.
        prefix: key prefix of the elections (``{prefix}/{name}/...``).
        ttl: the session lease's TTL in whole seconds (default 10). A crashed
            process's elections free up at most ``ttl`` (+ etcd's 0.5 s expiry
            scan) after its last renewal. Shorter: faster crash failover,
            more keepalive traffic, less tolerance of slow etcd.
        renew_deadline: a term stays valid this long after its last
            successful renewal was sent (default 2/3 of ``ttl``); must be
            below ``ttl`` so a leader stops before anyone else can start.
        keepalive_interval: time between renewals (default ``ttl / 3``),
            below ``renew_deadline``.
        request_timeout: deadline of each etcd request (default: the smaller
            of 5 s and ``renew_deadline``).
        connect_timeout: how long entering may take before it raises
            :class:`EtcdUnavailable` (default 10 s).
        tls: a :class:`TLSConfig` (CA, client certificate), or True for TLS
            with the system's CAs. ``https://`` endpoints imply TLS.
        username: etcd user, for etcd with auth enabled.
        password: that user's password (never logged or shown in reprs).
        max_request_bytes: the largest request etcd accepts: its
            ``--max-request-bytes`` (default 1,572,864, etcd's default). Larger
            requests raise :class:`RequestTooLarge` before they are sent; values
            may be two thirds of it, the prefix a quarter. Raise it only for an
            etcd started with a larger ``--max-request-bytes``.

    Raises:
        ConfigError: an argument is invalid (raised here, before any I/O).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        endpoints: str | list[str] | None = None,
        prefix: str = "/aioelect",
        ttl: Duration = 10,
        renew_deadline: Duration | None = None,
        keepalive_interval: Duration | None = None,
        request_timeout: Duration | None = None,
        connect_timeout: Duration = 10.0,
        tls: TLSConfig | bool | None = None,
        username: str | None = None,
        password: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self._config = ElectorConfig.build(
            ttl=ttl,
            renew_deadline=renew_deadline,
            keepalive_interval=keepalive_interval,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            max_request_bytes=max_request_bytes,
        )
        self.prefix = check_prefix(prefix, self._config.max_request_bytes)
        self._embedded: EmbeddedEtcd | None = None
        timeout = self._config.request_timeout
        if client is not None:
            if endpoints is not None or tls is not None or username is not None:
                raise ConfigError(
                    "client", "give either client or endpoints/tls/username, not both"
                )
            self._conn = Connection.wrap(
                client, timeout=timeout, max_request_bytes=self._config.max_request_bytes
            )
        else:
            if endpoints is None:
                endpoints = os.environ.get("AIOELECT_ENDPOINTS") or None
            if endpoints is None:
                raise ConfigError(
                    "endpoints",
                    "no etcd given: pass endpoints= or client=, set AIOELECT_ENDPOINTS, "
                    "or use Elector.embedded()",
                )
            self._conn = Connection.create(
                endpoints,
                tls=tls,
                username=username,
                password=password,
                timeout=timeout,
                max_request_bytes=self._config.max_request_bytes,
            )
        self._root = (self.prefix + "/").encode()
        self._mirror = Mirror(self._conn, self._root)
        self._batcher = Batcher(self._conn, barrier_key=self._root, mirror=self._mirror)
        self._state = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._session: Session | None = None
        #: The id of the session lease being granted (chosen here: a grant whose
        #: answer was lost is retried, or revoked, by this id instead of leaking).
        self._granting: int | None = None
        self._session_changed = anyio.Event()
        self._preference = PreferenceCounters()
        self._busy: set[str] = set()
        self._terms: set[Term] = set()
        self._observers: set[Observer] = set()
        self._campaigns = 0
        self._terms_won = 0
        self._terms_lost = 0
        self._sessions_granted = 0
        self._sessions_lost = 0
        self._keepalives = 0
        self._keepalive_failures = 0
        self._latency_sum = 0.0
        self._callback_errors: dict[tuple[str, str], int] = {}  # (election, callback) -> n

    @classmethod
    def embedded(
        cls,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        heartbeat_interval: float = 0.1,
        election_timeout: float = 1.0,
        **kwargs: Any,
    ) -> Elector:
        """An elector on its own :class:`EmbeddedEtcd`, started on entry and stopped on exit.

        Takes the Elector's keyword arguments (not ``client``, ``endpoints``,
        ``tls`` or auth) and EmbeddedEtcd's ``data_dir``, ``heartbeat_interval``
        and ``election_timeout``. The seed's ``WithEmbedEtcd``.
        """
        for bad in ("client", "endpoints", "tls", "username", "password"):
            if bad in kwargs:
                raise ConfigError(bad, "cannot be used with Elector.embedded()")
        etcd = EmbeddedEtcd(
            data_dir=data_dir,
            heartbeat_interval=heartbeat_interval,
            election_timeout=election_timeout,
        )
        self = cls(endpoints="127.0.0.1:1", **kwargs)  # replaced on entry
        self._embedded = etcd
        return self

    # -- lifecycle -------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``aetcd.Client`` the elector talks to etcd with."""
        return self._conn.client

    @property
    def ttl(self) -> float:
        """The session lease's TTL in seconds."""
        return self._config.ttl

    @property
    def config(self) -> ElectorConfig:
        """The validated timing settings."""
        return self._config

    async def __aenter__(self) -> Self:
        if self._state == "closed":
            raise ElectorClosed("this Elector was closed; create a new one")
        if self._state != "new":
            raise AioelectError("this Elector is already entered; enter an Elector only once")
        self._state = "opening"
        self._loop = asyncio.get_running_loop()
        try:
            if self._embedded is not None:
                await self._embedded.__aenter__()
                self._conn = Connection.create(
                    self._embedded.endpoint,
                    timeout=self._config.request_timeout,
                    max_request_bytes=self._config.max_request_bytes,
                )
                self._mirror = Mirror(self._conn, self._root)
                self._batcher = Batcher(self._conn, barrier_key=self._root, mirror=self._mirror)
            await self._open()
        except BaseException:
            await self._teardown()
            self._state = "closed"
            raise
        self._state = "open"
        return self

    async def _open(self) -> None:
        """Connect, grant the session lease, load the mirror; retry what a retry can fix.

        Every attempt grants the SAME lease id (one lease however many attempts),
        and a failed or cancelled entry revokes it (``_teardown``): no lease is
        left behind. Permanent errors (auth, permission, too large) are raised
        at once.
        """
        cfg = self._config
        deadline = time.monotonic() + cfg.connect_timeout
        backoff = Backoff(initial=0.05, cap=1.0)
        last: EtcdError | None = None
        with anyio.move_on_after(cfg.connect_timeout):
            while True:
                try:
                    await self._conn.connect()
                    if self._session is None:
                        await self._grant()
                    await self._mirror.load()
                    break
                except EtcdError as exc:
                    if not exc.retryable:
                        raise
                    last = exc
                    log.debug("connecting to etcd: %s", exc)
                    await anyio.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
        if self._session is None or self._mirror.revision == 0:
            if isinstance(last, EtcdUnavailable):
                cause = last.cause
            else:
                cause = str(last) if last is not None else "timed out"
            raise EtcdUnavailable(
                self._conn.endpoint_names, f"not ready within {cfg.connect_timeout:g} s: {cause}"
            ) from last
        started = anyio.Event()
        assert self._loop is not None
        self._runner = self._loop.create_task(self._run(started), name=f"aioelect {self.prefix}")
        self._runner.add_done_callback(self._runner_done)
        await started.wait()

    async def _run(self, started: anyio.Event) -> None:
        """The elector's own task: it owns the TaskGroup of the background work.

        A task of its own (not the caller's), so that entering and exiting the
        elector may happen in different tasks (pytest fixtures, app hooks).
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._run_sessions)
            tg.start_soon(self._mirror.run)
            started.set()

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._failure = task.exception()
        log.error("aioelect background task failed; every term ends", exc_info=self._failure)
        if self._session is not None:
            self._session.mark_lost("elector failed")
        self._session_changed.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        self._state = "closing"
        try:
            await self._teardown()
        finally:
            self._state = "closed"

    async def _teardown(self) -> None:
        """End terms, revoke the lease, stop the tasks, close what we opened (all shielded)."""
        session = self._session
        # A lease being granted (its answer lost, or the grant cancelled) may exist too.
        lease_ids = [session.lease_id] if session is not None else []
        if self._granting is not None:
            lease_ids.append(self._granting)
        with anyio.CancelScope(shield=True):
            if session is not None:
                session.mark_lost("elector closed")
            for observer in list(self._observers):
                observer.close()
            self._session_changed.set()
            for lease_id in lease_ids:
                with anyio.move_on_after(self._config.request_timeout):
                    try:
                        await self._conn.revoke(lease_id)
                    except EtcdError as exc:
                        log.warning("could not revoke lease %x on exit: %s", lease_id, exc)
        with anyio.CancelScope(shield=True):
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            if self._runner is not None:
                await asyncio.wait([self._runner])
            self._tg = None
            self._batcher.close()
            try:
                await self._conn.close()
            finally:
                if self._embedded is not None:
                    await self._embedded.__aexit__(None, None, None)
        if self._failure is not None:
            raise AioelectError("the elector's background task failed") from self._failure

    def _check_usable(self) -> None:
        if self._state != "open":
            raise ElectorClosed(
                "the Elector is not open: use it inside 'async with Elector(...) as elector'"
            )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise AioelectError("aioelect runs on asyncio only") from None
        if loop is not self._loop:
            raise AioelectError("this Elector belongs to another event loop")
        if self._failure is not None:
            raise AioelectError("the elector's background task failed") from self._failure

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
            granted = await self._conn.grant(int(self._config.ttl), self._granting)
        assert granted is not None  # a shielded scope does not swallow exceptions
        lease_id, ttl = granted
        self._granting = None
        session = Session(self._conn, self._config, lease_id, ttl, sent)
        session.on_lost(lambda reason: self._end_terms(session, reason))
        self._session = session
        self._sessions_granted += 1
        changed, self._session_changed = self._session_changed, anyio.Event()
        changed.set()
        log.debug("session lease %x granted (ttl %d s)", lease_id, ttl)
        return session

    async def _run_sessions(self) -> None:
        assert self._tg is not None
        while True:
            session = self._session
            assert session is not None
            try:
                await session.run()
            finally:
                self._keepalives += session.keepalives
                self._keepalive_failures += session.failures
                self._latency_sum += session.latency_sum
            self._sessions_lost += 1
            log.warning("session lease %x lost: %s", session.lease_id, session.lost_reason)
            self._tg.start_soon(self._revoke_quietly, session.lease_id)
            backoff = Backoff(initial=0.05, cap=min(2.0, self._config.ttl / 2))
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
                await self._conn.revoke(lease_id)
                return
            except EtcdError as exc:
                log.debug("revoking lost lease %x: %s", lease_id, exc)
                await anyio.sleep(backoff.next())

    def _live_session(self) -> Session | None:
        """The live session, or None while it is being re-granted."""
        self._check_usable()
        session = self._session
        return session if session is not None and session.is_live() else None

    async def _wait_session(self) -> Session:
        """The live session, waiting for a new one while it is being re-granted."""
        while True:
            session = self._live_session()
            if session is not None:
                return session
            await self._session_changed.wait()

    # -- elections -------------------------------------------------------------------

    def _term_started(self, term: Term) -> None:
        self._terms.add(term)
        self._terms_won += 1
        log.info("won election %r (token %d, lease %x)", term.name, term.token, term.lease_id)

    def _end_terms(self, session: Session, reason: str) -> None:
        for term in [t for t in self._terms if t._session is session]:
            term.session_lost(reason)

    def _term_ended(self, term: Term, reason: str) -> None:
        self._terms.discard(term)
        if reason == RESIGNED:
            log.info("resigned election %r (token %d)", term.name, term.token)
        else:
            self._terms_lost += 1
            log.info("lost election %r (token %d): %s", term.name, term.token, reason)

    def hold(
        self,
        name: str,
        value: str | bytes,
        *,
        wait: bool = True,
        priority: int | None = None,
        preemptible: bool | None = None,
        min_term: Duration = DEFAULT_MIN_TERM,
        settle: Duration = DEFAULT_SETTLE,
        health_check: HealthCheck | None = None,
        health_interval: Duration = 5.0,
        health_timeout: Duration = 2.0,
        unhealthy_after: int = 3,
        healthy_after: int = 2,
    ) -> AbstractAsyncContextManager[Term]:
        """Campaign in election ``name``, wait to be elected, and lead for the block.

        Usage::

            async with elector.hold("scheduler", "worker-1") as term:
                await run_scheduler(fence=term.token)

        Waiting: cancelling the wait deletes the candidate key (nothing is
        left behind). Leading: when the term ends (lease not renewed within
        ``renew_deadline``, key deleted or overwritten, session lost, elector
        closed), the block is cancelled and :class:`LeadershipLost` is raised
        out of it. A normal exit, an exception or a cancellation resigns at
        once (shielded, bounded), freeing the election for the next candidate.

        With ``wait=False`` it does not queue: if another candidate leads or
        waits before us, it raises :class:`NotLeader` at once, leaving no key
        (a try-lock, e.g. for cron jobs that should be skipped elsewhere).

        Preference and health (README, "Preferred leaders and health-gated
        candidacy"): ``priority`` (an int, higher wins; None: take no part,
        like 0) is published for the election's other aioelect candidates.
        A ``preemptible`` block (the default when a ``priority`` is given) is
        ended when a waiting candidate with a strictly higher priority has
        outranked it for ``settle`` seconds (default 1) and the term has
        lasted ``min_term`` seconds (default 5): the block is cancelled, the
        term is transferred to that candidate after the body unwound, and
        :class:`LeadershipLost` says ``"preempted by <value> (priority N)"``.
        ``health_check`` (``async () -> bool | None``; False, an exception or
        no answer within ``health_timeout`` is a failure) is polled every
        ``health_interval``: after ``unhealthy_after`` failures in a row the
        block is cancelled, the key resigned and :class:`LeadershipLost`
        raised (``"unhealthy: ..."``); while waiting, the key is withdrawn
        until ``healthy_after`` successes in a row.

        Raises:
            LeadershipLost: the term ended before the block did.
            NotLeader: ``wait=False`` and another candidate came first.
            ConfigError: bad name or value (also: a key and value over etcd's
                request limit, ``max_request_bytes``), or this elector already
                campaigns in this election. Raised before any I/O.
            EtcdError: a permanent error (``retryable`` False: e.g.
                ``RequestTooLarge`` from an etcd with a smaller limit than
                ``max_request_bytes``, ``PermissionDenied``), raised at once and
                leaving no key. Retryable errors are retried while waiting.
            ElectorClosed: the elector is not open.
        """
        pref = preference_options(
            priority=priority,
            preemptible=preemptible,
            min_term=min_term,
            settle=settle,
            health_check=health_check,
            health_interval=health_interval,
            health_timeout=health_timeout,
            unhealthy_after=unhealthy_after,
            healthy_after=healthy_after,
        )
        return HoldBlock(self, name, value, wait, pref)

    def leadership(
        self,
        name: str,
        value: str | bytes,
        *,
        node_name: str | None = None,
        campaign: bool = True,
        on_elected: OnElected | None = None,
        on_stepped_down: OnSteppedDown | None = None,
        on_leader_change: OnLeaderChange | None = None,
        handover_barrier: bool = True,
        reclaim_stale: bool = False,
        restart_on_error: bool = True,
        error_backoff: tuple[Duration, Duration] = ERROR_BACKOFF,
        priority: int | None = None,
        preemptible: bool = True,
        min_term: Duration = DEFAULT_MIN_TERM,
        settle: Duration = DEFAULT_SETTLE,
        health_check: HealthCheck | None = None,
        health_interval: Duration = 5.0,
        health_timeout: Duration = 2.0,
        unhealthy_after: int = 3,
        healthy_after: int = 2,
    ) -> Leadership:
        """Create a :class:`Leadership` in election ``name`` (the seed's CreateLeadership).

        Args:
            name: the election.
            value: this node's value (what leader() reports while it leads).
            node_name: a label for logs (the seed's nodeName).
            campaign: False only observes and reports leaders (the seed's
                allowCampaign=false).
            on_elected: ``async (term) -> bool | None``, awaited when elected;
                return False to decline (resign, back off, campaign again).
                It runs while the term lasts and is cancelled if it ends.
            on_stepped_down: ``async (term) -> None``, awaited once at every end
                of a term (bounded by the TTL).
            on_leader_change: ``async (LeaderInfo | None) -> None``, awaited on
                every change of the observed leader, its value, or a vacancy.
            handover_barrier: on a graceful step-down, delete the key only
                after ``on_stepped_down`` returned, so the successor starts
                after it (the seed's WithLockIfBecomeLeader). False: the key
                goes first, for the fastest handover.
            reclaim_stale: a restarted process whose value equals a candidate
                key of another lease (its previous incarnation) deletes that
                key, guarded by its create revision, instead of waiting out
                its TTL. Values must then be unique per candidate.
            restart_on_error: what ``run()`` does when a callback raises. True
                (the default, for a long-running service): log it at ERROR
                with its traceback, count it (``statistics().callback_errors``),
                end the term (``on_stepped_down``, resign: the next candidate
                leads at once), back off and campaign again; an
                ``on_leader_change`` error keeps the term and only backs off
                before observing again. False: the exception propagates out of
                ``run()`` after the term was resigned.
            error_backoff: ``(min, max)`` seconds (or timedeltas) of the back-off
                after a callback error: the n-th error in a row waits a random
                50-100 % of ``min * 2**(n-1)``, at most ``max`` (default (1, 30)).
                It starts again from ``min`` after a term without an error.
            priority: this candidate's priority (higher wins; None, the
                default, takes no part and counts as 0). See the README,
                "Preferred leaders and health-gated candidacy";
                :meth:`Leadership.set_priority` changes it while running.
            preemptible: while leading, hand over (``on_stepped_down``, then
                ``transfer()``) to a waiting candidate with a strictly higher
                priority, and campaign again behind. Default True.
            min_term: seconds (or a timedelta) a term lasts at least before a
                preemption (default 5).
            settle: seconds a challenger must have outranked the leader,
                continuously, before it preempts (default 1).
            health_check: ``async () -> bool | None``, polled every
                ``health_interval`` seconds (default 5), each call bounded by
                ``health_timeout`` (default 2); False, an exception or a
                timeout is a failure. After ``unhealthy_after`` (default 3)
                failures in a row the leader steps down and resigns at once
                (a waiting candidate withdraws); after ``healthy_after``
                (default 2) successes in a row it campaigns again.

        Raises:
            ConfigError: bad name, value, callback or option (before any I/O).
        """
        self._check_usable()
        return Leadership(
            self,
            name,
            value,
            node_name=node_name,
            campaign=campaign,
            on_elected=on_elected,
            on_stepped_down=on_stepped_down,
            on_leader_change=on_leader_change,
            handover_barrier=handover_barrier,
            reclaim_stale=reclaim_stale,
            restart_on_error=restart_on_error,
            error_backoff=error_backoff,
            preference=preference_options(
                priority=priority,
                preemptible=preemptible,
                min_term=min_term,
                settle=settle,
                health_check=health_check,
                health_interval=health_interval,
                health_timeout=health_timeout,
                unhealthy_after=unhealthy_after,
                healthy_after=healthy_after,
            ),
        )

    create_leadership = leadership
    """The seed's name (``CreateLeadership``) for :meth:`leadership`."""

    def shards(
        self,
        group: str,
        *,
        size: int,
        value: str | bytes,
        member_id: str | None = None,
        on_assigned: OnShard | None = None,
        on_revoked: OnShard | None = None,
        claim_delay: Duration = 0.5,
        leave_wait: Duration | None = None,
    ) -> ShardGroup:
        """Join shard group ``group``: ``size`` shards spread over its live members.

        See :class:`ShardGroup` and the README's "Shards" section. Every
        member of a group must use the same ``size``.

        Args:
            group: the group's name (election name rules); shard ``i`` is the
                election ``{group}.shard-{i:04d}``.
            size: the number of shards, 1 to 10,000.
            value: this member's value (its membership key's and its shard
                keys' value).
            member_id: this member's id, unique in the group (default: random);
                members are ordered by it.
            on_assigned: ``async (shard) -> None``, awaited when a shard is
                assigned; cancelled when its term ends or it is handed over.
            on_revoked: ``async (shard) -> None``, awaited once at every end of
                a shard's term (bounded by the TTL), before the next owner's
                ``on_assigned`` starts on a handover.
            claim_delay: shards without any candidate are claimed once the
                membership has been stable this long (default 0.5 s): members
                starting together each claim their own share (no handovers),
                and a member back from a brief session loss gets its shards
                back. It adds to the time a crashed member's shards wait.
            leave_wait: on a graceful leave, how long each shard waits for its
                new owner to queue before it is resigned (default: the TTL).

        Raises:
            ConfigError: a bad argument (before any I/O).
        """
        self._check_usable()
        return ShardGroup(
            self,
            group,
            size=size,
            value=value,
            member_id=member_id,
            on_assigned=on_assigned,
            on_revoked=on_revoked,
            claim_delay=claim_delay,
            leave_wait=leave_wait,
        )

    async def leader(self, name: str) -> LeaderInfo | None:
        """Return the current leader of election ``name``, or None when vacant.

        A linearizable read; cancelling it leaves nothing behind.
        """
        self._check_usable()
        name = check_name(name)
        conn = self._conn
        eprefix = election_prefix(self.prefix, name)
        record_key = transfer_key(self.prefix, name)
        _, responses = await self._batcher.read(
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
        """Return the live candidates of election ``name`` in election order, leader first.

        One consistent snapshot, read in pages (any number of candidates and values
        up to etcd's limit); cancelling it leaves nothing behind.
        """
        self._check_usable()
        name = check_name(name)
        eprefix = election_prefix(self.prefix, name)
        # Paginated, in key order (one snapshot); election order is by create revision,
        # then key (keys written by one transaction share it), as the mirror orders them.
        result = await self._conn.range_all(eprefix, prefix_range_end(eprefix))
        kvs = sorted(result.kvs, key=lambda kv: (kv.create_revision, kv.key))
        records = await preference_records(self._conn, self.prefix, name)
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

    def observe(self, name: str) -> AbstractAsyncContextManager[AsyncIterator[LeaderInfo | None]]:
        """Follow the leader of election ``name``.

        Usage::

            async with elector.observe("scheduler") as leaders:
                async for info in leaders:   # LeaderInfo, or None when vacant
                    ...

        The iterator yields the current leader first, then every change: a
        new leader, a proclaimed value, a vacancy (None). It is fed from the
        elector's one watch, so it survives compaction and etcd restarts, and
        it ends when the elector closes. Changes queue up while you do not
        iterate.
        """
        return ObserveBlock(self, name)

    def _callback_failed(self, name: str, callback: str) -> None:
        key = (name, callback)
        self._callback_errors[key] = self._callback_errors.get(key, 0) + 1

    def _callback_error_counts(self) -> dict[tuple[str, str], int]:
        """Callback errors by (election, callback) (a copy: scrapes may run in a thread)."""
        return dict(self._callback_errors)

    def terms(self) -> list[Term]:
        """The terms this elector holds now (valid or about to be noticed as ended)."""
        return [t for t in self._terms if t._ended is None]

    def statistics(self) -> ElectorStatistics:
        """Return a snapshot of the elector's counters."""
        session = self._session
        live = session is not None and not session.is_lost
        return ElectorStatistics(
            campaigns=self._campaigns,
            terms_held=len(self._terms),
            terms_won=self._terms_won,
            terms_lost=self._terms_lost,
            leader_changes=self._mirror.leader_changes,
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
            callback_errors=sum(self._callback_error_counts().values()),
            preemptions=self._preference.preemptions,
            unhealthy_transitions=self._preference.unhealthy_transitions,
            unhealthy_candidates=len(self._preference.unhealthy),
        )

    def __repr__(self) -> str:
        eps = ",".join(self._conn.endpoint_names)
        return f"<Elector prefix={self.prefix!r} endpoints={eps!r} {self._state}>"
