"""Baselines from the host's longer history, kept in the database (``signal_baselines``).

A window's own median is a poor baseline when the window is short or mostly incident (the
median breaks down past half). `kernelsight baselines` computes each signal's robust level
(median, and MAD as a robust standard deviation) over a long span of history at the
collection interval and stores one row per signal; `analyze` then compares a window with it.

Who writes: `analyze` opens the database read-only (`mode=ro`, `query_only`) and must stay a
pure reader, and the ingester's maintenance thread must not depend on the optional analysis
extra (numpy, ruptures). So the writer is its own command, run by hand, by cron or a systemd
timer (e.g. hourly): one short transaction (CREATE TABLE IF NOT EXISTS, DELETE, INSERT) next to
a running ingester, with SQLite's busy timeout. The table is additive: an older database gets
it on the first `baselines` run, and `analyze` on a database without it (or a read-only copy)
works as before, on window baselines.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from kernelsight.analysis import signals
from kernelsight.analysis.baselines import MAD_TO_SD
from kernelsight.config import is_db_url, redact
from kernelsight.exceptions import DatabaseError
from kernelsight.sqlcompat import table_names

TABLE = "signal_baselines"
# Valid on SQLite and PostgreSQL (where REAL is 4 bytes and INTEGER 32 bits: doubles and
# BIGINTs, as SQLite stores them anyway).
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    signal TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    median DOUBLE PRECISION NOT NULL,
    scale DOUBLE PRECISION NOT NULL,
    samples BIGINT NOT NULL,
    since_ns BIGINT NOT NULL,
    until_ns BIGINT NOT NULL,
    step_ns BIGINT NOT NULL,
    updated_ns BIGINT NOT NULL
)"""
COLUMNS = ("signal", "unit", "median", "scale", "samples", "since_ns", "until_ns", "step_ns",
           "updated_ns")
# Fewer observed intervals than this and the history says too little: the window's own
# baseline is used instead (10 minutes at the default 1 s interval).
MIN_SAMPLES = 600


@dataclass(frozen=True)
class Stored:
    """One signal's history: its median and robust standard deviation (MAD x 1.4826)."""

    signal: str
    unit: str
    median: float
    scale: float
    samples: int
    since_ns: int
    until_ns: int
    step_ns: int


def compute(eng: Engine, since_ns: int | None = None,
            until_ns: int | None = None) -> tuple[signals.Window, list[Stored]]:
    """Every signal's median and MAD over [since, until] (default: all the data)."""
    with eng.connect() as conn:
        w = signals.infer_window(conn, since_ns, until_ns)
        series = signals.load(conn, w)
    out = []
    for name, s in sorted(series.items()):
        x = s.values[~np.isnan(s.values)]
        if not len(x):
            continue
        med = float(np.median(x))
        mad = float(np.median(np.abs(x - med))) * MAD_TO_SD
        out.append(Stored(name, s.unit, med, mad, len(x), w.since_ns, w.until_ns, w.step_ns))
    return w, out


def write(db_path: str | Path, rows: list[Stored]) -> None:
    """Replace the stored baselines with ``rows``, in one transaction."""
    if is_db_url(db_path):
        _write_url(str(db_path), rows)
        return
    p = Path(db_path)
    if not p.is_file():
        raise DatabaseError(f"no database at {db_path}; run `kernelsight run` first")
    now = time.time_ns()
    con = sqlite3.connect(str(p), timeout=30.0)
    try:
        with con:
            con.execute(DDL)
            con.execute(f"DELETE FROM {TABLE}")
            con.executemany(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.signal, r.unit, r.median, r.scale, r.samples, r.since_ns, r.until_ns,
                  r.step_ns, now) for r in rows])
    except sqlite3.Error as e:
        raise DatabaseError(f"cannot write baselines into {db_path}: {e}") from None
    finally:
        con.close()


def _write_url(url: str, rows: list[Stored]) -> None:
    """The same on a PostgreSQL database (the table is created there on first use)."""
    from kernelsight.db import open_db

    eng = open_db(url, create=False)
    now = time.time_ns()
    try:
        with eng.begin() as conn:
            conn.execute(text(DDL))
            conn.execute(text(f"DELETE FROM {TABLE}"))
            if rows:
                conn.execute(text(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
                                  f"({', '.join(':' + c for c in COLUMNS)})"),
                             [dict(zip(COLUMNS, (r.signal, r.unit, r.median, r.scale, r.samples,
                                                 r.since_ns, r.until_ns, r.step_ns, now),
                                       strict=True)) for r in rows])
    except SQLAlchemyError as e:
        msg = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise DatabaseError(f"cannot write baselines into {redact(url)}: {msg}") from None
    finally:
        eng.dispose()


def read(conn: Connection, step_ns: int) -> dict[str, Stored]:
    """The stored baselines usable for a window of ``step_ns`` intervals: taken at the same
    interval (within 10 %) over at least MIN_SAMPLES intervals; {} without the table."""
    if TABLE not in table_names(conn):
        return {}
    rows = conn.execute(text(
        f"SELECT signal, unit, median, scale, samples, since_ns, until_ns, step_ns "
        f"FROM {TABLE} WHERE samples >= :m"), {"m": MIN_SAMPLES}).all()
    return {r[0]: Stored(*r) for r in rows if abs(int(r[7]) - step_ns) <= 0.1 * step_ns}
