"""`kernelsight fleet`, short: a real 6-node Redis Cluster, a real PostgreSQL, 3 simulated
hosts (loadgen + the real /proc scraper, each its own KS_HOST) and 2 ingest processes, with
the Redis master serving the first host SIGKILLed half-way. `make fleet` is the long one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

DURATION = int(os.environ.get("KS_FLEET_TEST_DURATION", "30"))
RATE = 300


def test_fleet_conserves_every_host_through_a_master_kill(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the fleet test runs as root (PostgreSQL's initdb runs as postgres)")
    out = tmp_path / "result.json"
    logs = tmp_path / "logs"
    p = subprocess.run([sys.executable, "-m", "kernelsight", "fleet", "--duration",
                        str(DURATION), "--rate", str(RATE), "--hosts", "3", "--log-dir",
                        str(logs), "--json", str(out)], capture_output=True, text=True,
                       timeout=900, check=False, cwd=tmp_path)
    print(p.stdout)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1].startswith("fleet: SUCCESS"), p.stdout[-2000:]
    res = orjson.loads(out.read_bytes())
    assert res["killed_master"] and res["failover_s"] is not None
    assert "fleet-a" in res["killed_hosts"]  # the killed master held the first host's streams
    assert res["killed_at_s"] >= DURATION * 0.4, res["killed_at_s"]  # in the middle
    assert not res["failures"]
    assert sum(res["duplicate_keys"].values()) == 0
    for ln in res["lines"]:
        assert ln["balance"] == 0, ln
    for h in res["hosts"]:
        # Ground truth independent of the pipeline's accounting: what each loadgen itself
        # says it handed to the Publisher is what the accounting credits it with.
        said = orjson.loads((logs / f"{h}-loadgen.log").read_text().strip().splitlines()[-1])
        assert res["produced_by_source"][f"{h}/loadgen"] == said["produced"], (h, said)
        # ... and real load got through (>= 25% of the asked rate on a loaded 2-CPU host)
        assert said["produced"] >= 0.25 * RATE * DURATION, said
        mine = [ln for ln in res["lines"] if ln["host"] == h]
        stored = sum(ln["stored"] for ln in mine)
        dropped = sum(sum(ln["dropped"].values()) for ln in mine)
        assert stored + dropped == sum(ln["produced"] for ln in mine)
        assert stored >= said["produced"] - dropped
        # the real scraper ran on every host too (memory_metrics comes only from it and
        # loadgen; load_metrics likewise): its own source is credited
        assert res["produced_by_source"].get(f"{h}/scraper", 0) > 0, res["produced_by_source"]
