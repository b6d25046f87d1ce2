"""The PSI and vmstat rollups: gauges keep min/avg/max per resource, and cumulative counters
keep their last value per minute, from which a per-minute rate is the difference of two
consecutive minutes (never a sum of cumulative values)."""

from __future__ import annotations

import itertools

from maint_helpers import MIN, NOW, SEC, events, insert, maintenance, new_db, rows


def test_counter_rates_and_gauges_survive_the_rollup(tmp_path):
    db = new_db(tmp_path / "ks.db")
    m0 = NOW - 5 * MIN
    ts = [m0 + i * SEC for i in range(3 * 60)]  # three whole minutes at 1 s
    # pgmajfault grows by 2/s in minute 0, 10/s in minute 1, 0 in minute 2.
    rate = [2] * 60 + [10] * 60 + [0] * 60
    total, vm = 1_000, []
    for e, r in zip(events("vmstat_stats", ts), rate, strict=True):
        total += r
        vm.append({**e, "pgmajfault_total": total, "oom_kill_total": 3})
    insert(db, "vmstat_stats", vm)
    psi = []
    for res, base in (("cpu", 10.0), ("io", 1.0)):
        for e, i in zip(events("pressure_stats", ts), range(len(ts)), strict=True):
            psi.append({**e, "resource": res, "some_avg10_pct": base + i % 60,
                        "some_total_us": 1_000_000 * i})
    insert(db, "pressure_stats", psi)
    insert(db, "load_metrics", events("load_metrics", [NOW - MIN + 30 * SEC]))  # closes them
    mt = maintenance(db)
    mt.rollup()
    last = rows(db, "SELECT timestamp, samples, pgmajfault_total_last, oom_kill_total_last "
                    "FROM vmstat_stats_1m ORDER BY timestamp")
    assert [r[0] for r in last] == [m0, m0 + MIN, m0 + 2 * MIN]
    assert all(r[1] == 60 and r[3] == 3 for r in last)
    per_min = [b[2] - a[2] for a, b in itertools.pairwise(last)]
    assert per_min == [10 * 60, 0]  # minutes 1 and 2, from the rollup alone
    g = rows(db, "SELECT resource, samples, some_avg10_min_pct, some_avg10_avg_pct, "
                 "some_avg10_max_pct, some_total_last_us FROM pressure_stats_1m "
                 "WHERE timestamp = ? ORDER BY resource", m0 + MIN)
    assert g == [("cpu", 60, 10.0, 39.5, 69.0, 119_000_000),
                 ("io", 60, 1.0, 30.5, 60.0, 119_000_000)]
    mt.stop()
