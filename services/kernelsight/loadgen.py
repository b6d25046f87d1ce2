"""`kernelsight loadgen`: realistic synthetic events of every type through the real pipeline,
at a fixed rate, for soak tests and benchmarks. `kernelsight soak` runs it against a private
Redis and a real ingester and checks conservation and flat memory."""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from pathlib import Path

import click
import orjson
import psutil

from kernelsight import schema
from kernelsight.config import Settings
from kernelsight.exceptions import ConfigError
from kernelsight.streams import Publisher

SYSCALLS = ("read", "write", "futex", "epoll_wait", "fsync", "openat", "nanosleep", "poll")
COMMS = ("postgres", "nginx", "python3", "java", "redis-server", "kworker/0:1", "dd", "find")

# Relative frequencies, roughly what a busy host produces.
MIX = {"syscall_events": 20, "page_fault_events": 30, "page_fault_totals": 5,
       "io_latency_stats": 2, "sched_events": 15, "memory_metrics": 1, "load_metrics": 1,
       "block_stats": 4, "network_interface_stats": 4, "tcp_stats": 1,
       "tcp_retransmit_stats": 1}


def make_event(et: schema.EventType, rng: random.Random, host: str, ts: int) -> dict:
    """One valid event of type ``et`` with plausible values (and the full value ranges where
    they matter: 64-bit addresses, negative return values)."""
    row: dict = {"timestamp": ts, "host": host}
    for c in et.columns:
        n = c.name
        if c.kind == "str":
            if c.choices:
                row[n] = rng.choice(c.choices)
            elif n == "comm":
                row[n] = rng.choice(COMMS)
            elif n == "syscall_name":
                row[n] = rng.choice(SYSCALLS)
            else:
                row[n] = rng.choice(("vda", "nvme0n1", "eth0", "lo", "sda"))
        elif c.kind == "float":
            row[n] = round(rng.lognormvariate(4, 1.5), 3)
        elif n in ("address", "arg0"):
            row[n] = rng.randint(schema.INT64_MIN, schema.INT64_MAX)
        elif n == "ret_value":
            row[n] = rng.choice((0, 1, 4096, -4, -11, -110))
        elif c.hi == 1:
            row[n] = rng.randint(0, 1)
        elif n.endswith("_ns"):
            row[n] = int(rng.lognormvariate(14, 2))
        else:
            row[n] = rng.randint(0, 4_000_000)
    return row


def pool(host: str, seed: int = 1, size: int = 512) -> list[tuple[str, dict]]:
    """A pool of pre-built events in the right mix (timestamps set at publish time)."""
    rng = random.Random(seed)
    names = [n for n, w in MIX.items() for _ in range(w)]
    return [(n, make_event(schema.BY_NAME[n], rng, host, 0))
            for n in (rng.choice(names) for _ in range(size))]


def generate(settings: Settings, rate: float, duration: float,
             stop: threading.Event | None = None) -> Publisher:
    """Publish ``rate`` events/s for ``duration`` s, paced in 10 ms slices."""
    pub = Publisher(settings, "loadgen")
    pub.status(schema.STARTED)
    events = pool(settings.host)
    i = 0
    start = time.monotonic()
    sent = 0
    while not (stop and stop.is_set()):
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= duration:
            break
        due = int(rate * elapsed) - sent
        if due > 0:
            ts = time.time_ns()
            by_type: dict[str, list[dict]] = {}
            for _ in range(due):
                name, row = events[i % len(events)]
                i += 1
                by_type.setdefault(name, []).append({**row, "timestamp": ts})
            for name, rows in by_type.items():
                pub.publish(name, rows)
            sent += due
        pub.flush()
        time.sleep(0.01)
    pub.close()
    return pub


@click.command("loadgen", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rate", type=click.FloatRange(1, 10_000_000), required=True,
              help="Events per second.")
@click.option("--duration", type=click.FloatRange(0.1, 7 * 86400), required=True,
              help="Seconds.")
@click.option("--redis-url", envvar="KS_REDIS_URL", show_envvar=True, required=True)
@click.option("--host", envvar="KS_HOST", default=None, help="Host name in the events.")
def command(rate: float, duration: float, redis_url: str, host: str | None) -> None:
    """Publish realistic events of every type at RATE/s (for soak tests and benchmarks).

    \b
    Examples:
      KS_REDIS_URL=redis://:pw@127.0.0.1:6379/0 kernelsight loadgen --rate 10000 --duration 60
    """
    s = Settings().with_(redis_url=redis_url, host=host or socket.gethostname())
    pub = generate(s, rate, duration)
    produced = sum(v for (et, m, _), v in pub.counters.items() if m == schema.PRODUCED)
    dropped = sum(v for (et, m, _), v in pub.counters.items() if m == schema.DROPPED)
    click.echo(orjson.dumps({"produced": produced, "dropped": dropped,
                             "rate_achieved": produced / duration}).decode())


