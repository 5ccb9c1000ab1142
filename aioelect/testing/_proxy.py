"""A TCP fault-injection proxy for tests: delay, blackhole or reset one client's traffic.

The proxy runs its own asyncio event loop in a daemon thread, so it keeps
forwarding (or holding) bytes whatever the test's event loop is doing, and
its control methods are plain blocking calls that may be made from any
thread or from inside a coroutine (each returns within microseconds once
the proxy's loop has applied the change).

Example::

    proxy = FaultProxy("127.0.0.1", 2379)
    proxy.start()
    try:
        client = connect(proxy.endpoint)
        proxy.blackhole()   # requests now time out; TCP connections stay open
        proxy.heal()        # held bytes flow again
        proxy.reset()       # every open connection is aborted with a RST
    finally:
        proxy.close()

Size: just over 400 lines because :class:`FaultProxy` is one idea (a proxy
whose loop lives in its own thread) and half of it is the documented
blocking control API (``delay``, ``blackhole``, ``heal``, ``reset``) and
its counters; the per-connection pump is the small :class:`_Link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from typing_extensions import Self

__all__ = ("FaultProxy",)

_T = TypeVar("_T")

#: Bytes read from a socket at a time.
_CHUNK = 65536
#: Chunks queued per direction before the reader waits (bounds memory under delay).
_QUEUE_CHUNKS = 256
#: Added to each delay's sleep (asyncio may run a timer up to its clock resolution early).
_TIMER_SLACK = 0.001
#: How long a control call waits for the proxy's loop to apply it.
_CONTROL_TIMEOUT = 10.0


def _set_linger_zero(transport: asyncio.BaseTransport | None) -> None:
    """Make closing the transport's socket send a RST instead of a FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Link:
    """One proxied connection: the accepted client side and its upstream side."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Connect upstream (once traffic may flow), then pump both directions until one ends."""
        proxy = self.proxy
        try:
            await proxy._flowing.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*proxy.target)
            except OSError:
                # Upstream refused: pass that on as an abort, like a dead server would.
                self.abort()
                return
            self.upstream_writer = up_writer
            loop = asyncio.get_running_loop()
            # Each direction is a reader task filling a queue and a writer task
            # draining it: a delay is then latency, not a throughput cap.
            for src, dst, up in (
                (self.client_reader, up_writer, True),
                (up_reader, self.client_writer, False),
            ):
                queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
                self.tasks.add(loop.create_task(self._read(src, queue, up)))
                self.tasks.add(loop.create_task(self._write(queue, dst, up)))
            done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
            # A reader hit EOF and its writer passed the EOF on: wait for the
            # other direction too, unless something failed (then abort all).
            if any(t.exception() is not None for t in done if not t.cancelled()):
                self.abort()
            else:
                await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.close()

    async def _read(
        self,
        src: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        up: bool,
    ) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        while True:
            await proxy._flowing.wait()  # blackholed: leave the bytes in the kernel
            data = await src.read(_CHUNK)
            if not data:
                await queue.put(None)
                return
            await queue.put((loop.time() + proxy._latency(up), data))

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        dst: asyncio.StreamWriter,
        up: bool,
    ) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if item is None:
                if dst.can_write_eof():
                    with contextlib.suppress(OSError):
                        dst.write_eof()
                return
            due, data = item
            left = due - loop.time()
            if left > 0:
                # The slack covers a timer firing a hair early: the delay is a guarantee.
                await asyncio.sleep(left + _TIMER_SLACK)
            await proxy._flowing.wait()  # blackholed meanwhile: hold the bytes
            dst.write(data)
            await dst.drain()
            if up:
                proxy._bytes_up += len(data)
            else:
                proxy._bytes_down += len(data)

    def abort(self) -> None:
        """Close both sides at once with a RST."""
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                _set_linger_zero(writer.transport)
                writer.transport.abort()

    def close(self) -> None:
        """Close both sides (gracefully, unless already aborted)."""
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                writer.close()


