"""Argument validation: durations, names, values, prefixes and the elector's settings.

Everything here is pure (no I/O) and raises :class:`ConfigError` naming the
field and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeAlias

from ._exceptions import ConfigError

__all__ = (
    "DEFAULT_MAX_REQUEST_BYTES",
    "MAX_LEASE_TTL",
    "Duration",
    "ElectorConfig",
    "check_backoff",
    "check_candidate_size",
    "check_max_request_bytes",
    "check_name",
    "check_prefix",
    "duration",
    "to_bytes",
    "value_limit",
)

Duration: TypeAlias = float | int | timedelta
"""A duration in seconds, or a :class:`datetime.timedelta`."""

#: etcd's default --max-request-bytes (1.5 MiB): the largest request it accepts.
DEFAULT_MAX_REQUEST_BYTES = 1_572_864
#: The bounds aioelect accepts for max_request_bytes: etcd's gRPC server takes
#: --max-request-bytes + 512 KiB, and gRPC's messages are below 2 GiB.
MIN_MAX_REQUEST_BYTES = 4096
MAX_MAX_REQUEST_BYTES = 2**31 - 1 - 512 * 1024
#: etcd's MaxLeaseTTL: the longest lease TTL it grants, in seconds.
MAX_LEASE_TTL = 9_000_000_000
#: A candidate key is ``{prefix}/{name}/{lease id}``: "/", "/" and up to 16 hex digits.
_KEY_EXTRA = 18
#: What a request adds around the keys and value it carries (header, ops, lease), with room.
_REQUEST_OVERHEAD = 256


def value_limit(max_request_bytes: int) -> int:
    """The largest candidate value: two thirds of the request limit (1 MiB of etcd's
    default 1.5 MiB), leaving the rest for the key, which a request may carry thrice."""
    return max_request_bytes * 2 // 3


#: The largest value at etcd's default request limit (1 MiB).
MAX_VALUE_BYTES = value_limit(DEFAULT_MAX_REQUEST_BYTES)


def _encode(text: str, field: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ConfigError(
            field,
            f"must be encodable as UTF-8 (no lone surrogates), got {text[:80]!r}: {exc.reason} "
            f"at position {exc.start}",
        ) from None


def check_max_request_bytes(value: object) -> int:
    """Validate ``max_request_bytes``: a whole number of bytes in etcd's range."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(
            "max_request_bytes", f"must be an int (bytes), not {type(value).__name__}"
        )
    if not MIN_MAX_REQUEST_BYTES <= value <= MAX_MAX_REQUEST_BYTES:
        raise ConfigError(
            "max_request_bytes",
            f"must be between {MIN_MAX_REQUEST_BYTES} and {MAX_MAX_REQUEST_BYTES} bytes "
            f"(etcd's --max-request-bytes; its default is {DEFAULT_MAX_REQUEST_BYTES}), "
            f"got {value}",
        )
    return value


def check_candidate_size(
    prefix: str, name: str, value: bytes, max_request_bytes: int, field: str = "value"
) -> None:
    """Refuse a candidate whose requests would be over etcd's request limit.

    The largest request of a campaign carries the candidate key three times
    (compare, put, get) and the value once.
    """
    key = len(prefix.encode()) + len(name.encode()) + _KEY_EXTRA
    room = max_request_bytes - 3 * key - _REQUEST_OVERHEAD
    if len(value) > room:
        raise ConfigError(
            field,
            f"must be at most {max(0, room)} bytes with this prefix ({len(prefix.encode())} "
            f"bytes) and name ({len(name.encode())} bytes) under max_request_bytes="
            f"{max_request_bytes} (etcd's --max-request-bytes), got {len(value)}",
        )


