"""`make bench`: every figure measured side by side with its bare floor, in the same run.

Prints one ``name: value`` line per figure and writes them all to bench/results.json. Runs
alternate ours/floor several times and report medians, because this is a noisy 2-core VM.
Not a test: `make test` only checks that the quick mode runs and prints every figure."""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import orjson
import psutil
import redis

from kernelsight import bench_pg, defaults, peers, schema
from kernelsight.bench_workloads import (
    EMPTY,
    FAULT_WORKLOAD,
    attach_empty,
    running_tracer,
    sched_workload,
)
from kernelsight.config import Settings
from kernelsight.ingest import Ingester, run_ingest
from kernelsight.loadgen import pool
from kernelsight.redis_server import PrivateRedis
from kernelsight.streams import FIELD, Publisher, register

FIGURES = (
    "ingest_events_per_s", "ingest_floor_events_per_s", "ingest_ratio",
    "ingest_two_workers_events_per_s", "ingest_two_workers_ratio", "publish_events_per_s",
    "syscall_tracer_overhead_ratio", "pagefault_tracer_overhead_ratio",
    "sched_tracer_overhead_ratio", "scraper_cpu_percent", "stack_cpu_percent_under_stress",
    "max_lossless_events_per_s", "report_seconds_1m_rows",
    "ingest_while_pruning_events_per_s", "ingest_while_pruning_ratio",
    "idle_cpu_percent", "idle_rss_mb", "idle_db_bytes_per_hour",
    *bench_pg.FIGURES,  # PostgreSQL ingest vs a bare COPY, the fleet p99 query (bench_pg.py)
)
# What a quiet host pays, for comparison (README "Idle cost"): node_exporter and Netdata.
IDLE_PEERS = "node_exporter ~0.8% of a core, ~20 MB; Netdata 1-5%, 100-200 MB"


