"""The readers on PostgreSQL give what they give on SQLite (issue 15: "`kernelsight report --db
postgresql+psycopg://...` prints the same verdict table as on SQLite for the same run").

The run is the real incident recording (conftest.recording: the scraper and four eBPF tracers,
the ingester, five real incidents), copied by `kernelsight copy-db` into a real PostgreSQL (a
database of its own on the session's server). Then, on both stores: `report` (whole recording
and an incident's window), `query --demo`, the README's runbook queries, `analyze` (the same
findings; evidence rows compared by their key, host and stream_id, since `id` is each store's
own), every agent tool through the offline Gemini stand-in, and the rq report job. On
PostgreSQL the agent's session is read-only and its statements time out."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from analysis.gemini_stub import GeminiStub, answer, calls, function_responses
from kernelsight import schema
from kernelsight.analysis.agent import loop, tools
from kernelsight.config import db_label
from kernelsight.db import open_readonly
from kernelsight.rqjobs import queue
from kernelsight.sqlcompat import statement_timeout

README = Path(__file__).resolve().parents[2] / "README.md"


def ks(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "KS_DB_PATH",
                                                           "KS_DB_URL")}
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**base, "COLUMNS": "160", **env})


@pytest.fixture(scope="module")
def pg_copy(recording, pg_server) -> Iterator[str]:
    """The recording copied into a PostgreSQL database of its own (pg_url's is reset by
    every test that asks for it)."""
    url = make_url(pg_server.url)
    target = url.set(database="ks_parity").render_as_string(hide_password=False)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("DROP DATABASE IF EXISTS ks_parity WITH (FORCE)"))
        c.execute(text("CREATE DATABASE ks_parity"))
    try:
        r = ks("copy-db", str(recording.db), target)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"total: [\d,]+ rows in source, [\d,]+ copied, 0 already there",
                         r.stdout), r.stdout
        r = ks("copy-db", str(recording.db), target)
        assert re.search(r"total: ([\d,]+) rows in source, 0 copied, \1 already there",
                         r.stdout), r.stdout
        yield target
    finally:
        with admin.connect() as c:
            c.execute(text("DROP DATABASE IF EXISTS ks_parity WITH (FORCE)"))
        admin.dispose()


def without_db_line(out: str) -> str:
    return "\n".join(line for line in out.splitlines() if not line.startswith("Database: "))


def incident_window(recording, i: int = 1) -> list[str]:
    lo, hi = recording.incidents[i].window
    return ["--since", str(lo), "--until", str(hi)]


@pytest.mark.parametrize("window", ["whole", "incident"])
def test_report_same_verdict_table(recording, pg_copy, window):
    args = [] if window == "whole" else incident_window(recording)
    a = ks("report", "--db", str(recording.db), *args)
    b = ks("report", *args, KS_DB_URL=pg_copy)
    assert a.returncode in (0, 1) and not a.stderr.strip(), a.stderr
    assert b.returncode == a.returncode, b.stderr
    assert "Pipeline Accounting" in a.stdout and "Captured: " in a.stdout
    assert without_db_line(b.stdout) == without_db_line(a.stdout)
    assert f"Database: {db_label(pg_copy)}" in b.stdout and ":***@" in b.stdout
    ja = json.loads(ks("report", "--json", "--db", str(recording.db), *args).stdout)
    jb = json.loads(ks("report", "--json", "--db", pg_copy, *args).stdout)
    assert ja.pop("database") != jb.pop("database")
    assert ja == jb


def test_query_demo_same(recording, pg_copy):
    outs = []
    for db in (str(recording.db), pg_copy):
        r = ks("query", "--demo", "--limit", "20", KS_DB_PATH=db)
        assert r.returncode == 0, r.stderr
        body = r.stdout[r.stdout.index("┏"):]  # the first title names the database
        outs.append("\n".join(line.rstrip() for line in body.splitlines()))
    assert "Slowest syscalls" in outs[0] and "Recent I/O latency" in outs[0]
    assert outs[0] == outs[1]


def runbook() -> tuple[list[str], list[str]]:
    """The README's runbook queries: its SQLite block and its PostgreSQL block."""
    md = README.read_text()
    blocks = re.findall(r"```sql\n(.*?)```", md[md.index("### Runbook queries"):], re.S)[:2]
    out = []
    for b in blocks:
        body = "\n".join(x for x in b.splitlines() if not x.startswith("--"))
        out.append([s.strip() for s in body.split(";") if s.strip()])
    return out[0], out[1]


def norm(rows: list) -> list:
    """Rows in a fixed order, numbers as floats (PostgreSQL's NUMERIC is a Decimal)."""
    def v(x: Any) -> Any:
        return float(x) if isinstance(x, Decimal | float) else x
    return sorted((tuple(v(x) for x in r) for r in rows),
                  key=lambda r: tuple(round(x, 6) if isinstance(x, float) else x for x in r))


