"""Prometheus metrics of an elector (needs ``pip install 'aioelect[prometheus]'``).

Usage::

    import aioelect.prometheus

    async with aioelect.Elector(...) as elector:
        aioelect.prometheus.register(elector, elections=["scheduler"])
        try:
            ...  # prometheus_client.start_http_server(9100), or a /metrics route
        finally:
            aioelect.prometheus.unregister(elector)

The collector reads :meth:`Elector.statistics` and the elector's terms when
it is scraped: nothing is recorded in between and no hook is installed. Every
sample carries a ``prefix`` label (the elector's key prefix). Metrics, with the
default namespace ``aioelect``:

======================================  =======  ==============================================
``aioelect_leader{election}``           gauge    1 while this elector leads the election
``aioelect_campaigns``                  gauge    elections waiting to be won now
``aioelect_terms_held``                 gauge    terms held now
``aioelect_terms_won_total``            counter  terms won
``aioelect_terms_lost_total``           counter  terms ended other than by resigning
``aioelect_leader_changes_total``       counter  leader changes seen under the prefix
``aioelect_sessions_granted_total``     counter  session leases granted
``aioelect_sessions_lost_total``        counter  session leases lost
``aioelect_keepalives_total``           counter  successful lease renewals
``aioelect_keepalive_failures_total``   counter  failed or timed-out renewals
``aioelect_keepalive_latency_seconds``  gauge    round trip of the last renewal
``aioelect_session_live``               gauge    1 while the session lease is live
``aioelect_lease_expires_in_seconds``   gauge    seconds until etcd may expire the lease (or 0)
``aioelect_callback_errors_total``      counter  exceptions raised by a Leadership's callbacks,
                                                 by ``election`` and ``callback``
``aioelect_shards_owned{group,member}``  gauge   shards this member of a running shard group owns
``aioelect_shards_targeted{group,member}`` gauge shards the group's current plan gives it
``aioelect_preemptions_total``          counter  terms handed over to a candidate of higher
                                                 priority
``aioelect_unhealthy_transitions_total`` counter candidates that turned unhealthy (stepped
                                                 down or withdrew)
``aioelect_unhealthy_candidates``       gauge    candidates whose health check fails now
======================================  =======  ==============================================

``aioelect_callback_errors_total{election,callback}`` has a sample for
each election and callback (``on_elected``, ``on_stepped_down``,
``on_leader_change``) that raised at least once; alert on its
``increase()``: with ``restart_on_error`` (the default) a failing callback
does not stop the leadership, it backs off and campaigns again.

``aioelect_leader`` has a sample for every election named in ``elections=``
(or :meth:`ElectorCollector.track`), campaigned in by a given
:class:`~aioelect.Leadership`, or seen led by this elector at an earlier
scrape: it drops back to 0, rather than vanishing, when leadership ends.

Only the last keepalive's latency is known at scrape time, so it is a gauge,
not a histogram. The counters are the elector's own: a new Elector starts
them at 0 again (Prometheus' ``rate()`` handles such resets).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
        SummaryMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise ImportError(
        "aioelect.prometheus needs the prometheus-client package: "
        "pip install 'aioelect[prometheus]'"
    ) from exc

from ._core import core_of
from ._shards import running_groups

if TYPE_CHECKING:
    from ._elector import Elector
    from ._leadership import Leadership

__all__ = ("ElectorCollector", "register", "unregister")

_COUNTERS = (
    ("terms_won", "Terms won by this elector."),
    ("terms_lost", "Terms that ended other than by resigning (lease, key, session lost)."),
    ("leader_changes", "Changes of leader seen in any election under the prefix."),
    ("sessions_granted", "Session leases granted (more than one after a loss)."),
    ("sessions_lost", "Session leases lost (expired or not renewed in time)."),
    ("keepalives", "Successful lease renewals."),
    ("keepalive_failures", "Lease renewals that failed or timed out."),
    ("preemptions", "Terms handed over to a waiting candidate of higher priority."),
    ("unhealthy_transitions", "Times a health-checked candidate turned unhealthy."),
)


class ElectorCollector(Collector):
    """A Prometheus collector that reads an elector's state at scrape time.

    Scrapes may come from another thread (``prometheus_client.start_http_server``):
    the collector only reads the elector's state, never changes it.

    Args:
        elector: the elector to report on.
        *leaderships: leaderships whose elections always have an
            ``aioelect_leader`` sample.
        elections: more election names that always have one.
        namespace: the metric name prefix (another one lets two electors
            share a registry).
    """

    def __init__(
        self,
        elector: Elector,
        *leaderships: Leadership,
        elections: Iterable[str] = (),
        namespace: str = "aioelect",
    ) -> None:
        self.elector = elector
        self.namespace = namespace
        self._names: set[str] = set(elections)
        self._names.update(leadership.name for leadership in leaderships)

    def track(self, *elections: str) -> None:
        """Report ``aioelect_leader`` for these elections from now on, 0 while not led."""
        self._names.update(elections)

    def _metric(self, name: str) -> str:
        return f"{self.namespace}_{name}" if self.namespace else name

    def describe(self) -> Iterable[Metric]:
        """The metric families without samples (lets a registry refuse duplicates)."""
        return [*self._families().values(), self._summary()]

    def _families(self) -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        """Empty metric families, by their name without the namespace."""
        labels = ["prefix"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> None:
            families[name] = GaugeMetricFamily(self._metric(name), doc, labels=[*labels, *extra])

        gauge("leader", "1 while this elector leads the election, else 0.", ("election",))
        gauge("campaigns", "Elections this elector waits to win now.")
        gauge("terms_held", "Terms this elector holds now.")
        for name, doc in _COUNTERS:
            families[name] = CounterMetricFamily(self._metric(name), doc, labels=labels)
        gauge("keepalive_latency_seconds", "Round trip of the last lease renewal, in seconds.")

        families["callback_errors"] = CounterMetricFamily(
            self._metric("callback_errors"),
            "Exceptions raised by the callbacks of Leadership objects.",
            labels=[*labels, "election", "callback"],
        )
        gauge("unhealthy_candidates", "Candidates whose health check fails now (withdrawn).")
        gauge("session_live", "1 while the session lease is live.")
        gauge(
            "lease_expires_in_seconds",
            "Seconds until etcd may expire the session lease, at the latest (0 without one).",
        )
        gauge("shards_owned", "Shards of a shard group this member owns now.", ("group", "member"))
        gauge(
            "shards_targeted",
            "Shards of a shard group its current plan gives this member.",
            ("group", "member"),
        )
        return families

    def collect(self) -> Iterable[Metric]:
        """Read the elector's statistics and terms now and return the metrics."""
        elector = self.elector
        stats = elector.statistics()
        # list() copies the set at once: scrapes may run in another thread.
        leading = {term.name for term in elector.terms() if term.is_valid}
        self._names.update(leading)
        prefix = [elector.prefix]
        f = self._families()
        for election in sorted(self._names):
            f["leader"].add_metric([*prefix, election], 1.0 if election in leading else 0.0)
        f["campaigns"].add_metric(prefix, stats.campaigns)
        f["terms_held"].add_metric(prefix, stats.terms_held)
        for name, _ in _COUNTERS:
            f[name].add_metric(prefix, getattr(stats, name))
        if stats.keepalive_latency is not None:
            f["keepalive_latency_seconds"].add_metric(prefix, stats.keepalive_latency)
        summary = self._summary()
        summary.add_metric(
            prefix, count_value=stats.keepalives, sum_value=stats.keepalive_latency_sum
        )
        f["unhealthy_candidates"].add_metric(prefix, stats.unhealthy_candidates)
        f["session_live"].add_metric(prefix, 1.0 if stats.lease_id is not None else 0.0)
        f["lease_expires_in_seconds"].add_metric(prefix, stats.lease_expires_in or 0.0)
        for (election, callback), count in sorted(core_of(elector).callback_error_counts().items()):
            f["callback_errors"].add_metric([*prefix, election, callback], count)
        for group in running_groups(core_of(elector)):
            shard_stats = group.statistics()
            labels = [*prefix, shard_stats.group, shard_stats.member]
            f["shards_owned"].add_metric(labels, len(shard_stats.owned))
            f["shards_targeted"].add_metric(labels, len(shard_stats.targeted))
        return [*f.values(), summary]

    def _summary(self) -> SummaryMetricFamily:
        return SummaryMetricFamily(
            self._metric("keepalive_round_trip_seconds"),
            "Round trips of successful lease renewals (count and sum).",
            labels=["prefix"],
        )

    def __repr__(self) -> str:
        return f"<ElectorCollector {self.elector.prefix!r} namespace={self.namespace!r}>"


