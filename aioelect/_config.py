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
    "Duration",
    "ElectorConfig",
    "check_backoff",
    "check_name",
    "check_prefix",
    "duration",
    "to_bytes",
)

Duration: TypeAlias = float | int | timedelta
"""A duration in seconds, or a :class:`datetime.timedelta`."""

#: etcd's default maximum request size is 1.5 MiB; a value must leave room for the key.
MAX_VALUE_BYTES = 1024 * 1024


def duration(field: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` in seconds as a finite float, or raise ConfigError naming ``field``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
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
    if len(name.encode()) > 4096:
        raise ConfigError(field, "must be at most 4096 bytes in UTF-8")
    return name


def to_bytes(value: object, field: str = "value") -> bytes:
    """Validate a candidate value (str as UTF-8, or bytes) and return its bytes."""
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise ConfigError(field, f"must be str or bytes, not {type(value).__name__}")
    if len(data) > MAX_VALUE_BYTES:
        raise ConfigError(
            field,
            f"must be at most {MAX_VALUE_BYTES} bytes (etcd's request limit), got {len(data)}",
        )
    return data


def check_prefix(prefix: object) -> str:
    """Validate the key prefix: a non-empty str without NUL that does not end in ``/``."""
    if not isinstance(prefix, str):
        raise ConfigError("prefix", f"must be a str, not {type(prefix).__name__}")
    if not prefix:
        raise ConfigError("prefix", "must not be empty (e.g. '/myapp')")
    if prefix.endswith("/"):
        raise ConfigError("prefix", f"must not end with '/', got {prefix!r}")
    if "\x00" in prefix:
        raise ConfigError("prefix", "must not contain NUL")
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
    """

    ttl: float
    renew_deadline: float
    keepalive_interval: float
    request_timeout: float
    connect_timeout: float

    @classmethod
    def build(
        cls,
        *,
        ttl: object,
        renew_deadline: object | None,
        keepalive_interval: object | None,
        request_timeout: object | None,
        connect_timeout: object,
    ) -> ElectorConfig:
        """Validate the raw arguments and fill in the defaults derived from ``ttl``."""
        ttl_s = duration("ttl", ttl)
        if ttl_s < 1 or ttl_s != int(ttl_s):
            raise ConfigError("ttl", f"must be a whole number of seconds >= 1, got {ttl_s!r}")
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
        )
