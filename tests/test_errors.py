"""Errors classified by what a retry can do (every aetcd exception class and gRPC status
mapped to ours), and bad input refused before I/O: pure, no etcd."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aetcd
import aetcd.exceptions
import grpc
import grpc.aio
import pytest

import aioelect
from aioelect import (
    AuthenticationFailed,
    ConfigError,
    EtcdError,
    EtcdUnavailable,
    PermissionDenied,
    RequestTooLarge,
)
from aioelect._config import (
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_LEASE_TTL,
    ElectorConfig,
    check_candidate_size,
    check_name,
    check_prefix,
    to_bytes,
)
from aioelect._errors import classify, map_errors

EPS = ["127.0.0.1:2379"]
MiB = 1024 * 1024

# -- every aetcd exception class maps to an aioelect one ---------------------------------

#: aetcd's exception classes (raised without a gRPC cause) and what each must become:
#: the class, and whether a retry may help.
AETCD_EXPECTED: dict[str, tuple[type[EtcdError], bool]] = {
    "ClientError": (EtcdError, False),
    "ConnectionFailedError": (EtcdUnavailable, True),
    "ConnectionTimeoutError": (EtcdUnavailable, True),
    "InternalError": (EtcdUnavailable, True),
    "InvalidArgumentError": (EtcdError, False),
    "UnauthenticatedError": (AuthenticationFailed, False),
    "PreconditionFailedError": (EtcdError, False),
    "DuplicateLeaseError": (EtcdError, False),
    "RevisionCompactedError": (EtcdError, True),
    "WatchTimeoutError": (EtcdUnavailable, True),
}


def _aetcd_exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(aetcd.exceptions, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == aetcd.exceptions.__name__
    ]


def _instance(cls: type[BaseException]) -> BaseException:
    if cls is aetcd.exceptions.RevisionCompactedError:
        return cls(41)
    return cls("something went wrong")


def test_every_aetcd_exception_class_is_expected() -> None:
    """The table below names every exception class aetcd defines (a new one fails here)."""
    assert {c.__name__ for c in _aetcd_exception_classes()} == set(AETCD_EXPECTED)


@pytest.mark.parametrize("cls", _aetcd_exception_classes(), ids=lambda c: c.__name__)
def test_every_aetcd_exception_maps_to_ours(cls: type[BaseException]) -> None:
    """Each aetcd exception becomes the right aioelect exception, chained; never a bare
    aetcd error, and never an AttributeError from the mapping itself."""
    expected, retryable = AETCD_EXPECTED[cls.__name__]
    original = _instance(cls)
    with pytest.raises(aioelect.AioelectError) as info, map_errors(EPS):
        raise original
    assert type(info.value) is expected
    assert info.value.__cause__ is original
    assert info.value.retryable is retryable


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_grpc_status_maps_to_ours(code: grpc.StatusCode) -> None:
    """Every gRPC status, bare or wrapped by aetcd, becomes an aioelect EtcdError."""
    rpc_error = _rpc_error(code, "details")
    for raised in (rpc_error, aetcd.ClientError("wrapped")):
        if raised is not rpc_error:
            raised.__cause__ = rpc_error
        with pytest.raises(EtcdError) as info, map_errors(EPS):
            raise raised
        assert info.value.__cause__ is raised


#: etcd's and gRPC's errors (code, details) and what they must become.
GRPC_CASES: list[tuple[grpc.StatusCode, str, type[EtcdError], bool]] = [
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed", EtcdUnavailable, True),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", EtcdUnavailable, True),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", EtcdUnavailable, True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", EtcdUnavailable, True),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests", EtcdError, True),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "mvcc: database space exceeded", EtcdError, False),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", RequestTooLarge, False),
    (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "grpc: received message larger than max (3145738 vs. 2097152)",
        RequestTooLarge,
        False,
    ),
    (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max (5242874 vs. 4194304)",
        EtcdError,
        False,
    ),
    (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Stream removed (CLIENT: Received message larger than max (5243153 vs. 4194304))",
        EtcdError,
        False,
    ),
    (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Sent message larger than max (5243153 vs. 4194304)",
        RequestTooLarge,
        False,
    ),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided", EtcdError, False),
    (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", PermissionDenied, False),
    (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: authentication failed, invalid user ID or password",
        AuthenticationFailed,
        False,
    ),
    (
        grpc.StatusCode.UNAUTHENTICATED,
        "etcdserver: invalid auth token",
        AuthenticationFailed,
        False,
    ),
    (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", EtcdError, False),
    (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL", EtcdError, False),
    (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
        EtcdError,
        True,
    ),
    (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: revision of auth store is old",
        EtcdError,
        True,
    ),
]


@pytest.mark.parametrize(("code", "details", "expected", "retryable"), GRPC_CASES)
def test_grpc_errors_by_what_a_retry_can_do(
    code: grpc.StatusCode, details: str, expected: type[EtcdError], retryable: bool
) -> None:
    """Retryable (unavailable, deadline, leader changed, too many requests) vs permanent
    (invalid argument, too large, permission, auth, lease not found): one table."""
    exc = classify(_rpc_error(code, details), EPS)
    assert type(exc) is expected
    assert exc.retryable is retryable
    assert details in str(exc)


def test_request_too_large_names_the_size_and_the_limit() -> None:
    """gRPC's own limit names both sizes; etcd's names neither: ours, then, from the call."""
    exc = classify(
        _rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "grpc: received message larger than max (3145738 vs. 2097152)",
        ),
        EPS,
    )
    assert isinstance(exc, RequestTooLarge)
    assert (exc.size, exc.limit) == (3145738, 2097152)
    assert "3145738" in str(exc) and "2097152" in str(exc)
    exc = classify(
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
        EPS,
        size=1_600_000,
        limit=DEFAULT_MAX_REQUEST_BYTES,
    )
    assert isinstance(exc, RequestTooLarge)
    assert (exc.size, exc.limit) == (1_600_000, DEFAULT_MAX_REQUEST_BYTES)
    assert "1600000" in str(exc) and str(DEFAULT_MAX_REQUEST_BYTES) in str(exc)


# -- bad input refused before I/O (no etcd needed) ----------------------------------------


def _config(**kwargs: Any) -> ElectorConfig:
    args: dict[str, Any] = {
        "ttl": 10,
        "renew_deadline": None,
        "keepalive_interval": None,
        "request_timeout": None,
        "connect_timeout": 1,
    }
    args.update(kwargs)
    return ElectorConfig.build(**args)


@pytest.mark.parametrize("ttl", [10**10, 10**20, 10**400, MAX_LEASE_TTL + 1])
def test_ttl_above_etcds_maximum_is_refused(ttl: int) -> None:
    """A TTL over etcd's MaxLeaseTTL is a ConfigError naming ttl and the maximum."""
    with pytest.raises(ConfigError, match="ttl") as info:
        _config(ttl=ttl)
    assert info.value.field == "ttl"
    if ttl < 10**300:
        assert str(MAX_LEASE_TTL) in str(info.value)


