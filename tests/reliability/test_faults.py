"""Fault scenarios and the consistency check, in their short CI mode.

``CACHEDAPI_FAULT_SECONDS`` sets the load time of each (default 6 s);
``python -m tests.reliability --seconds 60`` is the long manual mode.
"""

from __future__ import annotations

import os

from . import checker, scenarios

SECONDS = float(os.environ.get("CACHEDAPI_FAULT_SECONDS", "6"))


def _assert_nothing_lost_or_stale(outcome: scenarios.Outcome) -> None:
    f = outcome.figures
    assert f["acked_writes"] > 0 and f["acked_creates"] > 0, f
    assert f["lost_writes"] == 0, f
    assert f["lost_creates"] == 0, f
    assert f["stale_reads"] == 0, checker.stale_reads(outcome.history)[:5]
    assert f["stale_cache_entries"] == 0, f


def _statuses(outcome: scenarios.Outcome, kind: str) -> set[str]:
    return {label.split()[0] for label in outcome.figures[kind]}


def test_redis_killed_reads_and_writes_keep_succeeding() -> None:
    outcome = scenarios.redis_killed(SECONDS)
    _assert_nothing_lost_or_stale(outcome)
    assert _statuses(outcome, "reads") == {"200"}, outcome.figures
    assert _statuses(outcome, "writes") <= {"200", "201"}, outcome.figures


def test_postgres_killed_reads_served_stale_and_writes_fail_fast() -> None:
    outcome = scenarios.postgres_killed(SECONDS)
    _assert_nothing_lost_or_stale(outcome)
    f = outcome.figures
    assert _statuses(outcome, "writes") <= {"200", "201", "503"}, f
    assert "503" in _statuses(outcome, "writes"), f"the outage was not seen: {f}"
    assert f["reads"].get("200 STALE", 0) > 0, f
    # "Quickly": a write never waits for a dead database (generous bound against hangs).
    assert f["max_write_seconds"] < 5, f


def test_api_instance_killed_cached_reads_continue_and_nothing_hangs() -> None:
    outcome = scenarios.api_killed(SECONDS)
    _assert_nothing_lost_or_stale(outcome)
    f = outcome.figures
    assert _statuses(outcome, "writes") <= {"200", "201", "502", "503", "504"}, f
    assert f["max_write_seconds"] < 10 and f["max_read_seconds"] < 10, f


def test_gateway_restart_loses_nothing() -> None:
    outcome = scenarios.gateway_restarted(SECONDS)
    _assert_nothing_lost_or_stale(outcome)


def test_no_read_older_than_an_acknowledged_write_across_two_gateways() -> None:
    outcome = scenarios.consistency(SECONDS)
    _assert_nothing_lost_or_stale(outcome)
    assert _statuses(outcome, "reads") == {"200"}, outcome.figures
    lists = outcome.figures["lists"]
    assert _statuses(outcome, "lists") == {"200"}, outcome.figures
    assert lists.get("200 HIT", 0) > 0 and lists.get("200 MISS", 0) > 0, "filtered pages were cached and retired"
