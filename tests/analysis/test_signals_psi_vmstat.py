"""The PSI and vmstat signals over a real SQLite file with known rows: rates from the
cumulative vmstat counters, the PSI averages per resource (no cpu "full"), and evidence
rows that are the samples behind the change."""

from __future__ import annotations

import random

import numpy as np
from sqlalchemy import text

from kernelsight import schema
from kernelsight.analysis import signals
from kernelsight.db import open_db
from kernelsight.loadgen import make_event

SEC = 10**9
T0 = 1_800_000_000 * SEC


def test_psi_and_vmstat_series(tmp_path):
    eng = open_db(tmp_path / "ks.db")
    rng = random.Random(1)
    n = 20
    # pgmajfault: 5/s, then 400/s for samples 10..14, then 5/s; one OOM kill at sample 12.
    maj, oom, scan, vm, psi = 1000, 0, 0, [], []
    for i in range(n):
        if i:
            maj += 400 if 10 <= i < 15 else 5
            scan += 64 if 10 <= i < 15 else 0
            oom += i == 12
        vm.append({**make_event(schema.BY_NAME["vmstat_stats"], rng, "h", T0 + i * SEC),
                   "pgmajfault_total": maj, "oom_kill_total": oom, "pgscan_kswapd_total": scan,
                   "pgscan_direct_total": scan, "pgsteal_kswapd_total": 0,
                   "pgsteal_direct_total": 0})
        for res in ("cpu", "memory", "io"):
            psi.append({**make_event(schema.BY_NAME["pressure_stats"], rng, "h", T0 + i * SEC),
                        "resource": res, "some_avg10_pct": 30.0 if 10 <= i < 15 else 1.0,
                        "full_avg10_pct": 20.0 if res == "memory" and 10 <= i < 15 else 0.0})
    with eng.begin() as c:
        for table, rows in (("vmstat_stats", vm), ("pressure_stats", psi)):
            c.execute(schema.TABLES[table].insert(),
                      [{**r, "stream_id": k + 1} for k, r in enumerate(rows)])
    w = signals.Window(T0, T0 + (n - 1) * SEC, SEC)
    with eng.connect() as c:
        got = signals.load(c, w)
        maj_s = got["vmstat.pgmajfault_per_s"]
        assert maj_s.table == "vmstat_stats" and maj_s.unit == "1/s"
        assert list(maj_s.values) == [0.0] + [400.0 if 10 <= i < 15 else 5.0
                                               for i in range(1, n)]
        assert got["vmstat.pgscan_per_s"].values.sum() == 5 * 128
        assert got["vmstat.pgsteal_per_s"].values.sum() == 0
        assert list(np.nonzero(got["vmstat.oom_kills"].values)[0]) == [12]
        assert got["psi.cpu.some_avg10_pct"].values[12] == 30.0
        assert got["psi.io.some_avg10_pct"].values[3] == 1.0
        assert got["psi.memory.full_avg10_pct"].values.max() == 20.0
        assert "psi.cpu.full_avg10_pct" not in got  # zero by definition system-wide
        ev = signals.evidence(c, maj_s, T0, T0 + n * SEC, 5)
        ids = [e["id"] for e in ev]
        assert [e["value"] for e in ev] == [400.0] * 5
        stamps = c.execute(text(f"SELECT timestamp FROM vmstat_stats WHERE id IN "
                                f"({', '.join(map(str, ids))})")).scalars().all()
        assert sorted((t - T0) // SEC for t in stamps) == [10, 11, 12, 13, 14]
        ev = signals.evidence(c, got["psi.memory.full_avg10_pct"], T0, T0 + n * SEC, 3)
        assert len(ev) == 3 and all(e["value"] == 20.0 and e["comm"] == "memory" for e in ev)
    eng.dispose()
