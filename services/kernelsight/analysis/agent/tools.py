"""The agent's fixed allow-list of read-only tools (netdata mcp-tools' shape: name,
description, JSON schema, handler, read_only).

Read-only sits below the tools: every handler gets a connection from
:func:`kernelsight.db.open_readonly` (SQLite ``mode=ro`` and ``PRAGMA query_only``). No tool
runs SQL text from the model, touches files, the network or a shell; arguments are checked
against the schema here (types, ranges, unknown keys) and results are row-limited. Strings
from the telemetry (comm, device) are returned as escaped JSON string values, never spliced
into instructions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from kernelsight import faultlatency, schema, waits
from kernelsight.analysis.own import not_own_sql
from kernelsight.safetext import printable
from kernelsight.sqlcompat import bigint, real

MAX_ROWS = 50
TEXT_LIMIT = 64  # characters of any telemetry string passed to the model


class ToolError(Exception):
    """Bad arguments: the message goes back to the model as the tool's result."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema (object)
    handler: Callable[[Connection, dict[str, Any], Any], dict[str, Any]]
    read_only: bool = True


def data(s: object) -> str:
    """A telemetry string as inert data: escaped, bounded."""
    return printable(s, TEXT_LIMIT)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


WINDOW_PROPS = {
    "since": {"type": "string", "description": "Window start: ISO 8601 UTC or epoch ns."},
    "until": {"type": "string", "description": "Window end: ISO 8601 UTC or epoch ns."},
}
LIMIT_PROP = {"limit": {"type": "integer", "description": f"Rows, 1..{MAX_ROWS} (default 10)."}}


def _time(v: Any, name: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ToolError(f"{name}: expected a time string")
    if isinstance(v, int | float):
        return int(v)
    if not isinstance(v, str) or len(v) > 40:
        raise ToolError(f"{name}: expected ISO 8601 or epoch ns as a string")
    try:
        if v.strip().isdigit():
            return int(v)
        dt = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1e9)
    except ValueError:
        raise ToolError(f"{name}: {data(v)!r} is not a time (ISO 8601 or epoch ns)") from None


