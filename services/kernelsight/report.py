"""The results table and verdict (`kernelsight report`, `make report`, the rq report job).

Works on any KernelSight database. The verdict follows the success criteria our users know
from the original stress test guide, made strict: every collector started, all ten event
types captured, zero parse/insert errors, at least 2000 events per 60 s, eBPF events present,
and conservation — for every event type, produced = stored + counted drops.

A report covers one window: a run (``--run ID|latest``, its start to its end), a time window
(``--since``/``--until``), or, when nothing is selected, the latest run if the database has
runs, else the whole file. Every figure is the window's own: row counts, duration (the run's
start/end or the window's bounds), collectors started/failed, slow syscalls, page faults,
drops, dead letters.

Conservation per window is exact, however long the database has collected. The rule:

* Positions. Each producer (one Publisher, ``instance``) takes every stream id from one
  strictly increasing generator, and its accounting snapshots ride in the same ordered
  buffer as its events. A snapshot records its position (``pipeline_accounting.stream_id``,
  the packed id it took): the cumulative counts in it cover exactly that producer's events
  with smaller ids. The window's bounds become positions too: ``lo`` = the last id of the
  millisecond of ``since``, ``hi`` = that of ``until`` (window.ns_to_id).
* Counted side, per instance and (event type, metric, reason): V(b) = the value of its last
  snapshot at a position <= b (counters are cumulative, so that is MAX(value) over those
  snapshots; 0 if none). produced/dropped in the window = sum over instances of
  V(hi) - V(lo).
* Stored side, per line = (host, source), the producers that follow each other on one host
  (a restarted collector is a new instance of the same line): L = the position of the line's
  last snapshot <= lo (-1 if none), H = that of its last snapshot <= hi. Stored in the window
  = the rows of the line's event types, that host, with L < stream_id <= H; dead letters
  likewise by their entry id. Earlier instances' rows lie below their final snapshot <= L;
  rows after H are not yet counted on either side, so both sides cover the same events.
* So while collection goes on across a boundary, a line's stretch of the window begins and
  ends at its last snapshot at or before each bound: up to one accounting interval (1 s)
  earlier than the bound. Counted and stored sides cover the same events; counts by
  ``timestamp`` over [since, until] can differ by the samples of that interval.
* Open ends: no ``since``: L = -1; no ``until``: H = +infinity (the whole database is the
  window with both open, the previous behaviour). The ingester's own counters have no
  stream position; theirs is their timestamp.

* Produced after the last snapshot. A producer killed (SIGKILL, OOM, a container killed)
  between two snapshots leaves rows stored after its last snapshot that no snapshot counts.
  Every producer records a start mark (schema.START_MARK's detail: an id below all of its
  ids) in each snapshot. For an instance I of a line with last snapshot at M, when no other
  instance of the line was producing past M: E = (the start mark of the line's next
  instance) - 1, or +infinity when none followed (yet). The rows of the line's event types
  on its host with M < stream_id <= E, and dead letters likewise, were produced by I: they
  count as an implied final snapshot of I at position E (value: its last one + those rows),
  shown as "produced after its last snapshot" (Report.late), and E is a boundary position
  of the line like any snapshot. A producer still running has such rows too until its next
  snapshot: with E = +infinity only a window open at its end (the whole database, --since
  alone) sees them. Not attributed: when the next instance has no start mark (older
  producers), or another instance of the line overlapped. Events still in the killed
  process's memory never reached Redis: nothing counts them, on either side.

It is exact when (a) one producer per line is alive at a time (one collector per kind per
host, the deployment model) and (b) everything in Redis up to the window's end has been
stored (`runs.drained_until`; the stress tests wait for it). Retention that removed a
window's rows or boundary snapshots makes a window that old approximate (late rows that
retention deleted are no longer counted as produced, so they show as stored > produced).
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, Engine, text

from kernelsight import collectors, defaults, faultlatency, schema, waits
from kernelsight.analysis.own import not_own_sql
from kernelsight.config import db_label
from kernelsight.db import open_readonly
from kernelsight.latespans import DEAD_SQL, INT64_MAX, late_rows, late_spans, max_le
from kernelsight.maintenance import rollup_counts
from kernelsight.runs import resolve
from kernelsight.safetext import printable
from kernelsight.sqlcompat import bigint
from kernelsight.window import Window, parse_selection
from kernelsight.window import options as window_options

EVENTS_PER_60S = 2000
EBPF_TYPES = ("syscall_events", "page_fault_events", "io_latency_stats", "sched_events")

# The SQL here runs on SQLite and PostgreSQL alike (kernelsight.sqlcompat says how); divisions
# happen in Python.
ACCOUNTING_SQL = f"""
SELECT event_type, metric, reason, {bigint('SUM(v)')} FROM (
  SELECT instance, event_type, metric, reason, MAX(value) AS v FROM pipeline_accounting
  GROUP BY instance, event_type, metric, reason) AS per_instance
