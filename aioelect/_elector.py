"""The Elector: one connection, one session lease, one watch stream, many elections.

A thin facade: it validates its arguments and owns one :class:`~._core.Core`,
which holds the connection, the session lease, the mirror and the terms.
Entering an elector grants its session lease and starts, in one anyio
TaskGroup that the core owns, the keepalive (re-granting the session when
it is lost) and the watch stream that mirrors the elections in use.
Campaigns run in the callers' tasks; they wait on the mirror, never on a
watch of their own. Exiting ends every term, revokes the lease (deleting
every key of this elector at once) and leaves no task behind.

Size: over 400 lines only by the documented signatures of its public
methods (``hold``, ``leadership``, ``shards`` take many keyword options);
the logic is in the core and the blocks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, cast

from typing_extensions import Self

from ._callbacks import ERROR_BACKOFF, OnElected, OnLeaderChange, OnSteppedDown
from ._config import (
    DEFAULT_MAX_REQUEST_BYTES,
    Duration,
    ElectorConfig,
    check_prefix,
)
from ._connection import Connection
from ._core import Core, CoreOwner
from ._embedded import EmbeddedEtcd
from ._endpoints import TLSConfig
from ._exceptions import ConfigError
from ._healthgate import HealthCheck
from ._hold import HoldBlock, ObserveBlock
from ._leadership import Leadership
from ._models import CandidateInfo, ElectorStatistics, LeaderInfo
from ._preference import (
    DEFAULT_MIN_TERM,
    DEFAULT_SETTLE,
    preference_options,
)
from ._shardinfo import OnShard
from ._shards import ShardGroup
from ._term import Term

__all__ = ("Elector",)

log = logging.getLogger("aioelect")


class Elector(CoreOwner):
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
        self._configure(
            prefix=prefix,
            ttl=ttl,
            renew_deadline=renew_deadline,
            keepalive_interval=keepalive_interval,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            max_request_bytes=max_request_bytes,
        )
        timeout = self._config.request_timeout
        if client is not None:
            if endpoints is not None or tls is not None or username is not None:
                raise ConfigError(
                    "client", "give either client or endpoints/tls/username, not both"
                )
            conn = Connection.wrap(
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
            conn = Connection.create(
                endpoints,
                tls=tls,
                username=username,
                password=password,
                timeout=timeout,
                max_request_bytes=self._config.max_request_bytes,
            )
        self._core = Core(conn, self._config, self.prefix)

    def _configure(
        self,
        *,
        prefix: str = "/aioelect",
        ttl: Duration = 10,
        renew_deadline: Duration | None = None,
        keepalive_interval: Duration | None = None,
        request_timeout: Duration | None = None,
        connect_timeout: Duration = 10.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        """Validate the settings every elector has (see the class docstring)."""
        self._config = ElectorConfig.build(
            ttl=ttl,
            renew_deadline=renew_deadline,
            keepalive_interval=keepalive_interval,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            max_request_bytes=max_request_bytes,
        )
        self.prefix = check_prefix(prefix, self._config.max_request_bytes)

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
        # No connection yet: the core makes it on entry, to the etcd it started.
        self = cls.__new__(cls)
        self._configure(**kwargs)
        self._core = Core(None, self._config, self.prefix, embedded=etcd)
        return self

    # -- lifecycle -------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``aetcd.Client`` the elector talks to etcd with."""
        return self._core.client()

    @property
    def ttl(self) -> float:
        """The session lease's TTL in seconds."""
        return self._config.ttl

    @property
    def config(self) -> ElectorConfig:
        """The validated timing settings."""
        return self._config

    async def __aenter__(self) -> Self:
        await self._core.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._core.close()

    # -- elections -------------------------------------------------------------------

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
        return HoldBlock(self._core, name, value, wait, pref)

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
        self._core.check_usable()
        return Leadership(
            self._core,
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
        self._core.check_usable()
        return ShardGroup(
            self._core,
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
        return await self._core.leader(name)

    async def candidates(self, name: str) -> list[CandidateInfo]:
        """Return the live candidates of election ``name`` in election order, leader first.

        One consistent snapshot, read in pages (any number of candidates and values
        up to etcd's limit); cancelling it leaves nothing behind.
        """
        return await self._core.candidates(name)

    def observe(self, name: str) -> AbstractAsyncContextManager[AsyncIterator[LeaderInfo | None]]:
        """Follow the leader of election ``name``.

        Usage::

            async with elector.observe("scheduler") as leaders:
                async for info in leaders:   # LeaderInfo, or None when vacant
                    ...

        The iterator yields the current leader first, then every change: a
        new leader, a proclaimed value, a vacancy (None). It is fed from the
        elector's watch stream, so it survives compaction and etcd restarts, and
        it ends when the elector closes. Changes queue up while you do not
        iterate.
        """
        return ObserveBlock(self._core, name)

    def terms(self) -> list[Term]:
        """The terms this elector holds now (valid or about to be noticed as ended)."""
        return cast("list[Term]", self._core.terms())

    def statistics(self) -> ElectorStatistics:
        """Return a snapshot of the elector's counters."""
        return self._core.statistics()

    def __repr__(self) -> str:
        eps = ",".join(self._core.endpoint_names())
        return f"<Elector prefix={self.prefix!r} endpoints={eps!r} {self._core.state}>"
