"""The health report and the Prometheus metrics, against a real elector and etcd."""

from __future__ import annotations

import importlib
import json
import sys
import urllib.request

import anyio
import pytest
from helpers import ElectorFactory, eventually
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import aioelect
import aioelect.prometheus
from aioelect import health
from aioelect._connection import Connection
from aioelect._embedded import free_port
from aioelect.testing import EtcdServer

pytestmark = pytest.mark.asyncio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a text exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    """Scrape ``registry`` the way the HTTP exporter does."""
    return parse(generate_latest(registry).decode())


def sample(samples: Samples, name: str, prefix: str, **labels: str) -> float | None:
    """One sample's value (None when absent)."""
    key = (name, tuple(sorted({"prefix": prefix, **labels}.items())))
    return samples.get(key)


# -- health ----------------------------------------------------------------------------


async def test_health_reports_session_and_terms(make_elector: ElectorFactory) -> None:
    """health() shows the live session, and the term only while hold() lasts."""
    elector = await make_elector()
    report = health(elector)
    stats = elector.statistics()
    assert report["ready"] is True
    assert report["prefix"] == elector.prefix
    assert report["session"]["live"] is True
    assert stats.lease_id is not None
    assert report["session"]["lease_id"] == f"{stats.lease_id:x}"
    assert report["statistics"]["lease_id"] == f"{stats.lease_id:x}"
    expires = report["session"]["lease_expires_in"]
    assert expires is not None and 0 < expires <= 2
    assert report["terms"] == [] and report["leaderships"] == []
    async with elector.hold("job", "node-a") as term:
        report = health(elector)
        [held] = report["terms"]
        assert (held["name"], held["value"], held["token"]) == ("job", "node-a", term.token)
        assert 0 < held["expires_in"] <= elector.config.renew_deadline
        assert report["statistics"]["terms_held"] == 1
        json.dumps(report)  # JSON-able as it is
    report = health(elector)
    assert report["terms"] == []
    assert report["statistics"]["terms_won"] == 1


async def test_health_of_leaderships_and_require_leader(make_elector: ElectorFactory) -> None:
    """Per-leadership is_leader and token; require_leader makes only the leader ready."""
    e1, e2 = await make_elector(), await make_elector()
    elected = {"a": anyio.Event(), "b": anyio.Event()}

    async def on_elected(term: aioelect.Term) -> None:
        elected[term.value.decode()].set()

    l1 = e1.leadership("job", "a", node_name="node-a", on_elected=on_elected)
    l2 = e2.leadership("job", "b", on_elected=on_elected)
    async with anyio.create_task_group() as tg:
        tg.start_soon(l1.run)
        with anyio.fail_after(10):
            await elected["a"].wait()
        tg.start_soon(l2.run)
        await eventually(lambda: _candidates(e1, 2), what="both campaign")
        r1, r2 = health(e1, l1, require_leader=True), health(e2, l2, require_leader=True)
        assert l1.term is not None
        assert r1["leaderships"] == [
            {
                "name": "job",
                "value": "a",
                "node_name": "node-a",
                "ready": True,
                "state": "running",
                "is_leader": True,
                "token": l1.term.token,
                "expires_in": r1["leaderships"][0]["expires_in"],
                "retry_in": None,
                "callback_errors": 0,
                "last_error": None,
                "priority": 0,
                "healthy": None,
            }
        ]
        assert r2["leaderships"][0]["is_leader"] is False
        assert r2["leaderships"][0]["token"] is None
        assert (r1["ready"], r2["ready"]) == (True, False)
        assert health(e2, l2)["ready"] is True
        l1.stop()
        with anyio.fail_after(10):
            await elected["b"].wait()
        assert health(e2, l2, require_leader=True)["ready"] is True
        assert health(e1, l1, require_leader=True)["ready"] is False
        l2.stop()


async def _candidates(elector: aioelect.Elector, n: int) -> bool:
    return len(await elector.candidates("job")) == n


async def test_health_before_and_after_the_elector(etcd: EtcdServer, etcd_prefix: str) -> None:
    """An elector that is not open yet, or closed, is not ready and has no session."""
    elector = aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2)
    assert health(elector)["ready"] is False
    async with elector:
        assert health(elector)["ready"] is True
    report = health(elector)
    assert report["ready"] is False
    assert report["session"] == {
        "live": False,
        "lease_id": None,
        "lease_expires_in": None,
        "keepalive_latency": report["session"]["keepalive_latency"],
    }


