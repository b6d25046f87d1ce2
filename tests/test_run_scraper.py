"""`kernelsight run --collectors scraper` end to end: private Redis, real /proc, SQLite."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import text

from kernelsight import procfs
from kernelsight.db import open_db

SCRAPER_TABLES = ("memory_metrics", "load_metrics", "block_stats", "network_interface_stats",
                  "tcp_stats", "tcp_retransmit_stats")


def snmp_now() -> dict[str, int]:
    with open("/proc/net/snmp") as f:
        return procfs.tcp_retransmits(procfs.parse_snmp(f.read()))


@pytest.mark.parametrize(("extra", "duration", "n_lo", "n_hi"), [
    (["--interval", "1"], "10", 9, 12),
    # the service default (defaults.SERVICE_INTERVAL_S, 10 s): a sample at once, one at 10 s
    ([], "12", 2, 3),
], ids=["interval_1", "service_default_10s"])
def test_run_scraper_ten_seconds(tmp_path, extra, duration, n_lo, n_hi):
    db = tmp_path / "run.db"
    before = snmp_now()
    t0 = time.time_ns()
    p = subprocess.run([sys.executable, "-m", "kernelsight", "run", "--duration", duration,
                        "--db", str(db), "--collectors", "scraper", "--log-dir",
                        str(tmp_path / "logs"), *extra],
                       capture_output=True, text=True, timeout=90, env=_env_without_redis(),
                       check=False)
    t1 = time.time_ns()
    after = snmp_now()
    assert p.returncode == 0, p.stderr
    assert "(private)" in p.stderr  # no KS_REDIS_URL: it started and stopped its own Redis
    eng = open_db(db, create=False)
    with eng.connect() as c:
        for t in ("memory_metrics", "load_metrics", "tcp_stats", "tcp_retransmit_stats"):
            n, lo, hi = c.execute(text(f"SELECT COUNT(*), MIN(timestamp), MAX(timestamp) "
                                       f"FROM {t}")).one()
            assert n_lo <= n <= n_hi, (t, n)
            assert t0 <= lo <= hi <= t1, t  # epoch nanoseconds from this run
        n_if = c.execute(text("SELECT COUNT(DISTINCT interface_name) FROM "
                              "network_interface_stats")).scalar_one()
        with open("/proc/net/dev") as f:
            assert n_if == len(procfs.parse_net_dev(f.read()))
        for t in ("block_stats", "network_interface_stats"):
            per = c.execute(text(f"SELECT COUNT(*) FROM {t} GROUP BY "
                                 f"{'device_name' if t == 'block_stats' else 'interface_name'}"
                                 )).scalars().all()
            assert per and all(n_lo <= k <= n_hi for k in per), (t, per)
        rows = c.execute(text("SELECT retrans_segs, out_segs FROM tcp_retransmit_stats "
                              "ORDER BY timestamp")).all()
        mem = c.execute(text("SELECT mem_total_kb FROM memory_metrics LIMIT 1")).scalar_one()
    # retrans_segs is the kernel's own cumulative counter: bracketed by reads before and after.
    assert before["retrans_segs"] <= rows[0][0] <= rows[-1][0] <= after["retrans_segs"]
    assert before["out_segs"] <= rows[0][1] <= rows[-1][1] <= after["out_segs"]
    with open("/proc/meminfo") as f:
        assert mem == procfs.parse_meminfo(f.read())["mem_total_kb"]
    assert not list(tmp_path.glob("ks-redis-*"))


def _env_without_redis() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