GROUP BY event_type, metric, reason"""
# A snapshot's position: its stream_id, or (the ingester's own rows) its timestamp's ms.
_POS = "COALESCE(stream_id, ((timestamp / 1000000) << 19) | 524287)"
# Per instance and key: the value at the window's end and at its start (see the docstring).
WINDOW_ACCOUNTING_SQL = f"""
SELECT instance, host, source, event_type, metric, reason,
  MAX(CASE WHEN pos <= :hi THEN value END), MAX(CASE WHEN pos <= :lo THEN value END),
  MIN(pos), MAX(pos), MAX(CASE WHEN pos <= :hi THEN detail END)
FROM (SELECT instance, host, source, event_type, metric, reason, value, detail,
             {_POS} AS pos FROM pipeline_accounting) AS positioned
GROUP BY instance, host, source, event_type, metric, reason"""
# Per line (host, source): the positions of its last snapshots at or before lo and hi.
LINES_SQL = """
SELECT host, source, MAX(CASE WHEN stream_id <= :lo THEN stream_id END),
  MAX(CASE WHEN stream_id <= :hi THEN stream_id END)
FROM pipeline_accounting WHERE stream_id IS NOT NULL GROUP BY host, source"""
# Service-time syscalls only (waits such as futex/wait4 are idle by design), without our own
# processes: kernelsight.waits and kernelsight.analysis.own say what is left out.
# Ties broken by stream position, so both databases list the same rows.
SLOW_SQL = """SELECT comm, syscall_name, latency_ns FROM syscall_events
WHERE timestamp BETWEEN :since AND :until AND {service} AND {not_own}
ORDER BY latency_ns DESC, stream_id LIMIT :n"""
# timed: the faults latency_sum_ns covers (faultlatency: minor rows, the sampled ones).
PF_TOTALS_SQL = f"""SELECT fault_type, {bigint('SUM(fault_count)')},
  {bigint('SUM(latency_sum_ns)')}, {bigint('SUM(sampled_events)')},
  {bigint(f'SUM({faultlatency.TIMED_SQL})')}
