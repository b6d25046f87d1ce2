"""One real recording per session, by the real pipeline (scraper + sched, syscalls and io
tracers, ingester, private Redis), with two real incidents in it:

    14 s normal work | 10 s CPU oversubscription | 8 s recovery | 10 s fsync storm | 8 s

The analysis tests read the database it leaves, each incident in its own window (the quiet
time before it, the incident, the recovery), as a user would pass --since/--until."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from analysis.incidents import CpuOversubscription, FsyncStorm
from kernelsight.config import Settings
from kernelsight.redis_server import PrivateRedis

from conftest import need_root, running_pipeline

QUIET_S, INCIDENT_S, RECOVERY_S = 14.0, 10.0, 8.0


@dataclass
class Incident:
    kind: str
    start_ns: int
    end_ns: int
    window: tuple[int, int]  # quiet before + incident + recovery
    culprit_pids: set[int] = field(default_factory=set)


@dataclass
class Recorded:
    db: Path
    incidents: list[Incident]
    quiet_ns: tuple[int, int]


@pytest.fixture(scope="session")
def recording(redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Recorded]:
    need_root()
    tmp = tmp_path_factory.mktemp("incidents")
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    s = Settings(redis_url=redis_server.url, db_path=str(tmp / "ks.db"), host="testhost")
    cpu, storm = CpuOversubscription(tmp), FsyncStorm(tmp)
    found: list[Incident] = []
    try:
        with running_pipeline(s, ["scraper", "sched", "syscalls", "io"], tmp):
            cpu.prepare()
            q0 = time.time_ns()
            time.sleep(QUIET_S)
            for inc, before in ((cpu, q0), (storm, None)):
                w0 = before if before is not None else time.time_ns() - int(RECOVERY_S * 1e9)
                t1 = time.time_ns()
                inc.start()
                time.sleep(INCIDENT_S)
                pids = {p.pid for p in inc.procs}
                inc.stop()
                t2 = time.time_ns()
                time.sleep(RECOVERY_S)
                found.append(Incident(inc.kind, t1, t2, (w0, time.time_ns()), pids))
            cpu.close()
    finally:
        cpu.close()
        storm.close()
    yield Recorded(tmp / "ks.db", found, (q0, found[0].start_ns))
