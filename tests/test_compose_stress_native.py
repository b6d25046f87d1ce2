"""`kernelsight compose-stress` against an already running stack, natively (the compose
`stress` service's code path without Docker): real Redis, the ingester, the scraper and the
rq reporter as real processes that were collecting before the stress run and keep collecting
after it. The run is recorded and judged on its own."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import orjson

from kernelsight.compose_stress import compose_stress
from kernelsight.runner import Stack, collector_states
from kernelsight.runs import wait_drained_until
from kernelsight.window import ns_to_id


def test_compose_stress_judges_its_own_run_and_leaves_the_stack_running(settings, tmp_path,
                                                                        capsys):
    stack = Stack(settings, tmp_path / "logs")
    reporter = None
    try:
        stack.start_redis()
        stack.start_ingest()
        procs = stack.start_collectors(["scraper"])
        assert procs["scraper"].state == "started", procs["scraper"].detail
        reporter = subprocess.Popen(
            [sys.executable, "-m", "kernelsight", "report-worker", "--redis-url",
             settings.redis_url, "--data-dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(3)  # collection before the run: rows that are not the run's

        rc = compose_stress(settings.redis_url, settings.db_path, 3.0, ["scraper"],
                            str(tmp_path / "work"), 64, start_timeout=60, stop_timeout=30,
                            drain_timeout=60, report_timeout=120)
        out = capsys.readouterr().out
        # The job returns only once its verdict row is stored (it goes through the pipeline,
        # and the ingester lingers up to a second between small reads).
        con = sqlite3.connect(settings.db_path)
        stored = con.execute("SELECT verdict FROM runs WHERE kind = 'compose-stress' "
                             "ORDER BY stream_id DESC LIMIT 1").fetchone()
        con.close()
        assert stored == ("FAIL",), stored
        # Still collecting: no stop request, the scraper keeps publishing after the run.
        time.sleep(2.5)
        assert collector_states(settings.redis_url, ["scraper"])["scraper"]["state"] == \
            "started"
        assert stack.procs["scraper"].popen.poll() is None
        after = time.time_ns()
        assert wait_drained_until(settings.redis_url, ns_to_id(after), 30)
    finally:
        if reporter is not None:
            reporter.terminate()
            reporter.wait(30)
        stack.close()

    # The run's line, as the compose test parses it.
    line = next(ln for ln in out.splitlines() if ": FAIL (kernelsight report --run " in ln or
                ": SUCCESS (kernelsight report --run " in ln)
    run_id = line.split("run ")[1].split(":")[0]
    con = sqlite3.connect(settings.db_path)
    (kind, start, end, verdict), = con.execute(
        "SELECT kind, start_ns, end_ns, verdict FROM runs WHERE run_id = ? "
        "ORDER BY stream_id DESC LIMIT 1", (run_id,))
    in_run = con.execute("SELECT COUNT(*) FROM memory_metrics WHERE timestamp BETWEEN ? AND ?",
                         (start, end)).fetchone()[0]
    total = con.execute("SELECT COUNT(*) FROM memory_metrics").fetchone()[0]
    con.close()
    # Only the scraper ran, so the verdict is FAIL (not all ten types), and says so.
    assert kind == "compose-stress" and verdict == "FAIL" and rc == 1
    assert 3 <= (end - start) / 1e9 <= 300
    assert total > in_run + 3  # rows before and after the run are in the file ...
    # ... and the report counted only the run's, every one of them accounted for.
    js = subprocess.run([sys.executable, "-m", "kernelsight", "report", "--db",
                         settings.db_path, "--run", run_id, "--expect", "scraper", "--json"],
                        capture_output=True, timeout=60, check=False)
    rep = orjson.loads(js.stdout)
    assert rep["window"]["run_id"] == run_id
    mm = rep["event_types"]["memory_metrics"]
    # Exact on the window's own terms (between the boundary snapshots, which lie up to one
    # accounting interval, 1 s, before each end while collection goes on); by timestamp the
    # same rows give the run's count within a sample at each end.
    assert mm["produced"] == mm["stored"] and abs(mm["stored"] - in_run) <= 2, (mm, in_run)
    for name, t in rep["event_types"].items():
        assert t["unaccounted"] == 0, (name, t)
    assert rep["collectors"] == {"started": ["scraper"], "failed": {}}
    assert f"Covers: run {run_id} (compose-stress)" in out
