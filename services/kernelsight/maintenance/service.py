"""The maintenance thread of an ingest process: rollups, then retention, then vacuum.

Scheduled like db.Checkpointer (its own thread and SQLite connection, never inside the ingest
commit), as tsdb runs retention from its background loop next to compaction. A full pass
(rollups of newly closed minutes, time retention, dead letters, old accounting snapshots,
incremental vacuum) runs every ``interval_s``; in between, every ``size_interval_s``, raw rows
past the time retention and the size cap (two PRAGMAs) are checked and enforced. Deleted
rows are counted in pipeline_accounting, in the same transaction as each delete, as
``retention_deleted`` (reason ``time`` or ``size``) per event type: the report's conservation
stays exact."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from kernelsight import defaults, schema
from kernelsight.config import Settings, is_db_url
from kernelsight.maintenance.policy import (
    MINUTE_NS,
    RetentionPolicy,
    TableStats,
    beyond_size,
    beyond_time,
    closed_until,
    floor_minute,
)
from kernelsight.maintenance.prune import Executor, event_tables, span, used_bytes
from kernelsight.maintenance.rollup import ROLLUPS, state, steps

log = logging.getLogger(__name__)

SOURCE = "maintenance"
TIME, SIZE = "time", "size"


class Maintenance:
    def __init__(self, db_path: str | Path, policy: RetentionPolicy,
                 lock_factory: Callable[[], AbstractContextManager], host: str,
                 interval_s: float = defaults.MAINTENANCE_INTERVAL_S,
                 size_interval_s: float = defaults.SIZE_CHECK_INTERVAL_S,
                 chunk: int = defaults.PRUNE_CHUNK_ROWS,
                 clock: Callable[[], int] = time.time_ns, redis_url: str = "") -> None:
        self.path = str(db_path)
        self.policy = policy
        self.host = host
        self.interval_s = interval_s
        self.size_interval_s = size_interval_s
        self._raw_due_ns: int | None = None  # prune_raw has nothing to do before this
        self.clock = clock
        self.instance = f"{SOURCE}@{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self.con = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        self.con.execute("PRAGMA busy_timeout=5000")
        # A lock of its own (a separate open file): flock excludes the ingest worker's.
        self.ex = Executor(self.con, lock_factory(), chunk, self._stop.is_set)
        self.counters: dict[tuple[str, str, str], int] = {}
        self._acc_ids: dict[tuple[str, str, str], int] = {}
        self.errors = 0
        self.passes = 0
        self._size_warned = 0.0
        self.redis_url = redis_url
        self._redis = None
        # Per table: every raw row before this has been deleted (this instance's own deletes;
        # at start the oldest row, whose minute may be part-deleted already).
        self._pruned_until: dict[str, int] = {}
        self.rerolled = 0  # minutes rolled up again because rows arrived after their close

    @classmethod
    def for_settings(cls, s: Settings,
                     lock_factory: Callable[[], AbstractContextManager]) -> Maintenance:
        if is_db_url(s.db_path):
            from kernelsight.maintenance.postgres import PgMaintenance
            return PgMaintenance.for_pg(s)  # type: ignore[return-value]
        return cls(s.db_path, RetentionPolicy.from_settings(s), lock_factory, s.host,
                   redis_url=s.redis_url)

    # -- accounting -----------------------------------------------------------------------
    def _count(self, con: sqlite3.Connection, event_type: str, metric: str, reason: str,
               n: int) -> None:
        """Inside the delete's transaction: this instance's cumulative counter, one row per
        key updated in place (MAX per instance, SUM over instances, as the report reads)."""
        key = (event_type, metric, reason)
        v = self.counters.get(key, 0) + n
        rid = self._acc_ids.get(key)
        ts = self.clock()
        if rid is None:
            rid = con.execute(
                "INSERT INTO pipeline_accounting (timestamp, host, instance, source, "
                "event_type, metric, reason, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ts, self.host, self.instance, SOURCE, event_type, metric, reason, v)).lastrowid
        else:
            con.execute("UPDATE pipeline_accounting SET value = ?, timestamp = ? WHERE id = ?",
                        (v, ts, rid))
        self.counters[key] = v
        self._acc_ids[key] = rid  # type: ignore[assignment]

    def _resync(self) -> None:
        """After a failed transaction: the counters as committed."""
        for key, rid in list(self._acc_ids.items()):
            row = self.con.execute("SELECT value FROM pipeline_accounting WHERE id = ?",
                                   (rid,)).fetchone()
            if row is None:
                del self._acc_ids[key]
                self.counters.pop(key, None)
            else:
                self.counters[key] = row[0]

    @property
    def deleted(self) -> dict[str, int]:
        """Raw rows deleted so far, per event type (time + size)."""
        out: dict[str, int] = {}
        for (et, metric, _r), v in self.counters.items():
            if metric == schema.RETENTION_DELETED:
                out[et] = out.get(et, 0) + v
        return out

    # -- passes ---------------------------------------------------------------------------
    def _stats(self) -> dict[str, TableStats]:
        done = state(self.con)
        out = {}
        for t in event_tables():
            lo, hi = span(self.con, t)
            out[t] = TableStats(lo, hi, done.get(t))
        return out

    def lagging(self) -> set[str] | None:
        """Event tables whose stream still holds entries the ingest group has not stored
        (undelivered or pending), or None when unknown (no Redis URL: tests, bench)."""
        if not self.redis_url:
            return None
        import redis

        from kernelsight.streams import connect, known_hosts

        try:
            if self._redis is None:
                self._redis = connect(self.redis_url)
            out = set()
            hosts = known_hosts(self._redis)
            keys = [(t, schema.stream_key(host, t)) for t in event_tables() for host in hosts]
            pipe = self._redis.pipeline(transaction=False)  # one round trip for every stream
            for _t, key in keys:
                pipe.xinfo_groups(key)
            for (t, _key), groups in zip(keys, pipe.execute(raise_on_error=False),
                                         strict=True):
                if isinstance(groups, redis.ResponseError):
                    continue  # no such stream: nothing waiting
                if isinstance(groups, Exception):
                    raise groups
                for g in groups:
                    name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                    if name == schema.INGEST_GROUP and (g.get("lag") is None
                                                        or g["lag"] > 0 or g["pending"] > 0):
                        out.add(t)
            return out
        except redis.RedisError:
            return set(event_tables())  # cannot tell: every table waits for its own data

    def _close_points(self, now_ns: int, stats: dict[str, TableStats]) -> dict[str, int]:
        """Per table, the end of the last minute that may be rolled up. The newest row stored
        in any table stands for "the ingester has got this far"; a table whose stream still
        has entries waiting (it can lag the others: one XREADGROUP, per-stream backlogs)
        uses its own newest row instead."""
        newest = max((st.newest_ns for st in stats.values() if st.newest_ns is not None),
                     default=None)
        behind = self.lagging()
        out = {}
        for t, st in stats.items():
            mark = st.newest_ns if behind is not None and t in behind else newest
            end = closed_until(now_ns, mark, self.policy.grace_s)
            if end is not None:
                out[t] = end
        return out

    def _roll(self, name: str, lo: int, hi: int) -> int:
        ru = ROLLUPS[name]
        self.con.execute("BEGIN")  # one snapshot for the rollup's queries
        try:
            rows = ru.compute(self.con, lo, hi)
        finally:
            self.con.execute("COMMIT")
        with self.ex.txn() as con:
            con.executemany(ru.upsert_sql, rows)
            con.execute("INSERT INTO rollup_state (table_name, done_until_ns) VALUES (?, ?) "
                        "ON CONFLICT(table_name) DO UPDATE SET done_until_ns = "
                        "MAX(done_until_ns, excluded.done_until_ns)", (name, hi))
        return len(rows)

    def rollup(self, now_ns: int | None = None) -> int:
        """Roll up every closed minute not rolled up yet; returns rollup rows written."""
        now_ns = self.clock() if now_ns is None else now_ns
        stats = self._stats()
        written = 0
        for name, end in self._close_points(now_ns, stats).items():
            st = stats[name]
            start = st.rolled_until_ns
            if start is None:
                if st.oldest_ns is None:
                    continue
                start = floor_minute(st.oldest_ns)
            for lo, hi in steps(start, end):
                if self._stop.is_set():
                    return written
                written += self._roll(name, lo, hi)
        return written

    def _before_delete(self, table: str, cutoff_ns: int, st: TableStats) -> None:
        """Rows can still arrive for a minute after it was rolled up (a producer that held
        them back, a stream that lagged): before the first delete in each minute, compare its
        raw rows with the rollup's samples and roll it up again if they differ."""
        ru = ROLLUPS[table]
        first = self._pruned_until.get(table, st.oldest_ns)
        if first is None:
            return
        m = -(-first // MINUTE_NS) * MINUTE_NS  # minutes starting at or after it are whole
        while m < cutoff_ns and not self._stop.is_set():
            raw = self.con.execute(f"SELECT COUNT(*) FROM {table} WHERE timestamp >= ? AND "
                                   "timestamp < ?", (m, m + MINUTE_NS)).fetchone()[0]
            rolled = self.con.execute(f"SELECT COALESCE(SUM(samples), 0) FROM {ru.table} "
                                      "WHERE timestamp = ?", (m,)).fetchone()[0]
            if raw > rolled:  # (fewer: someone else deleted some; keep the rollup)
                self._roll(table, m, m + MINUTE_NS)
                self.rerolled += 1
                log.info("%s: %d rows of the minute at %d arrived after it was rolled up; "
                         "rolled up again before deleting", table, raw - rolled, m)
            m += MINUTE_NS

    def _delete(self, table: str, cutoff_ns: int, st: TableStats, reason: str) -> int:
        self._before_delete(table, cutoff_ns, st)
        n = self.ex.delete_before(table, cutoff_ns, lambda con, n: self._count(
            con, table, schema.RETENTION_DELETED, reason, n))
        self._pruned_until[table] = max(cutoff_ns, self._pruned_until.get(table, 0))
        return n

    def prune_raw(self, now_ns: int | None = None) -> int:
        """Raw rows past the time retention (and rolled up): run at every tick, so a row
        outlives the retention by about a second, not by a whole pass."""
        now_ns = self.clock() if now_ns is None else now_ns
        if self._raw_due_ns is not None and now_ns < self._raw_due_ns:
            return 0  # nothing can have passed the retention yet: no query at all
        total = 0
        stats = self._stats()
        for t, cut in beyond_time(now_ns, self.policy, stats).items():
            total += self._delete(t, cut, stats[t], TIME)
        # When the oldest row left reaches the retention, the earliest this can have work
        # again (a tick of an idle ingester used to cost a MIN/MAX query per table). Unknown
        # after a delete; a row that arrives older than every stored one (a late replay) is
        # found by the next full pass (run_once), within --maintenance-interval.
        oldest = [st.oldest_ns for st in stats.values() if st.oldest_ns is not None]
        self._raw_due_ns = (None if total or not oldest
                            else min(oldest) + int(self.policy.retention_s * 1e9))
        return total

    def prune_time(self, now_ns: int | None = None) -> int:
        now_ns = self.clock() if now_ns is None else now_ns
        total = self.prune_raw(now_ns)
        keep_rollups = now_ns - int(self.policy.rollup_retention_s * 1e9)
        for ru in ROLLUPS.values():
            self.ex.delete_before(ru.table, keep_rollups)
        cutoff = now_ns - int(self.policy.retention_s * 1e9)

        def dead(con: sqlite3.Connection, by_type: dict[str, int]) -> None:
            for et, n in by_type.items():
                self._count(con, et, schema.DEAD_LETTERS_DELETED, TIME, n)

        self.ex.delete_dead_letters(cutoff, dead)
        self.ex.delete_accounting(cutoff)
        return total

    def enforce_size(self) -> int:
        """Above the cap: delete the oldest raw rows down to low_water x the cap."""
        cap = self.policy.size_bytes
        if cap is None or used_bytes(self.con) <= cap:
            return 0
        total = 0
        while not self._stop.is_set():
            stats = self._stats()
            plan = beyond_size(used_bytes(self.con), self.policy, stats)
            n = sum(self._delete(t, cut, stats[t], SIZE) for t, cut in plan.items())
            total += n
            if not n:
                break
        used = used_bytes(self.con)
        if used > cap and time.monotonic() - self._size_warned > 300:
            self._size_warned = time.monotonic()
            stats = self._stats()
            rolled = [st.rolled_until_ns or st.oldest_ns for st in stats.values()
                      if st.oldest_ns is not None]
            behind = (self.clock() - min(rolled)) / 1e9 if rolled else 0.0  # type: ignore
            log.warning("database %s uses %.1f MiB, above --retention-size %.1f MiB: what is "
                        "left is rollups, accounting and raw rows not rolled up yet (the last "
                        "%.0f s; normally %.0f s, more while the ingester is behind); raise the "
                        "cap or lower --rollup-retention", self.path, used / 2**20, cap / 2**20,
                        behind, 60 + self.policy.grace_s)
        return total

    def run_once(self, now_ns: int | None = None) -> dict[str, int]:
        """One full pass; returns what it did (for tests and logs)."""
        # Raw time retention first: rollups of a busy minute can take seconds on a loaded
        # host, and rows already rolled up must not outlive the retention while they run.
        self._raw_due_ns = None  # a full pass always looks
        early = self.prune_raw(now_ns)
        out = {"rollup_rows": self.rollup(now_ns),
               "deleted_time": early + self.prune_time(now_ns),
               "deleted_size": self.enforce_size()}
        out["vacuumed_pages"] = self.ex.vacuum()
        self.passes += 1
        return out

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> Maintenance:
        self._thread.start()
        return self

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
                    elif self.prune_raw() + self.enforce_size():
                        self.ex.vacuum()
                except Exception as e:  # busy, disk full, a bug: the thread
                    # must go on (retention stopping would fill the disk); retried next pass
                    self.errors += 1
                    if self.errors == 1 or self.errors % 100 == 0:
                        log.warning("maintenance of %s failed (%s: %s); will retry", self.path,
                                    e.__class__.__name__, e,
                                    exc_info=not isinstance(e, sqlite3.Error))
                    with contextlib.suppress(sqlite3.Error):
                        self.con.execute("ROLLBACK")
                    with contextlib.suppress(sqlite3.Error):
                        self._resync()
                tick = self.size_interval_s
                self._stop.wait(max(0.05, min(tick, next_full - time.monotonic())))
        finally:
            self.con.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)
        elif self._thread.ident is None:
            self.con.close()
        if self._redis is not None:
            self._redis.close()
