"""Prometheus metrics of the cluster cache; pass the extender's registry to expose them on its /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler_extender.node_source import NodeView


class _NodeFreshness(Collector):
    """Fresh and stale node counts, read from the cache at scrape time."""

    def __init__(self, views: Callable[[], Mapping[str, NodeView]]) -> None:
        self._views = views

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gedge_cache_nodes", "Nodes in the cluster cache, by freshness", labels=["state"]
        )
        views = self._views().values()
        fresh = sum(1 for v in views if v.fresh)
        family.add_metric(["fresh"], fresh)
        family.add_metric(["stale"], len(views) - fresh)
        yield family


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "gedge_cache_watch_events_total", "Node state events received from agents", registry=r
        )
        self.streams = Gauge("gedge_cache_watch_streams", "Watch streams currently delivering", registry=r)
        self.stream_failures = Counter(
            "gedge_cache_watch_stream_failures_total",
            "Watch streams that failed or ended, by gRPC status code",
            ["code"],
            registry=r,
        )
        self.rejections = Counter(
            "gedge_cache_agent_rejections_total",
            "Agents refused for the node they claim: wrong certificate name, untrusted certificate, "
            "another node's name in the report, or a malformed report",
            ["node", "reason"],
            registry=r,
        )

        self.unknown_fields = Counter(
            "gedge_cache_report_unknown_fields_total",
            "Fields in agents' reports this extender does not know (from a newer agent), ignored",
            ["node"],
            registry=r,
        )

    def watch_nodes(self, views: Callable[[], Mapping[str, NodeView]]) -> None:
        self.registry.register(_NodeFreshness(views))
