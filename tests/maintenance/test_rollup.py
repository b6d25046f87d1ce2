"""Per-minute rollups on real SQLite files: known rows -> known aggregates, equal (within 1%)
to aggregates computed here from the raw rows, a rerun changes nothing, and only closed
minutes are written."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import orjson
import pytest
from maint_helpers import MIN, NOW, SEC, events, insert, maintenance, new_db, rows

from kernelsight import schema
from kernelsight.maintenance import ROLLUPS


def test_known_rows_give_known_aggregates(tmp_path):
    db = new_db(tmp_path / "ks.db")
    m0 = NOW - 10 * MIN
    insert(db, "syscall_events", events(
        "syscall_events", [m0 + i * SEC for i in range(4)], comm="pg", syscall_name="read",
        is_error=0) + events("syscall_events", [m0 + 5 * SEC], comm="pg",
                             syscall_name="read", is_error=1))
    # latencies 10, 20, 30, 40, 1000 ns (set after generation, in that row order)
    con_rows = rows(db, "SELECT id FROM syscall_events ORDER BY id")
    import sqlite3
    con = sqlite3.connect(db)
    for (rid,), lat in zip(con_rows, (10, 20, 30, 40, 1000), strict=True):
        con.execute("UPDATE syscall_events SET latency_ns = ? WHERE id = ?", (lat, rid))
    con.commit()
    con.close()
    insert(db, "block_stats", [
        {**e, "device_name": "vda", "read_ios": v, "in_flight": f}
        for e, v, f in zip(events("block_stats", [m0 + 1 * SEC, m0 + 30 * SEC, m0 + 59 * SEC]),
                           (100, 150, 170), (2, 4, 9), strict=True)])
    insert(db, "memory_metrics", [
        {**e, "mem_free_kb": v} for e, v in zip(
            events("memory_metrics", [m0, m0 + 20 * SEC, m0 + 40 * SEC]), (10, 20, 60),
            strict=True)])
    # a minute closes once data 15 s past its end is stored (the scraper's, here)
    insert(db, "load_metrics", events("load_metrics", [m0 + 80 * SEC]))
    mt = maintenance(db)
    assert mt.rollup() > 0
    [(n, p50, p95, p99, mx, errs)] = rows(
        db, "SELECT samples, latency_p50_ns, latency_p95_ns, latency_p99_ns, latency_max_ns, "
        "is_error FROM syscall_events_1m WHERE comm = 'pg' AND syscall_name = 'read' "
        "AND timestamp = ?", m0)
    # nearest rank: p50 of 5 values is the 3rd, p95 and p99 the 5th
    assert (n, p50, p95, p99, mx, errs) == (5, 30, 1000, 1000, 1000, 1)
    [(n, last, fmin, favg, fmax)] = rows(
        db, "SELECT samples, read_ios_last, in_flight_min, in_flight_avg, in_flight_max "
        "FROM block_stats_1m WHERE device_name = 'vda'")
    assert (n, last, fmin, favg, fmax) == (3, 170, 2, 5.0, 9)  # last value, never a sum
    [(lo, avg, hi)] = rows(db, "SELECT mem_free_min_kb, mem_free_avg_kb, mem_free_max_kb "
                               "FROM memory_metrics_1m")
    assert (lo, avg, hi) == (10, 30.0, 60)
    mt.stop()


def _reference(db, et: schema.EventType, lo: int, hi: int) -> dict[tuple, dict[str, float]]:
    """The aggregates recomputed here in Python, straight from the raw rows."""
    keys = [c.name for c in et.columns if c.role == schema.KEY]
    names = ["timestamp", "host", *et.column_names]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows(db, f"SELECT {', '.join(names)} FROM {et.name} WHERE timestamp >= ? AND "
                      "timestamp < ?", lo, hi):
        d = dict(zip(names, r, strict=True))
        groups[(d["host"], d["timestamp"] // MIN * MIN, *(d[k] for k in keys))].append(d)
    out = {}
    for g, rs in groups.items():
        agg: dict[str, float] = {"samples": len(rs)}
        for name, st, c in schema.rollup_columns(et):
            vals = [r[c.name] for r in rs]
            if st == "min":
                agg[name] = min(vals)
            elif st in ("max", schema.MAX):
                agg[name] = max(vals)
            elif st == "avg":
                agg[name] = sum(vals) / len(vals)
            elif st == schema.SUM:
                agg[name] = sum(vals)
            elif st == "last":
                agg[name] = max(rs, key=lambda r: r["timestamp"])[c.name]
            else:  # pNN, nearest rank
                s = sorted(vals)
                agg[name] = s[math.ceil(int(st[1:]) * len(s) / 100) - 1]
        out[g] = agg
    return out


def test_rollups_equal_the_raw_aggregates_for_every_type(tmp_path):
    db = new_db(tmp_path / "ks.db")
    rng = random.Random(5)
    start = NOW - 5 * MIN
    for et in schema.EVENT_TYPES:
        ts = sorted(rng.randrange(start, NOW - 20 * SEC) for _ in range(400))
        # few keys, so groups hold many rows; distinct timestamps so "last" is unambiguous
        ts = sorted(set(ts))
        evs = events(et.name, ts, seed=hash(et.name) % 1000, host=rng.choice(("h1", "h2")))
        for e in evs:
            for c in et.columns:
                if c.role == schema.KEY and c.kind == "str" and not c.choices:
                    e[c.name] = rng.choice(("a", "b"))
                elif c.role == schema.KEY:
                    e[c.name] = rng.choice((1, 2)) if c.kind == "int" else e[c.name]
        insert(db, et.name, evs)
    mt = maintenance(db)
    mt.rollup()
    checked = 0
    for et in schema.EVENT_TYPES:
        if not et.rollup:  # runs: records, not measurements (never rolled up or pruned)
            continue
        keys = [c.name for c in et.columns if c.role == schema.KEY]
        ref = _reference(db, et, start // MIN * MIN, NOW - MIN)
        got_names = ["host", "timestamp", *keys, "samples",
                     *(n for n, _, _ in schema.rollup_columns(et))]
        got = {tuple(r[:2 + len(keys)]): dict(zip(got_names[2 + len(keys):],
                                                  r[2 + len(keys):], strict=True))
               for r in rows(db, f"SELECT {', '.join(got_names)} FROM {et.rollup}")}
        assert set(got) == set(ref), et.name
        for g, agg in ref.items():
            for name, v in agg.items():
                assert got[g][name] == pytest.approx(v, rel=0.01), (et.name, g, name)
                checked += 1
    assert checked > 1000
    mt.stop()


def test_rerun_changes_nothing_and_open_minutes_wait(tmp_path):
    db = new_db(tmp_path / "ks.db")
    # two closed minutes and the current one (open: at NOW + 20 s only the minute that
    # ended 15 s ago or earlier is closed)
    ts = [NOW - 2 * MIN + i * SEC for i in range(0, 150, 3)]
    insert(db, "sched_events", events("sched_events", ts))
    mt = maintenance(db, clock=NOW + 20 * SEC)
    assert mt.rollup() > 0
    before = rows(db, "SELECT * FROM sched_events_1m ORDER BY id")
    assert {r[1] for r in before} == {NOW - 2 * MIN, NOW - MIN}  # not the open minute
    assert mt.rollup() == 0  # nothing new closed: nothing written
    # forcing the same minutes again is an upsert of the same values
    ru = ROLLUPS["sched_events"]
    again = ru.compute(mt.con, NOW - 2 * MIN, NOW)
    with mt.ex.txn() as con:
        con.executemany(ru.upsert_sql, again)
    assert rows(db, "SELECT * FROM sched_events_1m ORDER BY id") == before
    assert rows(db, "SELECT done_until_ns FROM rollup_state WHERE table_name = "
                    "'sched_events'") == [(NOW,)]
    mt.stop()


def test_window_counts_reach_past_raw_retention(tmp_path):
    from kernelsight.db import open_db
    from kernelsight.maintenance import rollup_counts

    db = new_db(tmp_path / "ks.db")
    ts = [NOW - 20 * MIN + i * 7 * SEC for i in range(20 * 60 // 7)]  # every 7 s, 20 min
    insert(db, "tcp_stats", events("tcp_stats", ts))
    eng = open_db(db, create=False)
    windows = [(NOW - 20 * MIN, NOW), (NOW - 15 * MIN, NOW - 2 * MIN),
               (NOW - 30 * MIN, NOW - 10 * MIN), (NOW - 3 * MIN, NOW)]
    want = {w: sum(w[0] <= t < w[1] for t in ts) for w in windows}
    assert {w: rollup_counts(eng, *w)["tcp_stats"] for w in windows} == want  # all raw
    # 20 s past the minute: the cutoff (5 minutes ago) falls inside a minute, which is left
    # half deleted in the raw table and whole in the rollup
    mt = maintenance(db, clock=NOW + 20 * SEC, retention_s=300.0)
    mt.run_once()
    oldest = rows(db, "SELECT MIN(timestamp) FROM tcp_stats")[0][0]
    assert NOW - 5 * MIN + 20 * SEC <= oldest < NOW - 4 * MIN
    # minute-aligned windows: the same counts as before retention
    assert {w: rollup_counts(eng, *w)["tcp_stats"] for w in windows} == want
    eng.dispose()
    mt.stop()


def test_query_demo_counts_rows_retention_deleted_through_the_rollups(tmp_path):
    import subprocess
    import sys

    db = new_db(tmp_path / "ks.db")
    ts = [NOW - 20 * MIN + i * 5 * SEC for i in range(20 * 12)]
    insert(db, "tcp_stats", events("tcp_stats", ts))
    mt = maintenance(db, retention_s=300.0)
    mt.run_once()
    left = rows(db, "SELECT COUNT(*) FROM tcp_stats")[0][0]
    assert left < len(ts)
    out = subprocess.run([sys.executable, "-m", "kernelsight", "query", "--demo", "--db",
                          str(db)], capture_output=True, text=True, timeout=60, check=True,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    line = next(ln for ln in out.splitlines() if " tcp_stats " in ln)
    assert [c.strip() for c in line.split("│") if c.strip()] == \
        ["tcp_stats", f"{left:,}", f"{len(ts):,}"]
    rep = subprocess.run([sys.executable, "-m", "kernelsight", "report", "--json", "--db",
                          str(db)], capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin"})
    tcp = orjson.loads(rep.stdout)["event_types"]["tcp_stats"]
    assert (tcp["stored"], tcp["rows_incl_rollups"]) == (left, len(ts))
    mt.stop()


def test_window_counts_inside_a_minute_nothing_was_deleted_from(tmp_path):
    from kernelsight.db import open_db
    from kernelsight.maintenance import rollup_counts

    db = new_db(tmp_path / "ks.db")
    ts = [NOW + 10 * SEC + i * SEC for i in range(30)]  # one young minute, nothing deleted
    insert(db, "tcp_stats", events("tcp_stats", ts))
    eng = open_db(db, create=False)
    w = (NOW + 20 * SEC, NOW + 30 * SEC)
    assert rollup_counts(eng, *w)["tcp_stats"] == sum(w[0] <= t < w[1] for t in ts) == 10
    eng.dispose()
