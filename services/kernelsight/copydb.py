"""`kernelsight copy-db SRC DST`: copy a KernelSight database into another one, e.g. a SQLite
file into PostgreSQL (the way to move to a central store), or PostgreSQL back into a file.

Idempotent: every row is copied at most once however often the copy is run, so a copy that
was interrupted, or one re-run later to take the rows collected since, copies only what DST
lacks. What identifies a row:

* event tables and their per-minute rollups, dead letters, ``rollup_state``: their unique key
  in the schema (an event's ``(host, stream_id)``, a rollup's host, minute and key columns, a
  dead letter's stream and entry id, a rollup state's table). Rows whose key DST already holds
  are skipped by the database itself (``INSERT ... ON CONFLICT DO NOTHING``). Event rows go in
  the ingester's own way (storage.rows.store_rows: day partitions first on PostgreSQL, then
  COPY into a staging table).
* ``pipeline_accounting`` has no unique key (the report takes MAX per counter, so a repeated
  snapshot never counts twice): a row whose every column equals a row DST holds for the same
  instance is skipped.

``id`` is not copied: DST numbers the rows it stores (several files can go into one store),
so a row's ``id`` differs between SRC and DST while its key does not. ``schema_meta`` is DST's
own (DST is created or checked at this version first), except that SRC's page-fault latency
mark (faultlatency) is carried over. Several sources can be copied into one
DST; hosts never collide because every key includes the host.

PostgreSQL text cannot hold U+0000 (SQLite's can, e.g. a hostile process name): an event row
with one is not stored and is counted as refused (exit status 1: the copy is incomplete);
in the other tables (accounting details, dead letters, rollup keys) the character is written
as the four characters ``\x00``, as the ingester does, and counted as escaped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import click
from sqlalchemy import Connection, Engine, Table, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from kernelsight import faultlatency, schema
from kernelsight.config import db_label
from kernelsight.exceptions import ConfigError, DatabaseError
from kernelsight.sqlcompat import same_database
from kernelsight.storage.rows import store_rows

# Rows read from SRC per batch (one short transaction each on DST, so an interrupted copy
# keeps what it committed and a re-run goes on from there).
BATCH_ROWS = 5_000


@dataclass
class TableCopy:
    """What one table's copy did: rows read from SRC, rows DST did not have (copied)."""

    table: str
    read: int = 0
    copied: int = 0
    refused: int = 0  # event rows PostgreSQL cannot store (U+0000 in a text value)
    escaped: int = 0  # other rows whose U+0000 was written as \x00

    @property
    def skipped(self) -> int:
        """Rows DST already had."""
        return self.read - self.copied - self.refused


def tables() -> list[Table]:
    """Every table that holds data, in a fixed order (schema_meta is DST's own)."""
    return [*schema.TABLES.values(), *schema.ROLLUPS.values(), schema.rollup_state,
            schema.pipeline_accounting, schema.dead_letters]


def insert_ignore(conn: Connection, table: Table, cols: list[str], rows: list[tuple]) -> int:
    """Insert ``rows`` (values of ``cols``), skipping those whose unique key ``table`` already
    holds; the number inserted. The one per-dialect branch of the copy. SQLite: INSERT OR
    IGNORE, executemany (its rowcount is the rows inserted). PostgreSQL: COPY into a temporary
    staging table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING, whose rowcount is
    exact (COPY is several times faster than INSERT for bulk rows)."""
    if not rows:
        return 0
    names = ", ".join(f'"{c}"' for c in cols)
    name = conn.dialect.name
    if name == "sqlite":
        marks = ", ".join("?" for _ in cols)
        return conn.exec_driver_sql(f'INSERT OR IGNORE INTO "{table.name}" ({names}) '
                                    f"VALUES ({marks})", rows).rowcount
    if name != "postgresql":
        raise DatabaseError(f"copy-db supports SQLite and PostgreSQL, not {name}")
    stage = f"ks_copy_{table.name}"
    conn.exec_driver_sql(f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" ON COMMIT DROP AS '
                         f'SELECT {names} FROM "{table.name}" WITH NO DATA')
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cur.copy(f'COPY "{stage}" ({names}) FROM STDIN') as cp:
            for r in rows:
                cp.write_row(r)
    finally:
        cur.close()
    res = conn.exec_driver_sql(f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM '
                               f'"{stage}" ON CONFLICT DO NOTHING')
    conn.exec_driver_sql(f'TRUNCATE "{stage}"')
    return res.rowcount


