"""Maintenance on PostgreSQL: the same rollups and retention as on SQLite (planning in
policy.py, scheduling in service.Maintenance), executed with whole-day partition drops.

Time retention, per event table, below the cutoff policy.beyond_time gives (never past the
table's rollup progress):
- a day partition that lies wholly before it is dropped: in one transaction the parent is
  locked against writers (SHARE ROW EXCLUSIVE: readers go on), the partition's rows counted,
  the partition dropped and ``retention_deleted`` (reason ``time``) raised by that count, so
  the accounting is exact as on SQLite;
- rows before it in the partition it falls in, and in the DEFAULT partition, are deleted with
  DELETE (a retention shorter than a day, and rows of days without a partition).
Before anything of a minute goes, a minute whose raw rows outnumber its rollup's samples
(rows that arrived after it was rolled up) is rolled up again, as on SQLite.

Size cap (``--retention-size``): the event tables' total size (pg_total_relation_size of
every partition and index) is compared with the cap, and while above it the oldest whole day
partition already rolled up is dropped (counted with reason ``size``). Rows are never deleted
one by one for size: on PostgreSQL a DELETE frees no disk until VACUUM, so the size would not
fall and the loop would empty the tables. The current day is never dropped for size.
No incremental vacuum: autovacuum reuses space freed by DELETEs."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from kernelsight import defaults, schema
from kernelsight.config import Settings, db_label
from kernelsight.maintenance.policy import MINUTE_NS, RetentionPolicy, TableStats
from kernelsight.maintenance.prune import event_tables
from kernelsight.maintenance.rollup import Rollup
from kernelsight.maintenance.service import SIZE, SOURCE, TIME, Maintenance
from kernelsight.storage import postgres

log = logging.getLogger(__name__)


class PgRollup(Rollup):
    """Rollup SQL for PostgreSQL: the counters' last value with DISTINCT ON (SQLite takes
    bare columns of the MAX() row) and named parameters; the percentile queries are
    Rollup's own."""

    def __init__(self, et: schema.EventType) -> None:
        super().__init__(et)
        keys = "".join(", " + k for k in self.keys)
        sel, where = self.sel, self.where
        last = [(n, c.name) for n, st, c in self.cols if st == "last"]
        if last:
            self.last_sql = (
                f"SELECT DISTINCT ON (host, m{keys}) {sel}, timestamp, "
                f"{', '.join(c for _, c in last)} {where} ORDER BY host, m{keys}, "
                "timestamp DESC")
        names = self.names
        conflict = ", ".join(["host", "timestamp", *self.keys])
        upd = ", ".join(f"{n} = excluded.{n}" for n in names[2 + len(self.keys):])
        self.upsert_sql = (f"INSERT INTO {self.table} ({', '.join(names)}) VALUES "
                           f"({', '.join(':' + n for n in names)}) ON CONFLICT ({conflict}) "
                           f"DO UPDATE SET {upd}")

    def compute(self, con: Connection, lo: int, hi: int) -> list[tuple]:  # type: ignore[override]
        return super().compute(_Adapter(con), lo, hi)


class _Adapter:
    """Rollup.compute calls ``con.execute(sql, params)`` and iterates rows: a SQLAlchemy
    Connection with text() does the same on PostgreSQL. Aggregates of bigint come back as
    Decimal; they go back into float/bigint columns as numbers."""

    def __init__(self, con: Connection) -> None:
        self.con = con

    def execute(self, sql: str, params: dict) -> list[tuple]:
        return [tuple(_num(v) for v in r) for r in self.con.execute(text(sql), params)]


def _num(v: object) -> object:
    from decimal import Decimal
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


PG_ROLLUPS: dict[str, PgRollup] = {et.name: PgRollup(et) for et in schema.EVENT_TYPES
                                   if et.rollup}


