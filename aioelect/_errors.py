"""Errors and cancellation: aetcd's and gRPC's errors mapped to ours, and grpc.aio's
cancellation bridged to anyio's cancel scopes.

:func:`classify` is the one table from a transport error to an aioelect error,
by what a retry can do (see :mod:`._exceptions`); :func:`map_errors` applies
it, chained with ``raise ... from``. grpc.aio replaces a task's cancellation
by a ``CancelledError`` of its own that anyio's scopes do not recognise:
:func:`grpc_await` lets the enclosing scope deliver its own instead, and
:func:`scope_cancellation_in_disguise` and :func:`no_task_cancel` tell, after
the fact, whether a bare ``CancelledError`` was a scope's.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import anyio
import anyio.lowlevel
import grpc
import grpc.aio

from . import _aetcd as aetcd
from ._exceptions import (
    AuthenticationFailed,
    EtcdError,
    EtcdUnavailable,
    PermissionDenied,
    RequestTooLarge,
)

__all__ = (
    "classify",
    "grpc_await",
    "map_errors",
    "no_task_cancel",
    "scope_cancellation_in_disguise",
)

T = TypeVar("T")

#: Codes after which a request's outcome is unknown (it may have been applied):
#: etcd was not reached, did not answer in time, or was between leaders
#: ("leader changed", "no leader", "request timed out" are UNAVAILABLE).
#: INTERNAL is how grpc-core reports a broken HTTP/2 stream.
_UNKNOWN_OUTCOME_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

#: gRPC's "message larger than max (SIZE vs. LIMIT)".
_LARGER_THAN_MAX = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


async def grpc_await(awaitable: Awaitable[T]) -> T:
    """Await a grpc.aio call so that cancellation works with anyio cancel scopes.

    When its task is cancelled, grpc.aio raises a new ``CancelledError`` that
    lacks the message anyio's cancel scopes recognise theirs by, so a scope
    would let it escape. After such an error, while an enclosing scope is
    cancelled, checkpoints let it deliver its own cancellation (anyio delivers
    it from a callback that a single checkpoint may miss); after a plain
    ``Task.cancel()`` the error is re-raised as it is.
    """
    try:
        return await awaitable
    except asyncio.CancelledError:
        for _ in range(1000):  # bounded: anyio delivers within a few loop turns
            if anyio.current_effective_deadline() != -math.inf:
                break  # no enclosing scope is cancelled: a plain Task.cancel()
            await anyio.lowlevel.checkpoint()
        raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").strip()
        return f"{exc.code().name}: {details}" if details else exc.code().name
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _etcd_error(endpoints: Sequence[str], text: str, *, retryable: bool = False) -> EtcdError:
    return EtcdError(f"etcd at {', '.join(endpoints)}: {text}", retryable=retryable)


def _too_large(
    endpoints: Sequence[str], text: str, size: int | None, limit: int | None
) -> RequestTooLarge:
    match = _LARGER_THAN_MAX.search(text)
    if match is not None:  # gRPC's own limit, before etcd's: it names both sizes
        size, limit = int(match.group(1)), int(match.group(2))
    what = "a request" if size is None else f"a request of {size} bytes"
    bound = "etcd's request limit" if limit is None else f"the limit of {limit} bytes"
    return RequestTooLarge(
        f"etcd at {', '.join(endpoints)} refused {what}: over {bound} "
        f"(etcd's --max-request-bytes; nothing was applied) ({text})",
        size=size,
        limit=limit,
    )


def classify(
    exc: BaseException,
    endpoints: Sequence[str],
    *,
    size: int | None = None,
    limit: int | None = None,
) -> EtcdError:
    """The aioelect error for an aetcd or gRPC error (or a local timeout).

    One table, by what a retry can do (see ``_exceptions``): ``EtcdUnavailable``
    when the outcome is unknown; ``RequestTooLarge``, ``AuthenticationFailed``,
    ``PermissionDenied`` and permanent ``EtcdError`` when a retry cannot help;
    a retryable ``EtcdError`` when etcd refused for now (too many requests, an
    old auth revision, a compacted revision). ``size`` and ``limit`` describe
    the request, for ``RequestTooLarge``.
    """
    cause = exc.__cause__ if isinstance(exc, aetcd.ClientError) and exc.__cause__ else exc
    if isinstance(cause, grpc.aio.AioRpcError):
        code = cause.code()
        text = _describe(cause)
        details = cause.details() or ""
        if code == grpc.StatusCode.UNAUTHENTICATED or (
            code == grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in text
        ):
            return AuthenticationFailed(f"etcd at {', '.join(endpoints)}: {text}")
        if code == grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in text:
            # etcd has auth enabled and the request carried no token.
            return AuthenticationFailed(
                f"etcd at {', '.join(endpoints)} requires authentication: "
                f"give a username and password ({text})"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return PermissionDenied(f"etcd at {', '.join(endpoints)}: {text}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Received message larger" in details:
            # grpc-core's receive limit (a caller's client: ours has none): a response
            # too large. (etcd's Go server says "received", in lower case, of a request.)
            return _etcd_error(endpoints, f"response over the client's receive limit: {text}")
        if "request is too large" in details or (
            # etcd's gRPC server refuses more than --max-request-bytes + 512 KiB itself
            # ("grpc: received message larger than max"); grpc-core refuses to send
            # more than its send limit ("Sent message larger than max").
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details
        ):
            return _too_large(endpoints, text, size, limit)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # "too many requests" is retryable; "database space exceeded" needs an operator.
            return _etcd_error(endpoints, text, retryable="space exceeded" not in details)
        if code in _UNKNOWN_OUTCOME_CODES:
            return EtcdUnavailable(endpoints, text)
        if code == grpc.StatusCode.INVALID_ARGUMENT and "auth store is old" in details:
            return _etcd_error(endpoints, text, retryable=True)  # re-read auth, retry
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            return _etcd_error(endpoints, text, retryable=True)  # read again at a new revision
        # INVALID_ARGUMENT, NOT_FOUND (lease not found), FAILED_PRECONDITION (lease
        # exists), OUT_OF_RANGE (TTL too large, future revision), DATA_LOSS, ...
        return _etcd_error(endpoints, text)
    if isinstance(
        exc,
        (
            aetcd.ConnectionFailedError,
            aetcd.ConnectionTimeoutError,
            aetcd.WatchTimeoutError,
            aetcd.InternalError,
            TimeoutError,
            asyncio.TimeoutError,  # not TimeoutError on Python 3.10
        ),
    ):
        return EtcdUnavailable(endpoints, _describe(exc))
    if isinstance(exc, aetcd.UnauthenticatedError):
        return AuthenticationFailed(f"etcd at {', '.join(endpoints)}: {_describe(exc)}")
    if isinstance(exc, aetcd.InvalidArgumentError) and "request is too large" in str(exc):
        return _too_large(endpoints, _describe(exc), size, limit)
    if isinstance(exc, aetcd.RevisionCompactedError):
        return _etcd_error(endpoints, _describe(exc), retryable=True)
    return _etcd_error(endpoints, _describe(exc))


@contextmanager
def map_errors(
    endpoints: Sequence[str], *, size: int | None = None, limit: int | None = None
) -> Iterator[None]:
    """Turn aetcd and gRPC errors raised inside into aioelect's, chained (see :func:`classify`)."""
    try:
        yield
    except (grpc.aio.AioRpcError, aetcd.ClientError, TimeoutError, asyncio.TimeoutError) as exc:
        raise classify(exc, endpoints, size=size, limit=limit) from exc
    except asyncio.InvalidStateError as exc:  # a write to a stream that already ended
        raise EtcdUnavailable(endpoints, "stream already closed") from exc