def check_args(tool: Tool, args: Any) -> dict[str, Any]:
    """Arguments as the schema says, or ToolError (unknown keys, wrong types, ranges)."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ToolError("arguments must be an object")
    props = tool.parameters.get("properties", {})
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolError(f"unknown argument(s) {', '.join(data(u) for u in unknown)}; "
                        f"allowed: {', '.join(props) or 'none'}")
    missing = [k for k in tool.parameters.get("required", []) if k not in args]
    if missing:
        raise ToolError(f"missing argument(s): {', '.join(missing)}")
    out = dict(args)
    for k in ("since", "until"):
        if k in props:
            out[k] = _time(args.get(k), k)
    if "limit" in props:
        lim = args.get("limit", 10)
        if isinstance(lim, float) and lim.is_integer():
            lim = int(lim)
        if not isinstance(lim, int) or isinstance(lim, bool) or not 1 <= lim <= MAX_ROWS:
            raise ToolError(f"limit: an integer from 1 to {MAX_ROWS}")
        out["limit"] = lim
    for k, spec in props.items():
        if spec.get("type") == "string" and k in args and k not in ("since", "until"):
            if not isinstance(args[k], str) or len(args[k]) > 100:
                raise ToolError(f"{k}: expected a string of at most 100 characters")
            if "enum" in spec and args[k] not in spec["enum"]:
                raise ToolError(f"{k}: one of {', '.join(spec['enum'])}")
    return out


def _bounds(conn: Connection, a: dict[str, Any]) -> tuple[int, int]:
    lo = a.get("since")
    hi = a.get("until")
    if lo is None or hi is None:
        span = conn.execute(text("SELECT MIN(timestamp), MAX(timestamp) FROM memory_metrics")).one()
        lo = lo if lo is not None else (span[0] or 0)
        hi = hi if hi is not None else (span[1] or 2**62)
    return int(lo), int(hi)


def t_findings(conn: Connection, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
    res = ctx.analysis(a.get("since"), a.get("until"))
    out = []
    for f in res.findings:
        j = f.to_json()
        j["processes"] = [{**p, "comm": data(p["comm"])} for p in j["processes"]]
        j["evidence"] = [{"table": e["table"], "id": e["id"], "pid": e["pid"],
                          "comm": data(e["comm"]), "signal": e["signal"], "value": e["value"]}
                         for e in j["evidence"]]
        out.append(j)
    return {"window": res.window.to_json(), "findings": out}


def t_slowest(conn: Connection, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
    lo, hi = _bounds(conn, a)
    rows = conn.execute(text(
        f"SELECT id, timestamp, pid, comm, syscall_name, latency_ns, arg0, ret_value "
        f"FROM syscall_events WHERE timestamp BETWEEN :lo AND :hi AND {waits.service_sql()} "
        f"AND {not_own_sql(conn)} ORDER BY latency_ns DESC, stream_id LIMIT :n"),
        {"lo": lo, "hi": hi, "n": a["limit"]}).all()
    return {"rows": [{"table": "syscall_events", "id": r[0], "time": _iso(r[1]), "pid": r[2],
                      "comm": data(r[3]), "syscall": data(r[4]), "class": waits.SERVICE,
                      "family": waits.family(str(r[4])), "latency_ms": r[5] / 1e6,
                      "arg0": r[6], "ret": r[7]} for r in rows]}


def t_faults(conn: Connection, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
    lo, hi = _bounds(conn, a)
    ft = a.get("fault_type", "major")
    rows = conn.execute(text(
        f"SELECT pid, comm, {bigint('SUM(fault_count)')}, {bigint('SUM(latency_sum_ns)')}, "
        f"MAX(latency_max_ns), MAX(id), {bigint(f'SUM({faultlatency.TIMED_SQL})')} "
        "FROM page_fault_totals WHERE timestamp BETWEEN :lo AND "
        ":hi AND fault_type = :ft GROUP BY pid, comm ORDER BY 3 DESC, 1, 2 LIMIT :n"),
        {"lo": lo, "hi": hi, "ft": ft, "n": a["limit"],
         "pf_from": faultlatency.sampled_from_ns(conn, schema.schema_meta)}).all()
    # Minor faults: latency is that of the sampled ones (faultlatency), "timed" of them.
    return {"fault_type": ft, "rows": [
        {"pid": r[0], "comm": data(r[1]), "faults": r[2], "timed": r[6],
         "avg_latency_us": (r[3] or 0) / r[6] / 1e3 if r[6] else None,
         "max_latency_us": (r[4] or 0) / 1e3,
         "example_row": {"table": "page_fault_totals", "id": r[5]}} for r in rows]}


def t_io(conn: Connection, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
    lo, hi = _bounds(conn, a)
    rows = conn.execute(text(
        f"SELECT device, {bigint('SUM(read_count)')}, {bigint('SUM(write_count)')}, "
        "MAX(read_p95_us), MAX(read_p99_us), MAX(write_p95_us), MAX(write_p99_us), MAX(id) "
        "FROM io_latency_stats "
        "WHERE timestamp BETWEEN :lo AND :hi GROUP BY device ORDER BY 1 LIMIT :n"),
        {"lo": lo, "hi": hi, "n": MAX_ROWS}).all()
    return {"rows": [{"device": data(r[0]), "reads": r[1], "writes": r[2],
                      "max_read_p95_us": r[3], "max_read_p99_us": r[4],
                      "max_write_p95_us": r[5], "max_write_p99_us": r[6],
                      "example_row": {"table": "io_latency_stats", "id": r[7]}} for r in rows]}


def t_sched(conn: Connection, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
    lo, hi = _bounds(conn, a)
    rows = conn.execute(text(
        f"SELECT pid, comm, SUM(cpu_time_ms), {bigint('SUM(involuntary_switches)')}, "
        f"{real('SUM(runq_latency_p50_us * context_switches)')} / 1e3, "
        "MAX(runq_latency_p95_us), MAX(id) FROM sched_events WHERE timestamp BETWEEN :lo AND "
        ":hi GROUP BY pid, comm ORDER BY 5 DESC, 1, 2 LIMIT :n"),
        {"lo": lo, "hi": hi, "n": a["limit"]}).all()
    return {"rows": [{"pid": r[0], "comm": data(r[1]), "cpu_ms": r[2], "involuntary": r[3],
                      "runq_wait_ms": r[4], "max_runq_p95_us": r[5],
                      "example_row": {"table": "sched_events", "id": r[6]}} for r in rows]}


def t_series(conn: Connection, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
    res = ctx.analysis(a.get("since"), a.get("until"))
    s = res.series.get(a["name"])
    if s is None:
        raise ToolError(f"no signal named {data(a['name'])!r}; known: "
                        + ", ".join(sorted(res.series)))
    return {"signal": s.to_json(res.window),
            "anomalies": [x.to_json() for x in res.anomalies.get(a["name"], [])]}


def t_schema(conn: Connection, a: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"tables": {n: ["id", "stream_id", "timestamp", "host", *et.column_names]
                       for n, et in schema.BY_NAME.items()},
            "notes": "timestamp is wall-clock epoch ns; syscall_events holds only syscalls "
                     "slower than the tracer's threshold (10 ms by default)."}


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("get_findings", "The deterministic analysis: ranked cause->effect findings with "
         "evidence rows, for a window (default: all data).",
         {"type": "object", "properties": dict(WINDOW_PROPS)}, t_findings),
    Tool("slowest_service_syscalls", "Slowest service-time syscalls (waits such as futex "
         "left out) in a window, with their row ids.",
         {"type": "object", "properties": {**WINDOW_PROPS, **LIMIT_PROP}}, t_slowest),
    Tool("faults_by_process", "Page faults per process in a window (exact counts; the "
         "latency of minor faults is that of a sample of them, 'timed').",
         {"type": "object", "properties": {
             **WINDOW_PROPS, **LIMIT_PROP,
             "fault_type": {"type": "string", "enum": ["major", "minor"],
                            "description": "major (default) or minor"}}}, t_faults),
    Tool("io_percentiles_by_device", "Block I/O counts and worst p95/p99 latency per device.",
         {"type": "object", "properties": dict(WINDOW_PROPS)}, t_io),
    Tool("sched_by_process", "CPU time, involuntary switches and run-queue wait per process.",
         {"type": "object", "properties": {**WINDOW_PROPS, **LIMIT_PROP}}, t_sched),
    Tool("signal_series", "One signal's values per interval and its anomalies.",
         {"type": "object", "properties": {
             **WINDOW_PROPS, "name": {"type": "string", "description": "e.g. load.running"}},
          "required": ["name"]}, t_series),
    Tool("get_schema", "Tables and columns of the database.",
         {"type": "object", "properties": {}}, t_schema),
)}


def call(conn: Connection, name: Any, args: Any, ctx: Any) -> dict[str, Any]:
    """Run one tool call from the model; anything not allowed comes back as an error."""
    tool = TOOLS.get(name) if isinstance(name, str) else None
    if tool is None:
        return {"error": f"unknown tool {data(name)!r}: only these read-only tools exist: "
                         + ", ".join(TOOLS)}
    try:
        return tool.handler(conn, check_args(tool, args), ctx)
    except ToolError as e:
        return {"error": str(e)}
    except DBAPIError as e:  # e.g. the statement timeout: the model learns the tool failed
        conn.rollback()  # PostgreSQL: the failed transaction must end before the next call
        first = str(e.orig).strip().splitlines()[0] if str(e.orig).strip() else "error"
        return {"error": f"the database refused or cancelled the query: {data(first)}"}
