"""The exceptions aioelect raises, grouped by what the caller does about them.

::

    AioelectError                  base of everything aioelect raises
    ├── LeadershipLost             the term ended while you held it: stop leader work
    ├── NotLeader                  a leader-only call was refused: you do not lead (now)
    ├── NoSuchCandidate            transfer target: no live candidate has that value
    ├── ElectorClosed              the elector was closed (or never entered)
    ├── ConfigError (ValueError)   bad argument: fix the call; names the field and what is allowed
    └── EtcdError                  etcd refused or failed a request (``retryable`` says
        │                          whether the same request may succeed later)
        ├── EtcdUnavailable        not reached in time, outcome unknown: retry later
        ├── AuthenticationFailed   wrong user name or password
        ├── PermissionDenied       the etcd user lacks a permission (RBAC)
        └── RequestTooLarge        a request over etcd's --max-request-bytes: never retried

Errors of aetcd and gRPC are turned into these in one place
(``aioelect._errors.map_errors``), chained with ``raise ... from``.
Cancellation is never wrapped.

Retryable errors (``EtcdUnavailable``; an ``EtcdError`` whose ``retryable``
is True, e.g. etcd's "too many requests") are retried with backoff inside the
campaign, keepalive and watch loops. Every other ``EtcdError`` is permanent:
a retry of the same request cannot help, so it is raised at once from the
call that caused it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = (
    "AioelectError",
    "AuthenticationFailed",
    "ConfigError",
    "ElectorClosed",
    "EtcdError",
    "EtcdUnavailable",
    "LeadershipLost",
    "NoSuchCandidate",
    "NotLeader",
    "PermissionDenied",
    "RequestTooLarge",
)


class AioelectError(Exception):
    """Base class of every error aioelect raises."""


class LeadershipLost(AioelectError):
    """The term ended while its holder was still using it.

    Raised out of ``async with elector.hold(...)`` when the term ended before
    the block did: the lease could not be renewed in time, the leader key was
    deleted or overwritten by someone else, or the session was lost.
    ``reason`` says which.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"leadership of election {name!r} lost: {reason}")
        self.name = name
        self.reason = reason


class NotLeader(AioelectError):
    """A leader-only operation was refused because this term no longer leads."""


class NoSuchCandidate(AioelectError):
    """No live candidate of the election has the value that was asked for."""


class ElectorClosed(AioelectError):
    """The elector is closed, or was never entered with ``async with``."""


class ConfigError(AioelectError, ValueError):
    """An argument is invalid; the message names the field and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class EtcdError(AioelectError):
    """etcd refused or failed a request.

    ``retryable`` is True when the same request may succeed later (etcd was
    busy, unreachable, or between leaders); False when it cannot (an invalid
    or too large request, a missing permission, bad credentials).
    """

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class EtcdUnavailable(EtcdError):
    """etcd could not be reached in time: the request may or may not have been applied.

    ``endpoints`` are the endpoints that were tried and ``cause`` says why
    (the gRPC status and its details, or a local timeout).
    """

    retryable = True

    def __init__(self, endpoints: Sequence[str], cause: str) -> None:
        eps = ", ".join(endpoints) if endpoints else "(unknown endpoints)"
        super().__init__(f"etcd unavailable at {eps}: {cause}")
        self.endpoints = tuple(endpoints)
        self.cause = cause


class AuthenticationFailed(EtcdError):
    """etcd rejected the user name or password (or the token expired for good)."""


class PermissionDenied(EtcdError):
    """The etcd user is not allowed to touch a key aioelect needed."""


class RequestTooLarge(EtcdError):
    """A request is larger than etcd accepts (its ``--max-request-bytes``).

    Nothing was applied, and the same request can never succeed: it is not
    retried. ``size`` is the request's size in bytes and ``limit`` the limit
    it exceeded (either None when etcd did not say). Raised before any I/O
    when the request is over the Elector's ``max_request_bytes``; raise that
    option only for an etcd started with a larger ``--max-request-bytes``.
    """

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