def soak(rate: float, duration: float, db_path: str, log_dir: Path,
         echo=print) -> dict:
    """Private Redis + real ingester + loadgen, as processes; RSS sampled every 5 s."""
    from kernelsight.db import open_db, table_counts
    from kernelsight.redis_server import PrivateRedis
    from kernelsight.runner import Stack

    stack = Stack(Settings().with_(db_path=db_path), log_dir)
    samples: dict[str, list[int]] = {"ingest": [], "loadgen": [], "redis": []}
    wal = Path(db_path + "-wal")
    wal_max = 0
    try:
        stack.start_redis()
        assert isinstance(stack.redis, PrivateRedis)
        ing = stack.start_ingest()
        gen = stack._spawn("loadgen", ["loadgen", "--rate", str(rate), "--duration",
                                       str(duration)])
        procs = {"ingest": ing.popen.pid, "loadgen": gen.popen.pid,
                 "redis": stack.redis.proc.pid if stack.redis.proc else 0}
        t0 = time.monotonic()
        while gen.popen.poll() is None:
            time.sleep(5)
            for name, pid in procs.items():
                try:
                    samples[name].append(psutil.Process(pid).memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            wal_now = wal.stat().st_size if wal.exists() else 0
            wal_max = max(wal_max, wal_now)
            echo(f"  soak {time.monotonic() - t0:5.0f}s: rss MiB " + ", ".join(
                f"{k}={v[-1] / 2**20:.0f}" for k, v in samples.items() if v) +
                f"; WAL {wal_now / 2**20:.0f} MiB")
        if gen.popen.returncode != 0:
            raise ConfigError(f"loadgen exited with {gen.popen.returncode}; see {log_dir}")
        from kernelsight.ingest import backlog
        from kernelsight.streams import connect

        behind = backlog(connect(stack.settings.redis_url))  # not yet stored when load ends
        rc = stack.drain_ingest(timeout=600)
        eng = open_db(db_path, create=False)
        counts = table_counts(eng)
        from kernelsight.report import build

        rep = build(eng, db_path, duration, ["loadgen"])
        eng.dispose()
    finally:
        stack.close()
    produced = sum(rep.produced.values())
    dropped = sum(sum(d.values()) for d in rep.dropped.values())
    stored = sum(counts.values())
    out = {"rate": rate, "duration_s": duration, "produced": produced, "stored": stored,
           "dropped": dropped, "ingest_exit": rc, "backlog_at_end": behind,
           "wal_max_mib": round(wal_max / 2**20, 1),
           "unaccounted": {t: rep.balance(t) for t in schema.TABLES if rep.balance(t)},
           "rss_mib": {k: [round(x / 2**20, 1) for x in v] for k, v in samples.items()}}
    out["rss_growth_mib"] = {k: _growth(v) for k, v in samples.items()}
    return out


def _growth(v: list[int]) -> float:
    """RSS growth in MiB from the middle third of the run to the last third (medians).

    Bounded buffers (the publisher's replay window, Redis's retained entries) fill during the
    first third and then plateau; a leak keeps climbing and shows here."""
    if len(v) < 6:
        return 0.0
    k = len(v) // 3
    mid, last = sorted(v[k:2 * k]), sorted(v[2 * k:])
    return round((last[len(last) // 2] - mid[len(mid) // 2]) / 2**20, 1)


@click.command("soak", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rate", type=click.FloatRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--duration", type=click.FloatRange(10, 7 * 86400), default=600,
              show_default=True)
@click.option("--db", "db_path", default="data/soak.db", show_default=True)
@click.option("--max-rss-growth-mib", type=float, default=32.0, show_default=True,
              help="Fail if any process grows more than this after warm-up.")
@click.option("--max-wal-mib", type=float, default=256.0, show_default=True,
              help="Fail if the SQLite WAL grows past this (checkpoints not keeping up).")
def soak_command(rate: float, duration: float, db_path: str, max_rss_growth_mib: float,
                 max_wal_mib: float) -> None:
    """Sustained load through the real pipeline; checks produced = stored and flat memory.

    \b
    Examples:
      kernelsight soak --rate 10000 --duration 600      # what `make soak` runs
    """
    p = Path(db_path)
    for suffix in ("", "-wal", "-shm"):
        Path(str(p) + suffix).unlink(missing_ok=True)
    res = soak(rate, duration, db_path, Path("logs/soak"), echo=click.echo)
    click.echo(orjson.dumps({k: v for k, v in res.items() if k != "rss_mib"}).decode())
    ok = (res["produced"] == res["stored"] and not res["unaccounted"] and res["ingest_exit"] == 0
          and all(g <= max_rss_growth_mib for g in res["rss_growth_mib"].values())
          and res["wal_max_mib"] <= max_wal_mib)
    click.echo(f"soak: {'PASS' if ok else 'FAIL'}: produced {res['produced']:,}, stored "
               f"{res['stored']:,}, dropped {res['dropped']:,}, rss growth "
               f"{res['rss_growth_mib']} MiB, largest WAL {res['wal_max_mib']} MiB")
    sys.exit(0 if ok else 1)