def test_ttl_at_etcds_maximum_is_accepted() -> None:
    """etcd's MaxLeaseTTL itself is allowed."""
    assert _config(ttl=MAX_LEASE_TTL).ttl == MAX_LEASE_TTL


@pytest.mark.parametrize("value", [0, 100, "1MiB", 1.5e6, True, 2**31])
def test_bad_max_request_bytes(value: object) -> None:
    """max_request_bytes must be an int within what etcd and gRPC can carry."""
    with pytest.raises(ConfigError) as info:
        _config(max_request_bytes=value)
    assert info.value.field == "max_request_bytes"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefix": "/app\ud800"}, "prefix"),
        ({"prefix": "/" + "p" * (DEFAULT_MAX_REQUEST_BYTES // 4)}, "prefix"),
        ({"prefix": "/" + "p" * 600_000, "max_request_bytes": 2 * MiB}, "prefix"),
        ({"ttl": 10**10}, "ttl"),
        ({"ttl": 10**20}, "ttl"),
        ({"max_request_bytes": 1}, "max_request_bytes"),
    ],
)
def test_elector_refuses_bad_input_without_io(kwargs: dict[str, Any], field: str) -> None:
    """The Elector's constructor refuses them (its endpoint does not even exist)."""
    with pytest.raises(ConfigError) as info:
        aioelect.Elector(endpoints="127.0.0.1:1", **kwargs)
    assert info.value.field == field


def test_a_larger_request_limit_allows_a_longer_prefix() -> None:
    """With max_request_bytes raised, a prefix up to a quarter of it is accepted."""
    prefix = "/" + "p" * 600_000
    assert check_prefix(prefix, 4 * MiB) == prefix


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
def test_unencodable_strings_are_config_errors(text: str) -> None:
    """A lone surrogate in a name, value or prefix: ConfigError, not UnicodeEncodeError."""
    for call, field in (
        (lambda: check_name(text), "name"),
        (lambda: to_bytes(text), "value"),
        (lambda: check_prefix("/" + text), "prefix"),
    ):
        with pytest.raises(ConfigError, match="UTF-8") as info:
            call()
        assert info.value.field == field


def test_candidate_size_against_the_request_limit() -> None:
    """A value must leave room for its key (thrice) under the request limit; 1 MiB fits
    etcd's default, and a larger limit allows larger values."""
    check_candidate_size("/app", "job", b"x" * MiB, DEFAULT_MAX_REQUEST_BYTES)
    with pytest.raises(ConfigError, match="max_request_bytes") as info:
        check_candidate_size("/" + "p" * 300_000, "job", b"x" * MiB, DEFAULT_MAX_REQUEST_BYTES)
    assert info.value.field == "value"
    check_candidate_size("/app", "job", b"x" * (3 * MiB), 4 * MiB)
    assert to_bytes(b"x" * (2 * MiB), limit=3 * MiB) == b"x" * (2 * MiB)
    with pytest.raises(ConfigError, match="at most"):
        to_bytes(b"x" * (MiB + 1))


@pytest.mark.parametrize("exc_type", [TimeoutError, asyncio.TimeoutError])
def test_a_local_timeout_is_an_unknown_outcome(exc_type: type[Exception]) -> None:
    """A local timeout (builtin or asyncio's, distinct on Python 3.10) is EtcdUnavailable."""
    with pytest.raises(EtcdUnavailable) as info, map_errors(EPS):
        raise exc_type()
    assert info.value.retryable