FROM page_fault_totals WHERE timestamp BETWEEN :since AND :until GROUP BY fault_type"""
PF_EVENTS_SQL = f"""SELECT fault_type, COUNT(*), {bigint('SUM(latency_ns)')}
FROM page_fault_events WHERE timestamp BETWEEN :since AND :until GROUP BY fault_type"""
SPAN_SQL = """SELECT MIN(timestamp), MAX(timestamp) FROM memory_metrics
WHERE timestamp BETWEEN :since AND :until"""


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
    # Rows with a timestamp in the window, counted through the per-minute rollups where
    # retention deleted the raw rows (maintenance.rollup_counts; minute resolution there).
    rolled: dict[str, int] = field(default_factory=dict)
    # Of produced: rows (and dead letters) a producer sent after its last accounting snapshot
    # and never counted, because it was killed (or, open-ended windows, has not yet).
    late: dict[str, int] = field(default_factory=dict)
    started: dict[str, bool] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    ingest: dict[str, int] = field(default_factory=dict)
    slow: list[tuple[str, str, float]] = field(default_factory=list)
    faults: dict[str, dict[str, float | None]] = field(default_factory=dict)
    duration_s: float = 0.0
    criteria: list[tuple[str, bool, str]] = field(default_factory=list)
    verdict: str = "FAIL"
    window: Window = field(default_factory=Window)

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
          expected: list[str] | None = None, window: Window | None = None) -> Report:
    """The report for ``window`` (default: the whole database); rules in the docstring."""
    w = window or Window()
    lo, hi = w.lo_id, w.hi_id
    since = w.since_ns if w.since_ns is not None else 0
    until = w.until_ns if w.until_ns is not None else INT64_MAX
    rep = Report(db_path, dict.fromkeys(schema.TABLES, 0), window=w)
    with eng.connect() as c:
        lines = {(h, src): (lo_pos, hi_pos) for h, src, lo_pos, hi_pos in
                 c.execute(text(LINES_SQL), {"lo": lo, "hi": hi})}
        spans = late_spans(c)
        for sp in spans:  # each span's end is a boundary position of its line
            lo_pos, hi_pos = lines.get((sp.host, sp.source), (None, None))
            lines[(sp.host, sp.source)] = (max_le(lo_pos, sp.end, lo),
                                           max_le(hi_pos, sp.end, hi))
        _accounting(rep, c, lo, hi)
        for t, n in late_rows(c, [sp for sp in spans if lo < sp.end <= hi]).items():
            rep.late[t] = n
            rep.produced[t] = rep.produced.get(t, 0) + n
        rep.counts = _stored(c, w, lines)
        _dead(rep, c, w, lines, since)
        if not w.whole:
            _retention_in_window(rep, c, since)
        rep.rolled = rollup_counts(c, since, until)
        args = {"since": since, "until": until}
        slow_sql = SLOW_SQL.format(service=waits.service_sql(), not_own=not_own_sql(c))
        rep.slow = [(r[0], r[1], int(r[2] or 0) / 1e6)
                    for r in c.execute(text(slow_sql), {**args, "n": 5})]
        pf_from = faultlatency.sampled_from_ns(c, schema.schema_meta)
        for ft, n, lat, sampled, timed in c.execute(text(PF_TOTALS_SQL),
                                                    {**args, "pf_from": pf_from}):
            # No timed fault (a minor row without a sample): no average, not 0 us.
            rep.faults[ft] = {"count": int(n or 0), "timed": int(timed or 0),
                              "avg_us": (lat or 0) / timed / 1000 if timed else None,
                              "sampled_events": int(sampled or 0), "exact": True}
        if not rep.faults:  # older databases without totals: say these are sample figures
            for ft, n, lat in c.execute(text(PF_EVENTS_SQL), args):
                rep.faults[ft] = {"count": int(n), "timed": int(n),
                                  "avg_us": (lat or 0) / max(n, 1) / 1000,
                                  "sampled_events": int(n), "exact": False}
        span_lo, span_hi = c.execute(text(SPAN_SQL), args).one()
    if duration_s:
        rep.duration_s = duration_s
    elif w.duration_s is not None:
        rep.duration_s = w.duration_s
    elif w.since_ns is not None:  # --since only: up to now
        rep.duration_s = max(time.time_ns() - w.since_ns, 0) / 1e9
    else:  # the whole file (or --until only): the span of the scraper's samples
        rep.duration_s = (span_hi - span_lo) / 1e9 + 1 if span_lo else 0.0
    _judge(rep, expected)
    return rep


def _accounting(rep: Report, c: Connection, lo: int, hi: int) -> None:
    """Counted side: V(hi) - V(lo) per instance and key, summed; collector states from the
    instances whose snapshots overlap the window."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    status: list[tuple[str, str, str, int, str | None]] = []
    for inst, _h, src, et, metric, reason, v_hi, v_lo, p_min, p_max, detail in c.execute(
            text(WINDOW_ACCOUNTING_SQL), {"lo": lo, "hi": hi}):
        first[inst] = min(first.get(inst, p_min), p_min)
        last[inst] = max(last.get(inst, p_max), p_max)
        if et == "" and metric in (schema.STARTED, schema.FAILED):
            status.append((inst, src, metric, v_hi or 0, detail))
            continue
        v = (v_hi or 0) - (v_lo or 0)
        if metric == schema.PRODUCED:
            rep.produced[et] = rep.produced.get(et, 0) + v
        elif metric == schema.DROPPED:
            d = rep.dropped.setdefault(et, {})
            d[reason] = d.get(reason, 0) + v
        elif metric in (schema.RETENTION_DELETED, schema.DEAD_LETTERS_DELETED):
            # Counted when the rows are deleted, not when they were produced: only the whole
            # database can take them as they are (a window: _retention_in_window).
            if lo < 0 and hi == INT64_MAX:
                if metric == schema.RETENTION_DELETED:
                    d = rep.retention.setdefault(et, {})
                    d[reason] = d.get(reason, 0) + v
                else:
                    rep.dead_deleted[et] = rep.dead_deleted.get(et, 0) + v
        elif et == "" and metric != schema.START_MARK:
            rep.ingest[metric] = rep.ingest.get(metric, 0) + v
    for inst, src, metric, v, detail in status:
        if not v or first[inst] > hi or last[inst] <= lo:
            continue  # not alive in the window as far as its snapshots tell
        if metric == schema.STARTED:
            rep.started[src] = True
        else:
            rep.failed[src] = detail or "failed"


