"""Helpers for the tests (and tests/chaos): inspect etcd, and poll state a test cannot await."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import anyio

import aioelect
from aioelect._connection import KV, Connection
from aioelect._keys import prefix_range_end

ElectorFactory = Callable[..., Awaitable[aioelect.Elector]]
T = TypeVar("T")


async def keys_under(conn: Connection, prefix: str | bytes) -> list[KV]:
    """Every key under ``prefix`` (in create order)."""
    p = prefix if isinstance(prefix, bytes) else prefix.encode()
    return (await conn.range(p, prefix_range_end(p), sort_create="ascend")).kvs


async def live_leases(conn: Connection) -> set[int]:
    """The ids of every lease etcd holds."""
    return set(await conn.leases())


class _Poll:
    """One poll's deadline, and the failure to raise once it has passed."""

    def __init__(self, timeout: float, what: str | Callable[[], str]) -> None:
        self.timeout = timeout
        self.what = what
        self.deadline = time.monotonic() + timeout
        self.error: BaseException | None = None  # the last error retried

    def check_deadline(self) -> None:
        if time.monotonic() <= self.deadline:
            return
        what = self.what() if callable(self.what) else self.what
        message = f"{what} not reached within {self.timeout} s"
        if self.error is not None:
            message += f" (last error: {type(self.error).__name__}: {self.error})"
        raise AssertionError(message) from self.error


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    what: str | Callable[[], str] = ...,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
    interval: float = ...,
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T | None],
    timeout: float = ...,
    what: str | Callable[[], str] = ...,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
    interval: float = ...,
) -> T: ...
async def eventually(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    interval: float = 0.01,
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that.

    Only for state the test cannot await (etcd, another process, a thread);
    what the test itself causes is ordered with events. ``check`` is a plain or
    an async function; an exception of a type in ``retry_on`` counts as "not
    yet" (any other ends the poll). After ``timeout`` seconds: AssertionError
    naming ``what`` (a string, or a function called then for the details) and
    the last error retried.
    """
    poll = _Poll(timeout, what)
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except retry_on as exc:
            poll.error = exc
        else:
            if result:
                return result
        poll.check_deadline()
        await anyio.sleep(interval)


def eventually_blocking(
    check: Callable[[], T | None],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    interval: float = 0.02,
) -> T:
    """:func:`eventually` for a test without an event loop (it sleeps the thread)."""
    poll = _Poll(timeout, what)
    while True:
        try:
            result = check()
        except retry_on as exc:
            poll.error = exc
        else:
            if result:
                return result
        poll.check_deadline()
        time.sleep(interval)


async def watched(elector: aioelect.Elector, name: str) -> Any:
    """Make ``elector`` watch election ``name`` (read and followed) until it closes, as
    a campaign or an observer of it would: a test can then intercept what follows."""
    from aioelect._core import core_of

    mirror = core_of(elector).mirror
    view = mirror.use(name)
    await mirror.ready(view)
    return view
