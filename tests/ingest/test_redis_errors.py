"""How the ingester meets Redis errors, each against its own real redis-server.

Non-transient refusals (NOPERM, READONLY...) end it with one clear line and a non-zero exit,
never exit 0 with entries left unstored. Out-of-memory is back-pressure, not a reason to stop:
the ingester is what frees Redis memory (it reads, acknowledges and trims)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from kernelsight import schema, streamid
from kernelsight.config import Settings
from kernelsight.db import open_db, table_counts
from kernelsight.ingest import backlog, drained_until
from kernelsight.loadgen import make_event
from kernelsight.redis_server import PrivateRedis, free_port
from kernelsight.streams import FIELD, Publisher, connect

SYS = schema.BY_NAME["syscall_events"]


@pytest.fixture
def own_redis():
    with PrivateRedis() as rs:
        yield rs


def publish(url: str, n: int) -> None:
    pub = Publisher(Settings(redis_url=url, host="t", buffer_max=n + 10), "test")
    rng = random.Random(1)
    pub.publish(SYS.name, [make_event(SYS, rng, "t", time.time_ns()) for _ in range(n)])
    pub.close()


def ingest(url: str, db: Path, *args: str, timeout: float = 60,
           **popen: object) -> subprocess.Popen:
    env = {**os.environ, "KS_REDIS_URL": url, "KS_DB_PATH": str(db), "KS_BATCH_SIZE": "100"}
    return subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def stored(db: Path) -> int:
    eng = open_db(str(db), create=False)
    try:
        return table_counts(eng)[SYS.name]
    finally:
        eng.dispose()


def one_line_error(out: str, *words: str) -> None:
    assert "Traceback" not in out, out[-3000:]
    err = [ln for ln in out.splitlines() if ln.startswith("kernelsight: error:")]
    assert len(err) == 1, out[-3000:]
    assert all(w.lower() in err[0].lower() for w in words), out[-3000:]


def test_noperm_on_xack_exits_nonzero_with_one_line(own_redis, tmp_path):
    """A Redis user that may not XACK: the ingester stored the batch but cannot acknowledge
    it. It must say so and fail, not log a warning and exit 0."""
    publish(own_redis.url, 2000)
    r = connect(own_redis.url)
    r.execute_command("ACL", "SETUSER", "ks", "on", ">ks-pw", "~*", "&*", "+@all", "-xack")
    url = f"unix://ks:ks-pw@{own_redis.socket_path}?db=0"
    p = ingest(url, tmp_path / "ks.db", "--drain")
    out, _ = p.communicate(timeout=60)
    assert p.returncode != 0, out[-3000:]
    one_line_error(out, "permission", "xack")
    assert backlog(r) > 0  # nothing was acknowledged: every entry is still in Redis


def test_readonly_replica_exits_nonzero_with_one_line(own_redis, tmp_path):
    """The Redis the ingester reads from turns into a read-only replica (REPLICAOF an address
    where nothing listens, so it never syncs and keeps its data): exit non-zero, one line."""
    publish(own_redis.url, 500)
    db = tmp_path / "ks.db"
    p = ingest(own_redis.url, db)
    try:
        r = connect(own_redis.url)
        deadline = time.monotonic() + 30
        while not drained_until(r, streamid.PACKED_MAX) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert drained_until(r, streamid.PACKED_MAX), "the ingester did not store the entries"
        # A primary it cannot reach (nothing listens there): it never syncs, keeps its data.
        r.execute_command("REPLICAOF", "127.0.0.1", free_port())
        with pytest.raises(redis.ReadOnlyError):
            r.xadd(SYS.stream_for("t"), {FIELD: b"{}"})
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode != 0, out[-3000:]
    one_line_error(out, "read-only", "replica")
    assert stored(db) == 500


def test_oom_on_dead_letter_mirror_is_back_pressure_not_a_stop(own_redis, tmp_path):
    """Redis at maxmemory (noeviction) refuses the dead-letter stream XADD and the heartbeat
    SET. The ingester keeps reading, storing and acknowledging (that frees memory), counts
    the refusals, and drains to the end: every good row and every dead letter is stored."""
    n = 3000
    publish(own_redis.url, n)
    r = connect(own_redis.url)
    for i in range(5):
        r.xadd(SYS.stream_for("t"), {FIELD: b"{not json %d" % i})
    for s in schema.host_streams("t"):  # the ingester ran before Redis filled up: the group exists
        r.xgroup_create(s, schema.INGEST_GROUP, id="0", mkstream=True)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("probe", 1)
    db = tmp_path / "ks.db"
    p = ingest(own_redis.url, db, "--drain")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert stored(db) == n
    eng = open_db(str(db), create=False)
    with eng.connect() as c:
        dead = c.execute(text("SELECT COUNT(*) FROM dead_letters")).scalar_one()
        oom = c.execute(text(
            "SELECT MAX(value) FROM pipeline_accounting WHERE source = 'ingest' "
            "AND metric = 'redis_oom'")).scalar_one()
    eng.dispose()
    assert dead == 5
    assert oom and oom > 0
    assert backlog(r) == 0
