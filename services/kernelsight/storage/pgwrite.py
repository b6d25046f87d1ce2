"""The ingest writer on PostgreSQL: COPY into a staging table, then one INSERT ... SELECT ...
ON CONFLICT DO NOTHING per event table, accounting and dead letters, all in one transaction.

Stored = the INSERT's rowcount, duplicates = the rest of the batch (a re-delivered entry
conflicts on (host, stream_id, timestamp)), the same figures SQLite's INSERT OR IGNORE gives.

PostgreSQL text cannot hold U+0000 (SQLite can). A row with a NUL in a text column is not
stored: it becomes a dead letter (reason ``nul_in_text``, its values as JSON in the payload)
and is counted like every dead letter, so it is never lost silently. In the text columns of
dead letters and in accounting ``detail`` (free-form descriptions) a NUL is written as the
four characters ``\\x00``, the escape the report prints anyway (safetext.printable).

Errors: a lost connection, a server restarting or shutting down, deadlocks and serialisation
failures, a full disk on the server are retried (the pool is reset, so the next attempt
reconnects; entries stay pending in Redis); anything else (authentication, permissions, a
missing table) ends the ingester with one line."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import orjson
import psycopg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from kernelsight import schema
from kernelsight.config import db_label
from kernelsight.exceptions import DatabaseError
from kernelsight.ingest.validate import now_ns
from kernelsight.ingest.writer import IngestStats, Writer
from kernelsight.storage import postgres

log = logging.getLogger(__name__)

NUL_REASON = "nul_in_text"
RETRY_MAX_S = 2.0
_PG_TYPE = {"int": "int8", "float": "float8", "str": "text"}
# SQLSTATE classes/codes worth retrying: connection exceptions, operator intervention (admin
# shutdown, crash shutdown, cannot connect now), insufficient resources (disk full, out of
# memory, too many connections), serialisation failure and deadlock, lock not available.
_RETRY_CLASSES = ("08", "57", "53")
_RETRY_CODES = ("40001", "40P01", "55P03")


def retryable(e: BaseException) -> bool:
    orig = getattr(e, "orig", e)
    code = getattr(orig, "sqlstate", None)
    if code is None:  # client side: the connection broke or could not be made
        return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
    return code[:2] in _RETRY_CLASSES or code in _RETRY_CODES


def _esc(v: str | None) -> str | None:
    return v.replace("\0", "\\x00") if v and "\0" in v else v


def _stream_of(table: str, host: str | None) -> str:
    """The row's own host's stream (schema.stream_key; the row came from it)."""
    return schema.stream_key(host or "", table)


COLS: dict[str, tuple[str, ...]] = {}  # the columns a row tuple holds, in order
TYPES: dict[str, list[str]] = {}  # their PostgreSQL types, for binary COPY
STR_IDX: dict[str, list[tuple[int, str]]] = {}  # (position, name) of the text columns
STAGE_DDL: dict[str, str] = {}
COPY_SQL: dict[str, str] = {}
INSERT_SQL: dict[str, str] = {}
for _et in schema.EVENT_TYPES:
    _cols = ("stream_id", "timestamp", "host", *_et.column_names)
    _kinds = ["int", "int", "str", *(c.kind for c in _et.columns)]
    _stage = f"ks_stage_{_et.name}"
    _names = ", ".join(f'"{c}"' for c in _cols)
    COLS[_et.name] = _cols
    TYPES[_et.name] = [_PG_TYPE[k] for k in _kinds]
    STR_IDX[_et.name] = [(i, c) for i, (c, k) in enumerate(zip(_cols, _kinds, strict=True))
                         if k == "str"]
    STAGE_DDL[_et.name] = (f"CREATE TEMP TABLE IF NOT EXISTS {_stage} ("
                           + ", ".join(f'"{c}" {t}' for c, t in zip(_cols, TYPES[_et.name],
                                                                    strict=True))
                           + ") ON COMMIT DELETE ROWS")
    COPY_SQL[_et.name] = f"COPY {_stage} ({_names}) FROM STDIN (FORMAT BINARY)"
    INSERT_SQL[_et.name] = (f'INSERT INTO "{_et.name}" ({_names}) SELECT {_names} FROM '
                            f"{_stage} ON CONFLICT DO NOTHING")


def has_nul(table: str, r: tuple) -> str | None:
    """The first text column of row ``r`` holding U+0000, or None."""
    return next((c for i, c in STR_IDX[table] if r[i] and "\0" in r[i]), None)


def copy_rows(cur: psycopg.Cursor, table: str, rs: list[tuple], staged: set) -> int:
    """COPY ``rs`` into this session's staging table (created in this transaction when
    ``staged`` lacks it; the caller adds it once the transaction commits), then move them
    into ``table``; returns the rows stored (the rest were already there)."""
    if table not in staged:
        cur.execute(STAGE_DDL[table])
    with cur.copy(COPY_SQL[table]) as cp:
        cp.set_types(TYPES[table])
        for r in rs:
            cp.write_row(r)
    cur.execute(INSERT_SQL[table])
    return cur.rowcount


class PgWriter(Writer):
    """Writer for a ``postgresql+psycopg://`` --db (made by Writer(...) for such a URL)."""

    def __init__(self, db_path: str, stats: IngestStats) -> None:
        self.db_path = db_path
        self.stats = stats
        self.engine = postgres.open_db(db_path)
        self.write_lock = contextlib.nullcontext()
        self.partitions = postgres.Partitions()
        self.nul_dead = 0
        self.retries = 0
        self._cols, self._types, self._str_idx = COLS, TYPES, STR_IDX
        self._stage_ddl, self._copy, self._insert = STAGE_DDL, COPY_SQL, INSERT_SQL
        self._dead_ins = pg_insert(schema.PG.dead_letters).on_conflict_do_nothing()
        self._acc_ins = pg_insert(schema.PG.pipeline_accounting)

    # -- hostile text ---------------------------------------------------------------------
    def _nul_rows(self, rows: dict[str, list[tuple]], dead: list[dict]) -> dict[str, list]:
        """Rows with a NUL in a text column move to ``dead`` (in place: the caller mirrors
        ``dead`` to the dead-letter stream); returns the rows that remain."""
        out: dict[str, list[tuple]] = {}
        for name, rs in rows.items():
            keep = []
            for r in rs:
                bad = has_nul(name, r)
                if bad is None:
                    keep.append(r)
                    continue
                self.nul_dead += 1
                payload = orjson.dumps(dict(zip(self._cols[name], r, strict=True)))
                dead.append({"timestamp": now_ns(), "stream": _stream_of(name, r[2]),
                             "entry_id": schema.int_to_stream_id(r[0]) if r[0] is not None
                             else "", "event_type": name,
                             "reason": f"{NUL_REASON}: {bad} holds U+0000, which PostgreSQL "
                                       "text cannot store",
                             "payload": payload[:schema.DEADLETTER_PAYLOAD_MAX]})
            if keep:
                out[name] = keep
        return out

    @staticmethod
    def _clean_dead(dead: list[dict]) -> list[dict]:
        return [{**d, "stream": _esc(d["stream"]), "entry_id": _esc(d["entry_id"]),
                 "event_type": _esc(d["event_type"]), "reason": _esc(d["reason"])}
                for d in dead]

    @staticmethod
    def _clean_acc(acc: list[dict]) -> list[dict]:
        return [{**a, "detail": _esc(a.get("detail"))} if a.get("detail") and "\0" in
                a["detail"] else a for a in acc]

    # -- the transaction ------------------------------------------------------------------
    def commit(self, rows: dict[str, list[tuple]], acc: list[dict], dead: list[dict],
               own_accounting: Callable[[dict, list], list[dict]],
               abandon: Callable[[], bool]) -> None:
        """One transaction (see the module's docstring for what is retried)."""
        attempt = 0
        scan = False
        t_first_error = 0.0
        while True:
            try:
                if scan:
                    rows = self._nul_rows(rows, dead)
                for name, rs in rows.items():
                    self.partitions.ensure(self.engine, name, (r[1] for r in rs))
                stored: dict[str, int] = {}
                with self.engine.begin() as conn:
                    staged = conn.connection.info.setdefault("ks_staged", set())
                    cur = conn.connection.driver_connection.cursor()
                    for name, rs in rows.items():
                        stored[name] = copy_rows(cur, name, rs, staged)
                    if dead:
                        conn.execute(self._dead_ins, self._clean_dead(dead))
                    if acc:
                        conn.execute(self._acc_ins, self._clean_acc(acc))
                    own = own_accounting(rows, dead)
                    if own:
                        conn.execute(self._acc_ins, self._clean_acc(own))
                staged.update(rows)  # committed: those staging tables now exist
                for name, rs in rows.items():
                    self.stats.stored[name] += stored[name]
                    self.stats.duplicates[name] += len(rs) - stored[name]
                for d in dead:
                    self.stats.dead[d["reason"].split(":")[0]] += 1
                if attempt:
                    log.warning("PostgreSQL write succeeded again after %d attempts (%.1f s)",
                                attempt, time.monotonic() - t_first_error)
                return
            except (DBAPIError, psycopg.Error) as e:  # raw: the COPY runs on psycopg's cursor
                orig = getattr(e, "orig", e)
                code = getattr(orig, "sqlstate", None)
                if code in ("22021", "22P05") and "0x00" in str(orig) and not scan:
                    scan = True  # a NUL in some text: find the rows, dead-letter them, retry
                    continue
                attempt += 1
                if attempt == 1:
                    t_first_error = time.monotonic()
                first = str(orig).strip().splitlines()[0] if str(orig).strip() else repr(orig)
                if not retryable(e):
                    self.stats.db_errors += 1
                    raise DatabaseError(f"cannot write {db_label(self.db_path)}: {first}"
                                        ) from None
                self.stats.db_errors += 1
                self.retries += 1
                self.partitions.forget()
                self.engine.dispose()  # the pool's connections may be dead: reconnect
                if attempt == 1 or attempt % 30 == 0:
                    log.error("cannot write %s: %s; retrying (entries stay pending in Redis "
                              "and are stored when it can write again)",
                              db_label(self.db_path), first)
                if abandon():
                    raise DatabaseError(f"cannot write {db_label(self.db_path)}: {first}"
                                        ) from None
                time.sleep(min(0.2 * attempt, RETRY_MAX_S))