def _columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


def _pages(src: Connection, table: Table, cols: list[str], batch: int,
           where: object = None) -> Iterator[list[tuple]]:
    """SRC's rows of ``table`` (values of ``cols``) in id order, ``batch`` at a time (keyset
    pagination on id; tables without one, rollup_state, in one go)."""
    has_id = "id" in table.c
    last = None
    while True:
        q = select(*(table.c[c] for c in cols), *([table.c.id] if has_id else []))
        if where is not None:
            q = q.where(where)
        if has_id:
            if last is not None:
                q = q.where(table.c.id > last)
            q = q.order_by(table.c.id).limit(batch)
        rows = src.execute(q).fetchall()
        if not rows:
            return
        if not has_id:
            yield [tuple(r) for r in rows]
            return
        last = rows[-1][-1]
        yield [tuple(r)[:-1] for r in rows]
        if len(rows) < batch:
            return


def _escape_nul(rows: list[tuple]) -> tuple[list[tuple], int]:
    """Rows with U+0000 in a text value written as \\x00 (PostgreSQL text cannot hold it),
    and how many rows changed."""
    out, n = [], 0
    for r in rows:
        if any(isinstance(v, str) and "\0" in v for v in r):
            n += 1
            out.append(tuple(v.replace("\0", "\\x00") if isinstance(v, str) else v
                             for v in r))
        else:
            out.append(r)
    return out, n


def _copy_events(src: Connection, dst: Engine, table: Table, batch: int) -> TableCopy:
    cols = _columns(table)
    tc = TableCopy(table.name)
    for rows in _pages(src, table, cols, batch):
        tc.read += len(rows)
        stored, refused = store_rows(dst, table.name, [dict(zip(cols, r, strict=True))
                                                        for r in rows])
        tc.copied += stored
        tc.refused += len(refused)
    return tc


def _copy_unique(src: Connection, dst: Engine, table: Table, batch: int) -> TableCopy:
    cols = _columns(table)
    tc = TableCopy(table.name)
    pg = dst.dialect.name == "postgresql"
    for page in _pages(src, table, cols, batch):
        tc.read += len(page)
        rows = page
        if pg:
            rows, n = _escape_nul(page)
            tc.escaped += n
        with dst.begin() as d:
            tc.copied += insert_ignore(d, table, cols, rows)
    return tc


def _copy_accounting(src: Connection, dst: Engine, batch: int) -> TableCopy:
    """pipeline_accounting, instance by instance: a row equal in every column to one DST holds
    is skipped."""
    t = schema.pipeline_accounting
    cols = _columns(t)
    tc = TableCopy(t.name)
    instances = [r[0] for r in src.execute(select(t.c.instance).distinct()
                                           .order_by(t.c.instance))]
    pg = dst.dialect.name == "postgresql"
    for inst in instances:
        # Compared as DST holds them (on PostgreSQL with U+0000 written as \\x00), so a row
        # escaped on the first copy is found on the next.
        key = inst.replace("\0", "\\x00") if pg else inst
        with dst.connect() as d:
            have = {tuple(r) for r in d.execute(
                select(*(t.c[c] for c in cols)).where(t.c.instance == key))}
        for page in _pages(src, t, cols, batch, t.c.instance == inst):
            tc.read += len(page)
            rows = page
            if pg:
                rows, n = _escape_nul(page)
                tc.escaped += n
            new = []
            for r in rows:
                if r not in have:
                    have.add(r)
                    new.append(r)
            with dst.begin() as d:
                tc.copied += insert_ignore(d, t, cols, new)
    return tc


def copy(src: Engine, dst: Engine, batch: int = BATCH_ROWS,
         progress: Callable[[TableCopy], None] | None = None) -> list[TableCopy]:
    """Copy every table of SRC into DST (both at this schema version); per table, the rows
    read and copied."""
    out = []
    with src.connect() as s:
        for table in tables():
            if table is schema.pipeline_accounting:
                tc = _copy_accounting(s, dst, batch)
            elif table.name in schema.TABLES:
                tc = _copy_events(s, dst, table, batch)
            else:
                tc = _copy_unique(s, dst, table, batch)
            out.append(tc)
            if progress:
                progress(tc)
        _carry_fault_latency_mark(s, dst)
    return out


