"""The transport: the one client over aetcd and its raw gRPC stubs, and its two streams.

aetcd 1.0 has no TLS, one host:port only, no deadline unless asked, no
keepalive pings, and range requests that ignore limit and sort. This module
builds an :class:`aetcd.Client` whose channel fixes the first four, and gives
the rest of aioelect a small typed API (``range``, ``txn``, ``grant``,
``revoke``, a long-lived keepalive stream and a watch stream) over the raw
stubs. Every aetcd and gRPC error is mapped to ours in :func:`map_errors`.

Its neighbours hold the other ideas of the connection layer: endpoints and
TLS (:mod:`._endpoints`), the error map and cancellation bridge
(:mod:`._errors`), the protobuf op builders (:mod:`._ops`).

Size: over 400 lines because the transport is one class (every request's
path: in-flight bound, size check, deadline, error map, re-authentication,
the fail-over away from a member without a raft leader and the retiring of
its channel, paginated and retried ranges) and the two stream types it hands
out; split further it would scatter one request path over modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
import grpc
import grpc.aio

from . import _aetcd as aetcd
from . import _ops
from ._aetcd import rpc
from ._config import DEFAULT_MAX_REQUEST_BYTES, duration
from ._endpoints import Endpoint, TLSConfig, grpc_target, needs_resolving, parse_endpoints
from ._errors import grpc_await, map_errors
from ._exceptions import ConfigError, EtcdError, EtcdUnavailable, RequestTooLarge

__all__ = (
    "KV",
    "Connection",
    "KeepAliveStream",
    "MemberStatus",
    "WatchBatch",
    "WatchStream",
)

log = logging.getLogger("aioelect")


#: gRPC keepalive: a ping every 5 s (etcd's default --grpc-keepalive-min-time:
#: faster pings get the connection closed with too_many_pings) and 3 s to answer,
#: so a hung (SIGSTOPped) member is dropped within about 8 s and pick_first
#: moves to the next endpoint.
_KEEPALIVE_TIME_MS = 5000
_KEEPALIVE_TIMEOUT_MS = 3000

#: gRPC metadata asking etcd to refuse a request (and to end a stream) at once when the
#: member has no raft leader: etcd's Go client's ``WithRequireLeader``. A member cut off
#: from the majority then answers "etcdserver: no leader" instead of letting requests
#: time out, and its streams end within about three election timeouts.
_REQUIRE_LEADER = ("hasleader", "true")
_NO_LEADER = "no leader"
#: At most one fail-over to another member per this many seconds.
_FAIL_OVER_EVERY = 1.0

#: The receive limit of our own channel: none (-1). etcd's largest response is a
#: range of many large values; ranges are paginated, but one page may still hold
#: many values of up to --max-request-bytes each.
MAX_RECEIVE_BYTES = -1


class _Client(aetcd.Client):  # type: ignore[misc]
    """An aetcd client whose channel has TLS, several endpoints and keepalive pings."""

    def __init__(
        self,
        *,
        endpoints: Sequence[Endpoint] = (),
        target: str | None = None,
        tls: TLSConfig | None,
        username: str | None,
        password: str | None,
        timeout: float,
        authority: str | None,
    ) -> None:
        options: dict[str, Any] = {
            "grpc.keepalive_time_ms": _KEEPALIVE_TIME_MS,
            "grpc.keepalive_timeout_ms": _KEEPALIVE_TIMEOUT_MS,
            # grpc-core (1.85) times the keepalive ping out by this one (default
            # 1 min); without it a SIGSTOPped member's connection is never dropped.
            "grpc.http2.ping_timeout_ms": _KEEPALIVE_TIMEOUT_MS,
            "grpc.keepalive_permit_without_calls": 1,
            "grpc.http2.max_pings_without_data": 0,
            "grpc.initial_reconnect_backoff_ms": 100,
            # grpc-core uses this as the minimum time a connection attempt may take
            # (TCP, TLS and the HTTP/2 SETTINGS exchange), not as a backoff: at
            # 100 ms, a link with a 200 ms round trip failed its first requests at
            # once with "timed out before receiving SETTINGS frame". Other endpoints
            # are still tried after 250 ms (pick_first's happy eyeballs).
            "grpc.min_reconnect_backoff_ms": 5000,
            "grpc.max_reconnect_backoff_ms": 1000,
            "grpc.enable_retries": 0,
            # No client-side size limits: etcd enforces its own (--max-request-bytes),
            # and a response may be larger than any one request (a range).
            "grpc.max_receive_message_length": MAX_RECEIVE_BYTES,
            "grpc.max_send_message_length": -1,
        }
        if tls is not None and (tls.server_name or authority):
            options["grpc.ssl_target_name_override"] = tls.server_name or authority
        super().__init__(
            host="",
            port=0,
            username=username,
            password=password,
            timeout=timeout,
            options=options,
        )
        self._aioelect_endpoints = tuple(endpoints)
        # Given, or known now unless host names must be resolved (blocking, so: on connect).
        if target is None and not needs_resolving(endpoints):
            target = grpc_target(endpoints)
        self._aioelect_target = target
        self._aioelect_tls = tls

    def _open_channel(self) -> grpc.aio.Channel:
        target = self._aioelect_target
        assert target is not None  # resolved by connect()
        options = list(self._options.items())
        if self._aioelect_tls is not None:
            return grpc.aio.secure_channel(target, self._aioelect_tls.credentials(), options)
        return grpc.aio.insecure_channel(target, options)

    def _use_channel(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.kvstub = rpc.KVStub(channel)
        self.clusterstub = rpc.ClusterStub(channel)
        self.leasestub = rpc.LeaseStub(channel)
        self.maintenancestub = rpc.MaintenanceStub(channel)
        self._watcher = aetcd.Watcher(
            rpc.WatchStub(channel), timeout=self._timeout, metadata=self.metadata
        )

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._aioelect_target is None:  # resolve host names in a worker thread, once
            self._aioelect_target = await anyio.to_thread.run_sync(
                grpc_target, self._aioelect_endpoints
            )
        channel = self._open_channel()
        self.channel = channel
        try:
            if self._username is not None:
                await self._authenticate()
        except BaseException:
            self.channel = None
            await channel.close()
            raise
        self._use_channel(channel)
        self._connected.set()

    def fail_over(self) -> grpc.aio.Channel | None:
        """Move to a new channel whose pick_first starts at the next endpoint; return the
        old channel (for the caller to close), or None with a single endpoint.

        pick_first stays on a member as long as its TCP connection and pings answer,
        even when that member sits in the minority of a partition.
        """
        if self._aioelect_target is None:
            return None
        kind, sep, addresses = self._aioelect_target.partition(":")
        items = addresses.split(",")
        if not self._connected.is_set() or kind not in ("ipv4", "ipv6") or len(items) < 2:
            return None
        self._aioelect_target = f"{kind}{sep}{','.join(items[1:] + items[:1])}"
        old = self.channel
        self._use_channel(self._open_channel())
        return old

    async def _authenticate(self) -> None:
        self.auth_stub = rpc.AuthStub(self.channel)
        resp = await self.auth_stub.Authenticate(
            rpc.AuthenticateRequest(name=self._username, password=self._password),
            timeout=self._timeout,
        )
        self.metadata = (("token", resp.token),)
        if self._watcher is not None:
            self._watcher._metadata = self.metadata


class KV(NamedTuple):
    """One key-value pair as etcd returned it.

    A small tuple of bytes and ints: no per-instance dict, which matters when
    one process mirrors thousands of elections.
    """

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_pb(cls, kv: Any) -> KV:
        # tuple.__new__ directly: NamedTuple's generated __new__ costs a Python call.
        return _tuple_new(cls, (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease))


#: What a stream's read() returns at its end (missing from typeshed's grpc stubs).
_EOF: object = grpc.aio.EOF  # pyright: ignore[reportAttributeAccessIssue]
_tuple_new = tuple.__new__
_PUT = rpc.Event.PUT


@dataclass(frozen=True)
class WatchBatch:
    """One response of a watch stream.

    ``watch_id`` is the watch it belongs to (-1: the whole stream, e.g. a
    progress notification it was asked for); ``events`` are ``(is_put, kv)``
    pairs in revision order; ``revision`` is the store revision the response
    was sent at (progress); a non-zero ``compact_revision`` means the start
    revision was compacted.
    """

    events: list[tuple[bool, KV]]
    revision: int
    compact_revision: int
    canceled: bool
    created: bool
    watch_id: int = 0


class KeepAliveStream:
    """One long-lived LeaseKeepAlive stream: write a request, read its reply."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._channel = conn._stream_opened()
        self._call: Any = conn._client.leasestub.LeaseKeepAlive(metadata=conn.metadata)

    async def keepalive(self, lease_id: int) -> int:
        """Renew ``lease_id`` once; return the TTL etcd answered (0: the lease is gone)."""
        with self._conn.mapped_errors():
            await grpc_await(self._call.write(rpc.LeaseKeepAliveRequest(ID=lease_id)))
            reply = await grpc_await(self._call.read())
        if reply is _EOF:
            raise EtcdUnavailable(self._conn.endpoint_names, "keepalive stream closed by etcd")
        return int(reply.TTL)

    def close(self) -> None:
        """Cancel the stream."""
        self._call.cancel()
        self._conn._stream_closed(self._channel)
        self._channel = None


