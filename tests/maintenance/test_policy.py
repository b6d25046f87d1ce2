"""Retention planning is pure: now + policy + table stats -> cutoffs (tsdb's
BeyondTimeRetention/BeyondSizeRetention shape), so the rules are tested without a database."""

from __future__ import annotations

from kernelsight.maintenance.policy import (
    MINUTE_NS,
    RetentionPolicy,
    TableStats,
    beyond_size,
    beyond_time,
    closed_until,
)

S = 10**9
NOW = 1_800_000_000 * S


def test_time_cutoff_is_now_minus_retention_when_rolled_up():
    st = {"a": TableStats(NOW - 3600 * S, NOW, NOW), "b": TableStats(None, None, None)}
    assert beyond_time(NOW, RetentionPolicy(600), st) == {"a": NOW - 600 * S}


def test_never_past_the_rollup():
    # rolled up only to 20 minutes ago: rows of later minutes stay, whatever the retention
    st = {"a": TableStats(NOW - 3600 * S, NOW, NOW - 1200 * S)}
    assert beyond_time(NOW, RetentionPolicy(60), st) == {"a": NOW - 1200 * S}
    # not rolled up at all: nothing goes
    assert beyond_time(NOW, RetentionPolicy(60), {"a": TableStats(NOW - 3600 * S, NOW, None)}) \
        == {}


def test_nothing_when_everything_is_recent():
    st = {"a": TableStats(NOW - 100 * S, NOW, NOW)}
    assert beyond_time(NOW, RetentionPolicy(600), st) == {}


def test_size_cutoff_takes_the_oldest_fraction_of_the_span():
    pol = RetentionPolicy(86400, size_bytes=1000, low_water=0.9)
    st = {"a": TableStats(NOW - 1000 * S, NOW, NOW), "b": TableStats(NOW - 500 * S, NOW, NOW)}
    # 2000 bytes used, target 900: free 55% of the data -> the oldest 550 s of the span
    plan = beyond_size(2000, pol, st)
    assert plan == {"a": NOW - 450 * S, "b": NOW - 450 * S}
    assert beyond_size(900, pol, st) == {}  # at low water: nothing
    assert beyond_size(2000, RetentionPolicy(86400), st) == {}  # no cap: nothing


def test_size_cutoff_always_progresses_and_respects_rollups():
    pol = RetentionPolicy(86400, size_bytes=1000, low_water=0.95)
    st = {"a": TableStats(NOW - 10 * S, NOW, NOW - 5 * S)}
    assert beyond_size(1001, pol, st) == {"a": NOW - 9 * S}  # at least one second
    st = {"a": TableStats(NOW - 1000 * S, NOW, NOW - 990 * S)}
    assert beyond_size(10**6, pol, st) == {"a": NOW - 990 * S}  # capped by the rollup


def test_a_minute_closes_after_its_grace_against_clock_and_data():
    m = NOW // MINUTE_NS * MINUTE_NS
    assert closed_until(m + 20 * S, m + 20 * S, 15) == m
    assert closed_until(m + 10 * S, m + 10 * S, 15) == m - MINUTE_NS
    # the ingester is behind: the newest stored row decides, not the clock
    assert closed_until(m + 50 * S, m - 30 * S, 15) == m - MINUTE_NS
    assert closed_until(m, None, 15) is None
