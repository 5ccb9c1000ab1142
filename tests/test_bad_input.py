"""Bad input against a real etcd: clear errors, and nothing left behind in etcd."""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers import ElectorFactory, keys_under

import aioelect
from aioelect._connection import Connection
from aioelect.testing import EtcdServer

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("", "v", "name"),
        ("a/b", "v", "name"),
        ("a\x00b", "v", "name"),
        (7, "v", "name"),
        ("job", b"x" * (1024 * 1024 + 1), "value"),
        ("job", 12, "value"),
    ],
)
async def test_hold_refuses_bad_input_and_leaves_nothing(
    make_elector: ElectorFactory, raw: Connection, name: object, value: object, field: str
) -> None:
    """hold() with a bad name or value raises ConfigError naming it; no key is written."""
    a = await make_elector()
    with pytest.raises(aioelect.ConfigError) as info:
        async with a.hold(name, value):  # type: ignore[arg-type]
            pytest.fail("must not be elected")
    assert info.value.field == field
    assert await keys_under(raw, a.prefix + "/") == []
    for call in (a.leader, a.candidates):
        with pytest.raises(aioelect.ConfigError):
            await call("")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": 5, "renew_deadline": 5}, "renew_deadline"),
        ({"prefix": ""}, "prefix"),
        ({"endpoints": "not a url::"}, "endpoints"),
        ({"endpoints": []}, "endpoints"),
        ({"endpoints": "ftp://127.0.0.1:1"}, "endpoints"),
        ({"username": "u"}, "username"),
    ],
)
async def test_elector_refuses_bad_settings_before_any_io(
    etcd: EtcdServer, kwargs: dict[str, object], field: str
) -> None:
    """Bad Elector arguments raise ConfigError at construction, naming the field."""
    kwargs.setdefault("endpoints", etcd.endpoints)
    with pytest.raises(aioelect.ConfigError) as info:
        aioelect.Elector(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        ({"restart_on_error": "yes"}, "restart_on_error", "True or False"),
        ({"restart_on_error": None}, "restart_on_error", "True or False"),
        ({"error_backoff": 1.0}, "error_backoff", "pair"),
        ({"error_backoff": (1.0,)}, "error_backoff", "pair"),
        ({"error_backoff": (0, 1)}, "error_backoff", "> 0"),
        ({"error_backoff": (-1, 1)}, "error_backoff", "> 0"),
        ({"error_backoff": (1, float("inf"))}, "error_backoff", "finite"),
        ({"error_backoff": (2, 1)}, "error_backoff", "min must not exceed max"),
        ({"error_backoff": ("1", 2)}, "error_backoff", "seconds or a timedelta"),
    ],
)
async def test_leadership_refuses_bad_error_options_before_any_io(
    make_elector: ElectorFactory, raw: Connection, kwargs: dict[str, object], field: str, match: str
) -> None:
    """leadership() with a bad restart_on_error or error_backoff raises ConfigError naming
    the field and what is allowed; nothing is written."""
    a = await make_elector()
    with pytest.raises(aioelect.ConfigError, match=match) as info:
        a.leadership("job", "v", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert await keys_under(raw, a.prefix + "/") == []
    ok = a.leadership("job", "v", error_backoff=[timedelta(milliseconds=100), 2])  # type: ignore[arg-type]
    assert ok.error_backoff == (0.1, 2.0)


async def test_same_election_twice_in_one_elector(make_elector: ElectorFactory) -> None:
    """Holding one election twice in one elector is a clear error, not a deadlock."""
    a = await make_elector()
    async with a.hold("job", "1"):
        with pytest.raises(aioelect.ConfigError, match="already campaigns"):
            async with a.hold("job", "2"):
                pytest.fail("must not be elected")


async def test_closed_and_unentered_elector(etcd: EtcdServer, etcd_prefix: str) -> None:
    """Using an elector that is not entered, or closed, raises ElectorClosed; re-entry fails."""
    elector = aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2)
    with pytest.raises(aioelect.ElectorClosed):
        await elector.leader("job")
    async with elector:
        with pytest.raises(aioelect.AioelectError, match="already entered"):
            await elector.__aenter__()
    with pytest.raises(aioelect.ElectorClosed):
        async with elector.hold("job", "x"):
            pytest.fail("must not be elected")
    with pytest.raises(aioelect.ElectorClosed):
        await elector.__aenter__()


async def test_no_endpoints_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without endpoints, client or AIOELECT_ENDPOINTS, the error says what to give."""
    monkeypatch.delenv("AIOELECT_ENDPOINTS", raising=False)
    with pytest.raises(aioelect.ConfigError, match="AIOELECT_ENDPOINTS"):
        aioelect.Elector()


async def test_endpoints_from_environment(
    etcd: EtcdServer, etcd_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AIOELECT_ENDPOINTS is used when no endpoints are given."""
    monkeypatch.setenv("AIOELECT_ENDPOINTS", etcd.endpoint)
    async with aioelect.Elector(prefix=etcd_prefix, ttl=2) as elector:
        assert await elector.leader("job") is None
