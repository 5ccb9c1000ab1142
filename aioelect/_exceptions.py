"""The exceptions aioelect raises, grouped by what the caller does about them.

::

    AioelectError                  base of everything aioelect raises
    ├── LeadershipLost             the term ended while you held it: stop leader work
    ├── NotLeader                  a leader-only call was refused: you do not lead (now)
    ├── NoSuchCandidate            transfer target: no live candidate has that value
    ├── ElectorClosed              the elector was closed (or never entered)
    ├── ConfigError (ValueError)   bad argument: fix the call; names the field and what is allowed
    └── EtcdError                  etcd refused or failed a request
        ├── EtcdUnavailable        etcd could not be reached in time: retry later
        ├── AuthenticationFailed   wrong user name or password
        └── PermissionDenied       the etcd user lacks a permission (RBAC)

Errors of aetcd and gRPC are turned into these in one place
(``aioelect._connection.map_errors``), chained with ``raise ... from``.
Cancellation is never wrapped.
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
    """etcd refused or failed a request."""


class EtcdUnavailable(EtcdError):
    """etcd could not be reached in time.

    ``endpoints`` are the endpoints that were tried and ``cause`` says why
    (the gRPC status and its details, or a local timeout).
    """

    def __init__(self, endpoints: Sequence[str], cause: str) -> None:
        eps = ", ".join(endpoints) if endpoints else "(unknown endpoints)"
        super().__init__(f"etcd unavailable at {eps}: {cause}")
        self.endpoints = tuple(endpoints)
        self.cause = cause


class AuthenticationFailed(EtcdError):
    """etcd rejected the user name or password (or the token expired for good)."""


class PermissionDenied(EtcdError):
    """The etcd user is not allowed to touch a key aioelect needed."""
