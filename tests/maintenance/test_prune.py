"""Retention on real SQLite files: exactly which rows go, counted as retention (never as
loss), never a raw row of a minute not rolled up yet, accounting keeps every key's newest
total, dead letters age out, the size cap holds and free pages go back to the file system."""

from __future__ import annotations

import os
import sqlite3

from maint_helpers import MIN, NOW, SEC, events, insert, maintenance, new_db, produced, rows

from kernelsight import schema
from kernelsight.db import open_db
from kernelsight.report import build

H = "testhost"  # the settings fixture's host


def _acc(db, metric: str) -> dict[tuple[str, str], int]:
    return {(et, r): v for et, r, v in rows(
        db, "SELECT event_type, reason, SUM(value) FROM pipeline_accounting WHERE metric = ? "
            "GROUP BY 1, 2", metric)}


def test_time_retention_deletes_exactly_the_old_rolled_up_rows(tmp_path):
    db = new_db(tmp_path / "ks.db")
    ts = [NOW - 20 * MIN + i * 10 * SEC for i in range(20 * 6)]  # every 10 s for 20 min
    insert(db, "tcp_stats", events("tcp_stats", ts))
    insert(db, "syscall_events", events("syscall_events", ts[::2]))
    produced(db, {"tcp_stats": len(ts), "syscall_events": len(ts[::2])})
    mt = maintenance(db, retention_s=300.0, chunk=7)  # tiny chunks: many transactions
    out = mt.run_once()
    cutoff = NOW - 5 * MIN
    for table, sent in (("tcp_stats", ts), ("syscall_events", ts[::2])):
        left = [t for (t,) in rows(db, f"SELECT timestamp FROM {table} ORDER BY timestamp")]
        assert left == [t for t in sent if t >= cutoff]
    gone = {"tcp_stats": sum(t < cutoff for t in ts),
            "syscall_events": sum(t < cutoff for t in ts[::2])}
    assert out["deleted_time"] == sum(gone.values())
    assert _acc(db, schema.RETENTION_DELETED) == {(t, "time"): n for t, n in gone.items()}
    # the report's conservation holds: produced = stored + retention, nothing "lost"
    eng = open_db(db, create=False)
    rep = build(eng, str(db))
    eng.dispose()
    for t in gone:
        assert rep.balance(t) == 0, (t, rep.balance(t))
    mt.stop()


