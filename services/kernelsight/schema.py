"""The event types and their tables, defined once.

Producers (collectors), the ingester, the reporter and the tests all import from here, so a
column exists in exactly one place. Column names match the original KernelSight schema so our
users' SQL keeps working; every table also has ``id``, ``stream_id`` (the Redis stream entry id
packed into an integer, which makes re-delivery idempotent), ``timestamp`` (wall-clock epoch
nanoseconds) and ``host``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from kernelsight import streamid as _streamid

SCHEMA_VERSION = 2

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

STREAM_PREFIX = "kernelsight:events:"
ACCOUNTING_STREAM = "kernelsight:accounting"
DEADLETTER_STREAM = "kernelsight:deadletter"
INGEST_GROUP = "kernelsight-ingest"


@dataclass(frozen=True)
class Col:
    """One event column: its SQL type and the range a valid value must lie in."""

    name: str
    kind: str  # "int" | "float" | "str"
    lo: float | None = 0
    hi: float | None = INT64_MAX
    maxlen: int = 256
    choices: tuple[str, ...] = ()


def I(name: str, lo: int | None = 0, hi: int = INT64_MAX) -> Col:
    return Col(name, "int", lo, hi)


def S(name: str, maxlen: int = 64, choices: tuple[str, ...] = ()) -> Col:
    return Col(name, "str", None, None, maxlen, choices)


def F(name: str, lo: float | None = 0.0) -> Col:
    return Col(name, "float", lo, None)


@dataclass(frozen=True)
class EventType:
    name: str  # table name, also the stream suffix
    source: str  # the collector module that produces it
    label: str  # human name shown in the report
    columns: tuple[Col, ...]
    # Every index costs the ingester on each row (about 0.5 us on this VM; the latency one,
    # inserted at random positions, more), so only those the report and the runbook use.
    indexes: tuple[tuple[str, ...], ...] = ()
    core: bool = True  # one of the ten event types the stress verdict counts

    @property
    def stream(self) -> str:
        return STREAM_PREFIX + self.name

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


COMM = S("comm", 16 * 4)  # TASK_COMM_LEN bytes, decoded; room for escapes

EVENT_TYPES: tuple[EventType, ...] = (
    EventType(
        "syscall_events", "syscalls", "eBPF Syscall Tracer",
        (I("pid"), I("tid"), I("cpu"), I("uid"), I("syscall_nr", -1), S("syscall_name", 64),
         I("latency_ns"), I("ret_value", INT64_MIN), I("is_error", 0, 1),
         I("arg0", INT64_MIN), COMM),
        (("latency_ns",),),
    ),
    EventType(
        "page_fault_events", "pagefaults", "eBPF Page Fault Tracer",
        (I("pid"), I("tid"), I("cpu"), I("address", INT64_MIN), I("latency_ns"),
         S("fault_type", 8, ("major", "minor")), S("access_type", 8, ("read", "write", "exec")),
         I("user_mode", 0, 1), COMM),
        (("latency_ns",),),
    ),
    EventType(
        "io_latency_stats", "io", "eBPF I/O Latency Tracer",
        (S("device", 64), I("read_count"), I("write_count"), I("read_bytes"), I("write_bytes"),
         F("read_p50_us"), F("read_p95_us"), F("read_p99_us"), F("read_max_us"),
         F("write_p50_us"), F("write_p95_us"), F("write_p99_us"), F("write_max_us")),
        (("device", "timestamp"),),
    ),
    EventType(
        "sched_events", "sched", "eBPF Scheduler Tracer",
        (I("pid"), COMM, I("context_switches"), I("voluntary_switches"),
         I("involuntary_switches"), I("wakeups"), F("cpu_time_ms"), F("avg_timeslice_us"),
         F("runq_latency_p50_us"), F("runq_latency_p95_us"), F("runq_latency_max_us")),
        (("pid", "timestamp"),),
    ),
    EventType(
        "memory_metrics", "scraper", "Scraper",
        tuple(I(n) for n in (
            "mem_total_kb", "mem_free_kb", "mem_available_kb", "buffers_kb", "cached_kb",
            "swap_total_kb", "swap_free_kb", "active_kb", "inactive_kb", "dirty_kb",
            "writeback_kb")),
    ),
    EventType(
        "load_metrics", "scraper", "Scraper",
        (F("load_1min"), F("load_5min"), F("load_15min"), I("running_processes"),
         I("total_processes"), I("last_pid")),
    ),
    EventType(
        "block_stats", "scraper", "Scraper",
        (S("device_name", 64),) + tuple(I(n) for n in (
            "read_ios", "read_merges", "read_sectors", "read_ticks", "write_ios",
            "write_merges", "write_sectors", "write_ticks", "in_flight", "io_ticks",
            "time_in_queue")),
        (("device_name", "timestamp"),),
    ),
    EventType(
        "network_interface_stats", "scraper", "Scraper",
        (S("interface_name", 64),) + tuple(I(n) for n in (
            "rx_bytes", "rx_packets", "rx_errors", "rx_drops", "tx_bytes", "tx_packets",
            "tx_errors", "tx_drops")),
        (("interface_name", "timestamp"),),
    ),
    EventType(
        "tcp_stats", "scraper", "Scraper",
        tuple(I(n) for n in (
            "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
            "close", "close_wait", "last_ack", "listen", "closing")),
    ),
    EventType(
        "tcp_retransmit_stats", "scraper", "Scraper",
        (I("retrans_segs"), I("out_segs")),
    ),
    # Exact per-interval page-fault totals per process and fault type. page_fault_events
    # holds every major fault but only a rate-limited sample of minor faults; these rows carry
    # the true counts and latency sums, so averages computed from them are not sample figures.
    EventType(
        "page_fault_totals", "pagefaults", "eBPF Page Fault Tracer (exact totals)",
        (I("pid"), COMM, S("fault_type", 8, ("major", "minor")), I("fault_count"),
         I("latency_sum_ns"), I("latency_max_ns"), I("sampled_events"), I("interval_ns")),
        (("pid", "timestamp"),),
        core=False,
    ),
)

BY_NAME: dict[str, EventType] = {e.name: e for e in EVENT_TYPES}
BY_STREAM: dict[str, EventType] = {e.stream: e for e in EVENT_TYPES}
CORE_EVENT_TYPES: tuple[EventType, ...] = tuple(e for e in EVENT_TYPES if e.core)

metadata = MetaData()

_SQL = {"int": BigInteger, "float": Float, "str": Text}


def _event_table(et: EventType) -> Table:
    table = Table(
        et.name, metadata,
        Column("id", Integer, primary_key=True),
        Column("stream_id", BigInteger, nullable=True, unique=True),
        Column("timestamp", BigInteger, nullable=False),
        Column("host", Text, nullable=False),
        *(Column(c.name, _SQL[c.kind]) for c in et.columns),
    )
    Index(f"ix_{et.name}_timestamp", table.c.timestamp)
    for names in et.indexes:
        if names == ("latency_ns",):
            # The report and runbook sort slowest first.
            Index(f"ix_{et.name}_latency_desc", table.c.latency_ns.desc())
        else:
            Index(f"ix_{et.name}_{'_'.join(names)}", *(table.c[n] for n in names))
    return table


TABLES: dict[str, Table] = {et.name: _event_table(et) for et in EVENT_TYPES}

# Pipeline accounting: cumulative counters published by each component instance. The report
# takes MAX(value) per (instance, event_type, metric, reason) and sums over instances, so
# re-delivered or repeated snapshots never double count.
pipeline_accounting = Table(
    "pipeline_accounting", metadata,
    Column("id", Integer, primary_key=True),
    Column("timestamp", BigInteger, nullable=False),
    Column("host", Text, nullable=False),
    Column("instance", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("metric", Text, nullable=False),  # produced | dropped | started | failed | ...
    Column("reason", Text, nullable=False, default=""),
    Column("value", BigInteger, nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_pipeline_accounting_key", "instance", "event_type", "metric", "reason"),
)

# Entries the ingester could not store, with why. Also mirrored to the dead-letter stream.
dead_letters = Table(
    "dead_letters", metadata,
    Column("id", Integer, primary_key=True),
    Column("timestamp", BigInteger, nullable=False),
    Column("stream", Text, nullable=False),
    Column("entry_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", LargeBinary, nullable=True),
    UniqueConstraint("stream", "entry_id"),
)

schema_meta = Table(
    "schema_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Accounting metrics and well-known drop reasons.
PRODUCED = "produced"
DROPPED = "dropped"
STARTED = "started"
FAILED = "failed"

DEADLETTER_PAYLOAD_MAX = 4096


# Stream-id packing lives in kernelsight.streamid (bounds included); these names stay for callers.
stream_id_to_int = _streamid.pack
int_to_stream_id = _streamid.unpack
