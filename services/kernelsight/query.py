"""`kernelsight query --demo`: a first look at a database (the original query_utils demo),
for the whole database or a selected run/window (rows whose timestamp lies in it), and
`kernelsight query --runs`: the runs recorded in it."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import text

from kernelsight import schema, waits
from kernelsight.analysis.own import not_own_sql
from kernelsight.config import db_label
from kernelsight.db import open_readonly
from kernelsight.maintenance import rollup_counts
from kernelsight.runs import list_runs, resolve
from kernelsight.safetext import printable
from kernelsight.window import Selection, Window

_IN = "timestamp BETWEEN :since AND :until"
# SQL valid on SQLite and PostgreSQL: the first column, ``timestamp``, is shown as UTC time by
# Python (SQLite's datetime() does not exist in PostgreSQL), latencies in ms are computed in
# double precision on both (CAST ... AS DOUBLE PRECISION: REAL affinity in SQLite), and ties
# are broken by stream position so both list the same rows in the same order.
# Service-time syscalls only, without KernelSight's own processes (kernelsight.waits, .own).
SLOWEST = f"""SELECT timestamp AS time, comm, pid, syscall_name, 'service' AS class,
 CAST(latency_ns AS DOUBLE PRECISION) / 1000000 AS latency_ms, ret_value
 FROM syscall_events WHERE {_IN} AND {{service}} AND {{not_own}}
 ORDER BY latency_ns DESC, stream_id LIMIT :n"""
MEMORY = f"""SELECT timestamp AS time, mem_total_kb, mem_available_kb, cached_kb, dirty_kb
 FROM memory_metrics WHERE {_IN} ORDER BY timestamp DESC, stream_id DESC LIMIT :n"""
IO = f"""SELECT timestamp AS time, device, read_count, write_count, read_p50_us, read_p95_us,
 write_p50_us, write_p95_us FROM io_latency_stats
 WHERE {_IN} ORDER BY timestamp DESC, stream_id DESC LIMIT :n"""


def utc(ns: int) -> str:
    """Epoch ns as SQLite's datetime(ns / 1e9, 'unixepoch') prints it (whole seconds, UTC)."""
    return datetime.fromtimestamp(int(ns) // 1_000_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _bounds(w: Window) -> dict[str, int]:
    return {"since": w.since_ns if w.since_ns is not None else 0,
            "until": w.until_ns if w.until_ns is not None else schema.INT64_MAX}


def _cell(i: int, v: object) -> Text:
    if i == 0 and isinstance(v, int):
        return Text(utc(v))
    return Text(f"{v:.3f}" if isinstance(v, float) else printable(v))


def _table(console: Console, title: str, conn, sql: str, n: int, w: Window) -> None:
    res = conn.execute(text(sql), {"n": n, **_bounds(w)})
    t = Table(title=title, title_justify="left")
    for c in res.keys():  # noqa: SIM118 - a SQLAlchemy result, not a dict
        t.add_column(c, justify="left")
    rows = res.fetchall()
    for r in rows:
        t.add_row(*(_cell(i, v) for i, v in enumerate(r)))
    if not rows:
        console.print(f"[bold]{title}[/bold]: no rows")
    else:
        console.print(t)


def demo(db_path: str, limit: int = 10, sel: Selection | None = None) -> None:
    eng = open_readonly(db_path)
    console = Console()
    w = resolve(eng, sel)
    b = _bounds(w)
    t = Table(title=Text(f"Rows per table in {printable(db_label(db_path), 4096)} "
                         f"({printable(w.describe(), 400)})"), title_justify="left")
    t.add_column("table")
    t.add_column("rows", justify="right")
    # Where retention has deleted raw rows, the per-minute rollups still count them.
    t.add_column("incl. rolled up", justify="right")
    with eng.connect() as conn:
        # Rollups only for tables retention has deleted from (elsewhere the raw rows are all
        # there, and rollups of the newest, still open minute do not exist yet).
        pruned = {et for et, in conn.execute(text(
            "SELECT DISTINCT event_type FROM pipeline_accounting WHERE metric = :m AND "
            "value > 0"), {"m": schema.RETENTION_DELETED})}
        total = rollup_counts(conn, b["since"], min(b["until"] + 1, schema.INT64_MAX)) \
            if pruned else {}
        for name in schema.TABLES:
            n = conn.execute(text(f'SELECT COUNT(*) FROM "{name}"' + (
                "" if w.whole else f" WHERE {_IN}")), b).scalar_one()
            rolled = total[name] if name in pruned and name in total else n
            t.add_row(name, f"{n:,}", f"{rolled:,}" if schema.BY_NAME[name].rollup else "")
        console.print(t)
        slowest = SLOWEST.format(service=waits.service_sql(), not_own=not_own_sql(conn))
        _table(console, "Slowest syscalls (service time; waits such as futex/wait4 and "
               "KernelSight's own processes left out)", conn, slowest, limit, w)
        _table(console, "Recent memory", conn, MEMORY, min(limit, 5), w)
        _table(console, "Recent I/O latency", conn, IO, limit, w)
    eng.dispose()


def runs(db_path: str, limit: int = 10) -> None:
    """The newest ``limit`` runs, each as its latest record says."""
    eng = open_readonly(db_path)
    with eng.connect() as conn:
        rows = list_runs(conn)[:limit]
    eng.dispose()
    console = Console()
    if not rows:
        console.print(Text(f"Runs in {printable(db_label(db_path), 4096)}: none recorded"))
        return
    t = Table(title=Text(f"Runs in {printable(db_label(db_path), 4096)} (newest first)"),
              title_justify="left")
    for col in ("run id", "kind", "host", "start (UTC)", "duration", "verdict"):
        t.add_column(col, overflow="fold")
    for r in rows:
        start = datetime.fromtimestamp(r["start_ns"] / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        dur = f"{(r['end_ns'] - r['start_ns']) / 1e9:,.1f}s" if r["end_ns"] else "running"
        t.add_row(*(Text(printable(v)) for v in (r["run_id"], r["kind"], r["host"], start, dur,
                                                   r["verdict"] or "-")))
    console.print(t)
