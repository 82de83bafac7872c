"""Prometheus metrics, served only on the private listener (``FORGEHALL_METRICS_ADDR``).

Each application gets its own registry so several apps in one process (tests) never
share counters. Route labels are route templates (``/api/v1/issues/{key}``), never raw
paths, so label cardinality stays bounded.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from forgehall import __version__

#: Every metric name, documented in docs/operations.md (a test keeps the two in step).
METRIC_NAMES = (
    "forgehall_build_info",
    "forgehall_http_requests_total",
    "forgehall_http_request_duration_seconds",
    "forgehall_db_pool_connections",
    "forgehall_db_pool_max_connections",
    "forgehall_background_service_runs_total",
    "forgehall_background_service_overruns_total",
)


class _PoolCollector(Collector):
    def __init__(self, read_pool: Callable[[], dict[str, int]]) -> None:
        self._read_pool = read_pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._read_pool()
        conns = GaugeMetricFamily(
            "forgehall_db_pool_connections",
            "Database pool connections by state",
            labels=["state"],
        )
        conns.add_metric(["in_use"], status["in_use"])
        conns.add_metric(["idle"], status["idle"])
        yield conns
        yield GaugeMetricFamily(
            "forgehall_db_pool_max_connections",
            "Configured maximum pool size",
            value=status["max"],
        )


class Metrics:
    """The metrics of one application instance."""

    def __init__(self, read_pool: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        build = Gauge(
            "forgehall_build_info",
            "Forgehall build information",
            ["version", "python"],
            registry=self.registry,
        )
        build.labels(version=__version__, python=platform.python_version()).set(1)
        self.http_requests = Counter(
            "forgehall_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "forgehall_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.service_runs = Counter(
            "forgehall_background_service_runs",
            "Background service iterations",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.service_overruns = Counter(
            "forgehall_background_service_overruns",
            "Background service iterations that took longer than their interval",
            ["service"],
            registry=self.registry,
        )
        if read_pool is not None:
            self.registry.register(_PoolCollector(read_pool))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method=method, route=route, status=str(status)).inc()
        self.http_duration.labels(method=method, route=route).observe(seconds)
