"""The Redis Cluster transport, on a real local cluster (kernelsight.redis_cluster): producers
for several hosts (real `kernelsight loadgen` processes, each with its own --host) and a real
`kernelsight ingest` into a SQLite file, all given `redis+cluster://...`.

Ground truth per host and event type: the producers' own cumulative accounting (produced,
dropped by reason) against the rows stored for that host. Conservation must hold exactly
(produced == stored + counted drops) with no duplicate (host, stream_id), also when the master
owning one host's slot is SIGKILLed mid-run: its replica is promoted, and producers and the
ingester carry on without a restart."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from kernelsight import schema
from kernelsight.redis_cluster import LocalRedisCluster
from kernelsight.streams import connect, known_hosts

from conftest import need_root

HOSTS = ("h1", "h2", "h3")


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kernelsight", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def loadgen(url: str, host: str, rate: int, duration: float, log: Path) -> subprocess.Popen:
    return spawn(["loadgen", "--rate", str(rate), "--duration", str(duration),
                  "--redis-url", url, "--host", host], log)


def ingest(url: str, db: Path, log: Path, *extra: str) -> subprocess.Popen:
    return spawn(["ingest", "--redis-url", url, "--db", str(db), "--host", "ingest-host",
                  *extra], log, {"KS_BATCH_MS": "50"})


def wait_schema(db: Path, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if db.exists():
            con = sqlite3.connect(db)
            try:
                if con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = "
                               "'runs_1m' OR name = 'tcp_stats_1m'").fetchone()[0]:
                    return
            except sqlite3.Error:
                pass
            finally:
                con.close()
        time.sleep(0.2)
    pytest.fail(f"no schema in {db} after {timeout}s")


def conservation(db: Path) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """(host, event type) -> (produced, stored, dropped, duplicates) from the database."""
    con = sqlite3.connect(db)
    acc: dict[tuple[str, str, str], int] = {}
    for host, et, metric, v in con.execute(
            "SELECT host, event_type, metric, SUM(v) FROM (SELECT host, instance, event_type, "
            "metric, reason, MAX(value) AS v FROM pipeline_accounting WHERE source = 'loadgen'"
            " AND metric IN ('produced', 'dropped') GROUP BY host, instance, event_type, "
            "metric, reason) GROUP BY host, event_type, metric"):
        acc[(host, et, metric)] = v
    out = {}
    for host in HOSTS:
        for et in schema.EVENT_TYPES:
            n, distinct = con.execute(
                f"SELECT COUNT(*), COUNT(DISTINCT stream_id) FROM {et.name} WHERE host = ?",
                (host,)).fetchone()
            produced = acc.get((host, et.name, schema.PRODUCED), 0)
            if produced or n:
                out[(host, et.name)] = (produced, n, acc.get((host, et.name, schema.DROPPED), 0),
                                        n - distinct)
    con.close()
    return out


def wait_exit(p: subprocess.Popen, timeout: float, log: Path) -> int:
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        pytest.fail(f"{p.args[3]} did not finish within {timeout:.0f}s:\n"
                    + log.read_text()[-3000:])


def drain(p: subprocess.Popen, log: Path) -> None:
    os.killpg(p.pid, signal.SIGTERM)
    assert wait_exit(p, 60, log) == 0, log.read_text()[-3000:]


def assert_conserved(db: Path, logs: Path) -> dict:
    """Per host and type, conservation and no duplicate; per host, the accounting's produced
    total is what the producer process itself reported at exit (its last output line)."""
    got = conservation(db)
    assert {h for h, _ in got} == set(HOSTS), got
    for (host, et), (produced, stored, dropped, dup) in got.items():
        assert dup == 0, (host, et, got[(host, et)])
        assert produced == stored + dropped, (host, et, produced, stored, dropped)
    for host in HOSTS:
        said = orjson.loads((logs / f"{host}.log").read_text().strip().splitlines()[-1])
        total = sum(v[0] for (h, _), v in got.items() if h == host)
        assert total == said["produced"] > 0, (host, total, said)
    return got


def test_hosts_share_a_cluster_exactly_once(redis_cluster: LocalRedisCluster,
                                            tmp_path: Path) -> None:
    """Three hosts' producers and two ingesters (consumer group shared over every host's
    streams), all on the cluster URL: each host's streams sit in one slot, every row once."""
    need_root()
    url = redis_cluster.url
    r = connect(url)
    for node in r.get_primaries():  # the cluster is shared by the session: start empty
        r.get_redis_connection(node).flushall()
    db = tmp_path / "ks.db"
    rate, duration = 1000, 4.0
    ing = [ingest(url, db, tmp_path / "ingest1.log", "--consumer", "c1")]
    wait_schema(db)  # two processes creating one SQLite schema at once can collide
    ing.append(ingest(url, db, tmp_path / "ingest2.log", "--consumer", "c2"))
    gens = [loadgen(url, h, rate, duration, tmp_path / f"{h}.log") for h in HOSTS]
    for h, g in zip(HOSTS, gens, strict=True):
        assert wait_exit(g, 60, tmp_path / f"{h}.log") == 0, (tmp_path / f"{h}.log").read_text()
    assert known_hosts(r) == sorted(HOSTS)
    # A host's keys are in one slot: its streams, accounting and registry entry.
    for h in HOSTS:
        slots = {r.keyslot(k) for k in schema.host_streams(h)}
        assert len(slots) == 1, (h, slots)
    for i, p in enumerate(ing, 1):
        drain(p, tmp_path / f"ingest{i}.log")
    got = assert_conserved(db, tmp_path)
    # `status` over the cluster: every host's streams, nothing left unstored.
    st = subprocess.run([sys.executable, "-m", "kernelsight", "status", "--json", "--db", str(db),
                         "--redis-url", url, "--expect", ""], capture_output=True, text=True,
                        timeout=60, check=False)
    streams = {x["stream"]: x for x in orjson.loads(st.stdout)["streams"]}
    for h in HOSTS:
        assert all(streams[s]["backlog"] == 0 for s in schema.host_streams(h)), st.stdout
    print(f"\ncluster, 3 hosts x {rate}/s x {duration}s, 2 ingesters: "
          f"{sum(v[1] for v in got.values())} rows, "
          f"drops {sum(v[2] for v in got.values())}, duplicates 0")
    r.close()