async def test_health_of_a_leadership_through_an_error_and_its_end(
    make_elector: ElectorFactory,
) -> None:
    """A leadership is not ready before run() starts; ready but 'backing_off', with the
    error and the time until it campaigns again, after a callback error; ready and leading
    again after the back-off (the error kept, with its age); not ready once stopped."""
    elector = await make_elector()
    calls = 0
    failed, leading = anyio.Event(), anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            failed.set()
            raise ConnectionError("database unreachable")
        leading.set()

    lead = elector.leadership("job", "a", on_elected=on_elected, error_backoff=(2, 2))
    [entry] = health(elector, lead)["leaderships"]
    assert (entry["ready"], entry["state"], entry["last_error"]) == (False, "new", None)
    assert health(elector, lead)["ready"] is False  # never started: not ready
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        with anyio.fail_after(10):
            await failed.wait()
        await eventually(lambda: _backing_off(elector, lead), what="backing off")
        report = health(elector, lead)
        [entry] = report["leaderships"]
        assert report["ready"] is True  # it campaigns again within the back-off
        assert (entry["ready"], entry["state"], entry["is_leader"]) == (True, "backing_off", False)
        assert entry["retry_in"] is not None and 0 < entry["retry_in"] <= 2
        assert entry["callback_errors"] == 1
        assert entry["last_error"] is not None
        assert entry["last_error"]["callback"] == "on_elected"
        assert entry["last_error"]["type"] == "ConnectionError"
        assert entry["last_error"]["message"] == "database unreachable"
        assert report["statistics"]["callback_errors"] == 1
        json.dumps(report)
        with anyio.fail_after(15):  # a guard: the back-off is at most 2 s
            await leading.wait()
        [entry] = health(elector, lead)["leaderships"]
        assert (entry["ready"], entry["state"], entry["is_leader"]) == (True, "running", True)
        assert entry["retry_in"] is None
        assert entry["last_error"] is not None and entry["last_error"]["age"] > 0
        lead.stop()
    [entry] = health(elector, lead)["leaderships"]
    assert (entry["ready"], entry["state"]) == (False, "stopped")
    assert health(elector, lead)["ready"] is False


async def test_health_of_a_crashed_run_names_a_non_callback_error(
    make_elector: ElectorFactory,
) -> None:
    """run() ended by an error of aioelect's own (here: the election is already held by
    this elector) is reported failed, with that error and no callback."""
    elector = await make_elector()
    lead = elector.leadership("job", "a")
    async with elector.hold("job", "held"):
        with pytest.raises(aioelect.ConfigError):
            await lead.run()
    [entry] = health(elector, lead)["leaderships"]
    assert (entry["ready"], entry["state"], entry["callback_errors"]) == (False, "failed", 0)
    assert entry["last_error"] is not None
    assert entry["last_error"]["callback"] is None
    assert entry["last_error"]["type"] == "aioelect._exceptions.ConfigError"
    assert "already campaigns" in entry["last_error"]["message"]


async def _backing_off(elector: aioelect.Elector, lead: aioelect.Leadership) -> bool:
    return health(elector, lead)["leaderships"][0]["state"] == "backing_off"


# -- metrics ---------------------------------------------------------------------------


async def test_leader_gauge_flips_across_hold(make_elector: ElectorFactory) -> None:
    """aioelect_leader goes 0 -> 1 -> 0 across hold(); counters and gauges follow."""
    elector = await make_elector()
    registry = CollectorRegistry()
    aioelect.prometheus.register(elector, registry=registry, elections=["job"])
    p = elector.prefix
    before = scrape(registry)
    assert sample(before, "aioelect_leader", p, election="job") == 0
    assert sample(before, "aioelect_terms_won_total", p) == 0
    assert sample(before, "aioelect_session_live", p) == 1
    async with elector.hold("job", "a"):
        during = scrape(registry)
        assert sample(during, "aioelect_leader", p, election="job") == 1
        assert sample(during, "aioelect_terms_held", p) == 1
        assert sample(during, "aioelect_terms_won_total", p) == 1
        # An election led without being declared appears too.
        async with elector.hold("other", "a"):
            assert sample(scrape(registry), "aioelect_leader", p, election="other") == 1
        assert sample(scrape(registry), "aioelect_leader", p, election="other") == 0
    after = scrape(registry)
    assert sample(after, "aioelect_leader", p, election="job") == 0
    assert sample(after, "aioelect_terms_held", p) == 0
    assert sample(after, "aioelect_terms_won_total", p) == 2
    assert sample(after, "aioelect_terms_lost_total", p) == 0
    assert 2 <= (sample(after, "aioelect_leader_changes_total", p) or 0) <= 4
    assert sample(after, "aioelect_sessions_granted_total", p) == 1
    assert sample(after, "aioelect_sessions_lost_total", p) == 0
    assert sample(after, "aioelect_campaigns", p) == 0
    expires = sample(after, "aioelect_lease_expires_in_seconds", p)
    assert expires is not None and 0 < expires <= 2