def same_rows(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(math.isclose(p, q, rel_tol=1e-12) if isinstance(p, float)
                                 else p == q for p, q in zip(x, y, strict=True))
        for x, y in zip(norm(a), norm(b), strict=True))


def test_runbook_queries_same(recording, pg_copy):
    lite, pg = runbook()
    assert len(lite) == len(pg) >= 4
    con = sqlite3.connect(f"file:{recording.db}?mode=ro", uri=True)
    eng = create_engine(pg_copy)
    try:
        with eng.connect() as c:
            for a, b in zip(lite, pg, strict=True):
                ra = con.execute(a).fetchall()
                rb = c.execute(text(b)).fetchall()
                assert ra, a
                assert same_rows(ra, rb), (a, b, ra, rb)
    finally:
        con.close()
        eng.dispose()


def keyed(obj: Any, keys: dict[tuple[str, int], tuple[str, int]]) -> Any:
    """``obj`` with each {"table": T, "id": N} row reference replaced by its key."""
    if isinstance(obj, dict):
        out = {k: keyed(v, keys) for k, v in obj.items()}
        if out.get("table") in schema.TABLES and isinstance(obj.get("id"), int):
            out["id"] = keys[(obj["table"], obj["id"])]
        return out
    if isinstance(obj, list):
        return [keyed(v, keys) for v in obj]
    return obj


def row_keys(db: str, obj: Any) -> dict[tuple[str, int], tuple[str, int]]:
    refs: set[tuple[str, int]] = set()

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if o.get("table") in schema.TABLES and isinstance(o.get("id"), int):
                refs.add((o["table"], o["id"]))
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(obj)
    eng = open_readonly(db)
    try:
        with eng.connect() as c:
            return {(t, i): tuple(c.execute(text(
                f'SELECT host, stream_id FROM "{t}" WHERE id = :i'), {"i": i}).one())
                for t, i in refs}
    finally:
        eng.dispose()


@pytest.mark.parametrize("window", ["whole", "incident"])
def test_analyze_same_findings(recording, pg_copy, window):
    args = [] if window == "whole" else incident_window(recording, 0)
    out = []
    for db in (str(recording.db), pg_copy):
        r = ks("analyze", "--json", "--db", db, *args)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout)
        out.append(keyed(res, row_keys(db, res)))
    # Whether one incident's window yields a finding depends on the host's load during the
    # recording (quiet_host tests judge that); the stores must agree either way, signals
    # included. The whole recording has findings.
    assert out[0]["findings"] or window == "incident", "the recording's incidents make findings"
    assert out[0]["signals"]
    assert out[0] == out[1]


TOOL_CALLS = [("get_findings", {}), ("slowest_service_syscalls", {"limit": 20}),
              ("faults_by_process", {"fault_type": "major", "limit": 20}),
              ("faults_by_process", {"fault_type": "minor", "limit": 20}),
              ("io_percentiles_by_device", {}), ("sched_by_process", {"limit": 20}),
              ("signal_series", {"name": "load.running"}), ("get_schema", {})]


def test_agent_tools_same(recording, pg_copy):
    assert {n for n, _ in TOOL_CALLS} == set(tools.TOOLS)  # every tool
    replies = []
    for db in (str(recording.db), pg_copy):
        with GeminiStub([calls(*TOOL_CALLS), answer("done")]) as stub:
            res = loop.run(genai_client(stub.url), "m", db, "q", None, None)
        assert [ok for _, ok in res.tool_calls] == [True] * len(TOOL_CALLS), res.tool_calls
        got = [r["response"] for r in function_responses(stub.requests[1])]
        replies.append(keyed(got, row_keys(db, got)))
    assert replies[0][1]["rows"] and replies[0][2]["rows"]
    # Sums of doubles (CPU ms per process) may differ in the last bits: the stores add the
    # rows in different orders.
    assert close(replies[0], replies[1]), (replies[0], replies[1])


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def genai_client(url: str) -> Any:
    from google import genai
    from google.genai import types

    return genai.Client(api_key="test-key", http_options=types.HttpOptions(
        base_url=url, retry_options=types.HttpRetryOptions(attempts=1)))


