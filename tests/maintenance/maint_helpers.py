"""Real SQLite files with rows at chosen timestamps, for the maintenance tests."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from kernelsight import schema
from kernelsight.db import open_db
from kernelsight.ingest.writer import WriteLock
from kernelsight.loadgen import make_event
from kernelsight.maintenance import Maintenance, RetentionPolicy

MIN = 60 * 10**9
SEC = 10**9
# A fixed "now" on a minute boundary, so which minute a row falls in is known exactly.
NOW = 1_800_000_000 * SEC // MIN * MIN


def new_db(path: Path) -> Path:
    open_db(path).dispose()
    return path


def insert(path: Path, table: str, rows: list[dict]) -> None:
    """Rows as the ingester stores them (stream ids unique per table)."""
    et = schema.BY_NAME[table]
    cols = ("stream_id", "timestamp", "host", *et.column_names)
    con = sqlite3.connect(path)
    start = (con.execute(f"SELECT MAX(stream_id) FROM {table}").fetchone()[0] or 0) + 1
    con.executemany(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        [(start + i, r["timestamp"], r.get("host", "h1"), *(r[c] for c in et.column_names))
         for i, r in enumerate(rows)])
    con.commit()
    con.close()


def events(table: str, timestamps: list[int], seed: int = 1, host: str = "h1",
           **fixed: object) -> list[dict]:
    rng = random.Random(seed)
    et = schema.BY_NAME[table]
    return [{**make_event(et, rng, host, ts), **fixed} for ts in timestamps]


def produced(path: Path, counts: dict[str, int], instance: str = "loadgen@h1:1") -> None:
    """Accounting as a producer would have published it: produced per table."""
    con = sqlite3.connect(path)
    con.executemany(
        "INSERT INTO pipeline_accounting (timestamp, host, instance, source, event_type, "
        "metric, reason, value) VALUES (?, 'h1', ?, 'loadgen', ?, 'produced', '', ?)",
        [(NOW - 10 * MIN, instance, t, n) for t, n in counts.items()])
    con.commit()
    con.close()


def maintenance(path: Path, clock: int = NOW, chunk: int = 2000,
                **policy: object) -> Maintenance:
    pol = RetentionPolicy(**{"retention_s": 300.0, **policy})  # type: ignore[arg-type]
    return Maintenance(path, pol, lambda: WriteLock(str(path)), "h1", chunk=chunk,
                       clock=lambda: clock)


def rows(path: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()
