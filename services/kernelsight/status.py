"""`kernelsight status`: is the pipeline healthy right now?

Everything is read from where the pipeline already records it, so `status` works from any
shell, against a running service or a stopped one: heartbeats and collector status keys in
Redis, the ingest group's lag and pending entries per stream, the database file and its WAL,
and retention deletes from pipeline_accounting. The same readers feed /metrics
(kernelsight.metrics), so the two never disagree.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson
import redis
from sqlalchemy import Engine, text

from kernelsight import collectors, defaults, schema
from kernelsight.config import Settings, redact
from kernelsight.exceptions import RedisUnavailable
from kernelsight.runner import STATUS_KEY
from kernelsight.streams import HEALTH_KEY, connect, mget

# A heartbeat older than this is stale (they are written every 1-2 s and expire after
# defaults.HEALTH_TTL_S, so a missing key means older than that).
STALE_S = defaults.HEALTH_STALE_S
# Accounting metric written by the retention helper's maintenance source (HELPERS.md).
RETENTION_METRIC = "retention_deleted"

# The same aggregation as report.ACCOUNTING_SQL (MAX per instance, SUM over instances), kept
# per source too, because /metrics labels counters by collector.
ACCOUNTING_BY_SOURCE_SQL = """
SELECT source, event_type, metric, reason, SUM(v) FROM (
  SELECT instance, source, event_type, metric, reason, MAX(value) AS v FROM pipeline_accounting
  GROUP BY instance, source, event_type, metric, reason)
