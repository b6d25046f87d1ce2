"""Per-signal time series at the collection interval, read from the database only.

Each :class:`SignalDef` turns one table into one or more series (per syscall family, per
device): a value per interval ("bin") of the analysed window. Counts are per second and 0 where
no row exists (syscall_events holds only slow syscalls; no row means none was slow); gauges
carry the last value forward. Each series also knows how to fetch its evidence: the table's
rows in a time range ranked by how much they contributed (ids the analysis can cite).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from kernelsight import waits
from kernelsight.analysis.own import not_own_sql
from kernelsight.exceptions import DatabaseError
from kernelsight.sqlcompat import greatest, real, table_names

COUNT, GAUGE = "count", "gauge"


@dataclass(frozen=True)
class Window:
    """The analysed time range, split into bins of ``step_ns`` (the collection interval)."""

    since_ns: int
    until_ns: int
    step_ns: int

    @property
    def bins(self) -> int:
        return max(1, (self.until_ns - self.since_ns) // self.step_ns + 1)

    def bin_start(self, i: int) -> int:
        return self.since_ns + i * self.step_ns

    def to_json(self) -> dict[str, Any]:
        return {"since_ns": self.since_ns, "until_ns": self.until_ns, "step_ns": self.step_ns,
                "bins": self.bins}


@dataclass
class Series:
    """One signal over the window; ``direction`` -1 means lower is worse (memory available)."""

    name: str
    table: str
    unit: str
    kind: str
    values: np.ndarray
    direction: int = 1
    floor: float = 0.0  # the smallest change (in unit) that can matter
    evidence_sql: str = ""  # :lo :hi -> (id, pid, comm, weight), worst first
    rows: int = 0

    def to_json(self, window: Window) -> dict[str, Any]:
        return {"name": self.name, "table": self.table, "unit": self.unit, "kind": self.kind,
                "rows": self.rows, "t0_ns": window.since_ns, "step_ns": window.step_ns,
                "values": [None if np.isnan(v) else round(float(v), 4) for v in self.values]}


@dataclass(frozen=True)
class SignalDef:
    """SQL giving ``(timestamp, key, value)`` rows; one series per key."""

    name: str  # may contain {key}
    table: str
    unit: str
    kind: str
    sql: str  # :lo :hi; {service} and {not_own} filled in
    agg: str = "sum"  # per bin: sum | max | last
    per_second: bool = False
    direction: int = 1
    floor: float = 0.0
    evidence_sql: str = ""
    diff: bool = False  # a cumulative kernel counter: the series is its increase
    # Empty bins are 0, not the last value (an idle device has no latency), from the table's
    # first row on (before it the collector was still starting: NaN).
    fill_zero: bool = False
    # Per-interval tables (one row per key per collector interval): summed per sample and
    # averaged per bin, so a sample landing in the next bin does not read as 0 then 2x.
    per_sample: bool = False
    # Slow syscalls by family (waits.family), plus an "all" series; evidence by family.
    by_family: bool = False
    # Each value counts at most one interval's worth (ms per s): a single wait that lasted
    # a minute (a read on a pipe, whose fd kind is unknown) is one bin of 1000 ms, not a
    # minute's worth landing in the bin where it ended.
    cap_to_step: bool = False
    # The SQL gives a 4th column, the interval the value covers (ns, ending at timestamp):
    # the value is spread over the bins it covers (a collector that fell behind and wrote one
    # row for 7 s of faults must not read as a 7x spike in one bin).
    spread: bool = False
    # The SQL's key is a process: the series is, per bin, the largest value of any one
    # process (many threads of one process queueing on one lock, not the sum of a host's
    # idle thread pools each waiting now and then).
    top_key: bool = False


_SLOW = """SELECT timestamp, syscall_name, {expr} FROM syscall_events
WHERE timestamp BETWEEN :lo AND :hi AND {service} AND {not_own}"""
# The SQL runs on SQLite and PostgreSQL alike (kernelsight.sqlcompat says how): values are
# doubles on both, evidence ties are broken by stream position.
_MS = f"{real('latency_ns')} / 1e6"  # a syscall's latency in ms
_SLOW_EVIDENCE = f"""SELECT id, pid, comm, {_MS} FROM syscall_events
WHERE timestamp BETWEEN :lo AND :hi AND {{service}} AND {{not_own}} AND syscall_name IN ({{names}})
ORDER BY latency_ns DESC, stream_id LIMIT :n"""  # value: the syscall's latency in ms



def _vmstat(name: str, unit: str, expr: str, floor: float, per_second: bool = True) -> SignalDef:
    """A rate (or a count per interval) from vmstat_stats counters; its evidence is the
    samples in which the counter grew most, with that growth as the value."""
    return SignalDef(
        f"vmstat.{name}", "vmstat_stats", unit, COUNT,
        f"""SELECT timestamp, '', {expr} FROM vmstat_stats
        WHERE timestamp BETWEEN :lo AND :hi""", per_second=per_second, diff=True, floor=floor,
        evidence_sql=f"""SELECT id, 0, '', d FROM (SELECT id, stream_id, ({expr}) - LAG({expr})
        OVER (PARTITION BY host ORDER BY timestamp) AS d FROM vmstat_stats
        WHERE timestamp BETWEEN :lo AND :hi) AS growth WHERE d > 0
        ORDER BY d DESC, stream_id LIMIT :n""")

_FUTEX = "'futex', 'futex_waitv'"
_NET = "'sendto', 'sendmsg', 'recvfrom', 'recvmsg', 'connect'"

SIGNALS: tuple[SignalDef, ...] = (
    SignalDef("syscall.{key}.slow_per_s", "syscall_events", "1/s", COUNT,
              _SLOW.replace("{expr}", "1"), per_second=True, floor=2.0, by_family=True),
    SignalDef("syscall.{key}.slow_ms_per_s", "syscall_events", "ms/s", COUNT,
              _SLOW.replace("{expr}", _MS), per_second=True, floor=50.0,
              by_family=True, cap_to_step=True),
    SignalDef("faults.{key}_per_s", "page_fault_totals", "1/s", COUNT,
              """SELECT timestamp, fault_type, fault_count, interval_ns FROM page_fault_totals
              WHERE timestamp BETWEEN :lo AND :hi AND {not_own}""", per_second=True,
              spread=True, floor=50.0, fill_zero=True,
              evidence_sql="""SELECT id, pid, comm, fault_count FROM page_fault_totals
              WHERE timestamp BETWEEN :lo AND :hi AND fault_type = :key
              ORDER BY fault_count DESC, stream_id LIMIT :n"""),
    SignalDef("faults.major_latency_us", "page_fault_totals", "us", GAUGE,
              f"""SELECT timestamp, '', {real('SUM(latency_sum_ns)')} / 1e3
              / {greatest('SUM(fault_count)', '1')}
              FROM page_fault_totals WHERE timestamp BETWEEN :lo AND :hi AND fault_type = 'major'
              GROUP BY timestamp""", agg="max", floor=200.0,
              evidence_sql=f"""SELECT id, pid, comm, {real('latency_sum_ns')} / 1e3
              / {greatest('fault_count', '1')} FROM page_fault_totals
              WHERE timestamp BETWEEN :lo AND :hi AND fault_type = 'major'
              ORDER BY latency_sum_ns DESC, stream_id LIMIT :n"""),
    SignalDef("io.{key}.p99_us", "io_latency_stats", "us", GAUGE,
              f"""SELECT timestamp, device, {greatest('read_p99_us', 'write_p99_us')}
              FROM io_latency_stats
              WHERE timestamp BETWEEN :lo AND :hi AND read_count + write_count > 0""",
              agg="max", floor=2000.0, fill_zero=True,
              evidence_sql=f"""SELECT id, 0, device, {greatest('read_p99_us', 'write_p99_us')}
              FROM io_latency_stats WHERE timestamp BETWEEN :lo AND :hi AND device = :key
              ORDER BY 4 DESC, stream_id LIMIT :n"""),
    SignalDef("io.{key}.iops", "io_latency_stats", "1/s", COUNT,
              """SELECT timestamp, device, read_count + write_count FROM io_latency_stats
              WHERE timestamp BETWEEN :lo AND :hi""", per_sample=True, floor=50.0,
              fill_zero=True,
              evidence_sql="""SELECT id, 0, device, read_count + write_count
              FROM io_latency_stats WHERE timestamp BETWEEN :lo AND :hi AND device = :key
              ORDER BY 4 DESC, stream_id LIMIT :n"""),
    # Run-queue latency of the processes that ran at least a few times in the interval.
    SignalDef("sched.runq_p95_us", "sched_events", "us", GAUGE,
              """SELECT timestamp, '', runq_latency_p95_us FROM sched_events
              WHERE timestamp BETWEEN :lo AND :hi AND context_switches >= 5 AND {not_own}""",
              agg="median", floor=2000.0,
              evidence_sql="""SELECT id, pid, comm, runq_latency_p95_us FROM sched_events
              WHERE timestamp BETWEEN :lo AND :hi AND context_switches >= 5
              ORDER BY runq_latency_p95_us DESC, stream_id LIMIT :n"""),
    SignalDef("sched.involuntary_per_s", "sched_events", "1/s", COUNT,
              """SELECT timestamp, '', involuntary_switches FROM sched_events
              WHERE timestamp BETWEEN :lo AND :hi AND {not_own}""", per_sample=True,
              floor=100.0,
              evidence_sql="""SELECT id, pid, comm, involuntary_switches FROM sched_events
              WHERE timestamp BETWEEN :lo AND :hi
              ORDER BY involuntary_switches DESC, stream_id LIMIT :n"""),
    SignalDef("load.running", "load_metrics", "tasks", GAUGE,
              """SELECT timestamp, '', running_processes FROM load_metrics
              WHERE timestamp BETWEEN :lo AND :hi""", agg="max", floor=2.0,
              evidence_sql="""SELECT id, 0, '', running_processes FROM load_metrics
              WHERE timestamp BETWEEN :lo AND :hi
              ORDER BY running_processes DESC, stream_id LIMIT :n"""),
    SignalDef("load.load_1min", "load_metrics", "", GAUGE,
              """SELECT timestamp, '', load_1min FROM load_metrics
              WHERE timestamp BETWEEN :lo AND :hi""", agg="last", floor=1.0,
              evidence_sql="""SELECT id, 0, '', load_1min FROM load_metrics
              WHERE timestamp BETWEEN :lo AND :hi
              ORDER BY load_1min DESC, stream_id LIMIT :n"""),
    SignalDef("memory.available_mb", "memory_metrics", "MiB", GAUGE,
              f"""SELECT timestamp, '', {real('mem_available_kb')} / 1024 FROM memory_metrics
              WHERE timestamp BETWEEN :lo AND :hi""", agg="last", direction=-1, floor=256.0,
              evidence_sql=f"""SELECT id, 0, '', {real('mem_available_kb')} / 1024
              FROM memory_metrics WHERE timestamp BETWEEN :lo AND :hi
              ORDER BY mem_available_kb ASC, stream_id LIMIT :n"""),
    # Pressure stall information: the kernel's 10 s average of the share of time in which some
    # (or, "full", all) non-idle tasks stalled on the resource. cpu "full" is left out: the
    # kernel defines it at the system level as zero (psi.rst), so it could only be noise.
    SignalDef("psi.{key}.some_avg10_pct", "pressure_stats", "%", GAUGE,
              """SELECT timestamp, resource, some_avg10_pct FROM pressure_stats
              WHERE timestamp BETWEEN :lo AND :hi""", agg="max", floor=5.0,
              evidence_sql="""SELECT id, 0, resource, some_avg10_pct FROM pressure_stats
              WHERE timestamp BETWEEN :lo AND :hi AND resource = :key
              ORDER BY some_avg10_pct DESC, stream_id LIMIT :n"""),
    SignalDef("psi.{key}.full_avg10_pct", "pressure_stats", "%", GAUGE,
              """SELECT timestamp, resource, full_avg10_pct FROM pressure_stats
              WHERE timestamp BETWEEN :lo AND :hi AND resource != 'cpu'""", agg="max",
              floor=5.0,
              evidence_sql="""SELECT id, 0, resource, full_avg10_pct FROM pressure_stats
              WHERE timestamp BETWEEN :lo AND :hi AND resource = :key
              ORDER BY full_avg10_pct DESC, stream_id LIMIT :n"""),
    # vmstat's cumulative counters as increases per interval (system-wide, every process).
    _vmstat("pgmajfault_per_s", "1/s", "pgmajfault_total", 50.0),
    _vmstat("pgscan_per_s", "pages/s", "pgscan_kswapd_total + pgscan_direct_total", 100.0),
    _vmstat("pgsteal_per_s", "pages/s", "pgsteal_kswapd_total + pgsteal_direct_total", 100.0),
    _vmstat("oom_kills", "kills", "oom_kill_total", 1.0, per_second=False),
    # Lock contention: slow futex waits (a wait by waits.py, so outside the service-time
    # families above) of processes other than ours, as a rate and as total time waited.
    # From one row per slow syscall (syscall_events) and, where the syscall tracer keeps waits
    # as per-interval summaries, from those (syscall_wait_summaries, when that table exists).
    SignalDef("lock.top_process_futex_waits_per_s", "syscall_events", "1/s", COUNT,
              f"""SELECT timestamp, pid, 1 FROM syscall_events
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}}""", per_second=True, floor=60.0, top_key=True,
              evidence_sql=f"""SELECT id, pid, comm, {_MS} FROM syscall_events
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND pid = (SELECT pid FROM syscall_events WHERE timestamp BETWEEN :lo AND :hi
              AND syscall_name IN ({_FUTEX}) AND {{not_own}}
              GROUP BY pid ORDER BY COUNT(*) DESC, pid LIMIT 1)
              ORDER BY latency_ns DESC, stream_id LIMIT :n"""),
    SignalDef("lock.futex_waits_per_s", "syscall_events", "1/s", COUNT,
              f"""SELECT timestamp, '', 1 FROM syscall_events
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}}""", per_second=True, floor=20.0,
              evidence_sql=f"""SELECT id, pid, comm, {_MS} FROM syscall_events
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}} ORDER BY latency_ns DESC, stream_id LIMIT :n"""),
    SignalDef("lock.top_process_futex_wait_ms_per_s", "syscall_events", "ms/s", COUNT,
              f"""SELECT timestamp, pid, {_MS} FROM syscall_events
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}}""", per_second=True, floor=500.0, cap_to_step=True,
              top_key=True),
    SignalDef("lock.futex_wait_ms_per_s", "syscall_events", "ms/s", COUNT,
              f"""SELECT timestamp, '', {_MS} FROM syscall_events
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}}""", per_second=True, floor=500.0, cap_to_step=True),
    SignalDef("lock.top_process_futex_waits_summarised_per_s", "syscall_wait_summaries",
              "1/s", COUNT,
              f"""SELECT timestamp, pid, wait_count FROM syscall_wait_summaries
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}}""", per_second=True, floor=60.0, top_key=True,
              evidence_sql=f"""SELECT id, pid, comm, wait_count FROM syscall_wait_summaries
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}} ORDER BY wait_count DESC, stream_id LIMIT :n"""),
    SignalDef("lock.top_process_futex_wait_ms_summarised_per_s", "syscall_wait_summaries",
              "ms/s", COUNT,
              f"""SELECT timestamp, pid, {real('latency_sum_ns')} / 1e6
              FROM syscall_wait_summaries
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_FUTEX})
              AND {{not_own}}""", per_second=True, floor=500.0, top_key=True),
    # Slow socket waits (send/recv blocked on the peer or on retransmits), summarised per
    # interval by the syscall tracer: the effect a retransmit storm has.
    SignalDef("syscall.net.waits_per_s", "syscall_wait_summaries", "1/s", COUNT,
              f"""SELECT timestamp, '', wait_count FROM syscall_wait_summaries
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_NET})
              AND {{not_own}}""", per_second=True, floor=2.0,
              evidence_sql=f"""SELECT id, pid, comm, wait_count FROM syscall_wait_summaries
              WHERE timestamp BETWEEN :lo AND :hi AND syscall_name IN ({_NET})
              AND {{not_own}} ORDER BY wait_count DESC, stream_id LIMIT :n"""),
    SignalDef("sched.voluntary_per_s", "sched_events", "1/s", COUNT,
              """SELECT timestamp, '', voluntary_switches FROM sched_events
              WHERE timestamp BETWEEN :lo AND :hi AND {not_own}""", per_sample=True,
              floor=200.0,
              evidence_sql="""SELECT id, pid, comm, voluntary_switches FROM sched_events
              WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
              ORDER BY voluntary_switches DESC, stream_id LIMIT :n"""),
    SignalDef("tcp.retrans_per_s", "tcp_retransmit_stats", "1/s", COUNT,
              """SELECT timestamp, '', retrans_segs FROM tcp_retransmit_stats
              WHERE timestamp BETWEEN :lo AND :hi""", per_second=True, diff=True, floor=5.0,
              evidence_sql="""SELECT id, 0, '', retrans_segs FROM tcp_retransmit_stats
              WHERE timestamp BETWEEN :lo AND :hi
              ORDER BY timestamp DESC, stream_id DESC LIMIT :n"""),
)


def infer_window(conn: Connection, since_ns: int | None, until_ns: int | None) -> Window:
    """The window asked for, else the span of the data; the step is the scraper's interval."""
    lo, hi = since_ns, until_ns
    spans = [conn.execute(text(f"SELECT MIN(timestamp), MAX(timestamp) FROM {t}")).one()
             for t in ("memory_metrics", "syscall_events", "sched_events", "load_metrics")]
    if lo is None:
        lo = min((s[0] for s in spans if s[0] is not None), default=None)
    if hi is None:
        hi = max((s[1] for s in spans if s[1] is not None), default=None)
    if lo is None or hi is None:
        raise DatabaseError("the database holds no samples to analyse; collect first "
                            "(`kernelsight run --duration 60 ...`)")
    if hi <= lo:
        raise DatabaseError("the window is empty: --until must be after --since")
    ts = [r[0] for r in conn.execute(text(
        "SELECT timestamp FROM memory_metrics WHERE timestamp BETWEEN :lo AND :hi "
        "ORDER BY timestamp LIMIT 200"), {"lo": lo, "hi": hi})]
    step = int(np.median(np.diff(ts))) if len(ts) >= 3 else 1_000_000_000
    return Window(int(lo), int(hi), max(step, 100_000_000))


