"""Fault injection with conservation figures: every event produced is stored exactly once or
counted as dropped with a reason. Each test prints its figures (pytest -s or -rA shows them)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from kernelsight import schema, streamid
from kernelsight.config import Settings
from kernelsight.db import open_db, table_counts
from kernelsight.ingest import backlog, drained_until
from kernelsight.loadgen import generate, make_event
from kernelsight.redis_server import PrivateRedis
from kernelsight.report import build
from kernelsight.streams import FIELD, HEALTH_KEY, Publisher, connect

H = "testhost"  # the settings fixture's host


def start_ingest(settings: Settings, log: Path, consumer: str = "ingest-1",
                 extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "KS_DB_PATH": settings.db_path,
           "KS_CONSUMER": consumer, **(extra or {})}
    return subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest"], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def wait_ingest_up(url: str, timeout: float = 60) -> None:
    """Until the ingester's heartbeat is in Redis: started, groups made (a loaded CI machine
    can take seconds to start Python)."""
    r = connect(url)
    deadline = time.monotonic() + timeout
    while not r.exists(HEALTH_KEY.format(source="ingest")):
        assert time.monotonic() < deadline, "the ingester did not start"
        time.sleep(0.1)


def stop_ingest(p: subprocess.Popen, timeout: float = 60) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout)


def wait_stored(url: str, timeout: float = 30) -> None:
    """Until the ingester has stored everything in Redis (bounded). drained_until also waits
    for an ingester that has not created its group yet (backlog() counts 0 then)."""
    deadline = time.monotonic() + timeout
    r = connect(url)
    while not drained_until(r, streamid.PACKED_MAX) and time.monotonic() < deadline:
        time.sleep(0.2)


def conservation(db: str) -> tuple[int, int, int, dict]:
    eng = open_db(db, create=False)
    rep = build(eng, db, None, ["loadgen"])
    counts = table_counts(eng)
    eng.dispose()
    produced = sum(rep.produced.values())
    dropped = sum(sum(d.values()) for d in rep.dropped.values())
    return produced, sum(counts.values()), dropped, {
        t: rep.balance(t) for t in schema.TABLES if rep.balance(t)}


def distinct_ok(db: str) -> None:
    eng = open_db(db, create=False)
    with eng.connect() as c:
        for t in schema.TABLES:
            n, d = c.execute(text(f"SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM {t}")).one()
            assert n == d, f"{t}: {n - d} duplicates"
    eng.dispose()


@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "aof-always"])
def test_redis_restart_while_publishing(tmp_path, persistent):
    rs = PrivateRedis(persist_dir=str(tmp_path / "redis")).start(persistent)
    s = Settings(redis_url=rs.url, db_path=str(tmp_path / "ks.db"), host="t")
    ing = start_ingest(s, tmp_path / "ingest.log")
    pubs = []
    th = threading.Thread(target=lambda: pubs.append(generate(s, 4000, 10)))
    try:
        wait_ingest_up(s.redis_url)
        th.start()
        time.sleep(3)
        rs.stop()
        time.sleep(1.5)
        rs2 = PrivateRedis(password=rs.password, persist_dir=rs.dir,
                           socket_dir=rs.socket_dir).start(persistent)
        t_up = time.monotonic()
        th.join(60)
        pub = pubs[0]
        # The ingester reconnects by itself (NOGROUP -> group recreated when Redis lost it).
        wait_stored(s.redis_url)
        assert stop_ingest(ing) == 0, (tmp_path / "ingest.log").read_text()[-2000:]
        produced, stored, dropped, bad = conservation(s.db_path)
        print(f"\nredis restart ({'AOF always' if persistent else 'no persistence'}): produced "
              f"{produced}, stored {stored}, dropped {dropped}, replayed {pub.replayed}, "
              f"publisher reconnects {pub.reconnects}, up again after "
              f"{time.monotonic() - t_up:.1f}s of test")
        assert produced == pub.produced_total() and produced > 30_000
        assert produced == stored + dropped and not bad
        assert pub.reconnects >= 1
        if persistent:
            assert pub.replayed == 0  # Redis kept everything itself
        distinct_ok(s.db_path)
    finally:
        if ing.poll() is None:
            ing.kill()
        if "rs2" in locals():
            rs2.cleanup()
        rs.cleanup()


def test_redis_down_when_collectors_start(tmp_path):
    rs = PrivateRedis()
    s = Settings(redis_url=rs.url, db_path=str(tmp_path / "ks.db"), host="t")
    pubs = []
    th = threading.Thread(target=lambda: pubs.append(generate(s, 2000, 6)))
    th.start()  # Redis is not running yet: the publisher buffers
    time.sleep(2.5)
    try:
        rs.start()
        ing = start_ingest(s, tmp_path / "ingest.log")
        th.join(60)
        wait_stored(s.redis_url)
        assert stop_ingest(ing) == 0
        produced, stored, dropped, bad = conservation(s.db_path)
        print(f"\nredis down at start: produced {produced}, stored {stored}, dropped {dropped}")
        assert produced == stored > 10_000 and dropped == 0 and not bad
    finally:
        rs.cleanup()


def test_sqlite_shell_holds_write_lock(settings, tmp_path):
    open_db(settings.db_path).dispose()
    ing = start_ingest(settings, tmp_path / "ingest.log")
    wait_ingest_up(settings.redis_url)
    pubs = []
    th = threading.Thread(target=lambda: pubs.append(generate(settings, 3000, 9)))
    th.start()
    time.sleep(2)
    # A user's sqlite3 shell takes the write lock and sits on it for 5 s.
    sh = subprocess.Popen(["sqlite3", settings.db_path], stdin=subprocess.PIPE, text=True)
    assert sh.stdin
    sh.stdin.write(".timeout 5000\nBEGIN IMMEDIATE;\n"
                   "INSERT INTO schema_meta VALUES ('lock-test', 'x');\n")
    sh.stdin.flush()
    time.sleep(5)
    sh.stdin.write("ROLLBACK;\n.quit\n")
    sh.stdin.close()
    sh.wait(10)
    th.join(60)
    wait_stored(settings.redis_url)
    assert stop_ingest(ing) == 0
    produced, stored, dropped, bad = conservation(settings.db_path)
    eng = open_db(settings.db_path, create=False)
    with eng.connect() as c:
        retries = c.execute(text("SELECT MAX(value) FROM pipeline_accounting WHERE metric = "
                                 "'lock_retries'")).scalar_one()
    print(f"\nsqlite lock 5 s: produced {produced}, stored {stored}, lock retries {retries}")
    assert produced == stored > 20_000 and dropped == 0 and not bad
    assert retries >= 1


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_then_space_returns(small_tmpfs, redis_url, tmp_path):
    s = Settings(redis_url=redis_url, db_path=str(small_tmpfs / "ks.db"), host="t")
    open_db(s.db_path).dispose()
    ing = start_ingest(s, tmp_path / "ingest.log")
    pub = generate(s, 20000, 3)  # ~60k events: far more than 3 MiB holds
    time.sleep(4)
    log = (tmp_path / "ingest.log").read_text()
    assert ing.poll() is None, log[-2000:]  # still alive, waiting for space
    assert "free space" in log and "Traceback" not in log
    assert backlog(connect(s.redis_url)) > 0  # unstored entries wait in Redis
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_tmpfs)], check=True)
    wait_stored(s.redis_url, 60)
    assert stop_ingest(ing) == 0
    eng = open_db(s.db_path, create=False)
    with eng.connect() as c:
        assert c.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
    eng.dispose()
    produced, stored, _, bad = conservation(s.db_path)
    print(f"\ndisk full: produced {produced}, stored {stored} after space returned")
    assert produced == pub.produced_total() == stored and not bad


def test_two_ingest_workers_share_without_duplicates(settings, tmp_path):
    open_db(settings.db_path).dispose()
    a = start_ingest(settings, tmp_path / "a.log", consumer="ingest-a",
                     extra={"KS_BATCH_SIZE": "200"})
    b = start_ingest(settings, tmp_path / "b.log", consumer="ingest-b",
                     extra={"KS_BATCH_SIZE": "200"})
    pub = generate(settings, 20000, 4)
    wait_stored(settings.redis_url, 60)
    assert stop_ingest(a) == 0 and stop_ingest(b) == 0
    produced, stored, _, bad = conservation(settings.db_path)
    r = connect(settings.redis_url)
    per = {c["name"]: c["pending"] for c in r.xinfo_consumers(
        schema.BY_NAME["page_fault_events"].stream_for(H), schema.INGEST_GROUP)}
    logs = [(tmp_path / n).read_text() for n in ("a.log", "b.log")]
    shares = [int(lg.rsplit("stored ", 1)[1].split(",")[0]) for lg in logs]
    print(f"\ntwo workers: produced {produced}, stored {stored}, shares {shares}, {per}")
    assert produced == pub.produced_total() == stored and not bad
    assert all(x > 0 for x in shares) and sum(shares) == stored
    distinct_ok(settings.db_path)


def test_resent_chunk_is_not_stored_twice(settings, rclient):
    """The reply to a MULTI/EXEC can be lost after Redis ran it: the publisher then sends the
    same chunk again. Producer-chosen ids make Redis refuse the copies."""
    pub = Publisher(settings, "test")
    et = schema.BY_NAME["load_metrics"]
    rng = random.Random(1)
    pub.publish(et.name, [make_event(et, rng, "t", time.time_ns()) for _ in range(300)])
    chunk = list(pub._buf)
    pub._xadd_all(chunk, [et.stream_for(H)])  # delivered, but suppose the reply never came back
    pub.flush(final=True)  # the buffer still holds the chunk: it is sent again
    assert rclient.xlen(et.stream_for(H)) == 300
    assert pub.resent_dupes == 300
    # Another producer ahead of us on the same stream: our entries get fresh ids, none lost.
    rclient.xadd(et.stream_for(H), {FIELD: b"{}"}, id=f"{int(time.time() * 1000) + 60_000}-0")
    pub.publish(et.name, [make_event(et, rng, "t", time.time_ns()) for _ in range(50)])
    pub.close()
    assert rclient.xlen(et.stream_for(H)) == 300 + 1 + 50