def test_agent_session_read_only_and_bounded_on_postgres(pg_copy):
    """The agent's connection: writes are refused by the server; a statement held up past the
    timeout (here by a lock a writer holds) is cancelled and comes back to the model as the
    tool's error, and the next call works."""
    eng = open_readonly(pg_copy)
    writer = create_engine(pg_copy)
    try:
        with eng.connect() as conn:
            with pytest.raises(DBAPIError, match="read-only transaction"):
                conn.execute(text("DELETE FROM syscall_events"))
            conn.rollback()
            statement_timeout(conn, 1.0)
            conn.commit()
            locked, release = threading.Event(), threading.Event()

            def hold() -> None:
                with writer.begin() as w:
                    w.execute(text("LOCK TABLE syscall_events IN ACCESS EXCLUSIVE MODE"))
                    locked.set()
                    release.wait(30)

            t = threading.Thread(target=hold)
            t.start()
            try:
                assert locked.wait(30)
                t0 = time.monotonic()
                out = tools.call(conn, "slowest_service_syscalls", {"limit": 5}, None)
                took = time.monotonic() - t0
            finally:
                release.set()
                t.join(30)
            assert "statement timeout" in out["error"], out
            assert 0.9 <= took < 10, took
            out = tools.call(conn, "slowest_service_syscalls", {"limit": 5}, None)
            assert out["rows"], out
    finally:
        eng.dispose()
        writer.dispose()
    with create_engine(pg_copy).connect() as c:  # nothing was deleted
        assert c.execute(text("SELECT COUNT(*) FROM syscall_events")).scalar_one() > 0


def test_rq_report_job_same(recording, pg_copy, redis_url):
    """The worker reports on SQLite files in its data directory and on its own PostgreSQL
    database, named by the job without the password; another server database is refused."""
    q = queue(redis_url)
    no_pw = make_url(pg_copy).set(password=None).render_as_string()
    other = make_url(pg_copy).set(database="postgres").render_as_string(hide_password=False)
    jobs = [q.enqueue("kernelsight.report.report_job", recording.db.name, None, None),
            q.enqueue("kernelsight.report.report_job", no_pw, None, None),
            q.enqueue("kernelsight.report.report_job", other, None, None)]
    env = {k: v for k, v in os.environ.items() if k not in ("KS_DB_PATH", "KS_DB_URL")}
    w = subprocess.run([sys.executable, "-m", "kernelsight", "report-worker", "--burst",
                        "--redis-url", redis_url, "--data-dir", str(recording.db.parent)],
                       env={**env, "KS_DB_URL": pg_copy}, capture_output=True, timeout=300,
                       check=False)
    assert w.returncode == 0, w.stderr[-2000:]
    res = [Job.fetch(j.id, connection=q.connection, serializer=JSONSerializer) for j in jobs]
    assert [j.get_status() for j in res] == ["finished", "finished", "failed"]
    a, b = res[0].return_value(), res[1].return_value()
    assert a["exit_code"] == b["exit_code"]
    assert without_db_line(a["text"]) == without_db_line(b["text"])
    assert "Pipeline Accounting" in a["text"] and ":***@" in b["text"]
    assert "not this worker's database" in res[2].latest_result().exc_string
    assert pg_copy.split("@")[0].split(":")[-1] not in b["text"]  # the password


def test_rollup_and_float_values_identical(recording, pg_copy):
    """Spot check below the readers: float columns survive the copy bit for bit."""
    con = sqlite3.connect(f"file:{recording.db}?mode=ro", uri=True)
    eng = create_engine(pg_copy)
    try:
        q = ("SELECT stream_id, cpu_time_ms, runq_latency_p95_us FROM sched_events "
             "ORDER BY stream_id")
        a = con.execute(q).fetchall()
        with eng.connect() as c:
            b = [tuple(r) for r in c.execute(text(q))]
        assert a and a == b
        assert all(isinstance(x[1], float) and not math.isnan(x[1]) for x in b[:10])
    finally:
        con.close()
        eng.dispose()


def test_baselines_stored_alike(recording, pg_url, tmp_path):
    """`kernelsight baselines` (the one analysis command that writes) on both stores: the
    same signals, medians and scales (doubles and BIGINTs on PostgreSQL too)."""
    lite = tmp_path / "copy.db"
    src = sqlite3.connect(f"file:{recording.db}?mode=ro", uri=True)
    dst = sqlite3.connect(lite)
    src.backup(dst)
    src.close()
    dst.close()
    r = ks("copy-db", str(lite), pg_url)
    assert r.returncode == 0, r.stderr
    rows = []
    for db in (str(lite), pg_url):
        r = ks("baselines", "--db", db)
        assert r.returncode == 0 and "stored" in r.stdout, r.stdout + r.stderr
        eng = create_engine(db if "://" in db else f"sqlite:///{db}")
        with eng.connect() as c:
            rows.append([tuple(x) for x in c.execute(text(
                "SELECT signal, unit, median, scale, samples, since_ns, until_ns, step_ns "
                "FROM signal_baselines ORDER BY signal"))])
        eng.dispose()
    assert len(rows[0]) > 10
    assert close(rows[0], rows[1])
