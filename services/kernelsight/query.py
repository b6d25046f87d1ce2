"""`kernelsight query --demo`: a first look at a database (the original query_utils demo)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import text

from kernelsight import schema, waits
from kernelsight.analysis.own import not_own_sql
from kernelsight.db import open_readonly, table_counts
from kernelsight.safetext import printable

# Service-time syscalls only, without KernelSight's own processes (kernelsight.waits, .own).
SLOWEST = """SELECT datetime(timestamp/1000000000, 'unixepoch') AS time, comm, pid, syscall_name,
 'service' AS class, latency_ns / 1000000.0 AS latency_ms, ret_value FROM syscall_events
 WHERE {service} AND {not_own} ORDER BY latency_ns DESC LIMIT :n"""
MEMORY = """SELECT datetime(timestamp/1000000000, 'unixepoch') AS time, mem_total_kb,
 mem_available_kb, cached_kb, dirty_kb FROM memory_metrics ORDER BY timestamp DESC LIMIT :n"""
IO = """SELECT datetime(timestamp/1000000000, 'unixepoch') AS time, device, read_count,
 write_count, read_p50_us, read_p95_us, write_p50_us, write_p95_us FROM io_latency_stats
 ORDER BY timestamp DESC LIMIT :n"""


def _table(console: Console, title: str, conn, sql: str, n: int) -> None:
    res = conn.execute(text(sql), {"n": n})
    t = Table(title=title, title_justify="left")
    for c in res.keys():  # noqa: SIM118 - a SQLAlchemy result, not a dict
        t.add_column(c, justify="left")
    rows = res.fetchall()
    for r in rows:
        t.add_row(*(Text(f"{v:.3f}" if isinstance(v, float) else printable(v)) for v in r))
    if not rows:
        console.print(f"[bold]{title}[/bold]: no rows")
    else:
        console.print(t)


def demo(db_path: str, limit: int = 10) -> None:
    eng = open_readonly(db_path)
    console = Console()
    counts = table_counts(eng)
    t = Table(title=Text(f"Rows per table in {printable(db_path, 4096)}"), title_justify="left")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name in schema.TABLES:
        t.add_row(name, f"{counts[name]:,}")
    console.print(t)
    with eng.connect() as conn:
        slowest = SLOWEST.format(service=waits.service_sql(), not_own=not_own_sql(conn))
        _table(console, "Slowest syscalls (service time; waits such as futex/wait4 and "
               "KernelSight's own processes left out)", conn, slowest, limit)
        _table(console, "Recent memory", conn, MEMORY, min(limit, 5))
        _table(console, "Recent I/O latency", conn, IO, limit)
    eng.dispose()
