"""`kernelsight soak` / `make soak`: sustained load through the real pipeline for as long as
you like (private Redis + ingester + loadgen, as processes), with retention and a size cap.

Checks, from the durable record: produced = stored + counted drops + retention deletes for
every type; every process's RSS flat after warm-up (< 5% growth); the database file within
the size cap (+10%); no raw row older than the retention plus one closed minute, the rollup
grace and one maintenance pass; every row that retention removed is in a rollup."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from pathlib import Path

import click
import orjson
import psutil

from kernelsight import defaults, schema
from kernelsight.config import Settings
from kernelsight.exceptions import ConfigError

RAW = [et.name for et in schema.EVENT_TYPES if et.rollup]


def oldest_row_ns(db_path: str) -> int | None:
    """The oldest raw row in any event table (index look-ups, read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro",
                                            uri=True, timeout=5)) as con:
        vals = [con.execute(f"SELECT MIN(timestamp) FROM {t}").fetchone()[0] for t in RAW]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def rollup_gaps(db_path: str, deleted: dict[str, int]) -> dict[str, int]:
    """Per table: rows ever stored (now stored + deleted by retention) minus rows accounted
    for by rollups (minutes before each table's rollup point) and raw rows after it. Zero
    when every row retention removed had been rolled up first."""
    out = {}
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as con:
        done = dict(con.execute("SELECT table_name, done_until_ns FROM rollup_state"))
        for t in RAW:
            cut = done.get(t, 0)
            rolled = con.execute(f"SELECT COALESCE(SUM(samples), 0) FROM {t}_1m WHERE "
                                 "timestamp < ?", (cut,)).fetchone()[0]
            after = con.execute(f"SELECT COUNT(*) FROM {t} WHERE timestamp >= ?",
                                (cut,)).fetchone()[0]
            ever = con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] + deleted.get(t, 0)
            if rolled + after != ever:
                out[t] = ever - rolled - after
    return out


