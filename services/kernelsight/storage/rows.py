"""Storing event rows outside the ingester (``kernelsight copy-db``, tools): the same
idempotent path as ingest on either engine."""

from __future__ import annotations

from sqlalchemy import Engine

from kernelsight import schema


def store_rows(eng: Engine, table: str, rows: list[dict]) -> tuple[int, list[dict]]:
    """Insert ``rows`` (dicts with stream_id, timestamp, host and the table's columns; an
    ``id`` is ignored) into event table ``table`` unless already there by its unique key.
    Returns (rows stored, rows NOT stored because a text value holds U+0000, which
    PostgreSQL cannot store: the caller decides, e.g. reports or dead-letters them).
    On PostgreSQL the day partitions are created first and rows go in by COPY."""
    et = schema.BY_NAME[table]
    cols = ("stream_id", "timestamp", "host", *et.column_names)
    tuples = [tuple(r.get(c) for c in cols) for r in rows]
    if not tuples:
        return 0, []
    if eng.dialect.name != "postgresql":
        sql = (f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES "
               f"({', '.join('?' * len(cols))})")
        with eng.begin() as conn:
            return conn.exec_driver_sql(sql, tuples).rowcount, []
    from kernelsight.storage import pgwrite, postgres

    refused = [r for r, t in zip(rows, tuples, strict=True) if pgwrite.has_nul(table, t)]
    if refused:
        tuples = [t for t in tuples if not pgwrite.has_nul(table, t)]
    postgres.Partitions().ensure(eng, table, (t[1] for t in tuples))
    with eng.begin() as conn:
        cur = conn.connection.driver_connection.cursor()
        stored = pgwrite.copy_rows(cur, table, tuples, set()) if tuples else 0
    return stored, refused
