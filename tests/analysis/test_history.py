"""Baselines from the host's history (analysis/history.py, `kernelsight baselines`).

A window that lies wholly inside an incident has the incident as its own median: against
itself nothing departs. Against the stored history of the same database the incident shows.
The recording is copied first (the other analysis tests read it without stored baselines)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernelsight.analysis import history
from kernelsight.analysis.baselines import anomalies
from kernelsight.analysis.findings import analyze
from kernelsight.analysis.signals import Series
from kernelsight.db import open_readonly


def _ks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def _copy(src: Path, dst: Path) -> Path:
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        s.close()
        d.close()
    return dst


def test_prior_finds_an_incident_that_fills_the_window():
    rng = np.random.default_rng(3)
    x = rng.normal(50.0, 1.0, 30)  # the whole window at 50, history at 10
    s = Series("s", "t", "u", "gauge", x, 1, 1.0)
    assert anomalies(s) == []
    prior = history.Stored("s", "u", 10.0, 1.0, 3600, 0, 1, 10**9)
    (a,) = anomalies(s, prior)
    assert (a.start, a.end) == (0, 30) and a.baseline == 10.0 and 45 < a.level < 55


@pytest.mark.quiet_host
def test_baselines_are_stored_and_used(recording, tmp_path, monkeypatch):
    db = _copy(recording.db, tmp_path / "ks.db")
    cpu = next(i for i in recording.incidents if i.kind == "cpu_oversubscription")
    inside = (cpu.start_ns + 2_000_000_000, cpu.end_ns - 1_000_000_000)
    eng = open_readonly(db)
    try:
        before = analyze(eng, *inside)
    finally:
        eng.dispose()
    assert not before.from_history

    # The host's history: the recording before the CPU incident (quiet work, ~45 intervals).
    r = _ks("baselines", "--db", str(db), "--until", str(cpu.start_ns))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stored" in r.stdout
    con = sqlite3.connect(db)
    try:
        rows = dict(con.execute("SELECT signal, samples FROM signal_baselines").fetchall())
    finally:
        con.close()
    assert {"sched.runq_p95_us", "load.running", "memory.available_mb"} <= set(rows)
    assert min(rows.values()) > 0
    # Under a minute of history; the product needs 10 minutes before trusting one.
    assert max(rows.values()) < history.MIN_SAMPLES
    eng = open_readonly(db)  # read-only: analyze stays a pure reader
    try:
        assert not analyze(eng, *inside).from_history  # too short a history: not used
        monkeypatch.setattr(history, "MIN_SAMPLES", 10)
        after = analyze(eng, *inside)
        no_history = analyze(eng, *inside, use_history=False)
    finally:
        eng.dispose()
    assert "sched.runq_p95_us" in after.from_history
    # Against itself the window shows no CPU signal departing; against history it does.
    cpu = ("sched.runq_p95_us", "load.running", "sched.involuntary_per_s")
    assert not any(n in before.anomalies for n in cpu), before.anomalies
    assert any(n in after.anomalies for n in cpu), (after.anomalies, after.from_history)
    kinds = [f.kind for f in after.findings]
    assert "cpu_oversubscription" in kinds[:3], [(f.kind, f.summary) for f in after.findings]
    assert [f.kind for f in no_history.findings] == [f.kind for f in before.findings]
    sig = next(s for s in after.to_json()["signals"] if s["name"] == "sched.runq_p95_us")
    assert sig["baseline_from"]["samples"] == rows["sched.runq_p95_us"]


def test_baselines_bad_input_is_one_line(tmp_path):
    r = _ks("baselines", "--db", str(tmp_path / "missing.db"))
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no database" in r.stderr