def scope_cancellation_in_disguise(scope: anyio.CancelScope) -> bool:
    """Whether a CancelledError that escaped ``scope`` (already exited) is its own.

    For a scope that bounds user code (e.g. ``on_stepped_down`` cut short at
    the TTL): grpc.aio turns the scope's cancellation into a bare
    CancelledError, which the scope lets through. It is the scope's own when
    the scope was cancelled, no enclosing scope (up to a shield) is cancelled,
    and nobody called ``Task.cancel()``. A cancelled enclosing scope hidden by
    a shield is delivered again by anyio once the shield is left. Python 3.10
    has no ``Task.cancelling()``: there a ``Task.cancel()`` landing in the
    same instant as the scope's own cancellation cannot be told apart and is
    taken for the scope's (as in :func:`cancellation_was_ours`).
    """
    if not scope.cancel_called or anyio.current_effective_deadline() == -math.inf:
        return False
    return no_task_cancel()


def no_task_cancel() -> bool:
    """Whether nobody called ``Task.cancel()`` on the current task (always True on
    Python 3.10, which cannot tell).

    On 3.10 a Task may still have ``cancelling()`` (e.g. the backport of
    ``asyncio.Runner`` that pytest-asyncio uses makes such Tasks), but anyio
    cancels its scopes with ``Task.cancel()`` there and only calls ``uncancel()``
    on 3.11+: the count includes the scopes' own cancellations and means nothing.
    """
    if sys.version_info < (3, 11):
        return True
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0