def soak(rate: float, duration: float, db_path: str, log_dir: Path, echo=print,
         retention: str = "", retention_size: str = "", sample_s: float = 5.0,
         names: tuple[str, ...] = ()) -> dict:
    """Private Redis + real ingester + loadgen + the collectors ``names``, as processes; RSS,
    file size, WAL and the oldest row's age sampled every ``sample_s``."""
    from kernelsight.db import open_db, table_counts
    from kernelsight.redis_server import PrivateRedis
    from kernelsight.report import build
    from kernelsight.runner import Stack

    s = Settings().with_(db_path=db_path, retention=retention or None,
                         retention_size=retention_size or None)
    stack = Stack(s, log_dir)
    samples: dict[str, list[int]] = {"ingest": [], "loadgen": [], "redis": [],
                                     **{n: [] for n in names}}
    wal = Path(db_path + "-wal")
    wal_max = db_max = 0
    age_max = 0.0
    try:
        stack.start_redis()
        assert isinstance(stack.redis, PrivateRedis)
        ing = stack.start_ingest()
        failed = {n: p.detail for n, p in stack.start_collectors(list(names)).items()
                  if p.state != "started"}
        if failed:
            raise ConfigError("collectors did not start: " + "; ".join(
                f"{n}: {d}" for n, d in failed.items()) + " (pass --collectors without them)")
        # Its own host name: the report attributes rows stored after a killed collector's
        # last snapshot per (host, table), and loadgen writes the collectors' tables.
        gen = stack._spawn("loadgen", ["loadgen", "--rate", str(rate), "--duration",
                                       str(duration), "--host", f"{s.host}-loadgen"])
        procs = {"ingest": ing.popen.pid, "loadgen": gen.popen.pid,
                 "redis": stack.redis.proc.pid if stack.redis.proc else 0,
                 **{n: p.popen.pid for n, p in stack.procs.items()}}
        t0 = time.monotonic()
        while gen.popen.poll() is None:
            time.sleep(sample_s)
            for name, pid in procs.items():
                with contextlib.suppress(psutil.NoSuchProcess):
                    samples[name].append(psutil.Process(pid).memory_info().rss)
            wal_now = wal.stat().st_size if wal.exists() else 0
            wal_max = max(wal_max, wal_now)
            db_now = os.path.getsize(db_path) if os.path.exists(db_path) else 0
            db_max = max(db_max, db_now)
            age = 0.0
            with contextlib.suppress(sqlite3.Error):
                oldest = oldest_row_ns(db_path)
                age = (time.time_ns() - oldest) / 1e9 if oldest else 0.0
            age_max = max(age_max, age)
            echo(f"  soak {time.monotonic() - t0:5.0f}s: rss MiB " + ", ".join(
                f"{k}={v[-1] / 2**20:.0f}" for k, v in samples.items() if v) +
                f"; db {db_now / 2**20:.0f} MiB, WAL {wal_now / 2**20:.0f} MiB; "
                f"oldest row {age:.0f}s")
        if gen.popen.returncode != 0:
            raise ConfigError(f"loadgen exited with {gen.popen.returncode}; see {log_dir}")
        from kernelsight.ingest import backlog
        from kernelsight.streams import connect

        stack.stop_collectors()  # they flush their last totals and accounting first
        for n, p in stack.procs.items():
            if p.popen.returncode != 0:
                raise ConfigError(f"collector {n} exited with {p.popen.returncode}; "
                                  f"see {p.log_path}")
        behind = backlog(connect(stack.settings.redis_url))  # not yet stored when load ends
        rc = stack.drain_ingest(timeout=600)
        eng = open_db(db_path, create=False)
        counts = table_counts(eng)
        rep = build(eng, db_path, duration, ["loadgen", *names])
        eng.dispose()
    finally:
        stack.close()
    deleted = {t: sum(v.values()) for t, v in rep.retention.items()}
    out = {"rate": rate, "duration_s": duration, "collectors": list(names),
           "retention": s.retention,
           "retention_size": s.retention_size, "produced": sum(rep.produced.values()),
           "stored": sum(counts.values()),
           "dropped": sum(sum(d.values()) for d in rep.dropped.values()),
           "retention_deleted": sum(deleted.values()), "ingest_exit": rc,
           "backlog_at_end": behind, "wal_max_mib": round(wal_max / 2**20, 1),
           "db_max_mib": round(db_max / 2**20, 1),
           "db_end_mib": round(os.path.getsize(db_path) / 2**20, 1),
           "oldest_row_age_max_s": round(age_max, 1),
           "oldest_row_age_bound_s": round(age_bound(s), 1),
           "unaccounted": {t: rep.balance(t) for t in schema.TABLES if rep.balance(t)},
           "rollup_gaps": rollup_gaps(db_path, deleted),
           "rss_mib": {k: [round(x / 2**20, 1) for x in v] for k, v in samples.items()}}
    out["rss_growth_mib"] = {k: round(_growth(v) / 2**20, 1) for k, v in samples.items()}
    out["rss_growth_pct"] = {k: _growth_pct(v) for k, v in samples.items()}
    return out


def age_bound(s: Settings) -> float:
    """How old a raw row can get: the retention plus one tick of the raw pruner, or, when
    that is shorter, its minute (60 s) plus the rollup grace plus one full pass (rows wait
    for their rollup); and 5 s for the deletes themselves."""
    return max(s.retention_s + defaults.SIZE_CHECK_INTERVAL_S,
               60 + defaults.ROLLUP_GRACE_S + defaults.MAINTENANCE_INTERVAL_S) + 5