GROUP BY source, event_type, metric, reason"""


@dataclass
class StreamStat:
    stream: str
    length: int  # XLEN: entries still in Redis (acknowledged ones too, up to --stream-retain)
    lag: int  # never delivered to the ingest group
    pending: int  # delivered, not yet stored and acknowledged

    @property
    def backlog(self) -> int:
        """Entries not yet stored (what ingest.backlog() sums over streams)."""
        return self.lag + self.pending


def heartbeats(r: redis.Redis) -> dict[str, dict[str, Any]]:
    """component -> {"instance", "timestamp" (epoch ns)} for every live heartbeat key."""
    prefix = HEALTH_KEY.format(source="")
    keys = sorted(r.scan_iter(match=prefix.encode() + b"*", count=1000))
    out: dict[str, dict[str, Any]] = {}
    for k, v in zip(keys, mget(r, keys), strict=True):
        if v:
            out[k.decode().removeprefix(prefix)] = orjson.loads(v)
    return out


def collector_states(r: redis.Redis, names: tuple[str, ...] = collectors.ALL
                     ) -> dict[str, dict[str, Any]]:
    raw = mget(r, [STATUS_KEY.format(name=n) for n in names])
    return {n: orjson.loads(v) for n, v in zip(names, raw, strict=True) if v}


def stream_stats(r: redis.Redis, group: str = schema.INGEST_GROUP,
                 host: str | None = None) -> list[StreamStat]:
    """XLEN, lag and pending of the ingest group on every registered host's streams (and
    ``host``'s)."""
    from kernelsight.streams import all_streams

    out = []
    for s in all_streams(r, [host] if host else []):
        try:
            length = r.xlen(s)
            groups = r.xinfo_groups(s)
        except redis.ResponseError:
            continue  # not a stream (yet)
        lag = pending = 0
        for g in groups:
            gname = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if gname != group:
                continue
            pending = int(g["pending"])
            lag = g.get("lag")
            if lag is None:  # Redis cannot tell after some trims/deletes: count by id
                last = g["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else last
                lag = len(r.xrange(s, min="(" + last, count=100_000))
            lag = int(lag)
        if not groups:
            lag = length  # no group yet: nothing was delivered
        out.append(StreamStat(s.decode(), int(length), lag, pending))
    return out


def database_files(db_path: str) -> dict[str, int]:
    """Bytes on disk of the database, its WAL and its shared-memory index (0 if absent)."""
    out = {}
    for part, suffix in (("main", ""), ("wal", "-wal"), ("shm", "-shm")):
        try:
            out[part] = Path(db_path + suffix).stat().st_size
        except OSError:
            out[part] = 0
    return out


def accounting_by_source(eng: Engine) -> list[tuple[str, str, str, str, int]]:
    with eng.connect() as c:
        return [(s, et, m, rsn, int(v or 0)) for s, et, m, rsn, v in
                c.execute(text(ACCOUNTING_BY_SOURCE_SQL))]


def retention_state(eng: Engine, acc: list[tuple[str, str, str, str, int]],
                    now_ns: int) -> dict[str, Any]:
    """What retention has done, from the durable record: rows deleted per table and reason
    (accounting metric ``retention_deleted``, written by the ingester's maintenance thread)
    and the age of the oldest raw row per table (an indexed MIN). The limits themselves are
    the ingester's settings (--retention, --retention-size); /metrics exports them as
    kernelsight_retention_limit_seconds/_bytes."""
    deleted: dict[str, dict[str, int]] = {}
    for _src, et, metric, reason, v in acc:
        if metric == RETENTION_METRIC:
            deleted.setdefault(et, {})[reason or "time"] = v
    oldest: dict[str, float] = {}
    with eng.connect() as c:
        for et in schema.EVENT_TYPES:
            lo = c.execute(text(f'SELECT MIN(timestamp) FROM "{et.name}"')).scalar()
            if lo is not None:
                oldest[et.name] = round((now_ns - int(lo)) / 1e9, 1)
    return {"deleted_rows": deleted, "oldest_row_age_s": oldest}


@dataclass
class Status:
    redis_url: str
    db_path: str
    now_ns: int
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    streams: list[StreamStat] = field(default_factory=list)
    database: dict[str, Any] = field(default_factory=dict)
    retention: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    redis_error: str = ""  # set when Redis could not be read at all

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> bytes:
        d = asdict(self)
        d["streams"] = [{**asdict(s), "backlog": s.backlog} for s in self.streams]
        d["healthy"] = self.healthy
        d["redis_url"] = redact(self.redis_url)
        return orjson.dumps(d, option=orjson.OPT_INDENT_2)


def gather(s: Settings, expect: tuple[str, ...] | None = None,
           max_backlog: int | None = None) -> Status:
    """Read every source; each unreachable or stale part becomes a problem line."""
    st = Status(s.redis_url, s.db_path, time.time_ns())
    _gather_redis(st, s, expect, max_backlog)
    _gather_db(st, s)
    return st


def _gather_redis(st: Status, s: Settings, expect: tuple[str, ...] | None,
                  max_backlog: int | None) -> None:
    if not s.redis_url:
        st.redis_error = "no Redis URL: set --redis-url or KS_REDIS_URL"
        st.problems.append(st.redis_error)
        return
    r = connect(s.redis_url, 2)
    try:
        beats = heartbeats(r)
        states = collector_states(r)
        st.streams = stream_stats(r, host=s.host)
    except redis.RedisError as e:
        st.redis_error = f"cannot reach Redis at {redact(s.redis_url)} ({e})"
        st.problems.append(st.redis_error)
        return
    finally:
        r.close()
    names = sorted(set(beats) | set(states) | set(expect or ()))
    for n in names:
        b, c = beats.get(n), states.get(n, {})
        age = (st.now_ns - b["timestamp"]) / 1e9 if b else None
        state = c.get("state", "running" if b else "unknown")
        ok = b is not None and age is not None and age <= STALE_S and state != "failed"
        st.components[n] = {"state": state, "heartbeat_age_s": None if age is None else
                            round(age, 1), "healthy": ok, "detail": c.get("detail", ""),
                            "pid": c.get("pid")}
        stopped_cleanly = state == "stopped" and n not in (expect or ())
        if not ok and not stopped_cleanly:
            why = (c.get("detail") or "failed") if state == "failed" else (
                "no heartbeat" if b is None else f"last heartbeat {age:.0f}s ago")
            st.problems.append(f"{n}: {why}")
    if max_backlog is not None:
        for x in st.streams:
            if x.backlog > max_backlog:
                st.problems.append(f"{x.stream}: backlog {x.backlog} > {max_backlog}")


def _gather_db(st: Status, s: Settings) -> None:
    files = database_files(s.db_path)
    st.database = {"path": s.db_path, "size_bytes": files["main"], "wal_bytes": files["wal"],
                   "shm_bytes": files["shm"]}
    if not Path(s.db_path).is_file():
        st.problems.append(f"no database at {s.db_path}")
        return
    from kernelsight.db import engine_for

    eng = engine_for(s.db_path, readonly=True)
    try:
        acc = accounting_by_source(eng)
        st.retention = retention_state(eng, acc, st.now_ns)
        st.database["stored_rows_by_ingest"] = sum(
            v for src, _et, m, _r, v in acc if src == "ingest" and m == "stored")
    except Exception as e:  # noqa: BLE001 - any SQLite problem is a status line, not a crash
        st.problems.append(f"database {s.db_path} unreadable: {e.__class__.__name__}: "
                           f"{str(e).splitlines()[0][:200]}")
    finally:
        eng.dispose()


def render(st: Status) -> str:
    lines = []
    for n, c in st.components.items():
        age = "-" if c["heartbeat_age_s"] is None else f"{c['heartbeat_age_s']:.1f}s ago"
        mark = "ok" if c["healthy"] else "UNHEALTHY"
        lines.append(f"{n:<11} {c['state']:<9} heartbeat {age:<10} {mark}"
                     + (f"  ({c['detail']})" if c["detail"] else ""))
    if st.streams:
        lines.append("")
        lines.append(f"{'stream':<44} {'xlen':>9} {'lag':>9} {'pending':>9} {'backlog':>9}")
        for x in st.streams:
            lines.append(f"{x.stream:<44} {x.length:>9} {x.lag:>9} {x.pending:>9} "
                         f"{x.backlog:>9}")
        lines.append(f"{'total':<44} {sum(x.length for x in st.streams):>9} "
                     f"{sum(x.lag for x in st.streams):>9} "
                     f"{sum(x.pending for x in st.streams):>9} "
                     f"{sum(x.backlog for x in st.streams):>9}")
    d = st.database
    lines.append("")
    lines.append(f"database {d['path']}: {_mib(d['size_bytes'])} + WAL {_mib(d['wal_bytes'])}")
    if st.retention:
        dl = st.retention["deleted_rows"]
        lines.append("retention: deleted " + (", ".join(
            f"{t} {v:,} ({r})" for t, rs in sorted(dl.items()) for r, v in rs.items())
            or "nothing yet"))
        ages = st.retention["oldest_row_age_s"]
        if ages:
            lines.append("oldest raw row: " + ", ".join(
                f"{t} {_age(a)}" for t, a in sorted(ages.items())))
    lines.append("")
    lines.append("healthy" if st.healthy else "UNHEALTHY: " + "; ".join(st.problems))
    return "\n".join(lines)


def _age(s: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.1f}{unit}"
    return f"{s:.0f}s"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@click.command("status", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "--db-path", "db_path", envvar="KS_DB_PATH", show_envvar=True,
              default=None, help=f"SQLite file [default: {defaults.DB_PATH}].")
@click.option("--redis-url", envvar="KS_REDIS_URL", show_envvar=True, default=None,
              help="Redis URL, e.g. redis://:PASSWORD@127.0.0.1:6379/0; prefer KS_REDIS_URL "
                   "(a flag's value is visible to every local user in ps).")
@click.option("--expect", default="", envvar="KS_STATUS_EXPECT", show_envvar=True,
              help="Comma list of components that must be running (e.g. ingest,scraper); "
                   "by default every component that has reported is checked.")
@click.option("--max-backlog", type=click.IntRange(min=0), default=None,
              envvar="KS_STATUS_MAX_BACKLOG", show_envvar=True,
              help="Unhealthy when a stream holds more unstored entries than this.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(db_path: str | None, redis_url: str | None, expect: str, max_backlog: int | None,
            as_json: bool) -> None:
    """Show each component's health, stream backlog, database size and retention state.

    Exit code 0 when healthy, 1 when something is unhealthy (stale heartbeat, failed
    collector, backlog above --max-backlog, no database), 3 when Redis is unreachable.

    \b
    Examples:
      kernelsight status --db data/kernelsight.db   # Redis from KS_REDIS_URL
      kernelsight status --redis-url redis://127.0.0.1:6379/0 --db /var/lib/kernelsight/ks.db
      kernelsight status --json --expect ingest,scraper --max-backlog 100000
    """
    s = Settings().with_(db_path=db_path, redis_url=redis_url)
    names = tuple(n.strip() for n in expect.split(",") if n.strip())
    st = gather(s, names or None, max_backlog)
    click.echo(st.as_json() if as_json else render(st))
    if st.redis_error:
        raise RedisUnavailable(st.redis_error)
    sys.exit(0 if st.healthy else 1)
