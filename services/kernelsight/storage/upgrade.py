"""In-place upgrade of a SQLite file whose event tables predate schema version 5.

SQLite cannot drop a column's UNIQUE, so each event table is rebuilt the way SQLite's
documentation prescribes (create the new form, copy, drop, rename, re-index), all tables in
ONE transaction: a crash or an error leaves the file exactly as it was. Rows and their ids
are copied as they are; nothing is deleted. Idempotent: a table that already has the new key
is skipped, so an interrupted or repeated upgrade just finishes."""

from __future__ import annotations

import logging
import sqlite3
import time

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from kernelsight import schema

log = logging.getLogger(__name__)

_DIALECT = sqlite_dialect.dialect()


def _needs_rebuild(con: sqlite3.Connection, table: str) -> bool:
    row = con.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                      (table,)).fetchone()
    return row is not None and f"uq_{table}_host_stream_id" not in row[0]


def rebuild_event_tables(path: str, busy_timeout_s: float = 30.0) -> dict[str, int]:
    """Rebuild every event table of ``path`` that still has the version-4 key; sets the
    version row 4 -> 5 in the same transaction. Returns rows copied per table rebuilt."""
    con = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        names = {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_meta" not in names:
            return {}
        todo = [t for t in schema.TABLES if t in names and _needs_rebuild(con, t)]
        if not todo:
            return {}
        t0 = time.monotonic()
        copied: dict[str, int] = {}
        con.execute("BEGIN IMMEDIATE")
        try:
            todo = [t for t in todo if _needs_rebuild(con, t)]  # another writer may have won
            for t in todo:
                table = schema.TABLES[t]
                tmp = f"{t}__v5"
                ddl = str(CreateTable(table).compile(dialect=_DIALECT)).strip()
                head = f"CREATE TABLE {t} ("
                assert ddl.startswith(head), ddl[:80]
                con.execute(f'CREATE TABLE "{tmp}" (' + ddl[len(head):])
                cols = ", ".join(f'"{c.name}"' for c in table.columns)
                con.execute(f'INSERT INTO "{tmp}" ({cols}) SELECT {cols} FROM "{t}"')
                copied[t] = con.execute(f'SELECT COUNT(*) FROM "{tmp}"').fetchone()[0]
                old = con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
                if old != copied[t]:
                    raise RuntimeError(f"{t}: copied {copied[t]} of {old} rows")
                con.execute(f'DROP TABLE "{t}"')
                con.execute(f'ALTER TABLE "{tmp}" RENAME TO "{t}"')
                for idx in table.indexes:
                    con.execute(str(CreateIndex(idx).compile(dialect=_DIALECT)))
            con.execute("UPDATE schema_meta SET value = ? WHERE key = 'version' AND value = ?",
                        (str(schema.SCHEMA_VERSION), "4"))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        log.warning("%s: rebuilt %d event tables for schema version %d (unique on host, "
                    "stream_id; %d rows kept) in %.1f s", path, len(copied),
                    schema.SCHEMA_VERSION, sum(copied.values()), time.monotonic() - t0)
        return copied
    finally:
        con.close()