class Bench:
    def __init__(self, quick: bool, workdir: Path, echo: Callable[[str], None]) -> None:
        self.quick = quick
        self.dir = workdir
        self.echo = echo
        self.results: dict[str, float | None] = {}
        self.notes: dict[str, str] = {}

    def put(self, name: str, value: float | None, note: str = "") -> None:
        self.results[name] = None if value is None else round(value, 4)
        if note:
            self.notes[name] = note
        self.echo(f"{name}: {self.results[name]}" + (f"   # {note}" if note else ""))

    # -- ingest vs floor ------------------------------------------------------------------
    def _fill(self, r: redis.Redis, n: int) -> None:
        r.flushall()
        events = pool("benchhost", seed=7, size=1000)
        ts = time.time_ns()
        register(r, "benchhost")  # ingesters find a host's streams in the registry
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            name, row = events[i % len(events)]
            pipe.xadd(schema.stream_key("benchhost", name), {FIELD: orjson.dumps({**row,
                                                                         "timestamp": ts})})
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def _floor_ingest(self, url: str, db: Path) -> float:
        """A minimal loop: XREAD, JSON decode, sqlite3 executemany, same entries and tables."""
        r = redis.Redis.from_url(url)
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        sqls = {}
        for et in schema.EVENT_TYPES:
            cols = ("timestamp", "host", *et.column_names)
            con.execute(f"CREATE TABLE {et.name} (id INTEGER PRIMARY KEY, "
                        f"{', '.join(cols)})")
            sqls[et.stream_for("benchhost").encode()] = (
                f"INSERT INTO {et.name} ({', '.join(cols)}) VALUES "
                f"({', '.join('?' * len(cols))})", cols)
        last = {s: b"0" for s in sqls}
        n = 0
        t0 = time.perf_counter()
        while True:
            res = r.xread(last, count=1000)
            if not res:
                break
            for stream, entries in res:
                sql, cols = sqls[stream]
                rows = []
                for _eid, fields in entries:
                    o = orjson.loads(fields[FIELD])
                    rows.append(tuple(o[c] for c in cols))
                last[stream] = entries[-1][0]
                con.executemany(sql, rows)
                n += len(rows)
            con.commit()
        dt = time.perf_counter() - t0
        con.close()
        r.close()
        return n / dt

    def _our_ingest(self, url: str, db: Path, workers: int = 0) -> float:
        """`kernelsight ingest --drain` as configured by default (worker processes included)."""
        s = Settings(redis_url=url, db_path=str(db), host="bench")
        ing = Ingester(s)
        ing.ensure_groups()  # and the schema: neither is part of the timed run
        ing.engine.dispose()
        t0 = time.perf_counter()
        st = run_ingest(s, workers, drain=True)
        dt = time.perf_counter() - t0
        return sum(st.stored.values()) / dt

    def ingest(self, url: str) -> None:
        n = 30_000 if self.quick else 200_000
        rounds = 1 if self.quick else 3
        runs: dict[str, list[float]] = {"floor": [], "ours": [], "two": []}
        r = redis.Redis.from_url(url)
        for i in range(rounds):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for which in order:
                self._fill(r, n)
                db = self.dir / f"ingest-{which}-{i}.db"
                if which == "floor":
                    runs[which].append(self._floor_ingest(url, db))
                else:
                    runs[which].append(self._our_ingest(
                        url, db, defaults.INGEST_WORKERS if which == "ours" else 2))
                for p in self.dir.glob(db.name + "*"):
                    p.unlink()
        o, f, two = (statistics.median(runs[k]) for k in ("ours", "floor", "two"))
        self.put("ingest_events_per_s", o, f"{n:,} realistic events of all types, default "
                 f"--workers {defaults.INGEST_WORKERS}, median of {rounds}")
        self.put("ingest_floor_events_per_s", f, "XREAD + orjson + sqlite3.executemany")
        self.put("ingest_ratio", o / f)
        self.put("ingest_two_workers_events_per_s", two, "--workers 2, including forking "
                 "the workers (which dominates a quick run)")
        self.put("ingest_two_workers_ratio", two / f)

    def _old_rows(self, db: Path, n: int) -> None:
        """``n`` realistic rows of every type from three hours ago (10 minutes of them),
        written straight into a new database: what retention has to delete."""
        from kernelsight.db import open_db

        open_db(db).dispose()
        con = sqlite3.connect(db)
        events = pool("benchhost", seed=9, size=1000)
        t0 = time.time_ns() - 3 * 3600 * 10**9
        by: dict[str, list[tuple]] = {}
        for i in range(n):
            name, row = events[i % len(events)]
            et = schema.BY_NAME[name]
            by.setdefault(name, []).append((i + 1, t0 + i * (600 * 10**9 // n), row["host"],
                                            *(row[c] for c in et.column_names)))
        for name, rows in by.items():
            et = schema.BY_NAME[name]
            cols = ("stream_id", "timestamp", "host", *et.column_names)
            con.executemany(f"INSERT INTO {name} ({', '.join(cols)}) VALUES "
                            f"({', '.join('?' * len(cols))})", rows)
        con.commit()
        con.close()
        # Rolled up before the timed run, as they would have been when they were new: in
        # steady state a pass rolls up one new minute and deleting is the thread's work.
        from kernelsight.ingest.writer import WriteLock
        from kernelsight.maintenance import Maintenance, RetentionPolicy

        mt = Maintenance(db, RetentionPolicy(7 * 86400.0), lambda: WriteLock(str(db)), "bench")
        mt.rollup()
        mt.stop()
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()

    def pruning(self, url: str) -> None:
        """Ingest into a database holding as many rows past retention as it ingests, with
        --retention 1h (the maintenance thread deletes them meanwhile: steady state, one row
        out per row in) against the default 7d (no deletes), same database, same entries.
        The maintenance thread runs in both (the old minutes' rollups are written in both)."""
        n = 30_000 if self.quick else 200_000
        rounds = 1 if self.quick else 3
        runs: dict[str, list[float]] = {"keep": [], "prune": []}
        deleted: list[int] = []
        r = redis.Redis.from_url(url)
        for i in range(rounds):
            for which in (("keep", "prune") if i % 2 == 0 else ("prune", "keep")):
                db = self.dir / f"prune-{which}-{i}.db"
                self._old_rows(db, n)
                self._fill(r, n)
                s = Settings(redis_url=url, db_path=str(db), host="bench",
                             retention="1h" if which == "prune" else "7d")
                t0 = time.perf_counter()
                st = run_ingest(s, defaults.INGEST_WORKERS, drain=True)
                dt = time.perf_counter() - t0
                runs[which].append(sum(st.stored.values()) / dt)
                if which == "prune":
                    con = sqlite3.connect(db)
                    deleted.append(con.execute(
                        "SELECT COALESCE(SUM(value), 0) FROM pipeline_accounting WHERE "
                        "metric = 'retention_deleted'").fetchone()[0])
                    con.close()
                for p in self.dir.glob(db.name + "*"):
                    p.unlink()
        keep, prune = (statistics.median(runs[k]) for k in ("keep", "prune"))
        self.put("ingest_while_pruning_events_per_s", prune,
                 f"{n:,} events into a database holding {n:,} rows past --retention 1h; "
                 f"deleted during the run: {statistics.median(deleted):,.0f}, median of "
                 f"{rounds}")
        self.put("ingest_while_pruning_ratio", prune / keep,
                 f"against {keep:,.0f}/s with the default 7d (nothing to delete), same run")

    def publish(self, url: str) -> None:
        n = 50_000 if self.quick else 300_000
        redis.Redis.from_url(url).flushall()
        s = Settings(redis_url=url, host="bench", buffer_max=n + 10)
        pub = Publisher(s, "bench")
        events = pool("bench", size=1000)
        t0 = time.perf_counter()
        ts = time.time_ns()
        for _i in range(0, n, 1000):
            batch: dict[str, list[dict]] = {}
            for name, row in events:
                batch.setdefault(name, []).append({**row, "timestamp": ts})
            for name, rows in batch.items():
                pub.publish(name, rows)
            pub.flush()
        pub.flush(final=True)
        dt = time.perf_counter() - t0
        pub.close()
        self.put("publish_events_per_s", n / dt, "Publisher.publish + flush, one process")

    # -- tracer overhead ------------------------------------------------------------------
    def _time(self, argv: list[str]) -> float:
        """CPU seconds (user + system) the workload used: BPF programs run in the context of
        the task that hits the tracepoint, so their cost lands here, while this process's
        own collector thread does not. Far less noisy than wall time on a shared VM."""
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, argv)
        return ru.ru_utime + ru.ru_stime

    def overhead(self, name: str, tracer: str, workload: list[str], empty_c: str,
                 url: str) -> None:
        """(t_ours - t_bare) / (t_empty - t_bare) over interleaved rounds.

        Each t is the minimum over the rounds: interference from other work on the machine
        only ever adds CPU time, so the minimum is the best estimate of each configuration's
        own cost, and far steadier than the median here (the medians' ratio is in the note)."""
        if os.geteuid() != 0:
            self.put(name, None, "needs root")
            return
        from bcc import BPF

        from kernelsight import bpfsupport, collectors

        bpfsupport.ensure_tracefs()
        bpfsupport.ensure_headers()
        rounds = 5 if self.quick else 21
        bare, empty, ours = [], [], []
        self._time(workload)  # warm caches
        for _ in range(rounds):
            bare.append(self._time(workload))
            b = BPF(text=empty_c)
            attach_empty(b, tracer)
            empty.append(self._time(workload))
            b.cleanup()
            with running_tracer(collectors.get(tracer), url):
                ours.append(self._time(workload))

        def ratio(f: Callable) -> float | None:
            t0, t1, t2 = f(bare), f(empty), f(ours)
            return (t2 - t0) / (t1 - t0) if t1 > t0 else None

        r_min, r_med = ratio(min), ratio(statistics.median)
        what = " ".join(workload[:3]) if workload[0] != sys.executable else "python workload"
        self.put(name, r_min, ("" if r_min is not None else "floor within noise: ") +
                 f"workload CPU s, min of {rounds}: bare {min(bare):.3f}, empty programs "
                 f"{min(empty):.3f}, ours {min(ours):.3f}; ratio of medians "
                 f"{'n/a' if r_med is None else f'{r_med:.2f}'} ({what})")

    # -- CPU of the scraper and of the stack under stress ---------------------------------
    def scraper_cpu(self, url: str) -> None:
        """Steady state only: measured from the first scrape after the collector said
        "started" (a fixed 3 s after the spawn used to include part of its start-up on a
        loaded host: 0.53 one run, 1.13 another)."""
        from kernelsight.runner import wait_states

        secs = 10 if self.quick else 60
        env = {**os.environ, "KS_REDIS_URL": url}
        redis.Redis.from_url(url).delete("kernelsight:status:scraper")
        p = subprocess.Popen([sys.executable, "-m", "kernelsight", "collect"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            st = wait_states(url, ["scraper"], {"started", "failed"}, 120)
            if st["scraper"]["state"] != "started":
                raise RuntimeError(f"scraper did not start: {st['scraper']}")
            time.sleep(1.5)  # its first scrape and first confirmation are done
            proc = psutil.Process(p.pid)
            c0 = sum(proc.cpu_times()[:2])
            time.sleep(secs)
            c1 = sum(proc.cpu_times()[:2])
        finally:
            p.terminate()
            p.wait(10)
        self.put("scraper_cpu_percent", 100 * (c1 - c0) / secs,
                 f"1 s interval, {secs} s steady state, % of one core (TCP states through "
                 "netlink sock_diag, not /proc/net/tcp; the rest is Python run once a "
                 "second, which costs more when the host is busy or the VM slow)")

    def stack_cpu(self, url: str) -> None:
        if os.geteuid() != 0:
            self.put("stack_cpu_percent_under_stress", None, "needs root")
            return
        from kernelsight import collectors
        from kernelsight.runner import Stack
        from kernelsight.stress import run_stress

        secs = 10 if self.quick else 30
        redis.Redis.from_url(url).flushall()
        s = Settings(redis_url=url, db_path=str(self.dir / "stack.db"), host="bench")
        stack = Stack(s, self.dir / "logs")
        try:
            stack.start_redis()
            stack.start_ingest()
            stack.start_collectors(list(collectors.ALL))
            assert stack.ingest
            # Each process once: hosted collectors share one (collectors/host.py).
            pids = {p.popen.pid for p in stack.procs.values()}
            procs = [psutil.Process(pid) for pid in sorted(pids)]
            procs.append(psutil.Process(stack.ingest.popen.pid))
            procs.append(_redis_proc(url))
            c0 = [sum(p.cpu_times()[:2]) for p in procs]
            t0 = time.perf_counter()
            run_stress(secs, workdir=str(self.dir), mem_mib=512, disk_mib=128)
            dt = time.perf_counter() - t0
            each = [sum(p.cpu_times()[:2]) - c for p, c in zip(procs, c0, strict=True)]
            parts = "; ".join(f"{_proc_label(p)} {100 * c / dt:.1f}%"
                              for p, c in zip(procs, each, strict=True))
            load = os.getloadavg()[0]
            stack.stop_collectors()
            stack.drain_ingest()
        finally:
            stack.close()
        self.put("stack_cpu_percent_under_stress", 100 * sum(each) / dt,
                 f"redis + ingest + scraper + 4 tracers during {secs} s of stress, "
                 f"% of one core (load average {load:.1f}): {parts}")

    def idle(self) -> None:
        """`kernelsight run --collectors all` (private Redis, default settings) on this host as
        it is: CPU (user + system, every process of the stack, from /proc/PID/stat) and RSS
        summed over the stack, and the database's growth (its pages in use, WAL included),
        over ``secs`` after ``warm`` seconds of collecting. The host is not made idle: what
        else runs here shows up in the tracers' and the ingester's figures (the load
        average is in the note)."""
        if os.geteuid() != 0:
            for f in ("idle_cpu_percent", "idle_rss_mb", "idle_db_bytes_per_hour"):
                self.put(f, None, "needs root")
            return
        warm, secs = (10, 20) if self.quick else (60, 90)
        db = self.dir / "idle.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
        env["KS_METRICS_ADDR"] = "off"
        p = subprocess.Popen([sys.executable, "-m", "kernelsight", "run", "--collectors", "all",
                              "--db", str(db), "--log-dir", str(self.dir / "idlelogs")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        collecting = threading.Event()

        def watch() -> None:
            assert p.stderr
            for line in p.stderr:
                if line.startswith(b"collecting"):
                    collecting.set()

        threading.Thread(target=watch, daemon=True).start()
        try:
            if not collecting.wait(300):
                raise RuntimeError("kernelsight run did not start collecting within 300 s")
            time.sleep(warm)
            procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            c0 = {q.pid: sum(q.cpu_times()[:2]) for q in procs}
            d0, t0 = _db_bytes(db), time.monotonic()
            time.sleep(secs)
            dt = time.monotonic() - t0
            d1 = _db_bytes(db)
            parts = []
            cpu = rss = 0.0
            for q in procs:
                c = sum(q.cpu_times()[:2]) - c0[q.pid]
                m = q.memory_info().rss / 1e6
                cpu += c
                rss += m
                parts.append(f"{_proc_label(q)} {100 * c / dt:.2f}% {m:.0f} MB")
            load = os.getloadavg()
        finally:
            p.terminate()
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        note = (f"all collectors, {secs} s after {warm} s of collecting, load average "
                f"{load[0]:.1f}: " + "; ".join(parts))
        self.put("idle_cpu_percent", 100 * cpu / dt, note + f" (peers: {IDLE_PEERS})")
        self.put("idle_rss_mb", rss, "sum of the stack's RSS (shared pages counted in each)")
        self.put("idle_db_bytes_per_hour", (d1 - d0) / dt * 3600,
                 f"pages in use, {d0:,} -> {d1:,} bytes in {dt:.0f} s")

    def max_lossless(self) -> None:
        from kernelsight.soak import soak

        secs = 5 if self.quick else 60
        rates = [5_000, 20_000] if self.quick else [10_000, 20_000, 40_000, 60_000, 80_000,
                                                     100_000]
        best = 0
        for rate in rates:
            db = self.dir / f"soak-{rate}.db"
            res = soak(rate, secs, str(db), self.dir / "soaklogs", echo=lambda _m: None)
            achieved = res["produced"] / secs
            # Sustained: everything stored, and the ingester kept up (at most 2 s of events
            # still waiting when the load stopped).
            ok = (res["produced"] == res["stored"] and not res["unaccounted"]
                  and achieved >= 0.97 * rate and res["backlog_at_end"] <= 2 * rate)
            self.echo(f"  lossless at {rate:,}/s for {secs} s: {'yes' if ok else 'no'} "
                      f"(produced {res['produced']:,}, stored {res['stored']:,}, "
                      f"backlog when the load stopped {res['backlog_at_end']:,})")
            if not ok:
                break
            best = rate
        self.put("max_lossless_events_per_s", best, f"{secs} s per step, steps {rates}")

    def report_1m(self) -> None:
        db = self.dir / "report-1m.db"
        from kernelsight.db import open_db

        open_db(db).dispose()
        con = sqlite3.connect(db)
        rng = random.Random(3)
        et = schema.BY_NAME["syscall_events"]
        cols = ("stream_id", "timestamp", "host", *et.column_names)
        base = time.time_ns()
        rows = ((i + 1, base + i, "h", 1, 1, 0, 0, 35, "nanosleep", rng.randrange(10**7, 10**9),
                 0, 0, 0, "bench") for i in range(1_000_000))
        con.executemany(f"INSERT INTO syscall_events ({', '.join(cols)}) VALUES "
                        f"({', '.join('?' * len(cols))})", rows)
        con.commit()
        con.close()
        argv = [sys.executable, "-m", "kernelsight", "report", "--db", str(db)]
        times = [_time_ok(argv) for _ in range(3)]
        self.put("report_seconds_1m_rows", statistics.median(times),
                 "whole `kernelsight report` process incl. Python start-up")


def _time_ok(argv: list[str]) -> float:
    """Time a command whose non-zero exit is expected (report exits 1 on a non-SUCCESS db)."""
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def _db_bytes(db: Path) -> int:
    """Bytes of the database's pages in use (WAL frames included: a reader sees them)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pages, free, size = (con.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    finally:
        con.close()
    return (pages - free) * size


def _proc_label(q: psutil.Process) -> str:
    argv = q.cmdline()
    if argv and argv[0].endswith("redis-server"):
        return "redis"
    rest = argv[argv.index("kernelsight") + 1:] if "kernelsight" in argv else argv[-1:]
    return rest[0] if rest else "?"


def _redis_proc(url: str) -> psutil.Process:
    pid = redis.Redis.from_url(url).info("server")["process_id"]
    return psutil.Process(int(pid))


def run(quick: bool, out: Path, only: list[str] | None, echo: Callable[[str], None]) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)  # bench/ is not in a fresh clone
    with tempfile.TemporaryDirectory(prefix="ks-bench-", dir=str(out.parent)) as d, \
            PrivateRedis() as rs:
        b = Bench(quick, Path(d), echo)
        dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1",
              f"count={1_000_000 if quick else 3_000_000}"]
        steps: dict[str, Callable[[], None]] = {
            "ingest": lambda: b.ingest(rs.url),
            "pruning": lambda: b.pruning(rs.url),
            "publish": lambda: b.publish(rs.url),
            "syscalls": lambda: b.overhead("syscall_tracer_overhead_ratio", "syscalls", dd,
                                           EMPTY["syscalls"], rs.url),
            "pagefaults": lambda: b.overhead("pagefault_tracer_overhead_ratio", "pagefaults",
                                             FAULT_WORKLOAD, EMPTY["pagefaults"], rs.url),
            "sched": lambda: b.overhead("sched_tracer_overhead_ratio", "sched",
                                        sched_workload(quick), EMPTY["sched"], rs.url),
            "scraper": lambda: b.scraper_cpu(rs.url),
            "stack": lambda: b.stack_cpu(rs.url),
            "idle": b.idle,
            "lossless": b.max_lossless,
            "report": b.report_1m,
            "postgres": lambda: bench_pg.run(b, rs.url),
            # bcc's syscount/runqlat beside ours (peers.py); minutes of compiling: full runs only
            "peers": lambda: None if quick else peers.run(
                b, dd, sched_workload(quick), lambda cls: running_tracer(cls, rs.url)),
        }
        for name, fn in steps.items():
            if only and name not in only:
                continue
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - one failing figure must not hide the rest
                echo(f"  {name} failed: {e.__class__.__name__}: {e}")
        for f in FIGURES:
            if f not in b.results and not only:
                b.put(f, None, "not measured (see the error above)")
        res = {"quick": quick, "results": b.results, "notes": b.notes,
               "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}}
    out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    return res


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, envvar="QUICK", help="Short runs (for CI).")
@click.option("--out", default="bench/results.json", show_default=True, type=click.Path())
@click.option("--only", default=None, help="Comma list of steps: ingest, pruning, publish, "
              "syscalls, pagefaults, sched, scraper, stack, idle, lossless, report, postgres, "
              "peers.")
def command(quick: bool, out: str, only: str | None) -> None:
    """Measure throughput and overhead against bare floors (root for the tracer figures).

    \b
    Examples:
      sudo make bench
      sudo make bench QUICK=1
      kernelsight bench --only ingest,publish
    """
    res = run(quick, Path(out), only.split(",") if only else None, click.echo)
    click.echo(f"wrote {out}")
    missing = [k for k, v in res["results"].items() if v is None]
    sys.exit(1 if missing else 0)