class FaultProxy:
    """A TCP proxy on a free ``127.0.0.1`` port in front of ``host:port``.

    Point the client under test at :attr:`endpoint`; then inject faults with
    :meth:`delay`, :meth:`blackhole`, :meth:`reset` and undo them with
    :meth:`heal`. Also usable as a (synchronous) context manager, which
    starts and closes it.

    Args:
        host: the upstream server's host.
        port: the upstream server's port.

    Attributes:
        target: ``(host, port)`` of the upstream server.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._link_tasks: set[asyncio.Task[None]] = set()
        self._flowing: asyncio.Event  # created on the proxy's loop
        self._delay = 0.0
        self._blackholed = False
        self._closed = False
        self._connections = 0
        self._bytes_up = 0
        self._bytes_down = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the proxy's thread and block until it listens.

        Raises:
            RuntimeError: the proxy was already started or closed.
            OSError: it could not listen.
        """
        if self._thread is not None or self._closed:
            raise RuntimeError("FaultProxy.start() may be called only once")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # handed to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(
            target=main, name=f"FaultProxy->{self.target[0]}:{self.target[1]}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._closed = True
            raise failure[0]

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback: the link runs in a task of ours, which reset() and
        # close() may cancel (asyncio's own callback task must not be cancelled).
        self._connections += 1
        link = _Link(self, reader, writer)
        self._links.add(link)
        task = asyncio.get_running_loop().create_task(link.run())
        self._link_tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._links.discard(link)
            self._link_tasks.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved: a failed link is just a closed connection

        task.add_done_callback(done)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        for task in list(self._link_tasks):
            task.cancel()
        await asyncio.gather(*self._link_tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def close(self) -> None:
        """Stop forwarding, close every socket and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                loop.call_soon_threadsafe(loop.stop)
            thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._thread is None:
            state = "not started"
        else:
            state = "blackholed" if self._blackholed else f"delay={self._delay:g}s"
        return f"<FaultProxy {self.endpoint or '?'} -> {self.target[0]}:{self.target[1]} {state}>"

    # -- addresses and counters -----------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (0 before :meth:`start`)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` to point the client at ("" before :meth:`start`)."""
        return f"127.0.0.1:{self._port}" if self._port else ""

    @property
    def thread(self) -> threading.Thread | None:
        """The thread that runs the proxy's event loop (None before :meth:`start`)."""
        return self._thread

    @property
    def connections(self) -> int:
        """How many client connections were accepted so far."""
        return self._connections

    @property
    def open_connections(self) -> int:
        """How many client connections are open now."""
        return len(self._links)

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded from clients to the upstream server."""
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded from the upstream server to clients."""
        return self._bytes_down

    @property
    def blackholed(self) -> bool:
        """Whether forwarding is stopped by :meth:`blackhole`."""
        return self._blackholed

    @property
    def current_delay(self) -> float:
        """The latency added to each forwarded chunk, in seconds."""
        return self._delay

    # -- faults ---------------------------------------------------------------

    def _latency(self, up: bool) -> float:
        """The delay for a chunk read now, going upstream (``up``) or back (a hook)."""
        return self._delay

    def _control(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._loop
        if loop is None or self._closed or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("FaultProxy is not running: start() it first, and not after close()")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(_CONTROL_TIMEOUT)

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every chunk forwarded, in both directions.

        A request/response round trip through the proxy then takes at least
        twice ``seconds`` longer. Bytes already in flight keep the delay they
        were read with. ``delay(0)`` removes it (as does :meth:`heal`).

        Raises:
            ValueError: ``seconds`` is negative.
            RuntimeError: the proxy is not running.
        """
        if not seconds >= 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds!r}")

        async def apply() -> None:
            self._delay = float(seconds)

        self._control(apply())

    def blackhole(self) -> None:
        """Stop forwarding in both directions, keeping every connection open.

        Bytes sent meanwhile are held (unread, in the kernel's buffers, as
        a network partition leaves them in TCP's retransmission queue) and
        delivered after :meth:`heal`. New connections are still accepted,
        but not connected upstream until :meth:`heal`.

        Raises:
            RuntimeError: the proxy is not running.
        """

        async def apply() -> None:
            self._blackholed = True
            self._flowing.clear()

        self._control(apply())

    def heal(self) -> None:
        """Forward normally again: no blackhole, no delay.

        Raises:
            RuntimeError: the proxy is not running.
        """

        async def apply() -> None:
            self._blackholed = False
            self._delay = 0.0
            self._flowing.set()

        self._control(apply())

    def reset(self) -> None:
        """Abort every open connection with a RST (SO_LINGER 0), on both sides.

        The proxy keeps listening: clients that reconnect are forwarded as
        usual (or held, while blackholed). Returns once every socket is closed.

        Raises:
            RuntimeError: the proxy is not running.
        """

        async def apply() -> None:
            for link in list(self._links):
                link.abort()
            tasks = list(self._link_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._control(apply())
