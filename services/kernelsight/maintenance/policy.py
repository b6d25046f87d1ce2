"""Retention planning: pure functions from (now, policy, table stats) to cutoffs.

As in Prometheus' tsdb (BeyondTimeRetention, BeyondSizeRetention), planning knows nothing of
SQLite: it takes numbers and returns, per table, the timestamp below which rows go. The
executor (prune.py) deletes; the maintenance thread (service.py) schedules. Kept pure so the
tests can say exactly which rows a policy removes."""

from __future__ import annotations

from dataclasses import dataclass

from kernelsight import defaults
from kernelsight.config import Settings

MINUTE_NS = 60 * 10**9


@dataclass(frozen=True)
class RetentionPolicy:
    retention_s: float
    size_bytes: int | None = None
    rollup_retention_s: float = 90 * 86400.0
    low_water: float = defaults.SIZE_LOW_WATER
    grace_s: float = defaults.ROLLUP_GRACE_S

    @classmethod
    def from_settings(cls, s: Settings) -> RetentionPolicy:
        return cls(s.retention_s, s.retention_size_bytes, s.rollup_retention_s)


@dataclass(frozen=True)
class TableStats:
    """What planning needs to know about one raw table."""

    oldest_ns: int | None  # MIN(timestamp), None when empty
    newest_ns: int | None  # MAX(timestamp)
    rolled_until_ns: int | None  # every minute before this is in the rollup; None: none yet


def floor_minute(ts_ns: int) -> int:
    return ts_ns // MINUTE_NS * MINUTE_NS


def closed_until(now_ns: int, newest_data_ns: int | None, grace_s: float) -> int | None:
    """The end of the last minute that can be rolled up: minutes ending at least ``grace_s``
    before both the wall clock and the newest row stored in any table (so an ingester that is
    behind, or stopped, never has a minute closed under it)."""
    if newest_data_ns is None:
        return None
    return floor_minute(min(now_ns, newest_data_ns) - int(grace_s * 1e9))


def deletable(cutoff_ns: int | None, st: TableStats) -> int | None:
    """``cutoff_ns`` bounded by the table's rollup progress: a raw row of a minute that is not
    rolled up yet is never deleted. None: nothing to delete."""
    if cutoff_ns is None or st.oldest_ns is None or st.rolled_until_ns is None:
        return None
    cut = min(cutoff_ns, st.rolled_until_ns)
    return cut if cut > st.oldest_ns else None


def beyond_time(now_ns: int, policy: RetentionPolicy,
                stats: dict[str, TableStats]) -> dict[str, int]:
    """Per raw table, delete rows with timestamp < the returned cutoff (tables with nothing
    to delete are left out)."""
    cutoff = now_ns - int(policy.retention_s * 1e9)
    out = {}
    for name, st in stats.items():
        cut = deletable(cutoff, st)
        if cut is not None:
            out[name] = cut
    return out


def beyond_size(used_bytes: int, policy: RetentionPolicy,
                stats: dict[str, TableStats]) -> dict[str, int]:
    """Above ``low_water`` x the size cap (the caller starts only above the cap itself,
    so deletes come in batches, not a row at a time): one cutoff T for every raw table, the
    oldest data first (as tsdb drops its oldest blocks), chosen so that, with data spread
    evenly over time, deleting
    everything older than T brings the file to ``low_water`` x the cap. The caller measures
    again and repeats until it is below (indexes and rollups do not shrink in proportion);
    each step moves T at least one second so it always progresses."""
    if policy.size_bytes is None or used_bytes <= policy.size_bytes * policy.low_water:
        return {}
    have = [st for st in stats.values() if st.oldest_ns is not None]
    if not have:
        return {}
    oldest = min(st.oldest_ns for st in have)  # type: ignore[type-var]
    newest = max(st.newest_ns for st in have)  # type: ignore[type-var]
    frac = (used_bytes - policy.size_bytes * policy.low_water) / used_bytes
    t = oldest + max(int(frac * (newest - oldest)), 10**9)
    out = {}
    for name, st in stats.items():
        cut = deletable(t, st)
        if cut is not None:
            out[name] = cut
    return out
