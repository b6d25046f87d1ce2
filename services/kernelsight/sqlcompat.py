"""SQL that reads the same on SQLite and PostgreSQL: the few pieces the readers (report, query,
analysis) need that the two spell differently, in one place.

The readers' SQL is otherwise plain and valid on both; what it avoids, and why:

* two-argument MAX/MIN (SQLite's scalar max(a, b); PostgreSQL's GREATEST): :func:`greatest`,
  :func:`least` write a CASE, valid on both (both operands are NOT NULL columns or constants);
* division by a decimal literal (``x / 1e6``): PostgreSQL computes it in NUMERIC (a Python
  Decimal), SQLite in double; :func:`real` casts to DOUBLE PRECISION first, so both divide in
  IEEE double and give the same float;
* SUM of BIGINT is NUMERIC in PostgreSQL: :func:`bigint` casts it back (an int on both);
* derived tables always get a name; every selected column is grouped (SQLite allows bare
  columns, PostgreSQL does not);
* ``sqlite_master``: :func:`table_names` asks SQLAlchemy's inspector;
* SQLite's ``datetime()``: times are formatted by Python (query.utc);
* ORDER BY ... LIMIT: ties are broken by ``stream_id`` (unique per host), so both return the
  same rows.

The one per-dialect branch for readers is :func:`statement_timeout`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


def same_database(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name one database: one file, or one server database and user
    whatever the password and driver name (postgresql:// is postgresql+psycopg://)."""
    if ("://" in a) != ("://" in b):
        return False
    if "://" not in a:
        return Path(a).resolve() == Path(b).resolve()
    try:
        ua, ub = make_url(a), make_url(b)
    except ArgumentError:
        return a == b

    def key(u: URL) -> tuple:
        return (u.get_backend_name(), u.host, u.port or 5432, u.database, u.username,
                sorted(u.query.items()))

    return key(ua) == key(ub)


def greatest(a: str, b: str) -> str:
    """The larger of two NOT NULL SQL expressions."""
    return f"(CASE WHEN {a} >= {b} THEN {a} ELSE {b} END)"


def least(a: str, b: str) -> str:
    """The smaller of two NOT NULL SQL expressions."""
    return f"(CASE WHEN {a} <= {b} THEN {a} ELSE {b} END)"


def real(expr: str) -> str:
    """``expr`` as an IEEE double (REAL affinity in SQLite, float8 in PostgreSQL)."""
    return f"CAST({expr} AS DOUBLE PRECISION)"


def bigint(expr: str) -> str:
    """``expr`` (e.g. a SUM of BIGINT, NUMERIC in PostgreSQL) as a 64-bit integer."""
    return f"CAST({expr} AS BIGINT)"


def table_names(conn: Connection) -> set[str]:
    """The tables of the database (its default schema)."""
    return set(inspect(conn).get_table_names())


def statement_timeout(conn: Connection, seconds: float) -> None:
    """Cancel any statement on ``conn`` running longer than ``seconds`` (PostgreSQL; SQLite
    has no server to enforce it: readers there bound their work by row limits)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET statement_timeout = {int(seconds * 1000)}")
