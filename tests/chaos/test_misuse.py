"""Bad input and misuse: clear errors naming what was wrong, and nothing left behind.

Extends tests/test_bad_input.py (which covers hold() names and values, timings, empty
prefix/endpoints, holding one election twice with hold(), a closed elector's
leader()/hold()/re-entry) with the rest of the public surface.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import ElectorFactory, eventually, keys_under, live_leases

import aioelect
from aioelect._config import MAX_VALUE_BYTES
from aioelect._connection import Connection
from aioelect._core import core_of
from aioelect.testing import EtcdServer

pytestmark = pytest.mark.chaos

SECRET = "Secret-pw-5d1f0c"


@asynccontextmanager
async def leaves_nothing(raw: Connection, prefix: str) -> AsyncIterator[None]:
    """The block leaves no key under ``prefix``, no lease and no task behind."""
    leases = await live_leases(raw)
    tasks = asyncio.all_tasks()
    yield
    assert await keys_under(raw, prefix + "/") == []
    assert await live_leases(raw) <= leases
    assert asyncio.all_tasks() <= tasks


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefix": 5}, "prefix"),
        ({"prefix": "/app/"}, "prefix"),
        ({"prefix": "/a\x00b"}, "prefix"),
        ({"endpoints": 5}, "endpoints"),
        ({"endpoints": ["127.0.0.1"]}, "endpoints"),
        ({"endpoints": [""]}, "endpoints"),
        ({"endpoints": ["127.0.0.1:2379", 5]}, "endpoints"),
        ({"endpoints": "127.0.0.1:99999"}, "endpoints"),
        ({"endpoints": "127.0.0.1:2379/path"}, "endpoints"),
        ({"endpoints": "http://127.0.0.1:1,https://127.0.0.1:2"}, "endpoints"),
        ({"endpoints": "http://127.0.0.1:2379", "tls": True}, "endpoints"),
        ({"tls": "yes"}, "tls"),
        ({"username": 5, "password": SECRET}, "username"),
        ({"username": "u", "password": 5}, "password"),
        ({"password": SECRET}, "username"),
        ({"client": object(), "endpoints": None}, "client"),
        ({"client": object()}, "client"),
        ({"keepalive_interval": "1"}, "keepalive_interval"),
        ({"request_timeout": float("nan")}, "request_timeout"),
        ({"connect_timeout": "10"}, "connect_timeout"),
        ({"renew_deadline": timedelta(seconds=-1)}, "renew_deadline"),
    ],
)
def test_elector_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Each bad Elector argument raises ConfigError (a ValueError) naming it, at construction."""
    kwargs.setdefault("endpoints", "127.0.0.1:2379")
    if kwargs["endpoints"] is None:
        del kwargs["endpoints"]
    with pytest.raises(aioelect.ConfigError) as info:
        aioelect.Elector(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert isinstance(info.value, ValueError)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"endpoints": "127.0.0.1:2379"}, "endpoints"),
        ({"client": object()}, "client"),
        ({"password": SECRET}, "password"),
        ({"ttl": 0}, "ttl"),
        ({"heartbeat_interval": 1.0, "election_timeout": 1.0}, "heartbeat_interval"),
    ],
)
def test_embedded_elector_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Elector.embedded() refuses connection arguments and bad settings, naming them."""
    with pytest.raises(aioelect.ConfigError) as info:
        aioelect.Elector.embedded(**kwargs)
    assert info.value.field == field
    assert SECRET not in str(info.value)


def test_tls_config_names_the_field(tmp_path: Path) -> None:
    """TLSConfig refuses missing files and a certificate without its key, naming the field."""
    with pytest.raises(aioelect.ConfigError) as info:
        aioelect.TLSConfig(ca_file=tmp_path / "missing.pem")
    assert info.value.field == "tls.ca_file"
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(aioelect.ConfigError) as info:
        aioelect.TLSConfig(cert_file=cert)
    assert info.value.field == "tls"


async def _noop(*_: object) -> None:
    return None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((7, "v"), {}, "name"),
        ((b"job", "v"), {}, "name"),
        (("a/b", "v"), {}, "name"),
        (("", "v"), {}, "name"),
        (("job", None), {}, "value"),
        (("job", 12), {}, "value"),
        (("job", b"x" * (MAX_VALUE_BYTES + 1)), {}, "value"),
        (("job", "v"), {"on_elected": 5}, "on_elected"),
        (("job", "v"), {"on_stepped_down": "stop"}, "on_stepped_down"),
        (("job", "v"), {"on_leader_change": object()}, "on_leader_change"),
    ],
)
async def test_leadership_arguments_name_the_field(
    make_elector: ElectorFactory,
    raw: Connection,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    field: str,
) -> None:
    """leadership() with a bad name, value or callback raises ConfigError naming it; no key."""
    a = await make_elector()
    with pytest.raises(aioelect.ConfigError) as info:
        a.leadership(*args, **kwargs)
    assert info.value.field == field
    assert await keys_under(raw, a.prefix + "/") == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"campaign": "no"}, "campaign"),
        ({"handover_barrier": "false"}, "handover_barrier"),
        ({"reclaim_stale": "yes"}, "reclaim_stale"),
        ({"node_name": 5}, "node_name"),
    ],
)
async def test_leadership_flags_name_the_field(
    make_elector: ElectorFactory, kwargs: dict[str, Any], field: str
) -> None:
    """leadership() refuses flags that are not bool and a node_name that is not a str."""
    a = await make_elector()
    with pytest.raises(aioelect.ConfigError) as info:
        a.leadership("job", "v", **kwargs)
    assert info.value.field == field


@pytest.mark.asyncio
@pytest.mark.parametrize("name", [None, 7, b"job", "a/b", "a\x00b", ""])
async def test_lookups_refuse_bad_names(
    make_elector: ElectorFactory, raw: Connection, name: Any
) -> None:
    """observe(), leader() and candidates() refuse a bad name with ConfigError; observe()
    registers nothing."""
    a = await make_elector()
    with pytest.raises(aioelect.ConfigError) as info:
        async with a.observe(name):
            pytest.fail("must not observe")
    assert info.value.field == "name"
    assert not core_of(a).observers
    for call in (a.leader, a.candidates):
        with pytest.raises(aioelect.ConfigError) as info:
            await call(name)
        assert info.value.field == "name"
    assert await keys_under(raw, a.prefix + "/") == []


@pytest.mark.asyncio
async def test_term_calls_refuse_bad_values(make_elector: ElectorFactory, raw: Connection) -> None:
    """proclaim() and transfer() with a bad value raise ConfigError naming it, write nothing,
    and the term still leads."""
    a = await make_elector()
    async with a.hold("job", "a") as term:
        for bad in (12, None, b"x" * (MAX_VALUE_BYTES + 1)):
            with pytest.raises(aioelect.ConfigError) as info:
                await term.proclaim(bad)  # type: ignore[arg-type]
            assert info.value.field == "value"
            with pytest.raises(aioelect.ConfigError) as info:
                await term.transfer(bad)  # type: ignore[arg-type]
            assert info.value.field == "value"
        with pytest.raises(aioelect.NoSuchCandidate):
            await term.transfer("nobody")
        assert term.is_valid
        kvs = await keys_under(raw, f"{a.prefix}/job/")
        assert [(kv.key, kv.value) for kv in kvs] == [(term.key, b"a")]
    lead = a.leadership("job", "a")
    with pytest.raises(aioelect.NotLeader):
        await lead.change_leader_to(12)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"success": ["put x"]}, "success"),
        ({"failure": [object()]}, "failure"),
        ({"compare": ["x == 1"]}, "compare"),
        ({"success": [None]}, "success"),
    ],
)
async def test_term_transaction_refuses_bad_operations(
    make_elector: ElectorFactory, kwargs: dict[str, Any], field: str
) -> None:
    """Term.transaction() with something that is not an aetcd operation raises ConfigError
    naming the argument, sends nothing, and the term still leads."""
    a = await make_elector()
    async with a.hold("job", "a") as term:
        with pytest.raises(aioelect.ConfigError) as info:
            await term.transaction(**kwargs)
        assert info.value.field == field
        assert term.is_valid


@pytest.mark.asyncio
async def test_closed_elector_refuses_everything(
    etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """After exit every call raises ElectorClosed, a Leadership made before cannot run, and a
    term kept past its end refuses to write."""
    async with leaves_nothing(raw, etcd_prefix):
        elector = aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2)
        async with elector:
            lead = elector.leadership("other", "a")
            async with elector.hold("job", "a") as kept:
                pass
        assert not kept.is_valid
        with pytest.raises(aioelect.NotLeader):
            await kept.proclaim("x")
        with pytest.raises(aioelect.NotLeader):
            await kept.transaction(success=[elector.client.transactions.put(b"/x", b"1")])
        await kept.resign()  # does nothing
        with pytest.raises(aioelect.ElectorClosed):
            await lead.run()
        with pytest.raises(aioelect.ElectorClosed):
            elector.leadership("job", "a")
        with pytest.raises(aioelect.ElectorClosed):
            async with elector.observe("job"):
                pytest.fail("must not observe")
        with pytest.raises(aioelect.ElectorClosed):
            await elector.candidates("job")
        with pytest.raises(aioelect.ElectorClosed):
            async with elector:
                pytest.fail("must not enter")


@pytest.mark.asyncio
async def test_concurrent_entry_is_refused(
    etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """Entering one elector from two tasks at once: one enters, the other gets a clear error;
    after exit nothing is left (no key, no lease, no task)."""
    results: list[object] = []
    async with leaves_nothing(raw, etcd_prefix):
        elector = aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2)

        async def enter() -> None:
            try:
                await elector.__aenter__()
                results.append("entered")
            except aioelect.AioelectError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(enter)
            tg.start_soon(enter)
        assert results.count("entered") == 1
        (error,) = [r for r in results if r != "entered"]
        assert "already entered" in str(error)
        async with elector.hold("job", "a"):
            pass
        await elector.__aexit__(None, None, None)


@pytest.mark.asyncio
async def test_same_election_twice_in_one_elector(
    etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """One elector campaigning twice in one election (Leadership and hold, two Leaderships,
    one Leadership run twice) gets a clear error, not a deadlock; nothing is left behind."""
    async with leaves_nothing(raw, etcd_prefix):
        async with aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2) as a:
            elected = anyio.Event()

            async def on_elected(term: aioelect.Term) -> None:
                elected.set()

            lead = a.leadership("job", "a", on_elected=on_elected)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lead.run)
                await elected.wait()
                with pytest.raises(aioelect.ConfigError, match="already campaigns") as info:
                    async with a.hold("job", "b"):
                        pytest.fail("must not be elected")
                assert info.value.field == "name"
                with pytest.raises(aioelect.ConfigError, match="already campaigns"):
                    await a.leadership("job", "c").run()
                with pytest.raises(aioelect.AioelectError, match="already running"):
                    await lead.run()
                assert lead.is_leader
                lead.stop()
            assert await a.candidates("job") == []


def _in_other_loop(call: Callable[[], Coroutine[Any, Any, object]]) -> BaseException | None:
    """Run ``call()`` on a new event loop in a new thread; return what it raised."""
    failure: list[BaseException | None] = [None]

    def main() -> None:
        try:
            asyncio.run(call())  # type: ignore[arg-type]
        except BaseException as exc:
            failure[0] = exc

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return failure[0]


@pytest.mark.asyncio
async def test_calls_from_another_event_loop_are_refused(
    etcd: EtcdServer, etcd_prefix: str, raw: Connection
) -> None:
    """Calls from a second event loop (another thread) raise a clear error at once and leave
    nothing behind; the elector keeps working on its own loop."""
    async with leaves_nothing(raw, etcd_prefix):
        async with aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2) as a:
            lead_made_here = a.leadership("job", "here")

            async def hold() -> None:
                async with a.hold("job", "x"):
                    pass

            async def observe() -> None:
                async with a.observe("job"):
                    pass

            calls: dict[str, Callable[[], Coroutine[Any, Any, object]]] = {
                "leader": lambda: a.leader("job"),
                "candidates": lambda: a.candidates("job"),
                "hold": hold,
                "observe": observe,
                "run": lead_made_here.run,
            }
            for what, call in calls.items():
                error = await anyio.to_thread.run_sync(_in_other_loop, call)
                assert isinstance(error, aioelect.AioelectError), (what, error)
                assert "another event loop" in str(error), (what, error)
            assert not core_of(a).observers
            async with a.hold("job", "a") as term:
                assert term.is_valid
            assert await a.leader("job") is None


@pytest.mark.asyncio
async def test_stop_ends_a_running_on_elected(make_elector: ElectorFactory) -> None:
    """stop() while on_elected still runs (a body that works for the whole term) cancels it,
    steps down, and run() returns."""
    a = await make_elector()
    elected = anyio.Event()
    cancelled = anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        elected.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    lead = a.leadership("job", "a", on_elected=on_elected)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        await elected.wait()
        lead.stop()
        with anyio.move_on_after(5):
            await cancelled.wait()
        stopped_in_time = cancelled.is_set()
        tg.cancel_scope.cancel()
    assert stopped_in_time, "stop() did not end on_elected within 5 s"
    assert await a.leader("job") is None


@pytest.mark.asyncio
async def test_sync_callback_is_a_clear_error_and_leaves_nothing(
    make_elector: ElectorFactory, raw: Connection
) -> None:
    """A plain (non-async) on_elected makes run() raise a TypeError after resigning: the
    election is free again and no key is left."""
    a = await make_elector()

    def on_elected(term: aioelect.Term) -> None:
        return None

    lead = a.leadership("job", "a", on_elected=on_elected)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await lead.run()
    await eventually(lambda: _no_keys(raw, a.prefix), what="no key left")


async def _no_keys(raw: Connection, prefix: str) -> bool:
    return await keys_under(raw, prefix + "/") == []
