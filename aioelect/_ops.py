"""Builders of etcd's raw protobuf compares, ops and transactions (pure, no I/O).

aioelect sends raw ``etcdserverpb`` messages (aetcd's own builders cannot
express a range's limit, sort or create-revision bounds): these functions
make them, and turn a caller's aetcd compares and operations into them.
:class:`~._connection.Connection` exposes each as a static method too
(``conn.op_put(...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _aetcd as aetcd
from ._aetcd import rpc
from ._exceptions import ConfigError

__all__ = (
    "cmp_create",
    "op_created_before",
    "op_delete",
    "op_first",
    "op_get",
    "op_put",
    "op_range",
    "txn_request",
    "txn_results",
    "user_compares",
    "user_ops",
)


def cmp_create(key: bytes, revision: int, op: str = "==") -> Any:
    """A compare on a key's create revision (0 means the key does not exist)."""
    result = {
        "==": rpc.Compare.EQUAL,
        "!=": rpc.Compare.NOT_EQUAL,
        "<": rpc.Compare.LESS,
        ">": rpc.Compare.GREATER,
    }[op]
    return rpc.Compare(key=key, result=result, target=rpc.Compare.CREATE, create_revision=revision)


def op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    """A put op."""
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def op_get(key: bytes) -> Any:
    """A get op of one key."""
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def op_range(key: bytes, range_end: bytes, limit: int = 0) -> Any:
    """A range op of ``[key, range_end)``, at most ``limit`` keys (0: all)."""
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=range_end, limit=limit))


def op_first(key: bytes, range_end: bytes) -> Any:
    """A range op returning the key with the lowest create revision in the range."""
    return rpc.RequestOp(
        request_range=rpc.RangeRequest(
            key=key,
            range_end=range_end,
            limit=1,
            sort_target=rpc.RangeRequest.CREATE,
            sort_order=rpc.RangeRequest.ASCEND,
        )
    )


def op_created_before(key: bytes, range_end: bytes, create_revision: int) -> Any:
    """A range op returning one key (name only) of the range created before
    ``create_revision``, if there is one. (Not ``count_only``: etcd counts
    before it filters by create revision.)"""
    return rpc.RequestOp(
        request_range=rpc.RangeRequest(
            key=key,
            range_end=range_end,
            limit=1,
            keys_only=True,
            max_create_revision=create_revision - 1,
        )
    )


def op_delete(key: bytes) -> Any:
    """A delete op of one key."""
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def txn_request(compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any]) -> Any:
    """A nested transaction op."""
    return rpc.RequestOp(
        request_txn=rpc.TxnRequest(
            compare=list(compare), success=list(success), failure=list(failure)
        )
    )


def user_ops(client: Any, ops: object, field: str = "success") -> list[Any]:
    """Turn aetcd transaction operations (``client.transactions.put`` ...) into raw ops.

    Raises:
        ConfigError: ``ops`` is not a sequence of aetcd operations (names ``field``).
    """
    if isinstance(ops, (str, bytes)) or not isinstance(ops, Sequence):
        raise ConfigError(field, f"must be a list of aetcd operations, not {type(ops).__name__}")
    for op in ops:
        if not isinstance(op, aetcd.OPERATIONS):
            raise ConfigError(
                field,
                "each operation must be client.transactions.put/get/delete/txn(...), "
                f"not {type(op).__name__}",
            )
    try:
        return list(client._ops_to_requests(list(ops)))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(field, f"invalid operation: {exc}") from exc


def user_compares(compares: object, field: str = "compare") -> list[Any]:
    """Turn aetcd compares (``client.transactions.value(k) == v`` ...) into raw ones.

    Raises:
        ConfigError: ``compares`` is not a sequence of aetcd compares (names ``field``).
    """
    if isinstance(compares, (str, bytes)) or not isinstance(compares, Sequence):
        raise ConfigError(field, f"must be a list of aetcd compares, not {type(compares).__name__}")
    out = []
    for c in compares:
        if not isinstance(c, aetcd.BaseCompare):
            raise ConfigError(
                field,
                "each compare must be like client.transactions.value(key) == value, "
                f"not {type(c).__name__}",
            )
        try:
            out.append(c.build_message())
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(field, f"invalid compare: {exc}") from exc
    return out


def txn_results(resp: Any) -> tuple[bool, list[Any]]:
    """Convert a (nested) TxnResponse the way ``aetcd.Client.transaction`` does."""
    out: list[Any] = []
    for r in resp.responses:
        kind = r.WhichOneof("response")
        if kind == "response_range":
            out.append([(kv.value, aetcd.Get(resp.header, kv)) for kv in r.response_range.kvs])
        else:
            out.append(r)
    return bool(resp.succeeded), out
