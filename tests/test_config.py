"""Pure logic without I/O: settings validation and the key layout (table-driven)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import aioelect
from aioelect._config import (
    ElectorConfig,
    check_backoff,
    check_name,
    check_prefix,
    duration,
    to_bytes,
)
from aioelect._keys import candidate_key, election_prefix, prefix_range_end, split_key


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": 1.5}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"ttl": "10"}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": 10, "renew_deadline": 10}, "renew_deadline"),
        ({"ttl": 10, "renew_deadline": 11}, "renew_deadline"),
        ({"ttl": 10, "renew_deadline": 0}, "renew_deadline"),
        ({"ttl": 10, "renew_deadline": 3, "keepalive_interval": 3}, "keepalive_interval"),
        ({"ttl": 10, "request_timeout": -1}, "request_timeout"),
        ({"ttl": 10, "connect_timeout": 0}, "connect_timeout"),
    ],
)
def test_bad_timings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    """Each invalid timing raises ConfigError (a ValueError) naming its field."""
    args: dict[str, object] = {
        "renew_deadline": None,
        "keepalive_interval": None,
        "request_timeout": None,
        "connect_timeout": 10,
    }
    args.update(kwargs)
    with pytest.raises(aioelect.ConfigError) as info:
        ElectorConfig.build(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert isinstance(info.value, ValueError)


def test_defaults_derive_from_ttl() -> None:
    """renew_deadline defaults to 2/3 of the TTL and keepalives to 1/3; timedelta works."""
    cfg = ElectorConfig.build(
        ttl=timedelta(seconds=9),
        renew_deadline=None,
        keepalive_interval=None,
        request_timeout=None,
        connect_timeout=timedelta(seconds=1),
    )
    assert (cfg.ttl, cfg.renew_deadline, cfg.keepalive_interval) == (9.0, 6.0, 3.0)
    assert cfg.request_timeout == 5.0
    assert cfg.connect_timeout == 1.0


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("job", True),
        ("a b", True),
        ("é", True),
        ("", False),
        ("a/b", False),
        ("a\x00", False),
        (None, False),
        (b"job", False),
        ("x" * 5000, False),
    ],
)
def test_names(name: object, ok: bool) -> None:
    """Names are non-empty str without '/' or NUL."""
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(aioelect.ConfigError, match="name"):
            check_name(name)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("v", b"v"), (b"\x00\xff", b"\x00\xff"), (bytearray(b"x"), b"x"), ("é", "é".encode())],
)
def test_values(value: object, expected: bytes) -> None:
    """Values are str (UTF-8) or bytes."""
    assert to_bytes(value) == expected


@pytest.mark.parametrize("value", [1, None, b"x" * (1024 * 1024 + 1), ["v"]])
def test_bad_values(value: object) -> None:
    """Other types and values over etcd's request limit are refused, naming the field."""
    with pytest.raises(aioelect.ConfigError, match=r"^value:"):
        to_bytes(value)


@pytest.mark.parametrize(
    ("prefix", "ok"), [("/app", True), ("app", True), ("", False), ("/app/", False), (3, False)]
)
def test_prefixes(prefix: object, ok: bool) -> None:
    """Prefixes are non-empty and do not end in '/'."""
    if ok:
        assert check_prefix(prefix) == prefix
    else:
        with pytest.raises(aioelect.ConfigError, match=r"^prefix:"):
            check_prefix(prefix)


def test_duration_accepts_timedelta_and_numbers() -> None:
    """Durations are seconds as numbers or timedelta; negatives, NaN and others are refused."""
    assert duration("x", 1) == 1.0
    assert duration("x", timedelta(milliseconds=1500)) == 1.5
    for bad in (-1, float("nan"), "1", None):
        with pytest.raises(aioelect.ConfigError, match=r"^x:"):
            duration("x", bad)


def test_key_layout_matches_go() -> None:
    """Keys are {prefix}/{name}/{lease hex}, as etcd's Go concurrency.Election writes them."""
    assert candidate_key("/app", "job", 0x694D8B0A1234) == b"/app/job/694d8b0a1234"
    assert election_prefix("/app", "job") == b"/app/job/"
    assert split_key(b"/app/", b"/app/job/694d") == "job"
    assert split_key(b"/app/", b"/app/job") is None
    assert split_key(b"/app/", b"/other/job/1") is None
    assert split_key(b"/app/", b"/app//1") is None


@pytest.mark.parametrize(
    ("prefix", "end"), [(b"/a/", b"/a0"), (b"a\xff", b"b"), (b"\xff\xff", b"\x00")]
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    """The range end of a prefix is the prefix with its last non-0xff byte incremented."""
    assert prefix_range_end(prefix) == end


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ((1, 30), (1.0, 30.0)),
        ((0.05, 0.05), (0.05, 0.05)),
        ([0.5, timedelta(seconds=2)], (0.5, 2.0)),
        ((1,), "pair"),
        ((1, 2, 3), "pair"),
        (5, "pair"),
        ("1,2", "pair"),
        ((0, 1), "> 0"),
        ((1, -1), "> 0"),
        ((1, float("nan")), "finite"),
        ((3, 2), "min must not exceed max"),
        ((True, 2), "seconds or a timedelta"),
    ],
)
def test_check_backoff(value: object, expected: tuple[float, float] | str) -> None:
    """A back-off's bounds are a pair of positive durations, min <= max; errors name the field."""
    if isinstance(expected, tuple):
        assert check_backoff("error_backoff", value) == expected
        return
    with pytest.raises(aioelect.ConfigError, match=expected) as info:
        check_backoff("error_backoff", value)
    assert info.value.field == "error_backoff"
