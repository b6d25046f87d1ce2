"""A real incident, recorded once per session by the real pipeline (scraper + sched and
syscalls tracers, ingester, private Redis): 16 s of normal work, 12 s of CPU
oversubscription, 8 s of recovery. The analysis tests read the database it leaves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from analysis.incidents import CpuOversubscription
from kernelsight.config import Settings
from kernelsight.redis_server import PrivateRedis

from conftest import need_root, running_pipeline

QUIET_S, INCIDENT_S, RECOVERY_S = 16.0, 12.0, 8.0


@dataclass
class Recorded:
    db: Path
    kind: str
    incident_ns: tuple[int, int]
    quiet_ns: tuple[int, int]
    culprit_pids: set[int]


@pytest.fixture(scope="session")
def cpu_incident(redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Recorded]:
    need_root()
    tmp = tmp_path_factory.mktemp("cpu-incident")
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    s = Settings(redis_url=redis_server.url, db_path=str(tmp / "ks.db"), host="testhost")
    inc = CpuOversubscription(tmp)
    try:
        with running_pipeline(s, ["scraper", "sched", "syscalls"], tmp):
            inc.prepare()
            q0 = time.time_ns()
            time.sleep(QUIET_S)
            t1 = time.time_ns()
            inc.start()
            time.sleep(INCIDENT_S)
            pids = {p.pid for p in inc.procs}
            inc.stop()
            t2 = time.time_ns()
            time.sleep(RECOVERY_S)
            inc.close()
    finally:
        inc.close()
    yield Recorded(tmp / "ks.db", inc.kind, (t1, t2), (q0, t1), pids)
