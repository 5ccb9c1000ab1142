"""Coalescing of small requests into shared transactions.

Thousands of elections started together would each send a create, and each
observer a barrier read: one gRPC call apiece, whose client-side cost (not
etcd's) bounds how fast one process starts them.
The :class:`Batcher` collects the requests made during one turn of the event
loop and sends them as a few transactions of up to ``max_ops`` operations:

- ``read(ops)``: read-only ops (ranges). They go out as one read-only Txn,
  which etcd serves linearizably, like a Range: each caller gets its own
  slice of the responses and the shared header revision.
- ``create(key, value, lease)``: "put if absent". A batch is one Txn whose
  compares require every key to be absent; if any exists, the whole batch
  fails and its callers are told to fall back to their own transaction
  (rare: it needs a key left by an earlier, timed-out attempt). With a
  ``seen`` hook (the mirror's), the callers are answered once the mirror has
  seen the batch's keys: one wait per batch instead of one per caller.

A lone read is sent at once from its caller's task (no added latency on a
handover); the reads that come while it is in flight form the next batch.
A caller cancelled before its batch is sent is left out of it; a create's
caller cancelled after asks :meth:`Batcher.landing`, which lets the batch land
first (shielded, bounded), so that its clean-up cannot overtake its own write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator, Sequence
from functools import partial
from typing import Any, Protocol

import anyio

from ._connection import Connection
from ._exceptions import ElectorClosed, EtcdError, RequestTooLarge

__all__ = ("Batcher",)

log = logging.getLogger("aioelect")


class Seen(Protocol):
    """``seen(keys, revision, callback)``: call ``callback(exc or None)`` once the
    keys' views have applied ``revision``; False (no call) if they have already."""

    def __call__(
        self, keys: list[bytes], revision: int, callback: Callable[[BaseException | None], None]
    ) -> bool: ...


#: etcd's default --max-txn-ops.
MAX_OPS = 128
#: Keep a batch well below etcd's default request size limit (1.5 MiB).
MAX_BYTES = 512 * 1024


class _Pending:
    """One caller's request (a plain class with slots: thousands may wait at once).

    Awaiting it awaits its future (no coroutine of its own).
    """

    __slots__ = ("future", "key", "lease", "ops", "sent", "size", "token", "value")

    def __init__(
        self,
        future: asyncio.Future[Any],
        ops: Sequence[Any] = (),
        key: bytes = b"",
        value: bytes = b"",
        lease: int = 0,
        size: int = 0,
    ) -> None:
        self.future = future
        self.ops = ops
        self.key = key
        self.value = value
        self.lease = lease
        self.size = size
        self.sent: asyncio.Task[None] | None = None
        self.token = 0  # a create's revision, once its batch landed

    def __await__(self) -> Generator[Any, None, Any]:
        return self.future.__await__()


