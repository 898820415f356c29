"""The gateway's Prometheus metrics, counted as plain integers on the hot path.

``prometheus_client`` counters take a lock per increment; the gateway runs
one event loop per process, so it keeps plain ``int`` attributes and turns
them into metric families only when ``/metrics`` is scraped. The upstream
latency histogram is a ``prometheus_client.Histogram``: it is observed on the
forwarding path only, where a lock is nothing next to an HTTP round trip.
"""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CACHE_RESULTS = ("HIT", "MISS", "STALE", "BYPASS")


class Counts:
    """Everything the gateway counts; attributes are bumped directly (``counts.hit += 1``)."""

    def __init__(self) -> None:
        self.hit = 0
        self.miss = 0
        self.stale = 0
        self.bypass = 0
        self.not_modified = 0
        self.unauthorized = 0
        self.rate_limited = 0
        self.upstream_errors = 0
        self.redis_failures = 0
        self.redis_outages = 0
        self.redis_down = False
        self.refreshes = 0
        #: 408s: a request body that did not arrive in time (``clients``).
        self.body_timeouts = 0
        #: 503s: a client address over its cap of requests in progress (``clients``).
        self.over_capacity = 0


class _Collector(Collector):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        c = self.counts
        cache = CounterMetricFamily(
            "cachedapi_gateway_cache_requests", "Cacheable GETs by X-Cache result", labels=["result"]
        )
        for result, value in zip(CACHE_RESULTS, (c.hit, c.miss, c.stale, c.bypass), strict=True):
            cache.add_metric([result], value)
        yield cache
        yield CounterMetricFamily("cachedapi_gateway_not_modified", "304 answers from the cache", value=c.not_modified)
        yield CounterMetricFamily("cachedapi_gateway_unauthorized", "401 answers", value=c.unauthorized)
        yield CounterMetricFamily("cachedapi_gateway_rate_limited", "429 answers", value=c.rate_limited)
        yield CounterMetricFamily(
            "cachedapi_gateway_upstream_errors", "Forwarded requests answered 502/504", value=c.upstream_errors
        )
        yield CounterMetricFamily(
            "cachedapi_gateway_redis_failures",
            "Requests served without Redis (fail open: no limit, no cache)",
            value=c.redis_failures,
        )
        yield CounterMetricFamily("cachedapi_gateway_redis_outages", "Times Redis became unavailable", c.redis_outages)
        yield GaugeMetricFamily("cachedapi_gateway_redis_up", "1 when Redis answers", value=0 if c.redis_down else 1)
        yield CounterMetricFamily(
            "cachedapi_gateway_background_refreshes", "Stale-while-revalidate refreshes sent", value=c.refreshes
        )
        yield CounterMetricFamily(
            "cachedapi_gateway_body_timeouts", "408 answers: a request body late", value=c.body_timeouts
        )
        yield CounterMetricFamily(
            "cachedapi_gateway_over_capacity",
            "503 answers: a client address with maxForwardsPerClient requests in progress",
            value=c.over_capacity,
        )


class Metrics:
    """One registry per gateway app, so that tests can build several in one process."""

    def __init__(self) -> None:
        self.counts = Counts()
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(_Collector(self.counts))
        self.upstream_latency = prometheus_client.Histogram(
            "cachedapi_gateway_upstream_seconds",
            "Time to the upstream's complete answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)

    CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST.encode()
