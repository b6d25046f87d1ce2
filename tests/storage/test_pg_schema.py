"""`--db postgresql+psycopg://...` on a real PostgreSQL 15 (the pg_url fixture): the schema
from the same definitions as SQLite's, read-only engines refused writes by the server, and
one-line errors (no traceback, no password) for a bad URL, a wrong password, no server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kernelsight import schema
from kernelsight.config import Settings, check_db_url, db_label
from kernelsight.db import open_db, open_readonly
from kernelsight.exceptions import ConfigError, DatabaseError
from kernelsight.redis_server import free_port
from kernelsight.storage import postgres


def test_schema_created_partitioned_with_version_and_identity_ids(pg_url):
    eng = open_db(pg_url)
    try:
        with eng.begin() as conn:
            assert conn.execute(text("SELECT value FROM schema_meta WHERE key = 'version'")
                                ).scalar() == str(schema.SCHEMA_VERSION) == "5"
            names = {r[0] for r in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))}
            assert set(schema.TABLES) | {r.name for r in schema.ROLLUPS.values()} | {
                "pipeline_accounting", "dead_letters", "schema_meta", "rollup_state"} <= names
            parted = {r[0]: r[1] for r in conn.execute(text(
                "SELECT c.relname, p.partstrat FROM pg_partitioned_table p JOIN pg_class c "
                "ON c.oid = p.partrelid"))}
            assert parted == dict.fromkeys(schema.TABLES, "r")  # RANGE, event tables only
            for t in schema.TABLES:
                assert f"{t}_default" in names
            # the unique key includes the partition key; ids are 64-bit identities
            uq = conn.execute(text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = "
                "'uq_syscall_events_host_stream_id'")).scalar()
            assert uq == "UNIQUE (host, stream_id, \"timestamp\")"
            ident = dict(conn.execute(text(
                "SELECT table_name, data_type FROM information_schema.columns WHERE "
                "column_name = 'id' AND is_identity = 'YES'")).all())
            assert ident["syscall_events"] == ident["pipeline_accounting"] == "bigint"
            assert ident["dead_letters"] == ident["memory_metrics_1m"] == "bigint"
            # a row of a day with no partition yet lands in the default partition, never refused
            conn.execute(text("INSERT INTO memory_metrics (stream_id, timestamp, host) VALUES "
                              "(1, 1700000000000000000, 'h')"))
            where = conn.execute(text("SELECT tableoid::regclass::text FROM memory_metrics")
                                 ).scalar()
            assert where == "memory_metrics_default"
            # the same (host, stream_id, timestamp) again is a conflict, another host is not
            ins = ("INSERT INTO memory_metrics (stream_id, timestamp, host) VALUES "
                   "(1, 1700000000000000000, :h) ON CONFLICT DO NOTHING")
            assert conn.execute(text(ins), {"h": "h"}).rowcount == 0
            assert conn.execute(text(ins), {"h": "h2"}).rowcount == 1
    finally:
        eng.dispose()
    # a second open (a second worker, a restart) is a no-op
    open_db(pg_url).dispose()


def test_partitions_created_ahead_of_rows(pg_url):
    eng = open_db(pg_url)
    parts = postgres.Partitions()
    day = 1_764_460_800 * 10**9  # 2025-11-30 00:00 UTC
    try:
        parts.ensure(eng, "syscall_events", [day + 5, day + postgres.DAY_NS + 7])
        parts.ensure(eng, "syscall_events", [day + 9])  # known: no query
        with eng.begin() as conn:
            assert postgres.partitions(conn, "syscall_events") == {
                day: "syscall_events_p20251130",
                day + postgres.DAY_NS: "syscall_events_p20251201"}
            conn.execute(text("INSERT INTO syscall_events (stream_id, timestamp, host) VALUES "
                              "(1, :t, 'h')"), {"t": day + 5})
            assert conn.execute(text("SELECT tableoid::regclass::text FROM syscall_events")
                                ).scalar() == "syscall_events_p20251130"
            # rows already in the default partition for a day: that day stays there
            conn.execute(text("INSERT INTO syscall_events (stream_id, timestamp, host) VALUES "
                              "(2, :t, 'h')"), {"t": day + 3 * postgres.DAY_NS})
        parts.ensure(eng, "syscall_events", [day + 3 * postgres.DAY_NS + 1])
        assert parts.in_default == 1 and parts.created == 2
        assert postgres.partition_day("syscall_events_p20251201") == (
            "syscall_events", day + postgres.DAY_NS)
    finally:
        eng.dispose()


def test_readonly_engine_refuses_writes_in_the_server(pg_url):
    open_db(pg_url).dispose()
    ro = open_readonly(pg_url)
    try:
        with ro.connect() as conn:
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"
            assert conn.execute(text("SELECT COUNT(*) FROM runs")).scalar() == 0
            with pytest.raises(DBAPIError, match="read-only transaction"):
                conn.execute(text("INSERT INTO schema_meta VALUES ('x', 'y')"))
    finally:
        ro.dispose()


def test_readonly_on_an_empty_database_says_so(pg_url):
    with pytest.raises(DatabaseError, match="is not a KernelSight database"):
        open_readonly(pg_url)


def test_url_checks_and_redaction():
    u = "postgresql://ks:s3cret@127.0.0.1:5432/kernelsight"
    assert check_db_url(u) == "postgresql+psycopg://ks:s3cret@127.0.0.1:5432/kernelsight"
    assert "s3cret" not in db_label(u) and db_label("/tmp/x.db") == "/tmp/x.db"
    for bad, msg in (("mysql://a:s3cret@h/db", "unsupported database URL scheme"),
                     ("postgresql+psycopg://a:s3cret@h:notaport/db", "not a valid"),
                     ("postgresql+psycopg://a:s3cret@h:5432/", "names no database"),
                     ("sqlite:///tmp/x.db", "plain file path")):
        with pytest.raises(ConfigError, match=msg) as ei:
            Settings(db_path=bad).validated()
        assert "s3cret" not in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("case", ["wrong_password", "no_server", "bad_scheme", "no_database"])
def test_cli_one_line_errors_without_password(pg_server, case, tmp_path):
    secret = "Zq9-not-the-password"
    url = {
        "wrong_password": f"postgresql+psycopg://ks:{secret}@127.0.0.1:{pg_server.port}/"
                          "kernelsight",
        "no_server": f"postgresql+psycopg://ks:{secret}@127.0.0.1:{free_port()}/kernelsight",
        "bad_scheme": f"mysql://ks:{secret}@127.0.0.1/kernelsight",
        "no_database": pg_server.url.rsplit("/", 1)[0] + "/nosuchdb",
    }[case]
    # through KS_DB_URL (the alias), as a service would pass it
    env = {k: v for k, v in os.environ.items() if k != "KS_DB_PATH"}
    r = subprocess.run([sys.executable, "-m", "kernelsight", "run", "--duration", "1",
                        "--collectors", "scraper", "--log-dir", str(tmp_path)],
                       check=False, capture_output=True, text=True, timeout=120,
                       env={**env, "KS_DB_URL": url})
    err = r.stderr.strip()
    assert r.returncode != 0, err
    assert "Traceback" not in err and secret not in err and pg_server.password not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("kernelsight: error:")]
    assert len(lines) == 1, err
    want = {"wrong_password": "password authentication failed",
            "no_server": "is PostgreSQL running", "bad_scheme": "unsupported database URL",
            "no_database": "does not exist"}[case]
    assert want in lines[0], err
    print(lines[0])
