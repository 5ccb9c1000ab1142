"""Ways to build an Elector: from endpoints, from an aetcd client, on an embedded etcd."""

from __future__ import annotations

import aetcd
import pytest

import aioelect
from aioelect._core import core_of
from aioelect._embedded import process_of
from aioelect.testing import EtcdServer

pytestmark = pytest.mark.asyncio


async def test_embedded_elector_runs_its_own_etcd() -> None:
    """Elector.embedded() connects to nothing before entry, starts an etcd for its lifetime
    and stops it on exit."""
    elector = aioelect.Elector.embedded(ttl=1, election_timeout=0.1, heartbeat_interval=0.01)
    # Nothing is built before entry: no connection to a placeholder address.
    assert "endpoints='embedded'" in repr(elector)
    with pytest.raises(aioelect.AioelectError, match="not started"):
        _ = elector.client
    async with elector:
        assert elector.client is core_of(elector).conn.client
        async with elector.hold("job", "solo") as term:
            assert term.is_valid
            leader = await elector.leader("job")
            assert leader is not None
            assert leader.value == b"solo"
        etcd = core_of(elector).embedded
        assert etcd is not None
        proc = process_of(etcd)
        assert proc is not None
        pid = proc.pid
    assert process_of(etcd) is None
    assert proc.proc is not None
    assert proc.proc.poll() is not None, f"etcd pid {pid} still running"


async def test_elector_from_an_aetcd_client(etcd: EtcdServer, etcd_prefix: str) -> None:
    """An Elector can use the caller's aetcd.Client and leaves it open on exit."""
    host, _, port = etcd.endpoints[0].rpartition(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        async with aioelect.Elector(client, prefix=etcd_prefix, ttl=2) as elector:
            assert elector.client is client
            async with elector.hold("job", "x") as term:
                assert term.is_valid
        await client.put(f"{etcd_prefix}-still-open".encode(), b"1")
        assert (await client.get(f"{etcd_prefix}-still-open".encode())).value == b"1"
        await client.delete(f"{etcd_prefix}-still-open".encode())


async def test_elector_repr_and_config(etcd: EtcdServer, etcd_prefix: str) -> None:
    """The repr shows prefix, endpoints and state; config holds the derived timings."""
    elector = aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=3)
    assert "new" in repr(elector)
    assert elector.config.renew_deadline == 2.0
    assert elector.config.keepalive_interval == 1.0
    async with elector:
        assert "open" in repr(elector)
    assert "closed" in repr(elector)
