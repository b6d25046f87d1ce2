"""`make bench`, PostgreSQL part: our ingester into PostgreSQL (one worker, COPY) against a
bare COPY loop over the same entries, and the fleet's cross-host question timed over 1M rows.

Both run against a private TemporaryPostgres (root: initdb runs as the postgres user) started
here, with the private Redis of the rest of the bench. The entries are published with the real
Publisher for several hosts, so they sit under whatever stream keys the producers use; the
floor finds them by SCAN on that private, single-node Redis."""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import TYPE_CHECKING

import orjson
import redis

from kernelsight import schema, streamid
from kernelsight.config import Settings
from kernelsight.loadgen import pool
from kernelsight.streams import FIELD, Publisher

if TYPE_CHECKING:
    from kernelsight.bench import Bench

FIGURES = ("pg_ingest_events_per_s", "pg_ingest_floor_events_per_s", "pg_ingest_ratio",
           "pg_fleet_query_seconds")
HOSTS = ("bench-a", "bench-b", "bench-c")

# "Hosts whose syscall p99 in the last hour exceeded their own baseline" (the 23 hours
# before): one statement, every host at once, exact percentiles.
FLEET_P99_SQL = """
WITH recent AS (
  SELECT host, percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ns) AS p99
  FROM syscall_events WHERE timestamp >= :hour_ago GROUP BY host),
baseline AS (
  SELECT host, percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ns) AS p99
  FROM syscall_events WHERE timestamp >= :day_ago AND timestamp < :hour_ago GROUP BY host)
SELECT r.host, r.p99, b.p99 FROM recent r JOIN baseline b ON b.host = r.host
WHERE r.p99 > b.p99 ORDER BY r.p99 / b.p99 DESC"""


QUERY_WORK_MEM = "64MB"


def fill(url: str, n: int) -> int:
    """``n`` realistic events of every type, spread over HOSTS, through the real Publisher."""
    redis.Redis.from_url(url).flushall()
    per = n // len(HOSTS)
    for i, h in enumerate(HOSTS):
        pub = Publisher(Settings(redis_url=url, host=h, buffer_max=per + 10), "bench")
        events = pool(h, seed=7 + i, size=1000)
        ts = time.time_ns()
        for start in range(0, per, 1000):
            batch: dict[str, list[dict]] = {}
            for name, row in events[:min(1000, per - start)]:
                batch.setdefault(name, []).append({**row, "timestamp": ts})
            for name, rows in batch.items():
                pub.publish(name, rows)
            pub.flush()
        pub.flush(final=True)
        pub.close()
    return per * len(HOSTS)


def floor_copy(url: str, dsn: str) -> float:
    """XREAD + orjson + psycopg COPY into index-free (logged) tables of the same columns, one commit
    per read: the least any ingester into PostgreSQL has to do with these entries."""
    import psycopg

    r = redis.Redis.from_url(url)
    streams = {}
    for key in r.scan_iter(match="kernelsight:*", _type="stream", count=1000):
        name = key.decode().rsplit(":", 1)[-1]
        if name in schema.TABLES:
            streams[key] = schema.BY_NAME[name]
    with psycopg.connect(dsn) as con:
        for et in {et.name: et for et in streams.values()}.values():
            cols = ", ".join(f"{c.name} {'text' if c.kind == 'str' else 'double precision' if c.kind == 'float' else 'bigint'}"  # noqa: E501
                             for c in et.columns)
            con.execute(f"DROP TABLE IF EXISTS floor_{et.name}")
            con.execute(f"CREATE TABLE floor_{et.name} (stream_id bigint, "
                        f"timestamp bigint, host text, {cols})")
        con.commit()
        last = {k: b"0" for k in streams}
        n = 0
        t0 = time.perf_counter()
        while True:
            res = r.xread(last, count=1000)
            if not res:
                break
            with con.cursor() as cur:
                for key, entries in res:
                    et = streams[key]
                    names = ("timestamp", "host", *et.column_names)
                    with cur.copy(f"COPY floor_{et.name} (stream_id, {', '.join(names)}) "
                                  "FROM STDIN") as cp:
                        for eid, fields in entries:
                            o = orjson.loads(fields[FIELD])
                            cp.write_row((streamid.pack(eid), *(o[c] for c in names)))
                    last[key] = entries[-1][0]
                    n += len(entries)
            con.commit()
        dt = time.perf_counter() - t0
    r.close()
    return n / dt


def ours(url: str, db_url: str) -> float:
    """`kernelsight ingest --drain --workers 1 --db postgresql+psycopg://...`, schema and groups
    created before the clock starts."""
    from kernelsight.ingest import Ingester, run_ingest

    s = Settings(redis_url=url, db_path=db_url, host="bench")
    ing = Ingester(s)
    ing.ensure_groups()
    ing.engine.dispose()
    t0 = time.perf_counter()
    st = run_ingest(s, 1, drain=True)
    dt = time.perf_counter() - t0
    return sum(st.stored.values()) / dt


