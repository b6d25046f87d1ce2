"""The results table and verdict (`kernelsight report`, `make report`, the rq report job).

Works on any KernelSight database. The verdict follows the success criteria our users know
from the original stress test guide, made strict: every collector started, all ten event
types captured, zero parse/insert errors, at least 2000 events per 60 s, eBPF events present,
and conservation — for every event type, produced = stored + counted drops.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, text

from kernelsight import collectors, schema, waits
from kernelsight.analysis.own import not_own_sql
from kernelsight.db import open_readonly, table_counts
from kernelsight.safetext import printable

EVENTS_PER_60S = 2000
EBPF_TYPES = ("syscall_events", "page_fault_events", "io_latency_stats", "sched_events")

ACCOUNTING_SQL = """
SELECT event_type, metric, reason, SUM(v) FROM (
  SELECT instance, event_type, metric, reason, MAX(value) AS v FROM pipeline_accounting
  GROUP BY instance, event_type, metric, reason)
GROUP BY event_type, metric, reason"""
STATUS_SQL = """
SELECT source, metric, MAX(value), MAX(detail) FROM pipeline_accounting
WHERE event_type = '' AND metric IN ('started', 'failed') GROUP BY source, metric"""
DEAD_SQL = """SELECT event_type, reason, COUNT(*) FROM dead_letters GROUP BY 1, 2"""
# Service-time syscalls only (waits such as futex/wait4 are idle by design), without our own
# processes: kernelsight.waits and kernelsight.analysis.own say what is left out.
SLOW_SQL = """SELECT comm, syscall_name, latency_ns / 1000000.0 FROM syscall_events
WHERE {service} AND {not_own} ORDER BY latency_ns DESC LIMIT :n"""
PF_TOTALS_SQL = """SELECT fault_type, SUM(fault_count), SUM(latency_sum_ns), SUM(sampled_events)
FROM page_fault_totals GROUP BY fault_type"""
PF_EVENTS_SQL = """SELECT fault_type, COUNT(*), AVG(latency_ns) FROM page_fault_events
GROUP BY fault_type"""
SPAN_SQL = """SELECT MIN(timestamp), MAX(timestamp) FROM memory_metrics"""


@dataclass
class Report:
    db_path: str
    counts: dict[str, int]
    produced: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    dead: dict[str, dict[str, int]] = field(default_factory=dict)
    # Rows removed by retention (reason time|size) and dead letters that aged out: not loss.
    retention: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_deleted: dict[str, int] = field(default_factory=dict)
    started: dict[str, bool] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    ingest: dict[str, int] = field(default_factory=dict)
    slow: list[tuple[str, str, float]] = field(default_factory=list)
    faults: dict[str, dict[str, float]] = field(default_factory=dict)
    duration_s: float = 0.0
    criteria: list[tuple[str, bool, str]] = field(default_factory=list)
    verdict: str = "FAIL"

    @property
    def total(self) -> int:
        return sum(self.counts[e.name] for e in schema.CORE_EVENT_TYPES)

    @property
    def captured(self) -> list[str]:
        return [e.name for e in schema.CORE_EVENT_TYPES if self.counts[e.name] > 0]

    def dead_total(self, name: str) -> int:
        """Dead letters ever recorded: those in the table plus those retention deleted."""
        return sum(self.dead.get(name, {}).values()) + self.dead_deleted.get(name, 0)

    def balance(self, name: str) -> int:
        """produced - stored - dropped - dead letters - retention: 0 when nothing was lost
        silently."""
        return (self.produced.get(name, 0) - self.counts.get(name, 0)
                - sum(self.dropped.get(name, {}).values()) - self.dead_total(name)
                - sum(self.retention.get(name, {}).values()))

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == "SUCCESS" else 1


def build(eng: Engine, db_path: str, duration_s: float | None = None,
          expected: list[str] | None = None) -> Report:
    rep = Report(db_path, table_counts(eng))
    with eng.connect() as c:
        for et, metric, reason, v in c.execute(text(ACCOUNTING_SQL)):
            if metric == schema.PRODUCED:
                rep.produced[et] = rep.produced.get(et, 0) + v
            elif metric == schema.DROPPED:
                rep.dropped.setdefault(et, {})[reason] = v
            elif metric == schema.RETENTION_DELETED:
                rep.retention.setdefault(et, {})[reason] = v
            elif metric == schema.DEAD_LETTERS_DELETED:
                rep.dead_deleted[et] = rep.dead_deleted.get(et, 0) + v
            elif et == "" and metric not in (schema.STARTED, schema.FAILED):
                rep.ingest[metric] = rep.ingest.get(metric, 0) + v
        for source, metric, v, detail in c.execute(text(STATUS_SQL)):
            if metric == schema.STARTED and v:
                rep.started[source] = True
            elif metric == schema.FAILED:
                rep.failed[source] = detail or "failed"
        for et, reason, n in c.execute(text(DEAD_SQL)):
            rep.dead.setdefault(et, {})[reason.split(":")[0]] = n
        slow_sql = SLOW_SQL.format(service=waits.service_sql(), not_own=not_own_sql(c))
        rep.slow = [(r[0], r[1], float(r[2])) for r in c.execute(text(slow_sql), {"n": 5})]
        for ft, n, lat, sampled in c.execute(text(PF_TOTALS_SQL)):
            rep.faults[ft] = {"count": int(n or 0), "avg_us": (lat or 0) / max(n or 0, 1) / 1000,
                              "sampled_events": int(sampled or 0), "exact": True}
        if not rep.faults:  # older databases without totals: say these are sample figures
            for ft, n, avg in c.execute(text(PF_EVENTS_SQL)):
                rep.faults[ft] = {"count": int(n), "avg_us": (avg or 0) / 1000,
                                  "sampled_events": int(n), "exact": False}
        lo, hi = c.execute(text(SPAN_SQL)).one()
    rep.duration_s = duration_s if duration_s else ((hi - lo) / 1e9 + 1 if lo else 0.0)
    _judge(rep, expected)
    return rep


def _judge(rep: Report, expected: list[str] | None) -> None:
    expected = list(expected or collectors.ALL)
    not_started = [s for s in expected if not rep.started.get(s)]
    crit = rep.criteria
    crit.append(("all collectors started", not not_started and not rep.failed,
                 "" if not not_started else "not started: " + ", ".join(
                     f"{s} ({rep.failed[s]})" if s in rep.failed else s for s in not_started)))
    n = len(rep.captured)
    crit.append((f"all {len(schema.CORE_EVENT_TYPES)} event types captured",
                 n == len(schema.CORE_EVENT_TYPES), f"{n}/{len(schema.CORE_EVENT_TYPES)}"))
    errors = sum(sum(d.values()) for d in rep.dead.values())
    parse = sum(v for d in rep.dropped.values() for r, v in d.items()
                if r in ("parse_error", "read_error"))
    dberr = rep.ingest.get("db_errors", 0)
    crit.append(("zero parse/insert errors", errors + parse + dberr == 0,
                 f"{errors} dead letters, {parse} parse/read errors, {dberr} database errors"))
    need = int(EVENTS_PER_60S * rep.duration_s / 60)
    crit.append((f"at least {EVENTS_PER_60S} events per 60 s", rep.total >= max(need, 1),
                 f"{rep.total:,} events in {rep.duration_s:.0f} s (need {need:,})"))
    missing_ebpf = [t for t in EBPF_TYPES if rep.counts[t] == 0]
    crit.append(("eBPF events present", not missing_ebpf,
                 "missing: " + ", ".join(missing_ebpf) if missing_ebpf else ""))
    bad = {t: rep.balance(t) for t in schema.TABLES if rep.balance(t) != 0}
    crit.append(("nothing dropped without being counted", not bad,
                 ", ".join(f"{t}: {'+' if v > 0 else ''}{v}" for t, v in bad.items())
                 + (" (produced - stored - counted drops)" if bad else "")))
    if all(ok for _, ok, _ in crit):
        rep.verdict = "SUCCESS"
    elif n >= 8:
        rep.verdict = "PARTIAL"
    else:
        rep.verdict = "FAIL"


def to_json(rep: Report) -> dict[str, Any]:
    return {
        "database": rep.db_path,
        "verdict": rep.verdict,
        "exit_code": rep.exit_code,
        "captured": len(rep.captured),
        "event_types_total": len(schema.CORE_EVENT_TYPES),
        "total_events": rep.total,
        "duration_s": rep.duration_s,
        "event_types": {
            t: {"rows": rep.counts[t], "source": schema.BY_NAME[t].source,
                "produced": rep.produced.get(t, 0), "stored": rep.counts[t],
                "dropped": rep.dropped.get(t, {}), "dead_letters": rep.dead.get(t, {}),
                "dead_letters_deleted": rep.dead_deleted.get(t, 0),
                "retention_deleted": rep.retention.get(t, {}),
                "unaccounted": rep.balance(t)}
            for t in schema.TABLES},
        "other_drops": {k or "pipeline": v for k, v in rep.dropped.items()
                        if k not in schema.TABLES},
        "collectors": {"started": sorted(rep.started), "failed": rep.failed},
        "ingest": rep.ingest,
        "criteria": [{"name": n, "ok": ok, "detail": d} for n, ok, d in rep.criteria],
        "slow_syscalls": [{"comm": c, "syscall": s, "latency_ms": ms, "class": waits.SERVICE}
                          for c, s, ms in rep.slow],
        "page_faults": rep.faults,
    }


def render(rep: Report, console: Console) -> None:
    ok, bad = Text("✓", style="green"), Text("✗", style="bold red")
    console.rule("[bold]TEST RESULTS")
    console.print(f"Total Events Collected: {rep.total:,}\n")
    t = Table(title="Event Types Captured", title_justify="left")
    for col, j in (("", "center"), ("event type", "left"), ("rows", "right"),
                   ("source", "left")):
        t.add_column(col, justify=j)  # type: ignore[arg-type]
    for e in schema.CORE_EVENT_TYPES:
        n = rep.counts[e.name]
        t.add_row(ok if n else bad, e.name, f"{n:,}",
                  e.label + ("" if n else "  ← NOT CAPTURED"))
    console.print(t)
    k, total = len(rep.captured), len(schema.CORE_EVENT_TYPES)
    console.print(f"Captured: {k}/{total} event types")
    if k < total:
        missing = [e.name for e in schema.CORE_EVENT_TYPES if not rep.counts[e.name]]
        console.print(f"Missing:  {total - k}/{total} event types ({', '.join(missing)})")
    style = {"SUCCESS": "bold green", "PARTIAL": "bold yellow", "FAIL": "bold red"}[rep.verdict]
    console.print()
    console.print(Text(f"{'✓' if rep.verdict == 'SUCCESS' else '✗'} {rep.verdict}", style=style))
    for name, good, detail in rep.criteria:
        console.print(Text("  ").append(ok if good else bad).append(
            printable(f" {name}" + (f" — {detail}" if detail else ""), 2000)))
    if rep.slow:
        s = Table(title="Sample Slow Syscalls (service time; waits and KernelSight's own "
                  "processes left out)", title_justify="left")
        s.add_column("comm")
        s.add_column("syscall")
        s.add_column("class")
        s.add_column("latency", justify="right")
        for comm, name, ms in rep.slow:
            s.add_row(Text(printable(comm)), Text(printable(name)), waits.SERVICE, f"{ms:.2f}ms")
        console.print(s)
    if rep.faults:
        exact = all(f["exact"] for f in rep.faults.values())
        p = Table(title="Page Fault Summary" + ("" if exact else " (sampled rows only)"),
                  title_justify="left")
        p.add_column("type")
        p.add_column("faults", justify="right")
        p.add_column("avg latency", justify="right")
        p.add_column("stored events", justify="right")
        for ft in ("major", "minor"):
            f = rep.faults.get(ft, {"count": 0, "avg_us": 0.0, "sampled_events": 0})
            p.add_row(ft, f"{f['count']:,}", f"{f['avg_us']:.2f}μs", f"{f['sampled_events']:,}")
        console.print(p)
    a = Table(title="Pipeline Accounting (produced = stored + dropped + dead letters + "
              "retention)", title_justify="left")
    a.add_column("event type", no_wrap=True, min_width=23)
    for col in ("produced", "stored", "dropped", "dead letters", "retention", ""):
        a.add_column(col, justify="right", no_wrap=True)
    reasons: list[str] = []
    for name in schema.TABLES:
        drops = rep.dropped.get(name, {})
        dead = rep.dead.get(name, {})
        bal = rep.balance(name)
        a.add_row(name, f"{rep.produced.get(name, 0):,}", f"{rep.counts[name]:,}",
                  f"{sum(drops.values()):,}", f"{rep.dead_total(name):,}",
                  f"{sum(rep.retention.get(name, {}).values()):,}",
                  ok if bal == 0 else Text(f"✗ {bal:+,}", style="bold red"))
        reasons += [f"{name}: {printable(r)} {v:,}" for r, v in sorted(drops.items()) if v]
        reasons += [f"{name}: dead letter {printable(r)} {v:,}"
                    for r, v in sorted(dead.items())]
    for name, drops in sorted(rep.dropped.items()):  # kernel events that are not rows
        if name not in schema.TABLES:
            reasons += [f"{printable(name or 'pipeline')}: {printable(r)} {v:,}"
                        for r, v in sorted(drops.items()) if v]
    for name, dead in sorted(rep.dead.items()):  # e.g. refused accounting entries
        if name not in schema.TABLES:
            reasons += [f"{printable(name)}: dead letter {printable(r)} {v:,}"
                        for r, v in sorted(dead.items())]
    console.print(a)
    aged = [f"{t}: {r} {v:,}" for t, by in sorted(rep.retention.items())
            for r, v in sorted(by.items()) if v]
    aged += [f"{t}: dead letters {v:,}" for t, v in sorted(rep.dead_deleted.items()) if v]
    if aged:
        console.print("Removed by retention (older than --retention, or over --retention-size; "
                      "per-minute rollups keep their aggregates): " + ", ".join(aged))
    if reasons:
        console.print("Dropped by reason (counted, by design or by loss):")
        for line in reasons:  # every part from the database is already printable()
            console.print(Text(f"  {line}"))
    if rep.ingest:
        console.print(Text("Pipeline counters: " + ", ".join(
            f"{printable(k)}={v:,}" for k, v in sorted(rep.ingest.items()))))
    console.rule()
    console.print(Text(f"Database: {printable(rep.db_path, 4096)}"))


def report_job(db_path: str, duration_s: float | None = None,
               expected: list[str] | None = None) -> dict[str, Any]:
    """The rq job: render the table as plain text (no colour codes) and return the verdict."""
    eng = open_readonly(db_path)
    try:
        rep = build(eng, db_path, duration_s, expected)
    finally:
        eng.dispose()
    buf = io.StringIO()
    render(rep, Console(file=buf, width=100, force_terminal=False, no_color=True))
    return {"text": buf.getvalue(), "exit_code": rep.exit_code, "json": to_json(rep)}


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "--db-path", "db_path", envvar="KS_DB_PATH", show_envvar=True,
              default="data/stress_test.db", show_default=True, help="Database to report on.")
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Seconds the run lasted [default: the span of scraper samples].")
@click.option("--expect", default=",".join(collectors.ALL), show_default=True,
              help="Collectors that must have started.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(db_path: str, duration: float | None, expect: str, as_json: bool) -> None:
    """Print the results table for a KernelSight database; exit 0 only on SUCCESS.

    \b
    Examples:
      kernelsight report --db data/stress_test.db
      kernelsight report --db data/stress_test.db --json | jq .event_types
    """
    eng = open_readonly(db_path)
    rep = build(eng, db_path, duration, collectors.parse_list(expect))
    eng.dispose()
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(to_json(rep), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        render(rep, Console())
    sys.exit(rep.exit_code)
