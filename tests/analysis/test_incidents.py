"""`kernelsight analyze` on a database the real pipeline recorded under a real incident
(conftest.cpu_incident): the true cause ranks first with evidence rows that exist, and the
quiet part of the same recording yields at most one finding."""

from __future__ import annotations

import io
import subprocess
import sys

import orjson
from rich.console import Console
from sqlalchemy import text

from kernelsight.analysis.command import render
from kernelsight.analysis.findings import analyze
from kernelsight.db import open_readonly

SLACK_NS = 3_000_000_000  # the finding may start/end a few intervals off the stopwatch


def _ks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={"COLUMNS": "160", "PATH": "/usr/bin"})


def test_cpu_oversubscription_ranks_first_with_real_evidence(cpu_incident):
    eng = open_readonly(cpu_incident.db)
    try:
        res = analyze(eng)
        assert res.findings, "no finding for a 12 s CPU oversubscription"
        top = res.findings[0]
        assert top.kind == cpu_incident.kind, [(f.kind, f.score, f.summary)
                                               for f in res.findings]
        t1, t2 = cpu_incident.incident_ns
        assert top.start_ns < t2 and top.end_ns > t1 - SLACK_NS, (top.start_ns, top.end_ns)
        assert abs(top.cause["start_ns"] - t1) <= SLACK_NS, top.cause
        assert top.cause["level"] > top.cause["baseline"]
        assert len(top.evidence) >= 3
        with eng.connect() as c:
            for ev in top.evidence:  # every cited row exists and lies in the finding's time
                ts = c.execute(text(f'SELECT timestamp FROM "{ev["table"]}" WHERE id = :i'),
                               {"i": ev["id"]}).scalar()
                assert ts is not None, ev
                assert top.start_ns - SLACK_NS <= ts <= top.end_ns + SLACK_NS, ev
        # The busy loops the incident pinned are among the processes named.
        assert cpu_incident.culprit_pids & {p["pid"] for p in top.processes}, top.processes
    finally:
        eng.dispose()


def test_quiet_part_yields_at_most_one_finding(cpu_incident):
    q0, q1 = cpu_incident.quiet_ns
    eng = open_readonly(cpu_incident.db)
    try:
        res = analyze(eng, q0, q1 - 1_000_000_000)
    finally:
        eng.dispose()
    assert res.window.bins >= 12
    assert len(res.findings) <= 1, [(f.kind, f.score, f.summary) for f in res.findings]


def test_analyze_json_is_deterministic_and_complete(cpu_incident):
    a = _ks("analyze", "--db", str(cpu_incident.db), "--json")
    assert a.returncode == 0, a.stderr[-2000:]
    eng = open_readonly(cpu_incident.db)
    try:
        again = analyze(eng)
    finally:
        eng.dispose()
    # Offline and deterministic: another process, same database -> the same bytes.
    assert orjson.loads(a.stdout) == orjson.loads(orjson.dumps(again.to_json()))
    doc = orjson.loads(a.stdout)
    assert set(doc) == {"window", "findings", "signals"}
    f = doc["findings"][0]
    assert set(f) == {"id", "kind", "summary", "start_ns", "end_ns", "score", "cause",
                      "effects", "magnitude", "evidence", "processes"}
    assert all({"table", "id"} <= set(e) for e in f["evidence"])
    assert all({"pid", "comm", "share"} <= set(p) for p in f["processes"])
    names = {s["name"] for s in doc["signals"]}
    assert {"sched.runq_p95_us", "load.running", "memory.available_mb"} <= names
    buf = io.StringIO()
    render(again, Console(file=buf, width=160))
    assert "Findings" in buf.getvalue() and "sched_events#" in buf.getvalue()


def test_bad_input_is_one_line(tmp_path):
    r = _ks("analyze", "--db", str(tmp_path / "missing.db"))
    assert r.returncode == 4 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no database" in r.stderr
    r = _ks("analyze", "--db", str(tmp_path / "missing.db"), "--since", "yesterday-ish")
    assert r.returncode == 2 and "not a time" in r.stderr and "Traceback" not in r.stderr
