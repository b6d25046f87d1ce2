"""Executing a retention plan on SQLite: bounded chunks through the timestamp index, the
ingest write lock held per chunk only, free pages handed back with incremental vacuum."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from kernelsight import defaults, schema

ACCOUNTING_KEY = "instance, event_type, metric, reason"


def used_bytes(con: sqlite3.Connection) -> int:
    """Pages in use (page_count - freelist) x page_size: what the data takes, whether or not
    freed pages have been given back to the file system yet. The WAL is not included: the
    checkpointer bounds it on its own (journal_size_limit)."""
    pc = con.execute("PRAGMA page_count").fetchone()[0]
    free = con.execute("PRAGMA freelist_count").fetchone()[0]
    return (pc - free) * con.execute("PRAGMA page_size").fetchone()[0]


def span(con: sqlite3.Connection, table: str) -> tuple[int | None, int | None]:
    """MIN and MAX(timestamp): two index look-ups."""
    lo = con.execute(f"SELECT MIN(timestamp) FROM {table}").fetchone()[0]
    hi = con.execute(f"SELECT MAX(timestamp) FROM {table}").fetchone()[0]
    return lo, hi


class Executor:
    """Deletes in transactions of at most ``chunk`` rows, each under ``lock`` (the ingest
    WriteLock: a second flock on the same file, so ingest waits one chunk at most). After
    each chunk the lock is left free for PRUNE_YIELD x as long as the chunk held it, so a
    waiting ingester always gets its turn. ``on_chunk(con, event_type, n)`` runs inside each chunk's
    transaction (the caller's accounting, so counts and deletes commit together)."""

    def __init__(self, con: sqlite3.Connection, lock: AbstractContextManager,
                 chunk: int = defaults.PRUNE_CHUNK_ROWS,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.con = con
        self.lock = lock
        self.chunk = chunk
        self.stopping = stopping
        self.lock_held_s = 0.0

    @contextlib.contextmanager
    def txn(self):
        """One write transaction under the ingest lock."""
        t0 = time.perf_counter()
        with self.lock:
            self.con.execute("BEGIN IMMEDIATE")
            try:
                yield self.con
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            finally:
                held = time.perf_counter() - t0
                self.lock_held_s += held
        time.sleep(held * defaults.PRUNE_YIELD)

    def delete_before(self, table: str, cutoff_ns: int,
                      on_chunk: Callable[[sqlite3.Connection, int], None] | None = None) -> int:
        """Delete rows of ``table`` with timestamp < cutoff_ns, oldest first; returns how many."""
        sql = (f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE timestamp < ? "
               f"ORDER BY timestamp LIMIT {self.chunk})")
        total = 0
        while not self.stopping():
            with self.txn() as con:
                n = con.execute(sql, (cutoff_ns,)).rowcount
                if n and on_chunk:
                    on_chunk(con, n)
            total += n
            if n < self.chunk:
                break
        return total

    def delete_dead_letters(self, cutoff_ns: int,
                            on_chunk: Callable[[sqlite3.Connection, dict[str, int]], None]
                            ) -> int:
        sql = ("DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE "
               f"timestamp < ? LIMIT {self.chunk}) RETURNING event_type")
        total = 0
        while not self.stopping():
            with self.txn() as con:
                by_type: dict[str, int] = {}
                for (et,) in con.execute(sql, (cutoff_ns,)).fetchall():
                    by_type[et] = by_type.get(et, 0) + 1
                if by_type:
                    on_chunk(con, by_type)
            n = sum(by_type.values())
            total += n
            if n < self.chunk:
                break
        return total

    def delete_accounting(self, cutoff_ns: int) -> int:
        """Accounting snapshots older than the cutoff, except, for every (instance, event_type,
        metric, reason), the row holding its largest value: the counters are cumulative, so
        that row alone gives the report and /metrics the same totals as before. Walks the old
        rows through the timestamp index; each key's keeper is one seek in the key index."""
        find = ("SELECT timestamp, id, instance, event_type, metric, reason FROM "
                "pipeline_accounting WHERE timestamp < ? AND (timestamp > ? OR (timestamp = ? "
                "AND id > ?)) ORDER BY timestamp, id LIMIT ?")
        keeper = ("SELECT id FROM pipeline_accounting WHERE instance = ? AND event_type = ? "
                  "AND metric = ? AND reason = ? ORDER BY value DESC, id DESC LIMIT 1")
        after_ts, after_id, total = -1, -1, 0
        while not self.stopping():
            with self.txn() as con:
                rows = con.execute(find, (cutoff_ns, after_ts, after_ts, after_id,
                                          self.chunk)).fetchall()
                if rows:
                    after_ts, after_id = rows[-1][0], rows[-1][1]
                    keep = {con.execute(keeper, k).fetchone()[0] for k in
                            {r[2:6] for r in rows}}
                    gone = [(r[1],) for r in rows if r[1] not in keep]
                    con.executemany("DELETE FROM pipeline_accounting WHERE id = ?", gone)
                    total += len(gone)
            if len(rows) < self.chunk:
                break
        return total

    def vacuum(self, pages: int = 2048) -> int:
        """Give free pages back (auto_vacuum=INCREMENTAL), ``pages`` per transaction."""
        freed = 0
        while not self.stopping():
            free = self.con.execute("PRAGMA freelist_count").fetchone()[0]
            if not free:
                break
            t0 = time.perf_counter()
            with self.lock:
                # executescript steps the pragma to the end (through execute() it frees one
                # page per call); it commits by itself, hence not self.txn()
                try:
                    self.con.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum("
                                           f"{min(free, pages)}); COMMIT;")
                except sqlite3.Error:
                    if self.con.in_transaction:
                        self.con.execute("ROLLBACK")
                    raise
                held = time.perf_counter() - t0
            self.lock_held_s += held
            time.sleep(held * defaults.PRUNE_YIELD)
            freed += free - self.con.execute("PRAGMA freelist_count").fetchone()[0]
        return freed


def event_tables() -> list[str]:
    return [et.name for et in schema.EVENT_TYPES if et.rollup]