def _carry_fault_latency_mark(s: Connection, dst: Engine) -> None:
    """SRC's minor rows before its mark (faultlatency) are old-style wherever they are copied:
    DST's mark moves up to it, but no further than just past SRC's newest minor row (a SRC
    that no writer of this version opened has no mark: all its rows are old-style, and DST's
    own later rows must not be read that way)."""
    meta = schema.schema_meta
    t = schema.TABLES["page_fault_totals"]
    newest = s.execute(select(func.max(t.c.timestamp)).where(t.c.fault_type == "minor")).scalar()
    if newest is None:
        return  # no minor row copied: nothing to read either way
    src_from = min(faultlatency.sampled_from_ns(s, meta), int(newest) + 1)
    with dst.begin() as d:
        if src_from <= faultlatency.sampled_from_ns(d, meta):
            return
        d.execute(delete(meta).where(meta.c.key == faultlatency.KEY))
        d.execute(meta.insert().values(key=faultlatency.KEY, value=str(src_from)))


@click.command("copy-db", context_settings={"help_option_names": ["-h", "--help"],
                                             "max_content_width": 100})
@click.argument("src")
@click.argument("dst")
@click.option("--batch-rows", envvar="KS_COPY_BATCH_ROWS", show_envvar=True,
              type=click.IntRange(100, 1_000_000), default=BATCH_ROWS, show_default=True,
              help="Rows read from SRC per batch (one transaction on DST each).")
def command(src: str, dst: str, batch_rows: int) -> None:
    """Copy the KernelSight database SRC into DST (a SQLite path or a SQLAlchemy URL such as
    postgresql+psycopg://USER:PASSWORD@HOST:5432/DB). DST is created if needed; rows DST
    already has are skipped, so re-running copies only what is new. SRC is opened read-only.

    \b
    Examples (the password from PGPASSWORD or ~/.pgpass: a URL's is visible in ps):
      PGPASSWORD=... kernelsight copy-db data/kernelsight.db postgresql+psycopg://ks@db/kernelsight
      PGPASSWORD=... kernelsight copy-db postgresql+psycopg://ks@db/kernelsight data/copy.db
    """
    from kernelsight.db import open_db, open_readonly

    if same_database(src, dst):
        raise ConfigError(f"SRC and DST are the same database ({db_label(src)}); give another DST")
    t0 = time.monotonic()
    s = open_readonly(src)
    try:
        d = open_db(dst)
    except BaseException:
        s.dispose()
        raise
    click.echo(f"copying {db_label(src)} -> {db_label(dst)}")
    click.echo(f"{'table':<32} {'in source':>12} {'copied':>12} {'already there':>14}")

    def show(tc: TableCopy) -> None:
        extra = (f"  refused (U+0000 in text): {tc.refused:,}" if tc.refused else "") + (
            f"  U+0000 written as \\x00: {tc.escaped:,}" if tc.escaped else "")
        click.echo(f"{tc.table:<32} {tc.read:>12,} {tc.copied:>12,} {tc.skipped:>14,}{extra}")

    try:
        res = copy(s, d, batch_rows, show)
    except SQLAlchemyError as e:
        msg = getattr(e, "orig", None) or e
        raise DatabaseError(f"copy-db stopped ({str(msg).splitlines()[0]}); what was copied "
                            "stays, re-run to go on") from None
    finally:
        s.dispose()
        d.dispose()
    read, copied = sum(t.read for t in res), sum(t.copied for t in res)
    refused = sum(t.refused for t in res)
    click.echo(f"total: {read:,} rows in source, {copied:,} copied, "
               f"{sum(t.skipped for t in res):,} already there ({time.monotonic() - t0:.1f} s)")
    if refused:
        raise DatabaseError(f"{refused:,} event rows were not copied: a text value holds "
                            "U+0000, which PostgreSQL cannot store (listed per table above)")
    sys.exit(0)
