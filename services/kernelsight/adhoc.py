"""`kernelsight trace NAME --stdout`: one tracer, no Redis, rows printed as they come, the way
bcc's tools are used for a quick look at one process (issue 14 item 6).

The tracer is the same collector class the pipeline runs; only its publisher differs: rows
go to stdout as a table or as JSON lines. ``--pid``/``--comm`` are applied in the kernel by
the syscall tracer (at sys_enter: other tasks are never timed) and to the rows in user space
by the others (whose BPF programs aggregate per process anyway). ``--count`` (syscalls) keeps
no events: a per-syscall count and latency sum in the kernel, printed at the end, like
``syscount -L``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from datetime import datetime
from typing import IO, Any

import orjson

from kernelsight import collectors, schema
from kernelsight.config import Settings
from kernelsight.exceptions import CollectorError, ConfigError

# Columns shown in the table per event type (all columns, in schema order, for the others).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "syscall_events": ("pid", "tid", "comm", "syscall_name", "latency_ns", "ret_value", "arg0"),
    "syscall_wait_summaries": ("pid", "comm", "syscall_name", "wait_count", "latency_sum_ns",
                               "latency_max_ns"),
    "page_fault_events": ("pid", "tid", "comm", "fault_type", "access_type", "latency_ns",
                          "address"),
}
PER_PROCESS = ("syscalls", "pagefaults", "sched")  # tracers whose rows carry pid and comm


class StdoutPublisher:
    """The publisher interface the collectors use (publish, lost, status, flush, close),
    printing instead of sending. Losses are kept and printed to stderr at the end."""

    def __init__(self, out: IO[str], as_json: bool, pid: int = 0, comm: str = "") -> None:
        self.out = out
        self.as_json = as_json
        self.pid = pid
        self.comm = comm
        self.counters: dict[tuple[str, str, str], int] = {}
        self.printed: dict[str, int] = {}
        self._headers: set[str] = set()
        self._lock = threading.Lock()

    def _wanted(self, row: dict) -> bool:
        if self.pid and row.get("pid") != self.pid:
            return False
        return not (self.comm and row.get("comm") != self.comm[:15])

    def publish(self, event_type: str, rows: Any) -> None:
        with self._lock:
            for row in rows:
                if not self._wanted(row):
                    continue
                self.printed[event_type] = self.printed.get(event_type, 0) + 1
                if self.as_json:
                    self.out.write(orjson.dumps({"event_type": event_type, **row}).decode()
                                   + "\n")
                else:
                    self._table_row(event_type, row)
            self.out.flush()

    def _table_row(self, event_type: str, row: dict) -> None:
        cols = TABLE_COLUMNS.get(event_type) or schema.BY_NAME[event_type].column_names
        if event_type not in self._headers:
            self._headers.add(event_type)
            self.out.write(f"# {event_type}\n" + f"{'TIME':<15} " + " ".join(
                f"{_header(c):>{_width(c)}}" for c in cols) + "\n")
        ts = datetime.fromtimestamp(row["timestamp"] / 1e9).strftime("%H:%M:%S.%f")
        self.out.write(f"{ts:<15} " + " ".join(
            f"{_cell(c, row.get(c)):>{_width(c)}}" for c in cols) + "\n")

    def lost(self, event_type: str, reason: str, n: int) -> None:
        if n > 0:
            key = (event_type, schema.DROPPED, reason)
            self.counters[key] = self.counters.get(key, 0) + n

    def status(self, metric: str, detail: str = "", value: int = 1) -> None:
        pass

    def flush(self, *_: Any, **__: Any) -> bool:
        return True

    def close(self, *_: Any, **__: Any) -> None:
        pass


def _header(col: str) -> str:
    """latency_ns is shown in ms (LATENCY_MS), like the runbook query."""
    return {"latency_ns": "LAT_MS", "latency_sum_ns": "SUM_MS", "latency_max_ns": "MAX_MS",
            "syscall_name": "SYSCALL"}.get(col, col.upper())


def _width(col: str) -> int:
    return {"comm": 16, "syscall_name": 16, "arg0": 20, "address": 18}.get(
        col, max(7, len(_header(col))))


def _cell(col: str, v: Any) -> str:
    if v is None:
        return "-"
    if col.endswith("_ns") and col != "interval_ns":
        return f"{v / 1e6:.3f}"
    if col == "address":
        return f"{v & 0xFFFFFFFFFFFFFFFF:#x}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def check_options(name: str, stdout: bool, pid: int, comm: str, count: bool,
                  as_json: bool) -> None:
    """One line per option that does not apply."""
    if not stdout and (pid or comm or count or as_json):
        raise ConfigError("--pid, --comm, --count and --json belong to ad-hoc tracing; add "
                          "--stdout (e.g. kernelsight trace syscalls --stdout --pid 1234)")
    if (pid or comm) and name not in PER_PROCESS:
        raise ConfigError(f"{name} rows are per device, not per process: --pid/--comm apply to "
                          f"{', '.join(PER_PROCESS)}")
    if count and name != "syscalls":
        raise ConfigError("--count counts syscalls: use it with `trace syscalls`")
    if pid < 0:
        raise ConfigError("--pid must be a process id (> 0)")


def print_counts(out: IO[str], counts: dict[str, tuple[int, int]], as_json: bool) -> None:
    """Per syscall, most frequent first: COUNT and TIME_MS (latency sum), as syscount -L."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    if as_json:
        for name, (n, ns) in ranked:
            out.write(orjson.dumps({"syscall": name, "count": n, "latency_sum_ns": ns}).decode()
                      + "\n")
    else:
        out.write(f"{'SYSCALL':<22} {'COUNT':>12} {'TIME_MS':>14}\n")
        for name, (n, ns) in ranked:
            out.write(f"{name:<22} {n:>12} {ns / 1e6:>14.3f}\n")
    out.flush()


def run_stdout(name: str, settings: Settings, duration: float | None, *, pid: int = 0,
               comm: str = "", count: bool = False, as_json: bool = False,
               out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Trace until SIGINT/SIGTERM or ``duration``; rows (or counts) to ``out``."""
    out = out or sys.stdout
    err = err or sys.stderr
    settings = settings.with_(redis_url="")
    pub = StdoutPublisher(out, as_json, pid, comm)
    cls = collectors.get(name)
    kw: dict[str, Any] = {"pid": pid, "comm": comm, "count": count} if name == "syscalls" \
        else {}
    col = cls(settings, pub, **kw)  # type: ignore[arg-type, call-arg]
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            col.start()
        except CollectorError as e:
            err.write(f"kernelsight: {e}\n")
            return 5
        what = " ".join(x for x in (f"pid {pid}" if pid else "", f"comm {comm!r}" if comm
                                    else "") if x) or "all processes"
        err.write(f"Tracing {name} ({what}"
                  + (f", {duration:g}s" if duration else "") + "); Ctrl-C to end.\n")
        err.flush()
        end = time.monotonic() + duration if duration else None
        try:
            while not stop.is_set() and (end is None or time.monotonic() < end):
                col.poll()
        finally:
            col.stop()
        if count:
            print_counts(out, col.counts_final, as_json)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    for (et, _, reason), n in sorted(pub.counters.items()):
        err.write(f"lost: {et} {reason} {n}\n")
    return 0