def duration(field: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` in seconds as a finite float, or raise ConfigError naming ``field``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            raise ConfigError(field, "must be finite, got an int too large for a float") from None
    else:
        raise ConfigError(
            field, f"must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(field, f"must be finite and {bound} seconds, got {seconds!r}")
    return seconds


def check_backoff(field: str, value: object) -> tuple[float, float]:
    """Validate a back-off's bounds: a pair ``(min, max)`` of durations, ``0 < min <= max``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(
            field, f"must be a pair (min, max) of seconds or timedeltas, got {value!r}"
        )
    low = duration(field, value[0])
    high = duration(field, value[1])
    if low > high:
        raise ConfigError(field, f"min must not exceed max, got ({low:g}, {high:g}) s")
    return low, high


def check_name(name: object, field: str = "name") -> str:
    """Validate an election name: a non-empty str without ``/`` or NUL."""
    if not isinstance(name, str):
        raise ConfigError(field, f"must be a str, not {type(name).__name__}")
    if not name:
        raise ConfigError(field, "must not be empty")
    if "/" in name or "\x00" in name:
        raise ConfigError(field, f"must not contain '/' or NUL, got {name!r}")
    if len(_encode(name, field)) > 4096:
        raise ConfigError(field, "must be at most 4096 bytes in UTF-8")
    return name


def to_bytes(value: object, field: str = "value", limit: int = MAX_VALUE_BYTES) -> bytes:
    """Validate a candidate value (str as UTF-8, or bytes) and return its bytes.

    ``limit``: the most bytes allowed (:func:`value_limit` of the request limit).
    """
    if isinstance(value, str):
        data = _encode(value, field)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise ConfigError(field, f"must be str or bytes, not {type(value).__name__}")
    if len(data) > limit:
        raise ConfigError(
            field,
            f"must be at most {limit} bytes (two thirds of etcd's request limit, "
            f"max_request_bytes), got {len(data)}",
        )
    return data


def check_prefix(prefix: object, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> str:
    """Validate the key prefix: a non-empty str without NUL that does not end in ``/``,
    encodable as UTF-8, and at most a quarter of ``max_request_bytes`` long (every
    key starts with it, and a request may carry a key thrice and a value)."""
    if not isinstance(prefix, str):
        raise ConfigError("prefix", f"must be a str, not {type(prefix).__name__}")
    if not prefix:
        raise ConfigError("prefix", "must not be empty (e.g. '/myapp')")
    if prefix.endswith("/"):
        raise ConfigError("prefix", f"must not end with '/', got {prefix!r}")
    if "\x00" in prefix:
        raise ConfigError("prefix", "must not contain NUL")
    size = len(_encode(prefix, "prefix"))
    if size > max_request_bytes // 4:
        raise ConfigError(
            "prefix",
            f"must be at most {max_request_bytes // 4} bytes in UTF-8 (a quarter of "
            f"max_request_bytes={max_request_bytes}, etcd's --max-request-bytes), got {size}",
        )
    return prefix


@dataclass(frozen=True)
class ElectorConfig:
    """The elector's validated timing settings, all in seconds.

    Attributes:
        ttl: the session lease's TTL. A crashed process's elections are free
            again at most this long after its last renewal (plus etcd's expiry
            scan, up to 0.5 s). Shorter means faster crash failover and more
            keepalive traffic.
        renew_deadline: how long after the last successful renewal (measured
            from when it was sent) a term stays valid. Must be below ``ttl``
            so a leader stops before etcd can expire its lease.
        keepalive_interval: time between renewals; below ``renew_deadline``
            so that a few renewals can fail before the term ends.
        request_timeout: deadline of each etcd request.
        connect_timeout: how long entering the elector may take.
        max_request_bytes: the largest request etcd accepts (its
            ``--max-request-bytes``); larger requests are refused before I/O.
    """

    ttl: float
    renew_deadline: float
    keepalive_interval: float
    request_timeout: float
    connect_timeout: float
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    @classmethod
    def build(
        cls,
        *,
        ttl: object,
        renew_deadline: object | None,
        keepalive_interval: object | None,
        request_timeout: object | None,
        connect_timeout: object,
        max_request_bytes: object = DEFAULT_MAX_REQUEST_BYTES,
    ) -> ElectorConfig:
        """Validate the raw arguments and fill in the defaults derived from ``ttl``."""
        ttl_s = duration("ttl", ttl)
        if ttl_s < 1 or ttl_s != int(ttl_s) or ttl_s > MAX_LEASE_TTL:
            raise ConfigError(
                "ttl",
                f"must be a whole number of seconds from 1 to {MAX_LEASE_TTL} (etcd's "
                f"maximum lease TTL), got {ttl_s!r}",
            )
        rd = ttl_s * 2 / 3 if renew_deadline is None else duration("renew_deadline", renew_deadline)
        if not rd < ttl_s:
            raise ConfigError(
                "renew_deadline", f"must be less than ttl ({ttl_s:g} s), got {rd:g} s"
            )
        ka = (
            ttl_s / 3
            if keepalive_interval is None
            else duration("keepalive_interval", keepalive_interval)
        )
        if not ka < rd:
            raise ConfigError(
                "keepalive_interval",
                f"must be less than renew_deadline ({rd:g} s), got {ka:g} s",
            )
        rt = (
            min(5.0, rd)
            if request_timeout is None
            else duration("request_timeout", request_timeout)
        )
        ct = duration("connect_timeout", connect_timeout)
        return cls(
            ttl=ttl_s,
            renew_deadline=rd,
            keepalive_interval=ka,
            request_timeout=rt,
            connect_timeout=ct,
            max_request_bytes=check_max_request_bytes(max_request_bytes),
        )
