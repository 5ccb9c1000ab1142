"""An example test of *your* code with aioelect's pytest plugin.

Install the plugin's extra (``pip install 'aioelect[testing]'``: pytest, pytest-asyncio,
testcontainers and an embedded etcd binary), then run ``pytest`` on this file. The plugin
gives you:

- ``etcd``: a running etcd for the session (``etcd.endpoint`` is ``host:port``): the
  ``AIOELECT_TEST_ENDPOINTS`` variable, else a testcontainers container when Docker
  answers, else the embedded binary (choose with ``--aioelect-backend``);
- ``etcd_prefix``: a key prefix unique to the test, so tests never see each other's keys;
- ``etcd_process``, ``etcd_cluster`` and ``fault_proxy`` to break things on purpose.

The fixtures are plain (synchronous) pytest fixtures; the tests themselves are asyncio
tests, marked with ``pytest.mark.asyncio`` (pytest-asyncio).
"""

from __future__ import annotations

import asyncio

import pytest

import aioelect
from aioelect.testing import EtcdServer

pytestmark = pytest.mark.asyncio


class ReportSender:
    """The code under test: sends the nightly report, but only on the leader."""

    def __init__(self, elector: aioelect.Elector, me: str) -> None:
        self.elector = elector
        self.me = me
        self.sent: list[int] = []  # fencing tokens of the terms that sent

    async def send_once(self) -> bool:
        try:
            async with self.elector.hold("nightly-report", self.me, wait=False) as term:
                self.sent.append(term.token)
                return True
        except aioelect.NotLeader:
            return False


async def test_only_one_replica_sends(etcd: EtcdServer, etcd_prefix: str) -> None:
    async with (
        aioelect.Elector(endpoints=etcd.endpoint, prefix=etcd_prefix, ttl=2) as a,
        aioelect.Elector(endpoints=etcd.endpoint, prefix=etcd_prefix, ttl=2) as b,
    ):
        leader_in = asyncio.Event()
        release = asyncio.Event()

        tokens: list[int] = []

        async def hold_leadership() -> None:
            async with a.hold("nightly-report", "a") as term:
                tokens.append(term.token)
                leader_in.set()
                await release.wait()

        holder = asyncio.create_task(hold_leadership())
        await leader_in.wait()
        # While "a" leads, "b"'s try-lock refuses at once and leaves no key behind.
        assert not await ReportSender(b, "b").send_once()
        assert [c.value for c in await b.candidates("nightly-report")] == [b"a"]
        release.set()
        await holder
        # "a" resigned on leaving its block: "b" now sends, with a larger fencing token.
        sender = ReportSender(b, "b")
        assert await sender.send_once()
        assert await a.leader("nightly-report") is None  # and resigned again
        assert sender.sent[0] > tokens[0]