class WatchStream:
    """One Watch stream: any number of watches multiplexed on one gRPC call.

    Watches are created with ids chosen here (:meth:`create`), so that creates
    can be written back to back without waiting for their answers; every
    response says which watch it is for (:attr:`WatchBatch.watch_id`). Given
    a ``key`` at construction, the first :meth:`read` creates that one watch
    (id 0) first.
    """

    def __init__(
        self,
        conn: Connection,
        key: bytes | None = None,
        range_end: bytes = b"",
        start_revision: int = 0,
    ) -> None:
        self._conn = conn
        self._channel = conn._stream_opened()
        self._call: Any = rpc.WatchStub(conn._client.channel).Watch(metadata=conn.metadata)
        self._first: Any = None
        if key is not None:
            self._first = self._create_request(0, key, range_end, start_revision, True)
        # grpc.aio allows one write in flight per stream (a second one fails with
        # INTERNAL and kills the stream); writes are also shielded, since a write
        # cancelled half-way cancels the whole call.
        self._write_lock = anyio.Lock()

    @staticmethod
    def _create_request(
        watch_id: int, key: bytes, range_end: bytes, start_revision: int, progress: bool
    ) -> Any:
        return rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=key,
                range_end=range_end,
                start_revision=start_revision,
                progress_notify=progress,
                watch_id=watch_id,
            )
        )

    async def _write(self, request: Any) -> None:
        with self._conn.mapped_errors():
            async with self._write_lock:
                with anyio.CancelScope(shield=True):
                    await grpc_await(self._call.write(request))

    async def create(
        self, watch_id: int, key: bytes, range_end: bytes, start_revision: int
    ) -> None:
        """Create watch ``watch_id`` (> 0, unused on this stream) of ``[key, range_end)``
        from ``start_revision``; its answers come through :meth:`read`."""
        await self._write(self._create_request(watch_id, key, range_end, start_revision, False))

    async def cancel(self, watch_id: int) -> None:
        """Cancel watch ``watch_id`` (events of it may still arrive before the answer)."""
        await self._write(
            rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch_id))
        )

    async def read(self) -> WatchBatch:
        """Wait for the next response of any watch of the stream."""
        if self._first is not None:
            first, self._first = self._first, None
            await self._write(first)
        with self._conn.mapped_errors():
            resp = await grpc_await(self._call.read())
        if resp is _EOF:
            raise EtcdUnavailable(self._conn.endpoint_names, "watch stream closed by etcd")
        new, kv_type = _tuple_new, KV
        events = [
            (
                ev.type == _PUT,
                new(kv_type, (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)),
            )
            for ev in resp.events
            for kv in (ev.kv,)
        ]
        return WatchBatch(
            events=events,
            revision=int(resp.header.revision),
            compact_revision=int(resp.compact_revision),
            canceled=bool(resp.canceled),
            created=bool(resp.created),
            watch_id=int(resp.watch_id),
        )

    async def request_progress(self) -> None:
        """Ask etcd to report the stream's current revision (a response of watch -1)."""
        await self._write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))

    def close(self) -> None:
        """Cancel the stream."""
        self._call.cancel()
        if self._channel is not None:
            self._conn._stream_closed(self._channel)
        self._channel = None