def _retention_in_window(rep: Report, c: Connection, since: int) -> None:
    """Retention removes a table's oldest rows (by time or to fit the size cap), so it has
    reached into a window only if the table's oldest surviving row is newer than the window's
    start and retention ever deleted from that table. Then the window's missing rows are shown
    as retention (reason ``window``: inferred, since deletions are counted when they happen,
    not per window). Otherwise retention took nothing of the window and counts 0 here."""
    deleted = {et: v for et, metric, _r, v in c.execute(text(ACCOUNTING_SQL))
               if metric in (schema.RETENTION_DELETED, schema.DEAD_LETTERS_DELETED) and v}
    for name in deleted:
        if name not in schema.TABLES:
            continue
        oldest = c.execute(text(f'SELECT MIN(timestamp) FROM "{name}"')).scalar()
        if oldest is not None and oldest <= since:
            continue  # the window lies after what retention has reached
        missing = rep.balance(name)
        if missing > 0:
            rep.retention.setdefault(name, {})["window"] = missing


def _bounds(w: Window, lines: dict, host: str, source: str) -> tuple[int, int]:
    lo_pos, hi_pos = lines.get((host, source), (None, None))
    low = -1 if w.since_ns is None or lo_pos is None else lo_pos
    high = INT64_MAX if w.until_ns is None else (-1 if hi_pos is None else hi_pos)
    return low, high


