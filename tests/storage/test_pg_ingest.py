"""Ingest from a real Redis into a real PostgreSQL 15 (COPY -> staging -> INSERT ... ON
CONFLICT DO NOTHING): exact counts, a replay of every entry stores nothing twice, a SIGKILLed
ingester restarted loses and duplicates nothing, a dropped connection is retried, hostile
strings (NUL) are dead-lettered with a reason and int64 extremes stored exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest
from sqlalchemy import create_engine, select, text

from kernelsight import schema
from kernelsight.config import Settings
from kernelsight.db import open_db, table_counts
from kernelsight.ingest import Ingester
from kernelsight.loadgen import make_event
from kernelsight.streams import FIELD, Publisher

INT64_MIN, INT64_MAX = schema.INT64_MIN, schema.INT64_MAX


@pytest.fixture
def pg_settings(pg_url, redis_url) -> Settings:
    return Settings(redis_url=redis_url, db_path=pg_url, host="testhost")


def row(et: schema.EventType, i: int, ts: int | None = None) -> dict:
    return make_event(et, random.Random(i), "testhost", ts or time.time_ns())


def drain(s: Settings) -> Ingester:
    ing = Ingester(s)
    ing.request_stop(drain=True)
    ing.run()
    return ing


def publish(s: Settings, per_type: int, day_spread: bool = False) -> dict[str, int]:
    """``per_type`` events of every type; with ``day_spread``, timestamps over three days (so
    the writer creates partitions as it goes)."""
    pub = Publisher(s, "test")
    now = time.time_ns()
    sent = {}
    for et in schema.EVENT_TYPES:
        rows = [row(et, i, now - (i % 3) * 86400 * 10**9 if day_spread else None)
                for i in range(per_type)]
        pub.publish(et.name, rows)
        sent[et.name] = per_type
    pub.close()
    return sent


def test_exactly_once_then_replay_stores_nothing_twice(pg_settings, rclient):
    sent = publish(pg_settings, 700, day_spread=True)
    n = sum(sent.values())
    ing = drain(pg_settings)
    try:
        assert table_counts(ing.engine) == sent
        assert sum(ing.stats.stored.values()) == n and not sum(ing.stats.duplicates.values())
        with ing.engine.connect() as c:
            # rows sit in day partitions, none in the DEFAULT one
            assert c.execute(text("SELECT COUNT(*) FROM syscall_events_default")).scalar() == 0
            parts = c.execute(text(
                "SELECT COUNT(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname = 'syscall_events'")).scalar()
            assert parts >= 4  # three days (+1 if the run crosses midnight) and the default
            # the ingester's own accounting, in the same transactions
            stored = dict(c.execute(text(
                "SELECT event_type, MAX(value) FROM pipeline_accounting WHERE source = 'ingest' "
                "AND metric = 'stored' GROUP BY event_type")).all())
            assert stored == sent
    finally:
        ing.engine.dispose()
    # Re-deliver everything (a lost XACK): duplicates only.
    for et in schema.EVENT_TYPES:
        rclient.xgroup_setid(et.stream_for("testhost"), schema.INGEST_GROUP, "0")
    ing2 = drain(pg_settings)
    try:
        assert table_counts(ing2.engine) == sent
        assert sum(ing2.stats.stored.values()) == 0
        assert sum(ing2.stats.duplicates.values()) == n
    finally:
        ing2.engine.dispose()


def test_every_column_round_trips_with_int64_extremes_and_hostile_text(pg_settings, rclient):
    pub = Publisher(pg_settings, "test")
    sc = schema.BY_NAME["syscall_events"]
    extreme = {**row(sc, 1), "ret_value": INT64_MIN, "arg0": INT64_MAX,
               "latency_ns": INT64_MAX, "syscall_nr": -1,
               "comm": "ü😀\u202e'\";--\\x00%s{}", "syscall_name": "read"}
    pf = {**row(schema.BY_NAME["page_fault_events"], 2), "address": INT64_MIN}
    nul_comm = {**row(sc, 3), "comm": "ev\x00il"}
    nul_name = {**row(sc, 4), "syscall_name": "\x00"}
    pub.publish("syscall_events", [extreme, nul_comm, nul_name])
    pub.publish("page_fault_events", [pf])
    for et in schema.EVENT_TYPES:
        if et.name not in ("syscall_events", "page_fault_events"):
            pub.publish(et.name, [row(et, 9)])
    pub.close()
    # an entry with a NUL in its stream's raw payload that fails validation too (dead letter
    # text columns must take it)
    rclient.xadd(sc.stream_for("testhost"), {FIELD: orjson.dumps({**row(sc, 5), "\x00bad": 1})})
    rclient.xadd(sc.stream_for("testhost"), {FIELD: b"\x00{raw"})
    ing = drain(pg_settings)
    try:
        with ing.engine.connect() as c:
            got = c.execute(select(schema.TABLES["syscall_events"])).mappings().all()
            assert len(got) == 1
            for k, v in extreme.items():
                assert got[0][k] == v, k
            assert c.execute(select(schema.TABLES["page_fault_events"].c.address)
                             ).scalar() == INT64_MIN
            for et in schema.EVENT_TYPES:  # every type, every column
                if et.name in ("syscall_events", "page_fault_events"):
                    continue
                r = c.execute(select(schema.TABLES[et.name])).mappings().one()
                want = row(et, 9)
                for k in want:
                    if k != "timestamp":
                        assert r[k] == pytest.approx(want[k]), (et.name, k)
            dead = c.execute(text("SELECT entry_id, reason, payload FROM dead_letters "
                                  "ORDER BY id")).all()
        nul = [d for d in dead if d.reason.startswith("nul_in_text")]
        assert len(nul) == 2 and len(dead) == 4, dead
        # the payload keeps every value, NUL included
        assert [orjson.loads(d.payload) for d in nul] == [
            {**nul_comm, "stream_id": orjson.loads(nul[0].payload)["stream_id"]},
            {**nul_name, "stream_id": orjson.loads(nul[1].payload)["stream_id"]}]
        assert nul[0].reason.startswith("nul_in_text: comm holds U+0000")
        assert nul[1].reason.startswith("nul_in_text: syscall_name holds U+0000")
        unknown, raw = [d for d in dead if not d.reason.startswith("nul_in_text")]
        # text columns hold the escape, the bytea payload the original bytes
        assert unknown.reason == "unknown_field: \\x00bad"
        assert b'"\\u0000bad"' in unknown.payload
        assert raw.reason.startswith("decode_error") and raw.payload == b"\x00{raw"
        assert ing.stats.dead["nul_in_text"] == 2
        # mirrored to the dead-letter stream like every dead letter, and counted
        mirrored = rclient.xrange(schema.deadletter_stream("testhost"))
        assert sum(1 for _, f in mirrored if f[b"reason"].startswith(b"nul_in_text")) == 2
    finally:
        ing.engine.dispose()


def publish_syscall_rows(s: Settings, n: int) -> None:
    pub = Publisher(s, "test")
    et = schema.BY_NAME["syscall_events"]
    for i in range(0, n, 1000):
        pub.publish(et.name, [row(et, j) for j in range(i, i + 1000)])
    pub.close()


def count(eng) -> int:
    with eng.connect() as c:
        return c.execute(text("SELECT COUNT(*) FROM syscall_events")).scalar_one()


def wait_rows(eng, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (n := count(eng)) < at_least:
        if time.monotonic() > deadline:
            pytest.fail(f"only {n} rows after {timeout} s (wanted {at_least})")
        time.sleep(0.05)
    return n


def test_sigkill_mid_batch_then_restart_stores_exactly_n(pg_settings, tmp_path):
    n = 60_000
    publish_syscall_rows(pg_settings, n)
    env = {**os.environ, "KS_REDIS_URL": pg_settings.redis_url,
           "KS_DB_PATH": pg_settings.db_path, "KS_BATCH_SIZE": "500"}
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eng = create_engine(pg_settings.db_path)
    try:
        time.sleep(0.2)
        open_db(pg_settings.db_path).dispose()
        stored = wait_rows(eng, n // 4)
        p.send_signal(signal.SIGKILL)
        p.wait()
        stored = count(eng)
        assert 0 < stored < n, f"killed at {stored} rows: the kill must land mid-stream"
        p2 = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain"],
                            env=env, capture_output=True, text=True, timeout=180, check=False)
        assert p2.returncode == 0, p2.stderr[-2000:]
        with eng.connect() as c:
            total, distinct = c.execute(text(
                "SELECT COUNT(*), COUNT(DISTINCT (host, stream_id)) FROM syscall_events")).one()
        print(f"\nSIGKILL at {stored} rows; after restart {total} rows, {distinct} distinct, "
              f"of {n}")
        assert total == distinct == n
    finally:
        if p.poll() is None:
            p.kill()
        eng.dispose()


def test_connections_killed_mid_stream_are_retried(pg_settings, pg_server):
    """pg_terminate_backend on the ingester's sessions while it writes: it reconnects and
    retries (entries stay pending meanwhile); every row ends stored once."""
    n = 100_000
    publish_syscall_rows(pg_settings, n)
    ing = Ingester(pg_settings.with_(batch_size=500))
    admin = create_engine(pg_settings.db_path)
    killed = []

    def killer() -> None:
        while count(admin) < n // 5:
            time.sleep(0.02)
        # An idle pooled session that was killed is replaced at checkout (pool_pre_ping);
        # keep killing until one dies inside a write transaction (the retry path), for at
        # most 20 s.
        deadline = time.monotonic() + 20
        while ing.writer.retries == 0 and time.monotonic() < deadline:
            with admin.begin() as c:
                killed.append(c.execute(text(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                    "application_name = 'kernelsight' AND state <> 'idle' AND "
                    "pid <> pg_backend_pid()")).scalar())
            time.sleep(0.01)
        ing.request_stop(drain=True)

    t = threading.Thread(target=killer)
    t.start()
    try:
        ing.run()
        t.join(60)
        assert sum(killed) >= 1, killed
        assert ing.writer.retries >= 1
        with admin.connect() as c:
            total, distinct = c.execute(text(
                "SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM syscall_events")).one()
        assert total == distinct == n
        assert ing.stats.stored["syscall_events"] + ing.stats.duplicates["syscall_events"] >= n
    finally:
        ing.engine.dispose()
        admin.dispose()


def test_a_refusal_ends_ingest_with_one_line_entries_kept(pg_settings, pg_server, rclient):
    """A role that may read but not insert: not retryable, so `ingest` exits non-zero with one
    line (no traceback, no password) and the entries stay pending in Redis."""
    open_db(pg_settings.db_path).dispose()
    pw = "Ro-pass-9f3"
    admin = create_engine(pg_settings.db_path)
    with admin.begin() as c:
        c.execute(text(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                       f"'ks_ro') THEN CREATE ROLE ks_ro LOGIN PASSWORD '{pw}'; END IF; END $$"))
        c.execute(text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO ks_ro"))
    admin.dispose()
    publish_syscall_rows(pg_settings, 1000)
    url = pg_settings.db_path.replace(f"ks:{pg_server.password}@", f"ks_ro:{pw}@")
    env = {**os.environ, "KS_REDIS_URL": pg_settings.redis_url, "KS_DB_PATH": url}
    r = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain"], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    err = r.stderr.strip()
    assert r.returncode != 0, err
    assert "Traceback" not in err and pw not in err and pg_server.password not in err
    lines = [ln for ln in err.splitlines() if "kernelsight: error:" in ln]
    assert len(lines) == 1 and "permission denied" in lines[0], err
    print(lines[0])
    # nothing acknowledged: every entry is still in the stream, delivered or not
    et = schema.BY_NAME["syscall_events"]
    assert rclient.xlen(et.stream_for("testhost")) == 1000
    groups = rclient.xinfo_groups(et.stream_for("testhost"))
    if groups:  # the ingester got as far as reading: nothing acknowledged
        assert groups[0]["pending"] + (groups[0]["lag"] or 0) == 1000


def test_two_workers_new_days_and_a_killed_worker(pg_settings, tmp_path):
    """`ingest --workers 2` into PostgreSQL with rows of three days (both workers create
    partitions concurrently): one worker SIGKILLed mid-stream is restarted by the supervisor;
    after the drain every row is stored once and none is in a DEFAULT partition."""
    import psutil

    n = 60_000
    pub = Publisher(pg_settings, "test")
    et = schema.BY_NAME["syscall_events"]
    now = time.time_ns()
    for i in range(0, n, 1000):
        pub.publish(et.name, [row(et, j, now - (j % 3) * 86400 * 10**9) for j in
                              range(i, i + 1000)])
    pub.close()
    env = {**os.environ, "KS_REDIS_URL": pg_settings.redis_url,
           "KS_DB_PATH": pg_settings.db_path, "KS_BATCH_SIZE": "300", "KS_INGEST_WORKERS": "2"}
    log = tmp_path / "ingest.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest"], env=env,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    eng = create_engine(pg_settings.db_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if count(eng) >= n // 4:
                    break
            except Exception:  # noqa: BLE001 - the schema may not exist yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no progress: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        workers = psutil.Process(p.pid).children()
        assert len(workers) == 2, workers
        workers[-1].send_signal(signal.SIGKILL)
        assert count(eng) < n, "the kill must land mid-stream"
        deadline = time.monotonic() + 120
        while count(eng) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(60) == 0, log.read_text()[-2000:]
        with eng.connect() as c:
            total, distinct = c.execute(text(
                "SELECT COUNT(*), COUNT(DISTINCT (host, stream_id)) FROM syscall_events")).one()
            in_default = c.execute(text("SELECT COUNT(*) FROM syscall_events_default")).scalar()
        text_log = log.read_text()
        assert "restarting it" in text_log and "Traceback" not in text_log
        assert total == distinct == n and in_default == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        eng.dispose()