def test_master_killed_mid_run_nothing_lost_or_duplicated(tmp_path: Path) -> None:
    """SIGKILL the master owning h1's slot while three producers and an ingester run; its
    replica is promoted; nobody is restarted; per host and type produced == stored + counted
    drops, and no (host, stream_id) twice."""
    need_root()
    rate, duration = 1500, 14.0
    with LocalRedisCluster() as c:
        url = c.url
        db = tmp_path / "ks.db"
        ilog = tmp_path / "ingest.log"
        ing = ingest(url, db, ilog)
        gens = [loadgen(url, h, rate, duration, tmp_path / f"{h}.log") for h in HOSTS]
        time.sleep(4)
        victim = c.master_for(schema.accounting_stream("h1"))
        t0 = time.monotonic()
        c.kill(victim)
        c.wait_failover(victim)
        failover_s = time.monotonic() - t0
        assert c.master_for(schema.accounting_stream("h1")) is not victim
        for h, g in zip(HOSTS, gens, strict=True):
            log = tmp_path / f"{h}.log"
            assert wait_exit(g, 90, log) == 0, log.read_text()[-3000:]
        assert ing.poll() is None, "the ingester exited: " + ilog.read_text()[-3000:]
        drain(ing, ilog)
        got = assert_conserved(db, tmp_path)
        logs = {h: (tmp_path / f"{h}.log").read_text() for h in HOSTS}
        print(f"\nfailover of {victim.addr} took {failover_s:.1f}s; "
              f"{sum(v[1] for v in got.values())} rows, "
              f"drops {sum(v[2] for v in got.values())}, duplicates 0; h1 log: "
              + " | ".join(ln for ln in logs["h1"].splitlines() if "redis" in ln)[:600])
        assert "Traceback" not in ilog.read_text()