class MemberStatus(NamedTuple):
    """What one member said of itself (the Status RPC)."""

    #: This member's id.
    member_id: int
    #: The raft leader's member id, as this member knows it (0: none).
    leader: int
    #: The store revision.
    revision: int


@dataclass(frozen=True)
class RangeResult:
    """What a range request returned (``more``: the limit cut it short)."""

    revision: int
    kvs: list[KV]
    count: int
    more: bool = False


#: Keys per page of a paginated range read: the first page, and the most.
FIRST_PAGE_KEYS = 100
MAX_PAGE_KEYS = 1000
#: The size a page aims at: later pages hold about this many bytes (never fewer
#: than one key), whatever the values' size.
PAGE_BYTES = 2 * 1024 * 1024
#: A read whose revision is compacted between its pages starts over this many times.
_RANGE_ATTEMPTS = 5


class Connection:
    """A typed facade over one aetcd client (owned or the caller's)."""

    #: Unary requests in flight at once. Thousands of campaigns started together
    #: queue here instead of all timing out together in gRPC and etcd (and then all
    #: retrying); the keepalive and watch streams are not limited.
    MAX_IN_FLIGHT = 64

    def __init__(
        self,
        client: Any,
        *,
        endpoint_names: Sequence[str],
        owned: bool,
        timeout: float,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ):
        self._client: aetcd.EtcdClient = client
        self.endpoint_names = tuple(endpoint_names)
        self.owned = owned
        self.timeout = timeout
        #: Requests larger than this raise RequestTooLarge before they are sent.
        self.max_request_bytes = max_request_bytes
        self._in_flight: anyio.Semaphore | None = None
        self.fail_overs = 0
        self._failed_over_at = -math.inf
        # Fail-over: channels left behind, closed once their streams are (a grpc.aio
        # call on a closed channel raises a bare CancelledError in its caller).
        self._streams: dict[Any, int] = {}
        self._retired: set[Any] = set()
        self._retiring: set[Any] = set()
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def create(
        cls,
        endpoints: object,
        *,
        tls: TLSConfig | bool | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> Connection:
        """Build (without I/O) a connection that owns a new client."""
        eps = parse_endpoints(endpoints)
        if (username is None) != (password is None):
            raise ConfigError("username", "username and password must be given together")
        for field, v in (("username", username), ("password", password)):
            if v is not None and (not isinstance(v, str) or not v):
                raise ConfigError(field, "must be a non-empty str")
        if tls is True:
            tls = TLSConfig()
        elif tls is False:
            tls = None
        elif tls is not None and not isinstance(tls, TLSConfig):
            raise ConfigError("tls", f"must be a TLSConfig, True or None, not {type(tls).__name__}")
        if any(e.secure for e in eps) and tls is None:
            tls = TLSConfig()
        if tls is not None and any(e.secure is False for e in eps):
            raise ConfigError(
                "endpoints", "http:// endpoints cannot be used with TLS; use https://"
            )
        timeout = duration("timeout", timeout)
        client = _Client(
            endpoints=eps,
            tls=tls,
            username=username,
            password=password,
            timeout=timeout,
            authority=eps[0].host if len(eps) > 1 else None,
        )
        return cls(
            client,
            endpoint_names=[str(e) for e in eps],
            owned=True,
            timeout=timeout,
            max_request_bytes=max_request_bytes,
        )

    @classmethod
    def unix(cls, path: str | os.PathLike[str], *, timeout: float = 5.0) -> Connection:
        """Build (without I/O) a connection that owns a new client of the etcd member
        listening on the unix socket ``path`` (no TLS, no authentication)."""
        target = f"unix:{os.fspath(path)}"
        client = _Client(
            target=target, tls=None, username=None, password=None, timeout=timeout, authority=None
        )
        return cls(client, endpoint_names=[target], owned=True, timeout=timeout)

    @classmethod
    def wrap(
        cls, client: object, *, timeout: float, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    ) -> Connection:
        """Use a caller's ``aetcd.Client`` (never closed by us)."""
        if not isinstance(client, aetcd.Client):
            raise ConfigError("client", f"must be an aetcd.Client, not {type(client).__name__}")
        host = getattr(client, "_host", "?")
        port = getattr(client, "_port", "?")
        names = [getattr(client, "_aioelect_target", None) or f"{host}:{port}"]
        return cls(
            client,
            endpoint_names=names,
            owned=False,
            timeout=timeout,
            max_request_bytes=max_request_bytes,
        )

    @property
    def tls(self) -> TLSConfig | None:
        """The TLS settings of a client this connection made (None: plaintext, or the
        caller's own ``aetcd.Client``)."""
        return self._client._aioelect_tls if isinstance(self._client, _Client) else None

    @property
    def client(self) -> Any:
        """The aetcd client."""
        return self._client

    async def connect(self) -> None:
        """Open the channel (and authenticate); no request is sent without auth."""
        with map_errors(self.endpoint_names):
            await grpc_await(self._client.connect())

    async def close(self) -> None:
        """Close the client if we own it (and the channels it failed over from)."""
        if self.owned:
            await self._client.close()
        for task in list(self._closing):  # their grace is cut short
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        retired, self._retired = self._retired | self._retiring, set()
        self._retiring = set()
        for channel in retired:
            with contextlib.suppress(Exception):
                await channel.close()

    def _stream_opened(self) -> Any:
        channel = self._client.channel
        self._streams[channel] = self._streams.get(channel, 0) + 1
        return channel

    def _stream_closed(self, channel: Any) -> None:
        if channel is None:
            return
        left = self._streams.get(channel, 0) - 1
        if left > 0:
            self._streams[channel] = left
            return
        self._streams.pop(channel, None)
        if channel in self._retired:
            self._close_retired(channel)

    def _close_retired(self, channel: Any) -> None:
        self._retired.discard(channel)
        self._retiring.add(channel)

        async def close() -> None:
            # Unary calls still on it end by their deadline within the grace.
            await channel.close(grace=max(self.timeout, 30.0))
            self._retiring.discard(channel)

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of every request: the auth token, and require-leader."""
        return (*(self._client.metadata or ()), _REQUIRE_LEADER)

    @contextmanager
    def mapped_errors(self, *, size: int | None = None, limit: int | None = None) -> Iterator[None]:
        """:func:`map_errors`, and a fail-over when the member has no raft leader."""
        try:
            with map_errors(self.endpoint_names, size=size, limit=limit):
                yield
        except EtcdUnavailable as exc:
            if _NO_LEADER in str(exc):
                self._fail_over()
            raise

    def _fail_over(self) -> None:
        """Leave a member that has no leader (cut off from the majority, or the whole
        cluster lost quorum): a new channel, starting at the next endpoint. At most once
        per second, and only with several endpoints and a client of our own."""
        now = time.monotonic()
        if not (self.owned and isinstance(self._client, _Client)):
            return
        if now - self._failed_over_at < _FAIL_OVER_EVERY:
            return
        old = self._client.fail_over()
        if old is None:
            return
        self._failed_over_at = now
        self.fail_overs += 1
        log.info("etcd member has no leader: failing over to the next endpoint")
        # Streams on the old channel end by themselves (etcd ends require-leader streams
        # of a member without a leader); it is closed after the last of them.
        self._retired.add(old)
        if not self._streams.get(old):
            self._close_retired(old)

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def _unary(self, method: aetcd.UnaryMethod, request: Any, timeout: float | None) -> Any:
        if self._in_flight is None:
            self._in_flight = anyio.Semaphore(self.MAX_IN_FLIGHT)
        async with self._in_flight:
            return await self._unary_now(method, request, timeout)

    def check_size(self, request: Any) -> int:
        """Raise RequestTooLarge (before any I/O) if ``request`` is over the limit;
        return its size in bytes."""
        size = int(request.ByteSize())
        if size > self.max_request_bytes:
            raise RequestTooLarge(
                f"a request of {size} bytes is over the limit of {self.max_request_bytes} "
                "bytes (max_request_bytes: etcd's --max-request-bytes); nothing was sent",
                size=size,
                limit=self.max_request_bytes,
            )
        return size

    async def _unary_now(
        self, method: aetcd.UnaryMethod, request: Any, timeout: float | None
    ) -> Any:
        size = self.check_size(request)
        with self.mapped_errors(size=size, limit=self.max_request_bytes):
            try:
                return await grpc_await(
                    method(request, timeout=self._t(timeout), metadata=self.metadata)
                )
            except grpc.aio.AioRpcError as exc:
                # Simple auth tokens expire (etcd --auth-token-ttl): log in again once.
                client = self._client
                if (
                    exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    and client._username is not None
                    and isinstance(client, _Client)
                ):
                    await grpc_await(client._authenticate())
                    return await grpc_await(
                        method(request, timeout=self._t(timeout), metadata=self.metadata)
                    )
                raise

    async def reauthenticate(self) -> None:
        """Log in again (etcd expires simple auth tokens); nothing without a user name."""
        if isinstance(self._client, _Client) and self._client._username is not None:
            with map_errors(self.endpoint_names):
                await grpc_await(self._client._authenticate())

    async def status(self, timeout: float | None = None) -> int:
        """Ask the member for its status; return the store revision."""
        resp = await self._unary(self._client.maintenancestub.Status, rpc.StatusRequest(), timeout)
        return int(resp.header.revision)

    async def member_status(self, timeout: float | None = None) -> MemberStatus:
        """Ask the member for its status: its id, its raft leader, the store revision."""
        resp = await self._unary(self._client.maintenancestub.Status, rpc.StatusRequest(), timeout)
        return MemberStatus(int(resp.header.member_id), int(resp.leader), int(resp.header.revision))

    async def defragment(self, timeout: float | None = None) -> None:
        """Defragment the member's backend (it blocks the member's requests meanwhile)."""
        await self._unary(self._client.maintenancestub.Defragment, rpc.DefragmentRequest(), timeout)

    async def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        limit: int = 0,
        revision: int = 0,
        sort_create: str | None = None,
        max_create_revision: int = 0,
        keys_only: bool = False,
        timeout: float | None = None,
    ) -> RangeResult:
        """A linearizable range read (at ``revision``, if not 0); ``sort_create`` is
        ``"ascend"``, ``"descend"`` or None. Unpaginated: for a range that may hold
        many keys, use :meth:`range_all`."""
        req = rpc.RangeRequest(
            key=key,
            range_end=range_end,
            limit=limit,
            revision=revision,
            max_create_revision=max_create_revision,
            keys_only=keys_only,
        )
        if sort_create is not None:
            req.sort_target = rpc.RangeRequest.CREATE
            req.sort_order = (
                rpc.RangeRequest.ASCEND if sort_create == "ascend" else rpc.RangeRequest.DESCEND
            )
        resp = await self._unary(self._client.kvstub.Range, req, timeout)
        return RangeResult(
            int(resp.header.revision),
            [KV.from_pb(kv) for kv in resp.kvs],
            int(resp.count),
            bool(resp.more),
        )

    async def range_all(
        self, key: bytes, range_end: bytes, *, timeout: float | None = None
    ) -> RangeResult:
        """Every key of a range, in key order, read in pages at ONE revision.

        The first page fixes the revision; each next page starts after the
        last key read (``key + b"\\0"``) at that revision, so the pages form one
        consistent snapshot, like a single read, however large the range. Pages
        hold up to 1000 keys and about 2 MiB (fewer keys when values are large).
        A page over the client's receive limit (a caller's client) is read
        again in halves. If etcd compacts the revision between two pages, the
        read starts over at a new one.
        """
        for attempt in range(_RANGE_ATTEMPTS):
            try:
                return await self._range_pages(key, range_end, timeout)
            except EtcdError as exc:
                if (
                    not (exc.retryable and "compacted" in str(exc))
                    or attempt + 1 == _RANGE_ATTEMPTS
                ):
                    raise
                log.debug("range read of %r compacted between pages: %s; again", key, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _range_pages(
        self, key: bytes, range_end: bytes, timeout: float | None
    ) -> RangeResult:
        kvs: list[KV] = []
        revision = 0
        limit = FIRST_PAGE_KEYS
        start = key
        while True:
            try:
                page = await self.range(
                    start, range_end, limit=limit, revision=revision, timeout=timeout
                )
            except EtcdError as exc:
                if limit > 1 and "receive limit" in str(exc):
                    limit //= 2
                    continue
                raise
            if revision == 0:
                revision = page.revision
            kvs.extend(page.kvs)
            if not page.more or not page.kvs:
                return RangeResult(revision, kvs, len(kvs))
            start = page.kvs[-1].key + b"\0"
            size = sum(len(kv.key) + len(kv.value) for kv in page.kvs) // len(page.kvs)
            limit = max(1, min(MAX_PAGE_KEYS, PAGE_BYTES // max(1, size + 32)))

    async def txn(
        self,
        compare: Sequence[Any],
        success: Sequence[Any] = (),
        failure: Sequence[Any] = (),
        timeout: float | None = None,
    ) -> Any:
        """Send a TxnRequest of raw protobuf compares and ops; return the raw response."""
        req = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        return await self._unary(self._client.kvstub.Txn, req, timeout)

    async def create_keys(
        self, items: Iterable[tuple[bytes, bytes, int]], timeout: float | None = None
    ) -> Any:
        """One transaction: put every ``(key, value, lease)`` if none of the keys exists.

        Built in place (no message per compare and op, then copied): thousands of
        campaigns started together send these.
        """
        req = rpc.TxnRequest()
        compare, success = req.compare.add, req.success.add
        equal, create = rpc.Compare.EQUAL, rpc.Compare.CREATE
        for key, value, lease in items:
            compare(key=key, result=equal, target=create, create_revision=0)
            put = success().request_put
            put.key = key
            put.value = value
            put.lease = lease
        return await self._unary(self._client.kvstub.Txn, req, timeout)

    async def grant(
        self, ttl: int, lease_id: int = 0, timeout: float | None = None
    ) -> tuple[int, int]:
        """Grant a lease (of id ``lease_id``, if not 0); return its id and granted TTL.

        With a ``lease_id`` chosen by the caller, a grant whose answer was lost
        (a timeout) can be retried without granting a second lease: when the
        lease already exists, its TTL is read instead (it is the caller's).
        """
        try:
            resp = await self._unary(
                self._client.leasestub.LeaseGrant,
                rpc.LeaseGrantRequest(TTL=ttl, ID=lease_id),
                timeout,
            )
        except EtcdError as exc:
            if not lease_id or "lease already exists" not in str(exc):
                raise
            resp = await self._unary(
                self._client.leasestub.LeaseTimeToLive,
                rpc.LeaseTimeToLiveRequest(ID=lease_id),
                timeout,
            )
            if int(resp.TTL) <= 0:  # it expired meanwhile: grant it again
                return await self.grant(ttl, lease_id, timeout)
            return lease_id, int(resp.grantedTTL)
        if resp.error:
            raise EtcdError(f"lease grant refused: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def leases(self, timeout: float | None = None) -> list[int]:
        """The ids of every lease etcd holds (LeaseLeases)."""
        resp = await self._unary(
            self._client.leasestub.LeaseLeases, rpc.LeaseLeasesRequest(), timeout
        )
        return [int(lease.ID) for lease in resp.leases]

    async def revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """Revoke a lease (deleting its keys); a lease already gone is not an error."""
        try:
            await self._unary(
                self._client.leasestub.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id), timeout
            )
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise

    async def compact(self, revision: int, timeout: float | None = None) -> None:
        """Compact the store's history up to ``revision``."""
        await self._unary(
            self._client.kvstub.Compact,
            rpc.CompactionRequest(revision=revision, physical=True),
            timeout,
        )

    def keepalive_stream(self) -> KeepAliveStream:
        """Open a LeaseKeepAlive stream."""
        return KeepAliveStream(self)

    def watch_stream(
        self, key: bytes | None = None, range_end: bytes = b"", start_revision: int = 0
    ) -> WatchStream:
        """Open a Watch stream; with ``key``, its first read creates that watch (id 0)."""
        return WatchStream(self, key, range_end, start_revision)

    # -- builders of raw protobuf compares and ops (see :mod:`._ops`) ------------------

    cmp_create = staticmethod(_ops.cmp_create)
    op_put = staticmethod(_ops.op_put)
    op_get = staticmethod(_ops.op_get)
    op_range = staticmethod(_ops.op_range)
    op_first = staticmethod(_ops.op_first)
    op_created_before = staticmethod(_ops.op_created_before)
    op_delete = staticmethod(_ops.op_delete)
    txn_request = staticmethod(_ops.txn_request)
    user_compares = staticmethod(_ops.user_compares)
    txn_results = staticmethod(_ops.txn_results)

    def user_ops(self, ops: object, field: str = "success") -> list[Any]:
        """Turn aetcd transaction operations into raw ops (see :func:`._ops.user_ops`)."""
        return _ops.user_ops(self._client, ops, field)


def sleep_until(deadline: float) -> Any:
    """Sleep until the monotonic instant ``deadline`` (anyio's clock)."""
    return anyio.sleep(max(0.0, deadline - anyio.current_time()))
