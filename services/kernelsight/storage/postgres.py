"""PostgreSQL behind `--db postgresql+psycopg://...`: engines, one-line connection errors, the
schema (from schema.PG, the same definitions as SQLite's) and the event tables' day partitions.

Event tables are partitioned by RANGE on ``timestamp``, one partition per UTC day
(``<table>_pYYYYMMDD``), created by the writer before it inserts rows of a new day (in a
transaction of its own, serialised by an advisory lock), so retention can drop a whole day at
once. Each table also has a DEFAULT partition: a row whose day has no partition (a writer
other than ours) is stored there rather than refused; retention deletes from it by timestamp."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, create_engine, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from kernelsight import faultlatency, schema
from kernelsight.config import check_db_url, redact
from kernelsight.exceptions import DatabaseError

log = logging.getLogger(__name__)

DAY_NS = 86400 * 10**9
CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock keys: schema creation, and partition creation/dropping.
SCHEMA_LOCK = 0x4B53_0001
PARTITION_LOCK = 0x4B53_0002
_PART = re.compile(r"^(?P<table>.+)_p(?P<day>\d{8})$")


def engine(url: str, readonly: bool = False) -> Engine:
    """An engine on ``url`` (checked first). Read-only engines' sessions start with
    ``default_transaction_read_only=on``: any write fails in the server, not by convention."""
    url = check_db_url(url)
    opts = "-c default_transaction_read_only=on" if readonly else ""
    args: dict = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "kernelsight"}
    if opts:
        args["options"] = opts
    return create_engine(url, connect_args=args, pool_pre_ping=True)


def connect_error(url: str, e: BaseException) -> DatabaseError:
    """One line for a failed connection or statement: the server's first line, URL redacted
    (psycopg's messages carry host and port, never the password)."""
    orig = getattr(e, "orig", None) or e
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    first = first.removeprefix("connection failed: ")
    hint = ""
    low = str(orig).lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = "; check the user and password in the URL (or PGPASSWORD / ~/.pgpass)"
    elif "connection refused" in low or "timeout expired" in low or "could not" in low:
        hint = "; is PostgreSQL running and listening there?"
    elif "does not exist" in low and "database" in low:
        hint = "; create it first (createdb) or name an existing database"
    return DatabaseError(f"cannot use PostgreSQL database {redact(url)}: {first}{hint}")


def _version(conn: Connection) -> str | None:
    if not conn.execute(text("SELECT to_regclass('schema_meta') IS NOT NULL")).scalar():
        return None
    return conn.execute(select(schema.PG.schema_meta.c.value).where(
        schema.PG.schema_meta.c.key == "version")).scalar()


def _complete(conn: Connection) -> bool:
    """Every table and every event table's DEFAULT partition exists."""
    names = [*schema.PG.metadata.tables, *(f"{t}_default" for t in schema.PG.tables)]
    return conn.execute(text("SELECT COUNT(*) FROM pg_class c JOIN pg_namespace n ON "
                             "n.oid = c.relnamespace WHERE n.nspname = current_schema() AND "
                             "c.relname = ANY(:n)"), {"n": names}).scalar() == len(names)


def create_schema(eng: Engine, url: str) -> None:
    """Every table (event tables partitioned, each with its DEFAULT partition), the version
    row; a database of another version gets one clear error. Concurrent creators (ingest
    workers starting together) queue on an advisory lock."""
    try:
        with eng.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
            row = _version(conn)
            if row is not None and str(row) != str(schema.SCHEMA_VERSION):
                raise DatabaseError(
                    f"{redact(url)} has KernelSight schema version {row}, this version needs "
                    f"{schema.SCHEMA_VERSION}; use a new database")
            if row is not None and _complete(conn):
                _mark_fault_latency(conn)
                return  # nothing to create: a role with only INSERT/SELECT rights may write
            schema.PG.metadata.create_all(conn)
            for name in schema.PG.tables:
                conn.execute(text(f'CREATE TABLE IF NOT EXISTS "{name}_default" PARTITION OF '
                                  f'"{name}" DEFAULT'))
            if row is None:
                conn.execute(schema.PG.schema_meta.insert().values(
                    key="version", value=str(schema.SCHEMA_VERSION)))
            faultlatency.mark(conn, schema.PG.schema_meta, row is None,
                              schema.PG.tables["page_fault_totals"])
    except DatabaseError:
        raise
    except (DBAPIError, SQLAlchemyError) as e:
        raise connect_error(url, e) from None


def _mark_fault_latency(conn: Connection) -> None:
    """faultlatency.mark for a complete schema, where the writer's role may lack the right to
    insert into schema_meta: then its minor rows read the old way, and the log says so."""
    try:
        with conn.begin_nested():
            faultlatency.mark(conn, schema.PG.schema_meta, False,
                              schema.PG.tables["page_fault_totals"])
    except (DBAPIError, SQLAlchemyError) as e:
        log.warning("cannot record %s in schema_meta (%s): reports divide this writer's "
                    "minor-fault latency by fault_count; run one writer with the schema "
                    "owner's role once", faultlatency.KEY, str(e).splitlines()[0])


def open_db(url: str, create: bool = True) -> Engine:
    eng = engine(url)
    try:
        if create:
            create_schema(eng, url)
        else:
            with eng.connect() as conn:
                _check_version(conn, url)
    except BaseException:
        eng.dispose()
        raise
    return eng


def _check_version(conn: Connection, url: str) -> None:
    row = _version(conn)
    if row is None:
        raise DatabaseError(f"{redact(url)} is not a KernelSight database (no schema_meta "
                            "table); run `kernelsight ingest` or `run` with this --db first")
    if str(row) != str(schema.SCHEMA_VERSION):
        raise DatabaseError(
            f"{redact(url)} has KernelSight schema version {row}, this version needs "
            f"{schema.SCHEMA_VERSION}; report on it with the version that wrote it")
    missing = [t for t in schema.TABLES if not conn.execute(
        text("SELECT to_regclass(:t) IS NOT NULL"), {"t": t}).scalar()]
    if missing:
        raise DatabaseError(f"{redact(url)} lacks the tables {', '.join(missing)}; it is not "
                            "a complete KernelSight database")


def open_readonly(url: str) -> Engine:
    """A read-only engine (``default_transaction_read_only=on``) on an existing KernelSight
    database, or one DatabaseError."""
    eng = engine(url, readonly=True)
    try:
        with eng.connect() as conn:
            _check_version(conn, url)
    except DatabaseError:
        eng.dispose()
        raise
    except (DBAPIError, SQLAlchemyError) as e:
        eng.dispose()
        raise connect_error(url, e) from None
    return eng


# -- day partitions ---------------------------------------------------------------------------
def day_start(ts_ns: int) -> int:
    return ts_ns // DAY_NS * DAY_NS


def partition_name(table: str, day_ns: int) -> str:
    d = dt.datetime.fromtimestamp(day_ns // 10**9, dt.UTC)
    return f"{table}_p{d:%Y%m%d}"


def partition_day(name: str) -> tuple[str, int] | None:
    """(table, day start ns) of a partition's name, None for the default or others."""
    m = _PART.match(name)
    if not m:
        return None
    d = dt.datetime.strptime(m.group("day"), "%Y%m%d").replace(tzinfo=dt.UTC)
    return m.group("table"), int(d.timestamp()) * 10**9


def partitions(conn: Connection, table: str) -> dict[int, str]:
    """Day start ns -> partition name of ``table``'s day partitions (not the default)."""
    rows = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t"), {"t": table})
    out = {}
    for (name,) in rows:
        pd = partition_day(name)
        if pd and pd[0] == table:
            out[pd[1]] = name
    return out


class Partitions:
    """Creates the day partitions a batch needs before it is inserted, remembering those that
    exist so the common case costs nothing."""

    def __init__(self) -> None:
        self.known: dict[str, set[int]] = {}
        self.created = 0
        self.in_default = 0  # days whose rows stay in the DEFAULT partition (see ensure)

    def forget(self, table: str | None = None) -> None:
        """After retention dropped partitions (or an error), ask the server again."""
        if table is None:
            self.known.clear()
        else:
            self.known.pop(table, None)

    def ensure(self, eng: Engine, table: str, timestamps: Iterable[int]) -> None:
        days = {day_start(t) for t in timestamps}
        have = self.known.get(table)
        if have is not None and days <= have:
            return
        with eng.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PARTITION_LOCK})
            have = set(partitions(conn, table))
            for d in sorted(days - have):
                name = partition_name(table, d)
                conn.execute(text("SAVEPOINT part"))
                try:
                    conn.execute(text(f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR '
                                      f"VALUES FROM ({d}) TO ({d + DAY_NS})"))
                    conn.execute(text("RELEASE SAVEPOINT part"))
                    self.created += 1
                except DBAPIError as e:
                    # The DEFAULT partition already holds rows of that day (written by
                    # something other than this writer): they, and this batch's, stay there.
                    conn.execute(text("ROLLBACK TO SAVEPOINT part"))
                    if getattr(e.orig, "sqlstate", "") != "23514":
                        raise
                    self.in_default += 1
                    log.warning("%s: rows of %s are in its DEFAULT partition; that day's rows "
                                "stay there", table, name)
                have.add(d)
        self.known[table] = have