async def test_metrics_scraped_over_http(make_elector: ElectorFactory, raw: Connection) -> None:
    """An HTTP scrape (from the exporter's thread) shows a lost term, renewals and latency."""
    elector = await make_elector()
    registry = CollectorRegistry()
    aioelect.prometheus.register(elector, registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)

    def get() -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return parse(resp.read().decode())

    try:
        p = elector.prefix
        with pytest.raises(aioelect.LeadershipLost):
            async with elector.hold("job", "a") as term:
                samples = await anyio.to_thread.run_sync(get)
                assert sample(samples, "aioelect_leader", p, election="job") == 1
                await raw.txn([], [raw.op_delete(term.key)])
                await term.wait_lost()
        await eventually(lambda: _renewed(elector), what="a keepalive")  # one every ttl/3
        samples = await anyio.to_thread.run_sync(get)
        assert sample(samples, "aioelect_leader", p, election="job") == 0
        assert sample(samples, "aioelect_terms_lost_total", p) == 1
        assert (sample(samples, "aioelect_keepalives_total", p) or 0) >= 1
        assert sample(samples, "aioelect_keepalive_failures_total", p) == 0
        latency = sample(samples, "aioelect_keepalive_latency_seconds", p)
        assert latency is not None and 0 < latency < 1
        count = sample(samples, "aioelect_keepalive_round_trip_seconds_count", p)
        total = sample(samples, "aioelect_keepalive_round_trip_seconds_sum", p)
        assert count is not None and count >= 1
        assert total is not None and 0 < total < count
        assert sample(samples, "aioelect_session_live", p) == 1
    finally:
        await anyio.to_thread.run_sync(server.shutdown)
        server.server_close()
        thread.join()


async def _renewed(elector: aioelect.Elector) -> bool:
    return elector.statistics().keepalives >= 1


async def test_register_unregister_and_duplicates(make_elector: ElectorFactory) -> None:
    """A second elector needs its own namespace; unregister removes the metrics."""
    e1, e2 = await make_elector(), await make_elector()
    registry = CollectorRegistry()
    aioelect.prometheus.register(e1, registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        aioelect.prometheus.register(e2, registry=registry)
    second = aioelect.prometheus.register(e2, registry=registry, namespace="second")
    second.track("later")
    assert sample(scrape(registry), "second_leader", e2.prefix, election="later") == 0
    names = {name for name, _ in scrape(registry)}
    assert {"aioelect_session_live", "second_session_live"} <= names
    aioelect.prometheus.unregister(e1, registry)
    aioelect.prometheus.unregister(e1, registry)  # no-op
    names = {name for name, _ in scrape(registry)}
    assert "aioelect_session_live" not in names
    assert "second_session_live" in names
    aioelect.prometheus.unregister(e2, registry)
    assert scrape(registry) == {}


async def test_metrics_of_a_closed_elector(etcd: EtcdServer, etcd_prefix: str) -> None:
    """Once the elector is closed: no live session, no time left, nothing led."""
    registry = CollectorRegistry()
    async with aioelect.Elector(endpoints=etcd.endpoints, prefix=etcd_prefix, ttl=2) as elector:
        collector = aioelect.prometheus.register(elector, registry=registry, elections=["job"])
        assert etcd_prefix in repr(collector)
        async with elector.hold("job", "a"):
            assert sample(scrape(registry), "aioelect_leader", etcd_prefix, election="job") == 1
    samples = scrape(registry)
    assert sample(samples, "aioelect_leader", etcd_prefix, election="job") == 0
    assert sample(samples, "aioelect_session_live", etcd_prefix) == 0
    assert sample(samples, "aioelect_lease_expires_in_seconds", etcd_prefix) == 0
    aioelect.prometheus.unregister(elector, registry)


async def test_callback_errors_metric(make_elector: ElectorFactory) -> None:
    """aioelect_callback_errors_total counts each callback's errors by election."""
    elector = await make_elector()
    registry = CollectorRegistry()
    p = elector.prefix
    calls = 0
    leading = anyio.Event()

    async def on_elected(term: aioelect.Term) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("not yet")
        leading.set()

    lead = elector.leadership("job", "a", on_elected=on_elected, error_backoff=(0.05, 0.1))
    aioelect.prometheus.register(elector, lead, registry=registry)
    assert sample(scrape(registry), "aioelect_callback_errors_total", p, election="job",
                  callback="on_elected") is None  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(lead.run)
        with anyio.fail_after(15):
            await leading.wait()
        samples = scrape(registry)
        lead.stop()
    assert sample(samples, "aioelect_callback_errors_total", p, election="job",
                  callback="on_elected") == 2  # fmt: skip
    assert elector.statistics().callback_errors == 2
    aioelect.prometheus.unregister(elector, registry)


async def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus_client, importing aioelect.prometheus says what to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "aioelect.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'aioelect\[prometheus\]'"):
        importlib.import_module("aioelect.prometheus")