def test_raw_rows_wait_for_their_rollup(tmp_path):
    db = new_db(tmp_path / "ks.db")
    # 10 minutes of data, but the newest row is 5 minutes old: minutes after NOW - 6 min
    # cannot be closed yet (the ingester may be behind), so they are not deleted even though
    # they are past a 1-minute retention
    ts = [NOW - 15 * MIN + i * 5 * SEC for i in range(10 * 12)]
    insert(db, "load_metrics", events("load_metrics", ts))
    mt = maintenance(db, retention_s=60.0)
    mt.run_once()
    done = rows(db, "SELECT done_until_ns FROM rollup_state WHERE table_name = 'load_metrics'")
    assert done == [((ts[-1] - 15 * SEC) // MIN * MIN,)]
    left = [t for (t,) in rows(db, "SELECT timestamp FROM load_metrics ORDER BY timestamp")]
    assert left == [t for t in ts if t >= done[0][0]]
    # every deleted minute is in the rollup, with all its rows
    rolled = dict(rows(db, "SELECT timestamp, samples FROM load_metrics_1m"))
    for m in range(NOW - 15 * MIN, done[0][0], MIN):
        assert rolled[m] == sum(m <= t < m + MIN for t in ts)
    # data catches up: now they go (all but the new row are older than the minute retention)
    insert(db, "load_metrics", events("load_metrics", [NOW]))
    mt.run_once()
    assert rows(db, "SELECT timestamp FROM load_metrics") == [(NOW,)]
    assert rows(db, "SELECT SUM(samples) FROM load_metrics_1m") == [(len(ts),)]
    mt.stop()


def test_accounting_keeps_each_keys_largest_total_and_dead_letters_age_out(tmp_path):
    db = new_db(tmp_path / "ks.db")
    con = sqlite3.connect(db)
    acc = []
    for inst in ("a", "b"):
        for i in range(50):  # a snapshot every 10 s, cumulative
            acc.append((NOW - 20 * MIN + i * 10 * SEC, inst, "tcp_stats", "produced", "",
                        100 * i))
            acc.append((NOW - 20 * MIN + i * 10 * SEC, inst, "tcp_stats", "dropped", "full", i))
    acc.append((NOW - MIN, "a", "tcp_stats", "produced", "", 5000))  # still live
    con.executemany("INSERT INTO pipeline_accounting (timestamp, host, instance, source, "
                    "event_type, metric, reason, value) VALUES (?, 'h1', ?, 'x', ?, ?, ?, ?)",
                    acc)
    con.executemany("INSERT INTO dead_letters (timestamp, stream, entry_id, event_type, reason)"
                    " VALUES (?, 's', ?, ?, 'decode_error: x')",
                    [(NOW - (10 - i) * MIN, f"{i}-0", "tcp_stats" if i % 2 else "sched_events")
                     for i in range(10)])
    con.commit()
    con.close()
    eng = open_db(db, create=False)
    before = build(eng, str(db))
    mt = maintenance(db, retention_s=300.0, chunk=13)
    mt.run_once()
    after = build(eng, str(db))
    eng.dispose()
    left = rows(db, "SELECT instance, metric, reason, value FROM pipeline_accounting WHERE "
                    "source = 'x' ORDER BY instance, metric, value")
    assert left == [("a", "dropped", "full", 49), ("a", "produced", "", 5000),
                    ("b", "dropped", "full", 49), ("b", "produced", "", 4900)]
    assert after.produced == before.produced and after.dropped == before.dropped
    # dead letters older than 5 minutes went, counted per event type; the report's dead
    # letter totals (rows + those deleted) are unchanged
    assert rows(db, "SELECT COUNT(*) FROM dead_letters") == [(5,)]
    assert _acc(db, schema.DEAD_LETTERS_DELETED) == {("tcp_stats", "time"): 2,
                                                    ("sched_events", "time"): 3}
    assert {t: after.dead_total(t) for t in schema.TABLES} == \
        {t: before.dead_total(t) for t in schema.TABLES}
    assert after.dead_deleted == {"tcp_stats": 2, "sched_events": 3}
    mt.stop()


def test_size_cap_deletes_oldest_first_and_the_file_shrinks(tmp_path):
    db = new_db(tmp_path / "ks.db")
    ts = [NOW - 30 * MIN + i * 20 * 10**6 for i in range(30 * 60 * 50)]  # 50/s for 30 min
    insert(db, "syscall_events", events("syscall_events", ts))
    produced(db, {"syscall_events": len(ts)})
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    size0 = os.path.getsize(db)
    cap = size0 // 3
    mt = maintenance(db, retention_s=7 * 86400.0, size_bytes=cap)
    out = mt.run_once()
    assert out["deleted_size"] > 0 and out["deleted_time"] == 0
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # incremental vacuum's truncation lands
    con.close()
    size1 = os.path.getsize(db)
    assert size1 <= cap * 1.1, (size0, cap, size1)
    assert size1 >= cap * 0.5  # not everything: oldest first, down to ~95% of the cap
    left = [t for (t,) in rows(db, "SELECT timestamp FROM syscall_events ORDER BY timestamp")]
    assert left == ts[len(ts) - len(left):]  # exactly the newest rows remain
    assert _acc(db, schema.RETENTION_DELETED) == {("syscall_events", "size"):
                                                 len(ts) - len(left)}
    assert rows(db, "PRAGMA freelist_count") == [(0,)]
    eng = open_db(db, create=False)
    assert build(eng, str(db)).balance("syscall_events") == 0
    eng.dispose()
    mt.stop()


def test_new_databases_use_incremental_auto_vacuum(tmp_path):
    db = new_db(tmp_path / "ks.db")
    assert rows(db, "PRAGMA auto_vacuum") == [(2,)]  # INCREMENTAL


def test_rows_arriving_after_their_minute_closed_are_rolled_up_before_deletion(tmp_path):
    db = new_db(tmp_path / "ks.db")
    m = NOW - 10 * MIN
    insert(db, "sched_events", events("sched_events", [m + i * SEC for i in range(30)]))
    insert(db, "load_metrics", events("load_metrics", [NOW - 8 * MIN]))  # data moved on
    mt = maintenance(db, retention_s=3600.0)
    mt.run_once()
    assert rows(db, "SELECT SUM(samples) FROM sched_events_1m WHERE timestamp = ?", m) == \
        [(30,)]
    # 20 rows of that minute arrive late (a stream that lagged behind the others)
    insert(db, "sched_events", events("sched_events", [m + 30 * SEC + i * SEC
                                                       for i in range(20)], seed=2))
    mt.policy = type(mt.policy)(retention_s=300.0)
    mt.run_once()
    assert rows(db, "SELECT COUNT(*) FROM sched_events") == [(0,)]
    assert rows(db, "SELECT SUM(samples) FROM sched_events_1m WHERE timestamp = ?", m) == \
        [(50,)]
    assert mt.rerolled == 1
    mt.stop()


def test_a_lagging_stream_holds_its_tables_rollup(tmp_path, rclient, redis_url):
    from kernelsight.ingest.writer import WriteLock
    from kernelsight.maintenance import Maintenance, RetentionPolicy

    db = new_db(tmp_path / "ks.db")
    # memory_metrics is current; sched_events' newest stored row is 6 minutes old and its
    # stream still holds an entry the ingest group has not read: its later minutes must
    # wait, whatever the other tables say
    insert(db, "memory_metrics", events("memory_metrics", [NOW - 9 * MIN, NOW]))
    insert(db, "sched_events", events("sched_events", [NOW - 9 * MIN, NOW - 6 * MIN]))
    for t in ("memory_metrics", "sched_events"):
        rclient.xgroup_create(schema.stream_key(H, t), schema.INGEST_GROUP, id="0",
                              mkstream=True)
    rclient.xadd(schema.stream_key(H, "sched_events"), {"d": b"{}"})
    mt = Maintenance(db, RetentionPolicy(3600.0), lambda: WriteLock(str(db)), "h1",
                     clock=lambda: NOW, redis_url=redis_url)
    assert mt.lagging() == {"sched_events"}
    mt.rollup()
    done = dict(rows(db, "SELECT table_name, done_until_ns FROM rollup_state"))
    assert done["memory_metrics"] == NOW - MIN
    assert done["sched_events"] == NOW - 7 * MIN  # its own newest row - grace
    # once the ingester has read and stored it, the stream is caught up
    rclient.xreadgroup(schema.INGEST_GROUP, "c", {schema.stream_key(H, "sched_events"): ">"})
    assert mt.lagging() == {"sched_events"}  # delivered, not acknowledged: still pending
    [(eid, _)] = rclient.xrange(schema.stream_key(H, "sched_events"))
    rclient.xack(schema.stream_key(H, "sched_events"), schema.INGEST_GROUP, eid)
    assert mt.lagging() == set()
    mt.rollup()
    assert rows(db, "SELECT done_until_ns FROM rollup_state WHERE table_name = "
                    "'sched_events'") == [(NOW - MIN,)]
    mt.stop()


def test_the_thread_deletes_raw_rows_at_every_tick_between_full_passes(tmp_path):
    import time

    from kernelsight.ingest.writer import WriteLock
    from kernelsight.maintenance import Maintenance, RetentionPolicy

    db = new_db(tmp_path / "ks.db")
    ts = [NOW - 10 * MIN + i * SEC for i in range(10 * 60)]
    insert(db, "memory_metrics", events("memory_metrics", ts))
    now = [NOW]
    # a full pass only at start (interval one hour); ticks every 0.1 s
    mt = Maintenance(db, RetentionPolicy(300.0), lambda: WriteLock(str(db)), "h1",
                     interval_s=3600, size_interval_s=0.1, clock=lambda: now[0]).start()
    deadline = time.monotonic() + 30
    while rows(db, "SELECT MIN(timestamp) FROM memory_metrics") != [(NOW - 5 * MIN,)]:
        assert time.monotonic() < deadline, "first pass did not prune"
        time.sleep(0.1)
    now[0] = NOW + 40 * SEC  # 40 s later: rows up to NOW - 4 min 20 s are past retention
    while rows(db, "SELECT MIN(timestamp) FROM memory_metrics") != [(NOW - 260 * SEC,)]:
        assert time.monotonic() < deadline, "no delete between full passes"
        time.sleep(0.1)
    assert mt.passes == 1
    mt.stop()


def test_a_tick_with_nothing_due_queries_nothing_and_a_full_pass_finds_late_rows(tmp_path):
    """Idle cost: between full passes, a tick before the oldest row reaches the retention
    reads no table; once it does, the tick deletes it. A row that arrives older than every
    stored one (a late replay) is found by the next full pass."""
    db = new_db(tmp_path / "ks.db")
    ts = [NOW - 4 * MIN + i * SEC for i in range(240)]
    insert(db, "memory_metrics", events("memory_metrics", ts))
    produced(db, {"memory_metrics": len(ts)})
    mt = maintenance(db, retention_s=300.0)
    now = NOW
    mt.run_once(now)
    calls = []
    real = mt._stats
    mt._stats = lambda: calls.append(1) or real()  # type: ignore[method-assign]
    assert mt.prune_raw(now + 30 * SEC) == 0 and calls == []  # oldest due at NOW + 1 min
    late = NOW - 10 * MIN  # older than anything stored, long past the retention
    insert(db, "memory_metrics", events("memory_metrics", [late]))
    assert mt.prune_raw(now + 40 * SEC) == 0 and calls == []  # the tick does not see it ...
    mt.run_once(now + 45 * SEC)  # ... the next full pass does
    assert rows(db, "SELECT COUNT(*) FROM memory_metrics WHERE timestamp = ?", late) == [(0,)]
    calls.clear()
    assert mt.prune_raw(now + 50 * SEC) == 0 and calls == []
    assert mt.prune_raw(now + 61 * SEC + 500_000_000) == 2 and calls == [1]  # -240, -239 s
