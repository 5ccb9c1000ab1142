"""The slice of aetcd (which has no type hints) that aioelect uses, typed.

``_connection.py`` reaches aetcd only through this module, so that mypy and
pyright both see a misspelled or missing name (mypy would otherwise treat
all of aetcd as ``Any``). At run time every name is aetcd's own: a name
aetcd lacks fails at import, not in an error path.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import aetcd as _aetcd
from aetcd import rpc as _rpc
from aetcd import transactions as _transactions

__all__ = (
    "BaseCompare",
    "Client",
    "ClientError",
    "ConnectionFailedError",
    "ConnectionTimeoutError",
    "DuplicateLeaseError",
    "EtcdClient",
    "Get",
    "InternalError",
    "InvalidArgumentError",
    "KVStub",
    "LeaseStub",
    "MaintenanceStub",
    "OPERATIONS",
    "PreconditionFailedError",
    "RevisionCompactedError",
    "StreamCall",
    "UnaryMethod",
    "UnauthenticatedError",
    "Watcher",
    "WatchTimeoutError",
    "rpc",
)


class UnaryMethod(Protocol):
    """A unary method of a gRPC stub (``stub.Range(request, timeout=..., metadata=...)``)."""

    def __call__(
        self, request: Any, *, timeout: float | None = ..., metadata: Any = ...
    ) -> Awaitable[Any]: ...


class StreamCall(Protocol):
    """A bidirectional gRPC stream call (grpc.aio's ``StreamStreamCall``)."""

    def write(self, request: Any) -> Awaitable[None]: ...

    def read(self) -> Awaitable[Any]: ...

    def cancel(self) -> bool: ...


class KVStub(Protocol):
    """etcd's KV service."""

    Range: UnaryMethod
    Txn: UnaryMethod
    Compact: UnaryMethod


class LeaseStub(Protocol):
    """etcd's Lease service."""

    LeaseGrant: UnaryMethod
    LeaseRevoke: UnaryMethod
    LeaseTimeToLive: UnaryMethod
    LeaseLeases: UnaryMethod

    def LeaseKeepAlive(self, *, metadata: Any = ...) -> StreamCall: ...


class MaintenanceStub(Protocol):
    """etcd's Maintenance service."""

    Status: UnaryMethod
    Defragment: UnaryMethod


class EtcdClient(Protocol):
    """What aioelect uses of an ``aetcd.Client`` (its own or the caller's)."""

    channel: Any
    metadata: Any
    kvstub: KVStub
    leasestub: LeaseStub
    maintenancestub: MaintenanceStub
    _username: str | None

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def _ops_to_requests(self, ops: list[Any]) -> Any: ...


if TYPE_CHECKING:

    class ClientError(Exception): ...

    class ConnectionFailedError(ClientError): ...

    class ConnectionTimeoutError(ClientError): ...

    class InternalError(ClientError): ...

    class InvalidArgumentError(ClientError): ...

    class UnauthenticatedError(ClientError): ...

    class PreconditionFailedError(ClientError): ...

    class DuplicateLeaseError(ClientError): ...

    class RevisionCompactedError(ClientError):
        compacted_revision: int

        def __init__(self, compacted_revision: int) -> None: ...

    class WatchTimeoutError(ClientError): ...

    class BaseCompare:
        """aetcd's transaction compares."""

        def build_message(self) -> Any: ...

    #: aetcd's client class (untyped): subclassed by aioelect's own client.
    Client: Any
    #: aetcd's result of one get (``Get(header, kv)``).
    Get: Any
    #: aetcd's watcher (one per client; aioelect's client builds it on connect).
    Watcher: Any
    #: aetcd's generated protobuf messages and stubs (built at run time, untyped).
    rpc: Any
else:
    from aetcd.exceptions import (
        ClientError,
        ConnectionFailedError,
        ConnectionTimeoutError,
        DuplicateLeaseError,
        InternalError,
        InvalidArgumentError,
        PreconditionFailedError,
        RevisionCompactedError,
        UnauthenticatedError,
        WatchTimeoutError,
    )

    Client = _aetcd.Client
    Get = _aetcd.Get
    Watcher = _aetcd.Watcher
    rpc = _rpc
    BaseCompare = _transactions.BaseCompare

#: aetcd's transaction operations (``client.transactions.put/get/delete/txn``).
OPERATIONS: tuple[type[Any], ...] = (
    _transactions.Put,
    _transactions.Get,
    _transactions.Delete,
    _transactions.Txn,
)
