"""One real recording per session, by the real pipeline (scraper + sched, syscalls and io
tracers, ingester, private Redis), with five real incidents in it, one after the other:

    14 s normal work | then for each of CPU oversubscription, fsync storm, memory pressure
    (major faults in a memory cgroup), packet loss on loopback, lock contention:
    10 s incident | 8 s recovery

The analysis tests read the database it leaves, each incident in its own window (the quiet
time before it, the incident, the recovery), as a user would pass --since/--until."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from analysis.incidents import (
    CpuOversubscription,
    FsyncStorm,
    LockContention,
    MemoryPressure,
    PacketLoss,
)
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
    cpu = CpuOversubscription(tmp)
    incidents = [cpu, FsyncStorm(tmp), MemoryPressure(tmp), PacketLoss(tmp), LockContention(tmp)]
    found: list[Incident] = []
    try:
        with running_pipeline(s, ["scraper", "sched", "syscalls", "io", "pagefaults"], tmp,
                              start_timeout=240.0):
            cpu.prepare()
            q0 = time.time_ns()
            time.sleep(QUIET_S)
            for inc in incidents:
                w0 = q0 if inc is cpu else time.time_ns() - int(RECOVERY_S * 1e9)
                if inc is not cpu:
                    inc.prepare()
                t1 = time.time_ns()
                inc.start()
                time.sleep(INCIDENT_S)
                pids = {p.pid for p in inc.procs}
                inc.stop()
                t2 = time.time_ns()
                time.sleep(RECOVERY_S)
                found.append(Incident(inc.kind, t1, t2, (w0, time.time_ns()), pids))
                inc.close()
    finally:
        for inc in incidents:
            inc.close()
    # The stopwatch beside the database, to analyse a failed run's windows by hand.
    (tmp / "incidents.json").write_text(json.dumps(
        {"quiet_ns": [q0, found[0].start_ns], "incidents": [i.__dict__ | {
            "culprit_pids": sorted(i.culprit_pids)} for i in found]}, indent=1))
    yield Recorded(tmp / "ks.db", found, (q0, found[0].start_ns))
