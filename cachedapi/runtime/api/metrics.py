"""Prometheus metrics of the api role, in a registry of the app's own.

One registry per app (not the process-global default) so that tests can run
several apps in one process and read each one's counters. Every metric object
is created once here; request handling only increments them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The counters, histograms and gauges ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cachedapi_api_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "cachedapi_api_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "cachedapi_api_cache", "Cacheable reads by outcome (hit, miss, stale, bypass)", ["result"], registry=r
        )
        self.fills = Counter(
            "cachedapi_api_cache_fills", "Cache fills by outcome (stored, rejected, skipped)", ["result"], registry=r
        )
        self.coalesced = Counter(
            "cachedapi_api_stampede_coalesced",
            "Reads answered by another reader's database query (in-process flight or fill lease)",
            registry=r,
        )
        self.db_queries = Counter("cachedapi_api_db_queries", "Database queries by operation", ["op"], registry=r)
        self.db_errors = Counter("cachedapi_api_db_errors", "Database operations that failed", ["op"], registry=r)
        self.db_seconds = Histogram(
            "cachedapi_api_db_query_duration_seconds",
            "Time of a database operation",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter("cachedapi_api_redis_errors", "Redis commands that failed", registry=r)
        self.invalidation_failures = Counter(
            "cachedapi_api_invalidation_failures",
            "Invalidations that could not reach Redis at once and were queued",
            registry=r,
        )
        self.invalidations_pending = Gauge(
            "cachedapi_api_invalidations_pending", "Invalidations waiting for Redis to come back", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
