"""Ingest from a real Redis into a real SQLite file: exact conservation, dead letters,
crash recovery (SIGKILL mid-stream), idempotent re-delivery."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import orjson
import psutil
import pytest
from sqlalchemy import select, text

from kernelsight import schema
from kernelsight.db import open_db, table_counts
from kernelsight.ingest import Ingester, backlog
from kernelsight.loadgen import make_event
from kernelsight.streams import FIELD, Publisher, connect

H = "testhost"  # the settings fixture's host


def valid_row(et: schema.EventType, i: int = 0) -> dict:
    return make_event(et, random.Random(i), "testhost", time.time_ns())


def drain(settings) -> Ingester:
    ing = Ingester(settings)
    ing.request_stop(drain=True)
    ing.run()
    return ing


def test_schema_round_trip_every_type(settings):
    """Each event type goes Publisher -> stream -> ingester -> table, every column intact."""
    pub = Publisher(settings, "test")
    sent = {}
    for et in schema.EVENT_TYPES:
        row = valid_row(et, 1)
        sent[et.name] = row
        pub.publish(et.name, [row])
    pub.close()
    ing = drain(settings)
    with ing.engine.connect() as c:
        for et in schema.EVENT_TYPES:
            t = schema.TABLES[et.name]
            got = c.execute(select(t)).mappings().one()
            for k, v in sent[et.name].items():
                assert got[k] == pytest.approx(v), (et.name, k)
            assert got["stream_id"] > 0


def test_stream_id_packing_is_order_preserving():
    ids = ["1700000000000-0", "1700000000000-1", "1700000000001-0", "9999999999999-524287"]
    packed = [schema.stream_id_to_int(i) for i in ids]
    assert packed == sorted(packed) and max(packed) < 2**63
    assert [schema.int_to_stream_id(p) for p in packed] == ids


def test_conservation_and_dead_letters(settings, rclient):
    n_good = 5000
    pub = Publisher(settings, "test")
    per_type = {}
    for i in range(n_good):
        et = schema.CORE_EVENT_TYPES[i % len(schema.CORE_EVENT_TYPES)]
        pub.publish(et.name, [valid_row(et, i)])
        per_type[et.name] = per_type.get(et.name, 0) + 1
    pub.close()
    sys_stream = schema.BY_NAME["syscall_events"].stream_for(H)
    good = valid_row(schema.BY_NAME["syscall_events"])
    bad = {
        "decode_error": {FIELD: b"{not json"},
        "missing_field": {FIELD: orjson.dumps({k: v for k, v in good.items() if k != "pid"})},
        "wrong_type": {FIELD: orjson.dumps({**good, "pid": "12"})},
        "out_of_range": {FIELD: orjson.dumps({**good, "arg0": 2**64 - 1})},
        "unknown_field": {FIELD: orjson.dumps({**good, "extra": 1})},
        "not_an_object": {FIELD: b"[1, 2]"},
    }
    for fields in bad.values():
        rclient.xadd(sys_stream, fields)
    rclient.xadd(schema.BY_NAME["syscall_events"].stream_for(H), {b"other": b"x"})  # no payload
    ing = drain(settings)
    counts = table_counts(ing.engine)
    for name, n in per_type.items():
        assert counts[name] == n
    assert sum(counts.values()) == n_good
    with ing.engine.connect() as c:
        reasons = sorted(r.split(":")[0] for (r,) in c.execute(
            text("SELECT reason FROM dead_letters")))
    assert reasons == sorted([*bad, "missing_field"])
    assert rclient.xlen(schema.deadletter_stream(H)) == len(bad) + 1
    assert backlog(rclient) == 0
    # Re-delivering everything (as after a lost XACK) stores nothing twice.
    for s in [et.stream_for(H) for et in schema.EVENT_TYPES]:
        rclient.xgroup_setid(s, schema.INGEST_GROUP, "0")
    ing2 = drain(settings)
    assert sum(table_counts(ing2.engine).values()) == n_good
    assert sum(ing2.stats.duplicates.values()) == n_good


def publish_syscall_rows(settings, n: int) -> None:
    pub = Publisher(settings, "test")
    et = schema.BY_NAME["syscall_events"]
    for i in range(0, n, 1000):
        pub.publish(et.name, [valid_row(et, j) for j in range(i, i + 1000)])
    pub.close()


def wait_rows(eng, at_least: int, timeout: float = 30) -> int:
    """syscall_events rows once there are at least ``at_least`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline and stored < at_least:
        time.sleep(0.05)
        with eng.connect() as c:
            stored = c.execute(text("SELECT COUNT(*) FROM syscall_events")).scalar_one()
    return stored


def test_sigkill_mid_stream_then_restart_stores_exactly_n(settings, tmp_path):
    n = 60_000
    publish_syscall_rows(settings, n)
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "KS_DB_PATH": settings.db_path,
           "KS_BATCH_SIZE": "500"}
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    eng = open_db(settings.db_path)
    stored = wait_rows(eng, n // 4)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 0 < stored < n, f"killed at {stored} rows: the kill must land mid-stream"
    # Restart with the same consumer name: own pending entries are re-read, the rest follow.
    p2 = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain"], env=env,
                        capture_output=True, text=True, timeout=120, check=False)
    assert p2.returncode == 0, p2.stderr
    with eng.connect() as c:
        total, distinct = c.execute(text(
            "SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM syscall_events")).one()
    print(f"\nSIGKILL at {stored} rows; after restart {total} rows, {distinct} distinct, of {n}")
    assert total == distinct == n


def test_worker_killed_is_restarted_and_ctrl_c_drains(settings, tmp_path):
    """Two worker processes: SIGKILL one mid-stream, the supervisor restarts it under the same
    consumer name (its pending entries are re-read); then Ctrl-C (SIGINT to the whole process
    group) drains and exits 0 with every row stored once."""
    n = 60_000
    publish_syscall_rows(settings, n)
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "KS_DB_PATH": settings.db_path,
           "KS_BATCH_SIZE": "200", "KS_INGEST_WORKERS": "2"}
    log = tmp_path / "ingest.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest"], env=env,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        eng = open_db(settings.db_path)
        stored = wait_rows(eng, n // 4)
        workers = psutil.Process(p.pid).children()
        assert len(workers) == 2, workers
        victim = workers[-1]
        victim.send_signal(signal.SIGKILL)
        assert 0 < stored < n, f"killed at {stored} rows: the kill must land mid-stream"
        r = connect(settings.redis_url)
        deadline = time.monotonic() + 60
        while backlog(r) and time.monotonic() < deadline:
            time.sleep(0.2)
        after = psutil.Process(p.pid).children()
        assert len(after) == 2 and victim.pid not in {w.pid for w in after}
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert p.wait(60) == 0, log.read_text()[-2000:]
        assert not psutil.pid_exists(after[0].pid) or \
            psutil.Process(after[0].pid).status() == psutil.STATUS_ZOMBIE
        with eng.connect() as c:
            total, distinct = c.execute(text(
                "SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM syscall_events")).one()
        eng.dispose()
        text_log = log.read_text()
        print(f"\nworker {victim.pid} SIGKILLed at {stored} rows; restarted; after Ctrl-C "
              f"{total} rows, {distinct} distinct, of {n}")
        assert "restarting it" in text_log and "Traceback" not in text_log
        assert total == distinct == n
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def test_own_pending_entries_are_reclaimed(settings, rclient):
    """Entries delivered to a consumer that died before XACK are stored on restart."""
    pub = Publisher(settings, "test")
    et = schema.BY_NAME["load_metrics"]
    pub.publish(et.name, [valid_row(et, i) for i in range(100)])
    pub.close()
    ing = Ingester(settings)
    ing.ensure_groups()
    # Read without processing: the entries are now pending on this consumer, as after a crash.
    got = ing._read(">", None, 1000)
    assert sum(len(es) for s, es in got if s == et.stream_for(H).encode()) == 100
    assert backlog(rclient) == 101  # plus the publisher's accounting snapshot
    ing2 = drain(settings)
    assert table_counts(ing2.engine)["load_metrics"] == 100
    assert ing2.stats.reclaimed == 101