class Batcher:
    """Batches the reads and creates of one connection (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        max_ops: int = MAX_OPS,
        barrier_key: bytes = b"\0",
        seen: Seen | None = None,
    ) -> None:
        self._conn = conn
        self._seen = seen
        # etcd answers a Txn without operations serializably (from the member's own
        # state): a batch of reads that carries no operation gets this one get.
        self._barrier = [conn.op_get(barrier_key)]
        self.max_ops = max_ops
        self._reads: list[_Pending] = []
        self._creates: list[_Pending] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = 0  # read requests in flight
        #: Transactions sent, and requests they carried (for statistics).
        self.batches = 0
        self.requests = 0

    async def read(self, ops: Sequence[Any]) -> tuple[int, list[Any]]:
        """Run read-only ``ops`` linearizably; return the revision and their responses.

        With no ``ops``, a linearizable barrier: the store revision as of now.
        """
        if len(ops) > self.max_ops or (not self._reads and not self._reading):
            # Alone (nothing pending or in flight): send it now, in this task, and
            # let the requests that come meanwhile form the next batch.
            self._reading += 1
            try:
                resp = await self._conn.txn([], ops or self._barrier)
            finally:
                self._reading -= 1
            return int(resp.header.revision), list(resp.responses)[: len(ops)]
        entry = self._enqueue_read(ops)
        result: tuple[int, list[Any]] = await entry.future
        return result

    def _enqueue_read(self, ops: Sequence[Any]) -> _Pending:
        loop = asyncio.get_running_loop()
        entry = _Pending(loop.create_future(), ops)
        if not self._reads:
            loop.call_soon(self._flush_reads)
        self._reads.append(entry)
        return entry

    def create(self, key: bytes, value: bytes, lease: int) -> _Pending:
        """Put ``key`` if it does not exist; await the result for its create revision.

        None: the key may exist (its batch failed); the caller must check with a
        transaction of its own. A caller that stops waiting (cancelled, or failed)
        asks :meth:`landing` whether its key was written. Not a coroutine: one
        object less per caller.
        """
        entry = _Pending(
            asyncio.get_running_loop().create_future(),
            key=key,
            value=value,
            lease=lease,
            size=len(key) * 2 + len(value) + 32,
        )
        if not self._creates:
            asyncio.get_running_loop().call_soon(self._flush_creates)
        self._creates.append(entry)
        return entry

    async def landing(self, entry: _Pending) -> int | None:
        """For the caller of a create that stopped waiting: the key's create revision if
        it was written, else None. A batch in flight is let land first (shielded,
        bounded), so that the caller's clean-up follows its write and can delete
        exactly that key."""
        sent = entry.sent
        if sent is not None and not sent.done():
            with anyio.CancelScope(shield=True):
                await asyncio.wait({sent}, timeout=self._conn.timeout)
        return entry.token or None

    def close(self) -> None:
        """Cancel the batches in flight; their callers get ElectorClosed."""
        _fail(self._reads + self._creates, ElectorClosed("the elector was closed"))
        self._reads.clear()
        self._creates.clear()
        for task in self._tasks:
            task.cancel()

    # -- sending -----------------------------------------------------------------

    def _chunks(self, entries: list[_Pending], by_ops: bool) -> list[list[_Pending]]:
        chunks: list[list[_Pending]] = []
        chunk: list[_Pending] = []
        ops = size = 0
        keys: set[bytes] = set()
        for entry in entries:
            if entry.future.done():  # cancelled before it was sent
                continue
            n = len(entry.ops) if by_ops else 1  # a create: its put
            dup = not by_ops and entry.key in keys
            if chunk and (ops + n > self.max_ops or size + entry.size > MAX_BYTES or dup):
                chunks.append(chunk)
                chunk, ops, size = [], 0, 0
                keys.clear()
            chunk.append(entry)
            ops += n
            size += entry.size
            keys.add(entry.key)
        if chunk:
            chunks.append(chunk)
        return chunks

    def _spawn(self, chunk: list[_Pending], coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Cancelled before its first step (close() in the loop turn of a flush), the task
        # never ran its own failure path: answer its callers here.
        task.add_done_callback(partial(_cancelled_early, chunk))
        for entry in chunk:
            entry.sent = task
        self.batches += 1
        self.requests += len(chunk)

    def _flush_reads(self) -> None:
        entries, self._reads = self._reads, []
        for chunk in self._chunks(entries, by_ops=True):
            self._spawn(chunk, self._send_reads(chunk))

    def _flush_creates(self) -> None:
        entries, self._creates = self._creates, []
        for chunk in self._chunks(entries, by_ops=False):
            self._spawn(chunk, self._send_creates(chunk))

    async def _send_reads(self, chunk: list[_Pending]) -> None:
        self._reading += 1
        try:
            resp = await self._conn.txn(
                [], [op for entry in chunk for op in entry.ops] or self._barrier
            )
        except BaseException as exc:
            self._failed(chunk, exc, self._send_reads, by_ops=True)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._reading -= 1
        revision = int(resp.header.revision)
        responses = list(resp.responses)
        at = 0
        for entry in chunk:
            n = len(entry.ops)
            _answer(entry.future, None, (revision, responses[at : at + n]))
            at += n

    async def _send_creates(self, chunk: list[_Pending]) -> None:
        try:
            resp = await self._conn.create_keys([(e.key, e.value, e.lease) for e in chunk])
        except BaseException as exc:
            self._failed(chunk, exc, self._send_creates, by_ops=False)
            if not isinstance(exc, Exception):
                raise
            return
        if not resp.succeeded:  # a key exists: every caller checks alone
            for entry in chunk:
                _answer(entry.future, None)
            return
        revision = int(resp.header.revision)
        for entry in chunk:
            entry.token = revision
        # With a mirror, answer once it has seen the keys (one wait for the whole batch).
        seen = self._seen
        if seen is None or not seen(
            [e.key for e in chunk], revision, lambda exc: _created(chunk, exc)
        ):
            _created(chunk, None)

    def _failed(
        self, chunk: list[_Pending], exc: BaseException, send: Any, *, by_ops: bool
    ) -> None:
        """A batch failed: if etcd found it too big, resend it in smaller batches (and
        keep them smaller from now on); otherwise fail its callers."""
        if isinstance(exc, EtcdError) and _too_big(exc) and len(chunk) > 1:
            self.max_ops = max(1, min(self.max_ops, len(chunk)) // 2)
            log.info(
                "etcd refused a batch of %d requests: batches now hold %d",
                len(chunk),
                self.max_ops,
            )
            for part in self._chunks(chunk, by_ops=by_ops):
                self._spawn(part, send(part))
            return
        _fail(chunk, exc)


def _too_big(exc: EtcdError) -> bool:
    return isinstance(exc, RequestTooLarge) or "too many operations" in str(exc)


def _answer(future: asyncio.Future[Any], exc: BaseException | None, result: Any = None) -> None:
    """Resolve ``future`` with ``exc`` if given, else ``result`` (unless its caller left)."""
    if not future.done():
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


def _created(chunk: list[_Pending], exc: BaseException | None) -> None:
    for entry in chunk:
        _answer(entry.future, exc, entry.token)


def _cancelled_early(chunk: list[_Pending], task: asyncio.Task[None]) -> None:
    if task.cancelled():
        _fail(chunk, ElectorClosed("the elector was closed"))


def _fail(chunk: list[_Pending], exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):  # the batch was cancelled: the elector closed
        exc = ElectorClosed("the elector was closed")
    elif not isinstance(exc, Exception):
        exc = EtcdError(f"request failed: {exc!r}")
    for entry in chunk:
        _answer(entry.future, exc)