_registered: list[tuple[CollectorRegistry, ElectorCollector]] = []


def register(
    elector: Elector,
    *leaderships: Leadership,
    registry: CollectorRegistry = REGISTRY,
    elections: Iterable[str] = (),
    namespace: str = "aioelect",
) -> ElectorCollector:
    """Export the elector's metrics from ``registry`` (default: prometheus_client's global one).

    Args:
        elector: the elector to report on.
        *leaderships: leaderships whose elections always have an
            ``aioelect_leader`` sample (0 while not leading).
        registry: the registry to register the collector with.
        elections: more election names that always have one.
        namespace: the metric name prefix.

    Returns:
        The registered :class:`ElectorCollector`.

    Raises:
        ValueError: the registry already has these metrics (another elector
            with the same ``namespace``).
    """
    collector = ElectorCollector(elector, *leaderships, elections=elections, namespace=namespace)
    registry.register(collector)
    _registered.append((registry, collector))
    return collector


def unregister(elector: Elector, registry: CollectorRegistry = REGISTRY) -> None:
    """Remove the collectors that :func:`register` added for ``elector`` to ``registry``.

    Does nothing when there are none.
    """
    for entry in list(_registered):
        reg, collector = entry
        if reg is registry and collector.elector is elector:
            registry.unregister(collector)
            _registered.remove(entry)