def test_unreplicated_entries_are_re_added_after_failover(tmp_path: Path) -> None:
    """What asynchronous replication loses, the producers' replay window re-adds: h1's
    master's replica is stopped (SIGSTOP) and its link cut for 2 s, so what the master
    acknowledges meanwhile never reaches it; then the master is SIGKILLed and the replica
    resumed and promoted.
    The promoted replica lacks those entries: the producer re-adds them with their original
    ids ("re-added N of M"), and the store still ends with every row once."""
    need_root()
    rate, duration = 1500, 12.0
    with LocalRedisCluster() as c:
        url = c.url
        db = tmp_path / "ks.db"
        ilog = tmp_path / "ingest.log"
        ing = ingest(url, db, ilog)
        gens = [loadgen(url, h, rate, duration, tmp_path / f"{h}.log") for h in HOSTS]
        time.sleep(3)
        victim = c.master_for(schema.accounting_stream("h1"))
        replica = c.replica_of(victim)
        assert replica.proc
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            # The master drops its (stopped) replica's link: what it writes from now on is
            # acknowledged to producers and exists nowhere else.
            c.cli_run(victim.port, "client", "kill", "type", "replica")
            time.sleep(2)
            c.kill(victim)
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        c.wait_failover(victim)
        assert c.master_for(schema.accounting_stream("h1")).port == replica.port
        for h, g in zip(HOSTS, gens, strict=True):
            log = tmp_path / f"{h}.log"
            assert wait_exit(g, 90, log) == 0, log.read_text()[-3000:]
        assert ing.poll() is None, "the ingester exited: " + ilog.read_text()[-3000:]
        drain(ing, ilog)
        got = assert_conserved(db, tmp_path)
        h1 = (tmp_path / "h1.log").read_text()
        readded = [ln.split("re-added ", 1)[1].split(" entries")[0] for ln in h1.splitlines()
                   if "re-added" in ln]
        print(f"\nreplica stopped 2 s, master killed: re-added {readded}; "
              f"{sum(v[1] for v in got.values())} rows, "
              f"drops {sum(v[2] for v in got.values())}, duplicates 0")
        assert readded and sum(int(x.split(" of ")[0]) for x in readded) > 0, h1[-3000:]


def test_exit_waits_for_replication_or_counts_what_is_unconfirmed(
        redis_cluster: LocalRedisCluster) -> None:
    """A producer leaving with entries nobody stored yet: they are safe once its master's
    replica has them (WAIT); with the replica stopped they are not, and the producer says so
    in its final accounting (replay_window_unconfirmed) instead of leaving silently."""
    need_root()
    from kernelsight.config import Settings
    from kernelsight.loadgen import make_event
    from kernelsight.streams import Publisher

    def publish(host: str) -> Publisher:
        pub = Publisher(Settings(redis_url=redis_cluster.url, host=host), "exittest")
        et = schema.BY_NAME["load_metrics"]
        rng = random.Random(5)
        pub.publish(et.name, [make_event(et, rng, host, time.time_ns()) for _ in range(200)])
        assert pub.flush(final=True) and pub._window_len == 200  # sent, nobody ingests
        return pub

    pub = publish("exit-a")
    pub.close()
    assert ("", "replay_window_unconfirmed", "") not in pub.counters
    pub = publish("exit-b")
    replica = redis_cluster.replica_of(redis_cluster.master_for(schema.accounting_stream(
        "exit-b")))
    assert replica.proc
    os.kill(replica.proc.pid, signal.SIGSTOP)  # shorter than the node timeout: no failover
    try:
        pub.close(deadline_s=1.0)
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    assert pub.counters[("", "replay_window_unconfirmed", "")] == 200
    r = connect(redis_cluster.url)
    last = orjson.loads(r.xrevrange(schema.accounting_stream("exit-b"), count=1)[0][1][b"d"])
    assert ["", "replay_window_unconfirmed", "", 200, ""] in last["counters"]
    r.close()
    redis_cluster.wait_healthy(30)


def test_cluster_url_is_checked(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--redis-url",
                        "redis+cluster://:pw@127.0.0.1:notaport", "--db", str(tmp_path / "x.db")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert "redis+cluster://[:password@]host:port[,host:port...]" in p.stderr, p.stderr
    assert "pw" not in p.stderr


def test_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    from kernelsight.redis_server import free_port

    p = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--redis-url",
                        f"redis+cluster://:pw@127.0.0.1:{free_port()}", "--db",
                        str(tmp_path / "x.db")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and "redis" in p.stderr.lower(), p.stderr