def seed_syscalls(db_url: str, dsn: str, rows: int, hosts: int = 20) -> None:
    """``rows`` syscall_events over the last 24 hours for ``hosts`` hosts, COPYed into the real
    schema (open_db creates it, partitions included). In the last hour every fifth host is
slower than before and the others faster: the query must find exactly hosts 0, 5, 10, 15."""
    import psycopg

    from kernelsight.db import open_db
    from kernelsight.storage.postgres import Partitions

    eng = open_db(db_url)
    et = schema.BY_NAME["syscall_events"]
    cols = ("stream_id", "timestamp", "host", *et.column_names)
    rng = random.Random(5)
    now = time.time_ns()
    day = 86_400 * 10**9
    Partitions().ensure(eng, "syscall_events", (now - day, now))  # as the writer would
    eng.dispose()
    with psycopg.connect(dsn) as con, con.cursor() as cur:
        with cur.copy(f"COPY syscall_events ({', '.join(cols)}) FROM STDIN") as cp:
            for i in range(rows):
                h = i % hosts
                ts = now - day + (i * day) // rows
                recent = ts >= now - day // 24
                mu = 11.0 if not recent else 12.0 if h % 5 == 0 else 10.5
                lat = int(rng.lognormvariate(mu, 1.2))
                cp.write_row((i + 1, ts, f"host-{h:02d}", 100 + h, 100 + h, h % 2, 0, 35,
                              "nanosleep", lat, 0, 0, 0, "bench"))
        con.commit()
        con.execute("ANALYZE syscall_events")


def fleet_query(db_url: str, work_mem: str = QUERY_WORK_MEM) -> tuple[float, int]:
    """Median seconds of FLEET_P99_SQL over 3 runs (after one warm-up), and the hosts found.

    ``work_mem`` for the session: at PostgreSQL's default 4MB the planner walks the unique
    (host, stream_id, timestamp) index in host order instead of sorting in memory, about twice
    as slow here (1.07 s against 0.51 s over 1M rows, load 2.6)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(db_url)
    now = time.time_ns()
    args = {"hour_ago": now - 3600 * 10**9, "day_ago": now - 86_400 * 10**9}
    times = []
    found = 0
    try:
        with eng.connect() as c:
            if work_mem:
                c.execute(text(f"SET work_mem = '{work_mem}'"))
            for i in range(4):
                t0 = time.perf_counter()
                found = len(c.execute(text(FLEET_P99_SQL), args).fetchall())
                if i:
                    times.append(time.perf_counter() - t0)
    finally:
        eng.dispose()
    return statistics.median(times), found


def run(b: Bench, url: str) -> None:
    if os.geteuid() != 0:
        for f in FIGURES:
            b.put(f, None, "needs root (initdb runs as the postgres user)")
        return
    from kernelsight.pg_server import TemporaryPostgres

    n = 30_000 if b.quick else 200_000
    rounds = 1 if b.quick else 3
    load = os.getloadavg()[0]
    with TemporaryPostgres() as pg:
        runs: dict[str, list[float]] = {"floor": [], "ours": []}
        for i in range(rounds):
            for which in (("floor", "ours") if i % 2 == 0 else ("ours", "floor")):
                pg.reset()
                fill(url, n)
                runs[which].append(floor_copy(url, pg.dsn) if which == "floor"
                                   else ours(url, pg.url))
        o, f = (statistics.median(runs[k]) for k in ("ours", "floor"))
        b.put("pg_ingest_events_per_s", o, f"{n:,} realistic events of all types from "
              f"{len(HOSTS)} hosts, one worker, COPY, median of {rounds} (load {load:.1f})")
        b.put("pg_ingest_floor_events_per_s", f, "XREAD + orjson + psycopg COPY into "
              "index-free tables, one commit per read")
        b.put("pg_ingest_ratio", o / f)
        rows = 100_000 if b.quick else 1_000_000
        pg.reset()
        seed_syscalls(pg.url, pg.dsn, rows)
        secs, found = fleet_query(pg.url)
        dflt = "" if b.quick else f"; {fleet_query(pg.url, '')[0]:.2f} s at the default work_mem"
        b.put("pg_fleet_query_seconds", secs, f"hosts whose syscall p99 in the last hour "
              f"exceeded their own 23-hour baseline, over {rows:,} rows of 20 hosts in day "
              f"partitions (found {found}, expected 4), median of 3, work_mem "
              f"{QUERY_WORK_MEM}{dflt} (load {os.getloadavg()[0]:.1f})")