def _bin(window: Window, rows: list[tuple[int, Any]], d: SignalDef,
         first_ns: int | None = None) -> np.ndarray:
    n = window.bins
    step_s = window.step_ns / 1e9
    if d.spread:  # (t, (value, covered_ns)): the value spread evenly over what it covers
        out = np.zeros(n)
        for t, (v, covered) in rows:
            dur = max(int(covered or 0), 1)
            lo, hi = t - dur, t
            for i in range(max(0, (lo - window.since_ns) // window.step_ns),
                           min(n - 1, max(0, (hi - window.since_ns) // window.step_ns)) + 1):
                b0 = window.since_ns + i * window.step_ns
                part = min(hi, b0 + window.step_ns) - max(lo, b0)
                if part > 0:
                    out[i] += float(v) * part / dur
        return out / step_s if d.per_second else out
    if d.cap_to_step:
        rows = [(t, min(float(v), step_s * 1e3)) for t, v in rows]
    if d.diff:  # cumulative counter -> increase between consecutive samples
        rows = [(t, max(0.0, float(v) - float(p))) for (_, p), (t, v) in itertools.pairwise(rows)]
    idx = np.array([min(n - 1, max(0, (t - window.since_ns) // window.step_ns))
                    for t, _ in rows], dtype=int)
    vals = np.array([float(v) for _, v in rows], dtype=float)
    if d.per_sample:  # one row per key per interval: sum each sample, then a mean per bin
        per_t: dict[int, float] = {}
        for t, v in rows:
            per_t[t] = per_t.get(t, 0.0) + float(v)
        idx = np.array([min(n - 1, max(0, (t - window.since_ns) // window.step_ns))
                        for t in per_t], dtype=int)
        vals = np.array(list(per_t.values()), dtype=float) / (window.step_ns / 1e9)
    if d.kind == COUNT and not d.per_sample:
        out = np.zeros(n)
        np.add.at(out, idx, vals)
        if d.per_second:
            out /= window.step_ns / 1e9
        return out
    out = np.full(n, np.nan)
    if d.agg == "median":
        for i in np.unique(idx):
            out[i] = float(np.median(vals[idx == i]))
    elif d.agg == "mean" or d.per_sample:
        for i in np.unique(idx):
            out[i] = float(np.mean(vals[idx == i]))
    else:
        for i, v in zip(idx, vals, strict=False):
            if d.agg == "last" or np.isnan(out[i]) or v > out[i]:
                out[i] = v
    # Gauges: carry the last value forward over empty bins; before the first sample (a
    # tracer still starting) the signal stays unobserved (NaN), not a made-up level.
    valid = ~np.isnan(out)
    if d.fill_zero and first_ns is not None:
        start = max(0, (first_ns - window.since_ns) // window.step_ns)
        out[start:][np.isnan(out[start:])] = 0.0
        return out
    if valid.any():
        first = int(np.argmax(valid))
        for i in range(first + 1, n):
            if np.isnan(out[i]):
                out[i] = out[i - 1]
    return out


def load(conn: Connection, window: Window) -> dict[str, Series]:
    """Every signal over ``window``, by name; signals without rows are left out."""
    # Service time, plus the socket calls (waits, but the effect a retransmit storm has).
    net = ", ".join(f"'{n}'" for n in sorted(waits.FAMILIES["net"]))
    service = f"({waits.service_sql()} OR syscall_name IN ({net}))"
    not_own = not_own_sql(conn)
    out: dict[str, Series] = {}
    tables = table_names(conn)
    for d in SIGNALS:
        if d.table not in tables:  # a table a newer collector adds: no rows, no signal
            continue
        sql = d.sql.format(service=service, not_own=not_own)
        rows = conn.execute(text(sql), {"lo": window.since_ns, "hi": window.until_ns}).all()
        by_key: dict[str, list[tuple[int, Any]]] = {}
        for t, raw, v, *extra in rows:
            if v is None:
                continue
            key = waits.family(str(raw)) if d.by_family else str(raw)
            by_key.setdefault(key, []).append((int(t), (v, extra[0]) if d.spread else v))
        if d.by_family and rows:
            by_key["all"] = [r for rs in by_key.values() for r in rs]
        if d.top_key:
            by_key = {"": [r for rs in by_key.values() for r in rs]} if by_key else {}
            tops = [_bin(window, sorted(rs), d, None) for rs in _by_pid(rows, d).values()]
        first = conn.execute(text(f"SELECT MIN(timestamp) FROM {d.table} WHERE timestamp "
                                  "BETWEEN :lo AND :hi"),
                             {"lo": window.since_ns, "hi": window.until_ns}).scalar()
        for key, krows in sorted(by_key.items()):
            krows.sort()
            name = d.name.format(key=key)
            ev = d.evidence_sql
            if d.by_family:
                names = sorted(waits.FAMILIES.get(key, ()))
                fam = ", ".join(f"'{n}'" for n in names) if key not in ("all", "other") else ""
                ev = _SLOW_EVIDENCE.format(service=service, not_own=not_own,
                                           names=fam or "SELECT syscall_name FROM syscall_events")
            else:
                ev = ev.replace(":key", _sql_str(key)) if ":key" in ev else ev
                ev = ev.replace("{not_own}", not_own)
            vals = np.max(tops, axis=0) if d.top_key else _bin(window, krows, d, first)
            out[name] = Series(name, d.table, d.unit, d.kind, vals,
                               d.direction, d.floor, ev, len(krows))
    return out


def _by_pid(rows: Any, d: SignalDef) -> dict[str, list[tuple[int, Any]]]:
    out: dict[str, list[tuple[int, Any]]] = {}
    for t, pid, v, *_ in rows:
        if v is not None:
            out.setdefault(str(pid), []).append((int(t), v))
    return out


def _sql_str(s: str) -> str:
    """A device name or fault type from the database as a SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def evidence(conn: Connection, s: Series, lo_ns: int, hi_ns: int,
             n: int = 5) -> list[dict[str, Any]]:
    """The rows of ``s``'s table behind its value in [lo_ns, hi_ns], worst first."""
    if not s.evidence_sql:
        return []
    rows = conn.execute(text(s.evidence_sql), {"lo": lo_ns, "hi": hi_ns, "n": n}).all()
    return [{"table": s.table, "id": int(r[0]), "pid": int(r[1] or 0), "comm": str(r[2] or ""),
             "value": float(r[3] or 0), "signal": s.name} for r in rows]
