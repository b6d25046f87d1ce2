"""Storing a validated batch: one transaction, with the retry policy for a locked database,
a full disk or (PostgreSQL) a lost connection; entries stay pending in Redis meanwhile, so
nothing is lost.

SQLite: executemany of INSERT OR IGNORE under the workers' flock. PostgreSQL
(storage/pgwrite.py): COPY into a temporary staging table, then INSERT ... SELECT ... ON
CONFLICT DO NOTHING into the partitioned table; its rowcount is what was stored, the rest
were duplicates, exactly as SQLite's counts."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import insert
from sqlalchemy.exc import OperationalError

from kernelsight import defaults, schema
from kernelsight.config import db_label, is_db_url
from kernelsight.db import open_db
from kernelsight.exceptions import DatabaseError

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    stored: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    dead: Counter = field(default_factory=Counter)
    batches: int = 0
    lock_retries: int = 0
    db_errors: int = 0
    reclaimed: int = 0
    redis_errors: int = 0
    redis_oom: int = 0  # refusals at maxmemory (heartbeat, dead-letter mirror, backoffs)


class WriteLock:
    """Serialises ingest workers' transactions on one database with flock(2).

    SQLite's own busy handler polls (sleeping 1, 2, 5, 10... ms), so a worker waiting for the
    write lock would sleep well past the other's commit; a blocked flock wakes at once. Several
    ingesters (`--workers`, or separate processes) each hold it only around their transaction,
    so one validates and reads while the other writes. Where the lock file cannot be made
    (read-only directory), SQLite's locking alone still keeps the data correct."""

    def __init__(self, db_path: str) -> None:
        self.fd: int | None = None
        with contextlib.suppress(OSError):
            self.fd = os.open(f"{db_path}-ingest.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                              0o644)

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


class Writer:
    """The ingester's database side: its engine, the flock that serialises workers, and the
    prepared INSERTs."""

    def __new__(cls, db_path: str, stats: IngestStats) -> Writer:  # noqa: PYI034
        if cls is Writer and is_db_url(db_path):
            from kernelsight.storage.pgwrite import PgWriter
            return super().__new__(PgWriter)
        return super().__new__(cls)

    def __init__(self, db_path: str, stats: IngestStats) -> None:
        self.db_path = db_path
        self.stats = stats
        # Checkpoints run in their own thread (see Checkpointer), not in this engine's commits.
        self.engine = open_db(db_path, checkpoint_thread=True)
        self.write_lock = WriteLock(db_path)
        # Rows are positional tuples (stream_id, timestamp, host, *columns) handed straight to
        # the driver's executemany: SQLAlchemy's per-row parameter processing cost more than
        # SQLite's insert itself.
        self._tables = {
            et.name: (f"INSERT OR IGNORE INTO {et.name} (stream_id, timestamp, host, "
                      f"{', '.join(et.column_names)}) VALUES "
                      f"({', '.join('?' * (len(et.columns) + 3))})")
            for et in schema.EVENT_TYPES}
        self._dead_ins = insert(schema.dead_letters).prefix_with("OR IGNORE")
        self._acc_ins = insert(schema.pipeline_accounting)

    def commit(self, rows: dict[str, list[tuple]], acc: list[dict], dead: list[dict],
               own_accounting: Callable[[dict, list], list[dict]],
               abandon: Callable[[], bool]) -> None:
        """One transaction; on 'database is locked' or a full disk, wait and retry (the entries
        stay pending in Redis meanwhile, so nothing is lost). ``own_accounting`` gives the
        ingester's own counter rows, written in the same transaction; ``abandon`` says a
        stop-now was requested (a full disk then ends the retries)."""
        attempt = 0
        while True:
            try:
                stored: dict[str, int] = {}
                with self.write_lock, self.engine.begin() as conn:
                    for name, rs in rows.items():
                        res = conn.exec_driver_sql(self._tables[name], rs)
                        stored[name] = res.rowcount
                    if dead:
                        conn.execute(self._dead_ins, dead)
                    if acc:
                        conn.execute(self._acc_ins, acc)
                    own = own_accounting(rows, dead)
                    if own:
                        conn.execute(self._acc_ins, own)
                for name, rs in rows.items():
                    self.stats.stored[name] += stored[name]
                    self.stats.duplicates[name] += len(rs) - stored[name]
                for d in dead:
                    self.stats.dead[d["reason"].split(":")[0]] += 1
                return
            except OperationalError as e:
                msg = str(e.orig)
                attempt += 1
                if "locked" in msg or "busy" in msg:
                    self.stats.lock_retries += 1
                    if attempt > defaults.LOCK_RETRIES:
                        raise DatabaseError(
                            f"database {self.db_path} stayed locked for "
                            f"{attempt * defaults.LOCK_RETRY_S:.0f}s; close the program holding "
                            "a write "
                            "transaction (entries stay pending in Redis)") from None
                    log.warning("database is locked, retry %d", attempt)
                    time.sleep(defaults.LOCK_RETRY_S)
                    continue
                self.stats.db_errors += 1
                if "full" in msg or "disk I/O" in msg:
                    if attempt == 1 or attempt % 30 == 0:
                        log.error("cannot write %s: %s; free space — entries stay pending in "
                                  "Redis and are stored when it can write again",
                                  self.db_path, msg)
                    if abandon():
                        raise DatabaseError(f"cannot write {db_label(self.db_path)}: "
                                            f"{msg}") from None
                    time.sleep(min(0.2 * attempt, 2.0))
                    continue
                raise DatabaseError(f"cannot write {db_label(self.db_path)}: {msg}") from None
