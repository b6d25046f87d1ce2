"""`kernelsight run` without --duration: runs until SIGTERM, drains, records its run; its
ingester is supervised (a killed ingester is restarted and nothing is lost)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psutil

SCRAPER_TABLES = ("memory_metrics", "load_metrics", "block_stats", "network_interface_stats",
                  "tcp_stats", "tcp_retransmit_stats")


class Run:
    """`kernelsight run` as a real process (private Redis), its stderr collected by line."""

    def __init__(self, db: Path, log_dir: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "kernelsight", "run", "--collectors", "scraper", "--db",
             str(db), "--log-dir", str(log_dir), "--interval", "1", *extra],
            stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stderr
        for line in self.p.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for ln in self.lines:
                if needle in ln:
                    return ln
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {needle!r} within {timeout}s; output:\n" + self.out)

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 120) -> int:
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(timeout)
        self._t.join(5)
        return rc


def report_json(db: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "kernelsight", "report", "--db", str(db),
                        "--run", "latest", "--expect", "scraper", "--json"],
                       capture_output=True, timeout=60, check=False)
    assert p.stdout, p.stderr
    return orjson.loads(p.stdout)


def test_run_without_duration_stops_on_sigterm_and_drains(tmp_path):
    db = tmp_path / "ks.db"
    run = Run(db, tmp_path / "logs")
    try:
        run.wait_for("until SIGTERM", 240)
        time.sleep(4)
        rc = run.stop()
    finally:
        if run.p.poll() is None:
            run.p.kill()
    assert rc == 0, run.out
    assert "drained; ingest exit code 0" in run.out
    rep = report_json(db)
    assert rep["window"]["kind"] == "run" and not rep["window"]["still_running"]
    for t in SCRAPER_TABLES:
        e = rep["event_types"][t]
        assert e["stored"] > 0 and e["produced"] == e["stored"] and e["unaccounted"] == 0, t
    con = sqlite3.connect(db)
    (verdict, start, end), = con.execute(
        "SELECT verdict, start_ns, end_ns FROM runs ORDER BY stream_id DESC LIMIT 1")
    # Every row of the database came from this run, and all of it is stored.
    for t in SCRAPER_TABLES:
        assert con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == \
            rep["event_types"][t]["stored"], t
    con.close()
    assert verdict == "drained" and 4 <= (end - start) / 1e9 <= 600  # a loaded CI box is slow


def test_killed_ingester_is_restarted_nothing_lost(tmp_path):
    db = tmp_path / "ks.db"
    run = Run(db, tmp_path / "logs")
    try:
        run.wait_for("until SIGTERM", 240)
        pid = int(run.wait_for("ingest: pid", 1).split("pid ")[1].split()[0])
        time.sleep(2)
        psutil.Process(pid).kill()  # SIGKILL: exits non-zero, entries stay pending in Redis
        run.wait_for("ingest exited with code -9", 30)
        run.wait_for("ingest: restarted", 60)
        time.sleep(3)  # the new ingester stores what piled up and what keeps coming
        rc = run.stop()
    finally:
        if run.p.poll() is None:
            run.p.kill()
    assert rc == 0, run.out
    assert "restarted 1x" in run.out and "LOSS" not in run.out
    rep = report_json(db)
    con = sqlite3.connect(db)
    for t in SCRAPER_TABLES:
        e = rep["event_types"][t]
        assert e["stored"] > 0 and e["produced"] == e["stored"], (t, e)
        n, distinct = con.execute(
            f"SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM {t}").fetchone()
        assert n == distinct == e["stored"], t  # nothing stored twice
    con.close()
    # ~1 sample a second for the whole run, across the kill.
    assert rep["event_types"]["memory_metrics"]["stored"] >= 6


def test_ingester_that_stays_down_is_counted_as_loss(tmp_path):
    """No restarts allowed: the run stops, and what its private Redis still holds is written to
    the accounting as dropped (unstored_at_exit) before Redis goes: never silent, exit 1."""
    db = tmp_path / "ks.db"
    run = Run(db, tmp_path / "logs", "--ingest-restarts", "0")
    try:
        run.wait_for("until SIGTERM", 240)
        pid = int(run.wait_for("ingest: pid", 1).split("pid ")[1].split()[0])
        time.sleep(2)
        psutil.Process(pid).kill()
        run.wait_for("stopping the run", 30)
        rc = run.p.wait(120)
        run._t.join(5)
    finally:
        if run.p.poll() is None:
            run.p.kill()
    assert rc == 1, run.out
    line = run.wait_for("LOSS: ", 1)
    total = int(line.split("LOSS: ")[1].split()[0].replace(",", ""))
    con = sqlite3.connect(db)
    recorded = dict(con.execute(
        "SELECT event_type, value FROM pipeline_accounting WHERE metric = 'dropped' AND "
        "reason = 'unstored_at_exit'").fetchall())
    con.close()
    assert recorded and all(v > 0 for v in recorded.values())
    # Every event entry left in Redis is in the record (accounting entries are not events).
    in_line = dict(part.rsplit(" ", 1) for part in line.split("(")[1].split(")")[0].split(
        ", "))
    events = {k: int(v.replace(",", "")) for k, v in in_line.items()
              if k != "accounting"}
    assert recorded == events and total >= sum(events.values())