class PgMaintenance(Maintenance):
    """service.Maintenance's passes (rollup, prune_raw, lagging, close points) over a
    PostgreSQL engine; the SQLite-specific steps are replaced below."""

    def __init__(self, url: str, policy: RetentionPolicy,
                 lock_factory: Callable[[], AbstractContextManager] = nullcontext,
                 host: str = "", interval_s: float = defaults.MAINTENANCE_INTERVAL_S,
                 size_interval_s: float = defaults.SIZE_CHECK_INTERVAL_S,
                 chunk: int = defaults.PRUNE_CHUNK_ROWS,
                 clock: Callable[[], int] = time.time_ns, redis_url: str = "") -> None:
        self.path = url
        self.policy = policy
        self.host = host
        self.interval_s = interval_s
        self.size_interval_s = size_interval_s
        self.clock = clock
        self.instance = f"{SOURCE}@{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self.engine = postgres.open_db(url)
        self.counters: dict[tuple[str, str, str], int] = {}
        self._acc_ids: dict[tuple[str, str, str], int] = {}
        self.errors = 0
        self.passes = 0
        self._size_warned = 0.0
        self.redis_url = redis_url
        self._redis = None
        self._pruned_until: dict[str, int] = {}
        self._raw_due_ns: int | None = None  # Maintenance.prune_raw: nothing due before this
        self.rerolled = 0
        self.dropped_partitions = 0
        self.partitions = postgres.Partitions()

    @classmethod
    def for_pg(cls, s: Settings) -> PgMaintenance:
        return cls(s.db_path, RetentionPolicy.from_settings(s), nullcontext, s.host,
                   redis_url=s.redis_url)

    # -- accounting -----------------------------------------------------------------------
    def _count(self, con: Connection, event_type: str, metric: str,  # type: ignore[override]
               reason: str, n: int) -> None:
        key = (event_type, metric, reason)
        v = self.counters.get(key, 0) + n
        rid = self._acc_ids.get(key)
        ts = self.clock()
        if rid is None:
            rid = con.execute(text(
                "INSERT INTO pipeline_accounting (timestamp, host, instance, source, "
                "event_type, metric, reason, value) VALUES (:ts, :h, :i, :s, :et, :m, :r, :v) "
                "RETURNING id"), {"ts": ts, "h": self.host, "i": self.instance, "s": SOURCE,
                                  "et": event_type, "m": metric, "r": reason, "v": v}
            ).scalar_one()
        else:
            con.execute(text("UPDATE pipeline_accounting SET value = :v, timestamp = :ts "
                             "WHERE id = :id"), {"v": v, "ts": ts, "id": rid})
        self.counters[key] = v
        self._acc_ids[key] = rid

    def _resync(self) -> None:
        with self.engine.connect() as con:
            for key, rid in list(self._acc_ids.items()):
                v = con.execute(text("SELECT value FROM pipeline_accounting WHERE id = :id"),
                                {"id": rid}).scalar()
                if v is None:
                    del self._acc_ids[key]
                    self.counters.pop(key, None)
                else:
                    self.counters[key] = v

    # -- passes ---------------------------------------------------------------------------
    def _stats(self) -> dict[str, TableStats]:
        with self.engine.connect() as con:
            done = dict(con.execute(text("SELECT table_name, done_until_ns FROM rollup_state")
                                    ).all())
            out = {}
            for t in event_tables():
                lo, hi = con.execute(text(f"SELECT MIN(timestamp), MAX(timestamp) FROM {t}")
                                     ).one()
                out[t] = TableStats(lo, hi, done.get(t))
        return out

    def _roll(self, name: str, lo: int, hi: int) -> int:
        ru = PG_ROLLUPS[name]
        with self.engine.begin() as con:
            con.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            rows = ru.compute(con, lo, hi)
            if rows:
                con.execute(text(ru.upsert_sql),
                            [dict(zip(ru.names, r, strict=True)) for r in rows])
            con.execute(text(
                "INSERT INTO rollup_state (table_name, done_until_ns) VALUES (:t, :hi) "
                "ON CONFLICT (table_name) DO UPDATE SET done_until_ns = "
                "GREATEST(rollup_state.done_until_ns, excluded.done_until_ns)"),
                {"t": name, "hi": hi})
        return len(rows)

    def _before_delete(self, table: str, cutoff_ns: int, st: TableStats) -> None:
        """Minutes before the cutoff whose raw rows outnumber their rollup's samples (rows
        that arrived after the minute was rolled up) are rolled up again first: one grouped
        query for the raw side, one for the rollup's."""
        first = self._pruned_until.get(table, st.oldest_ns)
        if first is None:
            return
        lo = -(-first // MINUTE_NS) * MINUTE_NS
        ru = PG_ROLLUPS[table]
        with self.engine.connect() as con:
            raw = dict(con.execute(text(
                f"SELECT timestamp / {MINUTE_NS} * {MINUTE_NS} AS m, COUNT(*) FROM {table} "
                "WHERE timestamp >= :lo AND timestamp < :hi GROUP BY m"),
                {"lo": lo, "hi": cutoff_ns}).all())
            rolled = dict(con.execute(text(
                f"SELECT timestamp, SUM(samples) FROM {ru.table} WHERE timestamp >= :lo AND "
                "timestamp < :hi GROUP BY timestamp"), {"lo": lo, "hi": cutoff_ns}).all())
        for m in sorted(raw):
            if m + MINUTE_NS > cutoff_ns or self._stop.is_set():
                continue
            if raw[m] > (rolled.get(m) or 0):
                self._roll(table, m, m + MINUTE_NS)
                self.rerolled += 1
                log.info("%s: %d rows of the minute at %d arrived after it was rolled up; "
                         "rolled up again before deleting", table,
                         raw[m] - int(rolled.get(m) or 0), m)

    def _drop_partition(self, table: str, name: str, reason: str) -> int:
        """Count and drop one day partition, its count added to the accounting, all in one
        transaction with writers held off (readers go on until the DROP itself)."""
        with self.engine.begin() as con:
            con.execute(text(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE'))
            n = con.execute(text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one()
            con.execute(text(f'DROP TABLE "{name}"'))
            if n:
                self._count(con, table, schema.RETENTION_DELETED, reason, n)
        self.dropped_partitions += 1
        log.info("%s: dropped partition %s (%d rows, %s retention)", table, name, n, reason)
        return n

    def _delete(self, table: str, cutoff_ns: int, st: TableStats, reason: str) -> int:
        try:
            self._before_delete(table, cutoff_ns, st)
        except BaseException:
            self._resync()
            raise
        total = 0
        with self.engine.connect() as con:
            parts = postgres.partitions(con, table)
        for day, name in sorted(parts.items()):
            if day + postgres.DAY_NS <= cutoff_ns and not self._stop.is_set():
                try:
                    total += self._drop_partition(table, name, reason)
                except BaseException:
                    self._resync()
                    raise
        if not self._stop.is_set():  # the rest: a part of a day, or the DEFAULT partition
            try:
                with self.engine.begin() as con:
                    n = con.execute(text(f'DELETE FROM "{table}" WHERE timestamp < :c'),
                                    {"c": cutoff_ns}).rowcount
                    if n:
                        self._count(con, table, schema.RETENTION_DELETED, reason, n)
            except BaseException:
                self._resync()
                raise
            total += n
        self._pruned_until[table] = max(cutoff_ns, self._pruned_until.get(table, 0))
        return total

    def prune_time(self, now_ns: int | None = None) -> int:
        now_ns = self.clock() if now_ns is None else now_ns
        total = self.prune_raw(now_ns)
        keep_rollups = now_ns - int(self.policy.rollup_retention_s * 1e9)
        cutoff = now_ns - int(self.policy.retention_s * 1e9)
        with self.engine.begin() as con:
            for ru in PG_ROLLUPS.values():
                con.execute(text(f"DELETE FROM {ru.table} WHERE timestamp < :c"),
                            {"c": keep_rollups})
        try:
            with self.engine.begin() as con:
                by_type: dict[str, int] = {}
                for (et,) in con.execute(text("DELETE FROM dead_letters WHERE timestamp < :c "
                                              "RETURNING event_type"), {"c": cutoff}):
                    by_type[et] = by_type.get(et, 0) + 1
                for et, n in by_type.items():
                    self._count(con, et, schema.DEAD_LETTERS_DELETED, TIME, n)
        except BaseException:
            self._resync()
            raise
        with self.engine.begin() as con:
            # Old snapshots, except each key's row with the largest value (the counters are
            # cumulative: that row alone keeps every total the report shows).
            con.execute(text(
                "DELETE FROM pipeline_accounting a WHERE a.timestamp < :c AND a.id <> ("
                "SELECT b.id FROM pipeline_accounting b WHERE b.instance = a.instance AND "
                "b.event_type = a.event_type AND b.metric = a.metric AND b.reason = a.reason "
                "ORDER BY b.value DESC, b.id DESC LIMIT 1)"), {"c": cutoff})
        return total

    def used_bytes(self) -> int:
        """Event tables, their rollups, accounting and dead letters, with indexes and TOAST:
        pg_total_relation_size of every table and partition of this schema."""
        with self.engine.connect() as con:
            return int(con.execute(text(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN "
                "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
                "AND c.relkind = 'r'")).scalar_one())

    def enforce_size(self) -> int:
        """Above the cap: drop the oldest whole day partitions that are rolled up, one at a
        time, measuring again after each, never today's."""
        cap = self.policy.size_bytes
        if cap is None or self.used_bytes() <= cap:
            return 0
        total = 0
        today = postgres.day_start(self.clock())
        while not self._stop.is_set() and self.used_bytes() > cap * self.policy.low_water:
            stats = self._stats()
            with self.engine.connect() as con:
                cands = [(day, t, name) for t in event_tables()
                         for day, name in postgres.partitions(con, t).items()
                         if day < today and stats[t].rolled_until_ns is not None
                         and day + postgres.DAY_NS <= stats[t].rolled_until_ns]
            if not cands:
                break
            day, t, name = min(cands)
            self._before_delete(t, day + postgres.DAY_NS, stats[t])
            try:
                total += self._drop_partition(t, name, SIZE)
            except BaseException:
                self._resync()
                raise
        used = self.used_bytes()
        if used > cap and time.monotonic() - self._size_warned > 300:
            self._size_warned = time.monotonic()
            log.warning("database %s uses %.1f MiB, above --retention-size %.1f MiB: on "
                        "PostgreSQL only whole days that are rolled up are dropped for size "
                        "(today's never); raise the cap or shorten --retention",
                        db_label(self.path), used / 2**20, cap / 2**20)
        return total

    def run_once(self, now_ns: int | None = None) -> dict[str, int]:
        # Tomorrow's partitions ahead of time: creating one locks its table, better here
        # than in the first ingest batch after midnight.
        ahead = (self.clock() if now_ns is None else now_ns) + postgres.DAY_NS
        for t in schema.TABLES:
            self.partitions.ensure(self.engine, t, [ahead])
        self._raw_due_ns = None  # a full pass always looks (a late row older than the rest)
        early = self.prune_raw(now_ns)
        out = {"rollup_rows": self.rollup(now_ns),
               "deleted_time": early + self.prune_time(now_ns),
               "deleted_size": self.enforce_size()}
        self.passes += 1
        return out

    def _run(self) -> None:
        next_full = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= next_full:
                        done = self.run_once()
                        next_full = time.monotonic() + self.interval_s
                        if any(done.values()):
                            log.debug("maintenance pass: %s", done)
                    else:
                        self.prune_raw()
                        self.enforce_size()
                except Exception as e:  # the thread must go on; retried next pass
                    self.errors += 1
                    if self.errors == 1 or self.errors % 100 == 0:
                        log.warning("maintenance of %s failed (%s: %s); will retry",
                                    db_label(self.path), e.__class__.__name__,
                                    str(e).splitlines()[0] if str(e) else "",
                                    exc_info=not isinstance(e, DBAPIError | SQLAlchemyError))
                    with contextlib.suppress(Exception):
                        self._resync()
                self._stop.wait(max(0.05, min(self.size_interval_s,
                                              next_full - time.monotonic())))
        finally:
            self.engine.dispose()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)
        elif self._thread.ident is None:
            self.engine.dispose()
        if self._redis is not None:
            self._redis.close()