def _thirds(v: list[int]) -> tuple[int, int] | None:
    """Medians of the middle third and of the last third of the run.

    Bounded buffers (the publisher's replay window, Redis's retained entries, SQLite's page
    cache) fill during the first third and then plateau; a leak keeps climbing and shows."""
    if len(v) < 6:
        return None
    k = len(v) // 3
    mid, last = sorted(v[k:2 * k]), sorted(v[2 * k:])
    return mid[len(mid) // 2], last[len(last) // 2]


def _growth(v: list[int]) -> int:
    t = _thirds(v)
    return t[1] - t[0] if t else 0


def _growth_pct(v: list[int]) -> float:
    t = _thirds(v)
    return round(100 * (t[1] - t[0]) / t[0], 2) if t and t[0] else 0.0


def verdict(res: dict, size_cap: int | None, max_rss_growth_pct: float,
            max_wal_mib: float) -> list[str]:
    """What failed, one line each (empty: PASS)."""
    bad = []
    if res["produced"] != res["stored"] + res["dropped"] + res["retention_deleted"] \
            or res["unaccounted"]:
        bad.append(f"conservation: produced {res['produced']:,} != stored {res['stored']:,} + "
                   f"dropped {res['dropped']:,} + retention {res['retention_deleted']:,} "
                   f"({res['unaccounted']})")
    if res["ingest_exit"] != 0:
        bad.append(f"ingest exited with {res['ingest_exit']}")
    grew = {k: v for k, v in res["rss_growth_pct"].items() if v >= max_rss_growth_pct}
    if grew:
        bad.append(f"RSS grew {grew} % (limit {max_rss_growth_pct} %)")
    if res["wal_max_mib"] > max_wal_mib:
        bad.append(f"WAL reached {res['wal_max_mib']} MiB (limit {max_wal_mib})")
    if size_cap and res["db_max_mib"] > size_cap * 1.1 / 2**20:
        bad.append(f"database file reached {res['db_max_mib']} MiB, above the cap "
                   f"{size_cap / 2**20:.0f} MiB + 10%")
    if res["oldest_row_age_max_s"] > res["oldest_row_age_bound_s"]:
        bad.append(f"a raw row was {res['oldest_row_age_max_s']} s old (bound "
                   f"{res['oldest_row_age_bound_s']} s)")
    if res["rollup_gaps"]:
        bad.append(f"rows removed without a rollup: {res['rollup_gaps']}")
    return bad


@click.command("soak", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rate", type=click.FloatRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--duration", type=click.FloatRange(10, 30 * 86400), default=600,
              show_default=True, help="Seconds of load.")
@click.option("--db", "db_path", default="data/soak.db", show_default=True)
@click.option("--retention", default="10m", show_default=True,
              help="The ingester's --retention (raw rows older than this are deleted).")
@click.option("--retention-size", default="", help="The ingester's --retention-size, e.g. "
              "256MiB [default: none].")
@click.option("--max-rss-growth-pct", type=float, default=5.0, show_default=True,
              help="Fail if any process's RSS grows more than this after warm-up.")
@click.option("--max-wal-mib", type=float, default=256.0, show_default=True,
              help="Fail if the SQLite WAL grows past this (checkpoints not keeping up).")
@click.option("--collectors", "collector_list", default="", envvar="KS_COLLECTORS",
              show_envvar=True, help="Collectors to run alongside loadgen: a comma list or "
              "'all' (tracers need root) [default: none].")
@click.option("--sample-s", type=click.FloatRange(0.5, 600), default=5.0, show_default=True,
              help="Seconds between samples of RSS, file size and oldest row.")
def soak_command(rate: float, duration: float, db_path: str, retention: str,
                 retention_size: str, max_rss_growth_pct: float, max_wal_mib: float,
                 sample_s: float, collector_list: str) -> None:
    """Sustained load through the real pipeline, with retention; checks conservation, flat
    memory, the size cap, the oldest row's age and the rollups.

    \b
    Examples:
      kernelsight soak --rate 10000 --duration 600
      kernelsight soak --duration 7200 --retention 10m --retention-size 256MiB \\
          --collectors all                                       # make soak
    """
    cap = Settings().with_(retention=retention,
                           retention_size=retention_size or None).retention_size_bytes
    # Its conservation check counts the whole file, so it needs a new one; it never deletes a
    # database (no process start does).
    if any(Path(db_path + suffix).exists() for suffix in ("", "-wal", "-shm")):
        raise ConfigError(f"--db {db_path} already exists; the soak needs a new database file: "
                          "pass another --db path (or remove that file yourself)")
    from kernelsight import collectors

    names = tuple(collectors.parse_list(collector_list)) if collector_list else ()
    res = soak(rate, duration, db_path, Path("logs/soak"), echo=click.echo, retention=retention,
               retention_size=retention_size, sample_s=sample_s, names=names)
    click.echo(orjson.dumps({k: v for k, v in res.items() if k != "rss_mib"}).decode())
    bad = verdict(res, cap, max_rss_growth_pct, max_wal_mib)
    click.echo(f"soak: {'FAIL' if bad else 'PASS'}: produced {res['produced']:,}, stored "
               f"{res['stored']:,}, dropped {res['dropped']:,}, retention "
               f"{res['retention_deleted']:,}; rss growth {res['rss_growth_pct']} %; db max "
               f"{res['db_max_mib']} MiB, largest WAL {res['wal_max_mib']} MiB; oldest row "
               f"{res['oldest_row_age_max_s']} s (bound {res['oldest_row_age_bound_s']} s)")
    for line in bad:
        click.echo(f"  FAIL {line}")
    sys.exit(1 if bad else 0)
