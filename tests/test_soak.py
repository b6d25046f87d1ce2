"""The 60-second version of `make soak`: 10,000 events/s of every type through the real
pipeline (private Redis, ingester process, loadgen process); produced = stored, and our
processes' memory stays flat."""

from __future__ import annotations

import subprocess
import sys

import orjson


def test_soak_60s(tmp_path):
    p = subprocess.run([sys.executable, "-m", "kernelsight", "soak", "--rate", "10000",
                        "--duration", "60", "--db", str(tmp_path / "soak.db")],
                       capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    print(p.stdout[-3000:])
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("{"))
    res = orjson.loads(line)
    assert res["produced"] >= 0.97 * 10000 * 60
    assert res["produced"] == res["stored"] and res["dropped"] == 0 and not res["unaccounted"]
    assert res["ingest_exit"] == 0
    # WAL checkpoints keep up (they run in their own thread; without the RESTART step a
    # PASSIVE checkpoint never catches a busy writer and the WAL grew by ~60 MiB/s here).
    assert res["wal_max_mib"] <= 256, res["wal_max_mib"]
    # Flat memory after warm-up for our own processes (Redis grows until its streams reach
    # the retention cap, by design).
    assert res["rss_growth_mib"]["ingest"] < 32 and res["rss_growth_mib"]["loadgen"] < 32
    assert p.returncode == 0, p.stdout[-2000:]
