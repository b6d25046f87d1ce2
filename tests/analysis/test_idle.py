"""The false-positive budget: an idle run yields at most one finding.

`kernelsight run --collectors all` for real (private Redis, every tracer, the ingester) with no
workload of ours, then `kernelsight analyze` over that run. The issue's budget is for 30
minutes; `make test` runs KS_IDLE_SECONDS (default 120 s) and `make idle-check` the full 30
minutes (KS_IDLE_SECONDS=1800). "Idle" means no incident started by the test: on a shared
machine the other work on it stays, which only makes the budget harder to keep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import need_root

IDLE_S = float(os.environ.get("KS_IDLE_SECONDS", "120"))


def _ks(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelsight", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.quiet_host
def test_idle_run_yields_at_most_one_finding(tmp_path: Path):
    need_root()
    db = tmp_path / "idle.db"
    r = _ks("run", "--duration", str(IDLE_S), "--collectors", "all", "--db", str(db),
            "--log-dir", str(tmp_path), timeout=IDLE_S + 300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = _ks("analyze", "--db", str(db), "--json", timeout=600)
    assert a.returncode == 0, a.stderr[-3000:]
    doc = orjson.loads(a.stdout)
    w = doc["window"]
    # The run's own window (`analyze` takes the latest run): about IDLE_S of intervals.
    assert w["bins"] >= 0.8 * IDLE_S / (w["step_ns"] / 1e9), w
    found = [(f["kind"], f["score"], f["summary"]) for f in doc["findings"]]
    print(f"idle {IDLE_S:.0f} s: {len(found)} finding(s), {w['bins']} intervals, "
          f"{sum(len(s['anomalies']) for s in doc['signals'])} anomalies: {found}")
    assert len(found) <= 1, found
