"""Retention in a real ingester process: `kernelsight soak` (private Redis, `kernelsight
ingest --retention 1m` and loadgen as processes) for 100 s. Rows age out while ingest runs;
none is older than the retention's bound; every removed row was in a rollup first; produced =
stored + retention deletes exactly; the maintenance thread leaves the ingester's exit clean."""

from __future__ import annotations

import subprocess
import sys

import orjson


def test_one_minute_retention_under_load(tmp_path):
    p = subprocess.run([sys.executable, "-m", "kernelsight", "soak", "--rate", "2000",
                        "--duration", "100", "--retention", "1m", "--sample-s", "2",
                        "--max-rss-growth-pct", "100", "--db", str(tmp_path / "ret.db")],
                       capture_output=True, text=True, timeout=400, check=False, cwd=tmp_path)
    print(p.stdout[-4000:])
    res = orjson.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("{")))
    assert res["ingest_exit"] == 0
    assert res["produced"] >= 0.97 * 2000 * 100
    # a 100 s run with a 1-minute retention: at least the first ~25 s of rows went
    assert res["retention_deleted"] >= 2000 * 20, res
    assert res["produced"] == res["stored"] + res["retention_deleted"]
    assert res["dropped"] == 0 and not res["unaccounted"]
    assert res["rollup_gaps"] == {}
    # retention 60 s, but a row waits for its minute to close (60 s + 15 s grace) and for
    # the next pass (10 s): 90 s incl. 5 s slack; unpruned rows would be 100 s old
    assert res["oldest_row_age_bound_s"] == 90
    assert 60 <= res["oldest_row_age_max_s"] <= 90, res
    assert p.returncode == 0, p.stdout[-2000:]