def _stored(c: Connection, w: Window, lines: dict) -> dict[str, int]:
    """Stored side: rows of each line's event types between its boundary snapshots."""
    if w.whole:
        return {name: c.execute(text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one()
                for name in schema.TABLES}
    out = dict.fromkeys(schema.TABLES, 0)
    for et in schema.EVENT_TYPES:
        for host, source in lines:
            if source != et.source:
                continue
            low, high = _bounds(w, lines, host, source)
            if high <= low:
                continue
            out[et.name] += c.execute(text(
                f'SELECT COUNT(*) FROM "{et.name}" WHERE host = :h AND stream_id > :lo '
                "AND stream_id <= :hi"), {"h": host, "lo": low, "hi": high}).scalar_one()
    return out


def _dead(rep: Report, c: Connection, w: Window, lines: dict, since: int) -> None:
    """Dead letters whose entry id lies inside the bounds of their event type's line(s)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for et in schema.EVENT_TYPES:
        spans[et.name] = [_bounds(w, lines, h, src) for h, src in lines if src == et.source]
    # A dead letter was stored after its entry was produced: after the line's lower bound.
    lows = [lo for v in spans.values() for lo, _ in v if lo >= 0]
    floor = 0 if w.since_ns is None or not lows else ((min(lows) >> 19) * 1_000_000)
    for et, reason, entry_id in c.execute(text(DEAD_SQL), {"since": min(floor, since)}):
        if not w.whole:
            try:
                pos = schema.stream_id_to_int(entry_id)
            except ValueError:
                continue
            bounds = spans.get(et) or [(w.lo_id, w.hi_id)]
            if not any(lo < pos <= hi for lo, hi in bounds):
                continue
        d = rep.dead.setdefault(et, {})
        key = reason.split(":")[0]
        d[key] = d.get(key, 0) + 1


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
        "database": db_label(rep.db_path),
        "window": {"run_id": rep.window.run_id, "kind": rep.window.kind,
                   "since_ns": rep.window.since_ns, "until_ns": rep.window.until_ns,
                   "still_running": rep.window.open_end, "text": rep.window.describe()},
        "verdict": rep.verdict,
        "exit_code": rep.exit_code,
        "captured": len(rep.captured),
        "event_types_total": len(schema.CORE_EVENT_TYPES),
        "total_events": rep.total,
        "duration_s": rep.duration_s,
        "event_types": {
            t: {"rows": rep.counts[t], "source": schema.BY_NAME[t].source,
                "produced": rep.produced.get(t, 0), "stored": rep.counts[t],
                "produced_after_last_snapshot": rep.late.get(t, 0),
                "dropped": rep.dropped.get(t, {}), "dead_letters": rep.dead.get(t, {}),
                "dead_letters_deleted": rep.dead_deleted.get(t, 0),
                "retention_deleted": rep.retention.get(t, {}),
                "rows_incl_rollups": rep.rolled.get(t),
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
    console.print(Text(f"Covers: {printable(rep.window.describe(), 400)}"))
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
    # The types added since the seed's ten: listed, never counted in the verdict's k/10.
    x = Table(title="Other Event Types (not in the count above)", title_justify="left")
    for col, j in (("event type", "left"), ("rows", "right"), ("source", "left")):
        x.add_column(col, justify=j)  # type: ignore[arg-type]
    for e in schema.EVENT_TYPES:
        if not e.core:
            x.add_row(e.name, f"{rep.counts[e.name]:,}", e.label)
    console.print(x)
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
        p.add_column("timed", justify="right")  # the faults the average is over
        p.add_column("stored events", justify="right")
        for ft in ("major", "minor"):
            f = rep.faults.get(ft, {"count": 0, "timed": 0, "avg_us": None, "sampled_events": 0})
            avg = "n/a" if f["avg_us"] is None else f"{f['avg_us']:.2f}μs"
            p.add_row(ft, f"{f['count']:,}", avg, f"{f['timed']:,}",
                      f"{f['sampled_events']:,}")
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
    aged = [f"{printable(t)}: {printable(r)} {v:,}" for t, by in sorted(rep.retention.items())
            for r, v in sorted(by.items()) if v]
    aged += [f"{printable(t)}: dead letters {v:,}" for t, v in sorted(rep.dead_deleted.items())
             if v]
    rolled = sum(rep.rolled.values())
    if rolled > sum(rep.counts[t] for t in rep.rolled):
        console.print(f"Rows in the window including those retention deleted (from the "
                      f"per-minute rollups): {rolled:,}")
    late = [f"{t} {n:,}" for t, n in sorted(rep.late.items()) if n]
    if late:
        console.print(Text("Of produced, produced after its last accounting snapshot (stored "
                           "rows of a producer killed before counting them, or still running; "
                           "what a killed producer still held in memory is unknowable): "
                           + ", ".join(late)))
    if aged:  # plain Text: names come from the database
        console.print(Text("Removed by retention (older than --retention, or over "
                           "--retention-size; per-minute rollups keep their aggregates): "
                           + ", ".join(aged)))
    if reasons:
        console.print("Dropped by reason (counted, by design or by loss):")
        for line in reasons:  # every part from the database is already printable()
            console.print(Text(f"  {line}"))
    if rep.ingest:
        console.print(Text("Pipeline counters: " + ", ".join(
            f"{printable(k)}={v:,}" for k, v in sorted(rep.ingest.items()))))
    console.rule()
    console.print(Text(f"Database: {printable(db_label(rep.db_path), 4096)}"))


def report_job(db_path: str, duration_s: float | None = None,
               expected: list[str] | None = None, run: str | None = None,
               since: str | None = None, until: str | None = None) -> dict[str, Any]:
    """The rq job: render the table as plain text (no colour codes) and return the verdict.
    ``run``/``since``/``until`` are strings as the flags take them (JSON-safe job args)."""
    sel = parse_selection(run, since, until)
    eng = open_readonly(db_path)
    try:
        rep = build(eng, db_path, duration_s, expected, resolve(eng, sel, default_latest=True))
    finally:
        eng.dispose()
    buf = io.StringIO()
    render(rep, Console(file=buf, width=100, force_terminal=False, no_color=True))
    return {"text": buf.getvalue(), "exit_code": rep.exit_code, "json": to_json(rep)}


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "--db-path", "db_path", envvar=["KS_DB_PATH", "KS_DB_URL"], show_envvar=True,
              default=defaults.DB_PATH, show_default=True,
              help="Database to report on: a SQLite path or a PostgreSQL URL "
                   "(postgresql+psycopg://USER:PASSWORD@HOST:5432/DB; prefer KS_DB_URL).")
@window_options
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Seconds the run lasted [default: the run's or window's own span; the "
                   "span of scraper samples for the whole database].")
@click.option("--expect", default=",".join(collectors.ALL), show_default=True,
              help="Collectors that must have started.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(db_path: str, run: str | None, since: str | None, until: str | None,
            duration: float | None, expect: str, as_json: bool) -> None:
    """Print the results table for a run or window of a KernelSight database; exit 0 only
    on SUCCESS. Every figure covers only the selected run or window.

    \b
    Examples:
      kernelsight report                                  # the latest run in data/kernelsight.db
      kernelsight report --db data/stress_test.db --run stress-20261130T101500-1a2b3c
      kernelsight report --since 2h --until 1h            # a window, whatever ran in it
      kernelsight report --since 2026-11-30T10:00:00Z --json | jq .event_types
      KS_DB_URL=postgresql+psycopg://ks:PW@db:5432/kernelsight kernelsight report
    """
    sel = parse_selection(run, since, until)
    names = collectors.parse_list(expect)
    eng = open_readonly(db_path)
    try:
        rep = build(eng, db_path, duration, names, resolve(eng, sel, default_latest=True))
    finally:
        eng.dispose()
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(to_json(rep), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        render(rep, Console())
    sys.exit(rep.exit_code)
