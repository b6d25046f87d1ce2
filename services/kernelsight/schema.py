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
    Identity,
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

# 4 added pressure_stats, vmstat_stats and syscall_wait_summaries (and their rollups) and
# nothing else: a version 3 database is upgraded in place by creating the tables it lacks
# (db._create_schema).
# 5: event tables are unique on (host, stream_id) instead of stream_id alone (stream ids are
# unique only within one host's stream, and hosts share a store). A version 4 SQLite file is
# rebuilt in place, rows and ids kept (storage/upgrade.py). On PostgreSQL the event tables are
# partitioned by day on timestamp, so their key is (host, stream_id, timestamp).
SCHEMA_VERSION = 5
ADDITIVE_UPGRADES = {3: 4}  # from -> to: only new tables, existing ones unchanged
REBUILD_UPGRADES = {4: 5}  # from -> to: event tables rebuilt with their new unique key

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Redis key names, one naming in every mode (a single Redis or a Redis Cluster). Every key
# that belongs to a host carries the host as a hash tag, ``kernelsight:{<host>}:...``, so all
# of a host's keys share one cluster slot: a producer's chunk script, an XREADGROUP over the
# host's streams and every pipeline stay within one slot. Ingesters find hosts in HOSTS_KEY
# (SADDed by each producer at start and with each heartbeat), never by SCAN, which on a
# cluster would have to ask every master.
HOSTS_KEY = "kernelsight:hosts"
HOST_KEY = "kernelsight:{{{host}}}:{name}"  # .format(host=..., name=...): any per-host key
INGEST_GROUP = "kernelsight-ingest"
EVENTS_PART = "events:"
ACCOUNTING_PART = "accounting"
DEADLETTER_PART = "deadletter"


def host_key(host: str, name: str) -> str:
    """``kernelsight:{<host>}:<name>``: a key in the host's slot."""
    return HOST_KEY.format(host=host, name=name)


def stream_key(host: str, table: str) -> str:
    """The host's stream of one event table: ``kernelsight:{<host>}:events:<table>``."""
    return HOST_KEY.format(host=host, name=EVENTS_PART + table)


def accounting_stream(host: str) -> str:
    return HOST_KEY.format(host=host, name=ACCOUNTING_PART)


def deadletter_stream(host: str) -> str:
    return HOST_KEY.format(host=host, name=DEADLETTER_PART)


def host_streams(host: str) -> list[str]:
    """Every stream the ingest group reads for one host: its event streams, then accounting."""
    return [stream_key(host, et.name) for et in EVENT_TYPES] + [accounting_stream(host)]


def split_key(key: str | bytes) -> tuple[str, str] | None:
    """``kernelsight:{<host>}:<name>`` -> (host, name); None for any other key."""
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    if not key.startswith("kernelsight:{"):
        return None
    host, sep, name = key[len("kernelsight:{"):].partition("}:")
    return (host, name) if sep and host else None


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot name a host's keys, or None: it is a Redis Cluster hash tag, so no
    braces (the tag would end early and the host's keys spread over slots)."""
    if not host:
        return "the host name is empty"
    if "{" in host or "}" in host:
        return f"host name {host!r} contains a brace"
    return None


# How a column rolls up into its table's per-minute rollup (<table>_1m):
KEY = "key"  # grouped by (with host and the minute)
GAUGE = "gauge"  # a level: min, avg and max over the minute
COUNTER = "counter"  # a cumulative kernel counter: its last value in the minute (never summed)
SUM = "sum"  # a per-interval count or amount: summed
MAX = "max"  # a per-interval percentile or maximum: the largest (an upper bound, not a merge)
LATENCY = "latency"  # one value per event: exact p50, p95, p99 and max (nearest rank)
SKIP = "skip"  # identifiers (pid, address...): not in the rollup
ROLES = (KEY, GAUGE, COUNTER, SUM, MAX, LATENCY, SKIP)


@dataclass(frozen=True)
class Col:
    """One event column: its SQL type, the range a valid value must lie in, and how it rolls
    up per minute."""

    name: str
    kind: str  # "int" | "float" | "str"
    lo: float | None = 0
    hi: float | None = INT64_MAX
    maxlen: int = 256
    choices: tuple[str, ...] = ()
    role: str = SKIP


def I(name: str, lo: int | None = 0, hi: int = INT64_MAX, role: str = SKIP) -> Col:
    return Col(name, "int", lo, hi, role=role)


def S(name: str, maxlen: int = 64, choices: tuple[str, ...] = (), role: str = SKIP) -> Col:
    return Col(name, "str", None, None, maxlen, choices, role=role)


def F(name: str, lo: float | None = 0.0, role: str = SKIP) -> Col:
    return Col(name, "float", lo, None, role=role)


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

    def stream_for(self, host: str) -> str:
        """This table's stream for ``host`` (schema.stream_key)."""
        return stream_key(host, self.name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def rollup(self) -> str | None:
        """The name of its per-minute rollup table, or None when no column rolls up."""
        return f"{self.name}_1m" if any(c.role != SKIP for c in self.columns) else None


COMM = S("comm", 16 * 4, role=KEY)  # TASK_COMM_LEN bytes, decoded; room for escapes

EVENT_TYPES: tuple[EventType, ...] = (
    EventType(
        "syscall_events", "syscalls", "eBPF Syscall Tracer",
        (I("pid"), I("tid"), I("cpu"), I("uid"), I("syscall_nr", -1),
         S("syscall_name", 64, role=KEY), I("latency_ns", role=LATENCY),
         I("ret_value", INT64_MIN), I("is_error", 0, 1, role=SUM), I("arg0", INT64_MIN), COMM),
        (("latency_ns",),),
    ),
    EventType(
        "page_fault_events", "pagefaults", "eBPF Page Fault Tracer",
        (I("pid"), I("tid"), I("cpu"), I("address", INT64_MIN), I("latency_ns", role=LATENCY),
         S("fault_type", 8, ("major", "minor"), role=KEY),
         S("access_type", 8, ("read", "write", "exec")), I("user_mode", 0, 1), COMM),
        (("latency_ns",),),
    ),
    EventType(
        "io_latency_stats", "io", "eBPF I/O Latency Tracer",
        (S("device", 64, role=KEY), I("read_count", role=SUM), I("write_count", role=SUM),
         I("read_bytes", role=SUM), I("write_bytes", role=SUM),
         *(F(f"{op}_{p}_us", role=MAX) for op in ("read", "write")
           for p in ("p50", "p95", "p99", "max"))),
        (("device", "timestamp"),),
    ),
    EventType(
        "sched_events", "sched", "eBPF Scheduler Tracer",
        (I("pid", role=KEY), COMM, I("context_switches", role=SUM),
         I("voluntary_switches", role=SUM), I("involuntary_switches", role=SUM),
         I("wakeups", role=SUM), F("cpu_time_ms", role=SUM), F("avg_timeslice_us", role=MAX),
         F("runq_latency_p50_us", role=MAX), F("runq_latency_p95_us", role=MAX),
         F("runq_latency_max_us", role=MAX)),
        (("pid", "timestamp"),),
    ),
    EventType(
        "memory_metrics", "scraper", "Scraper",
        tuple(I(n, role=GAUGE) for n in (
            "mem_total_kb", "mem_free_kb", "mem_available_kb", "buffers_kb", "cached_kb",
            "swap_total_kb", "swap_free_kb", "active_kb", "inactive_kb", "dirty_kb",
            "writeback_kb")),
    ),
    EventType(
        "load_metrics", "scraper", "Scraper",
        (F("load_1min", role=GAUGE), F("load_5min", role=GAUGE), F("load_15min", role=GAUGE),
         I("running_processes", role=GAUGE), I("total_processes", role=GAUGE),
         I("last_pid", role=GAUGE)),
    ),
    EventType(
        "block_stats", "scraper", "Scraper",
        (S("device_name", 64, role=KEY),) + tuple(
            I(n, role=GAUGE if n == "in_flight" else COUNTER) for n in (
                "read_ios", "read_merges", "read_sectors", "read_ticks", "write_ios",
                "write_merges", "write_sectors", "write_ticks", "in_flight", "io_ticks",
                "time_in_queue")),
        (("device_name", "timestamp"),),
    ),
    EventType(
        "network_interface_stats", "scraper", "Scraper",
        (S("interface_name", 64, role=KEY),) + tuple(I(n, role=COUNTER) for n in (
            "rx_bytes", "rx_packets", "rx_errors", "rx_drops", "tx_bytes", "tx_packets",
            "tx_errors", "tx_drops")),
        (("interface_name", "timestamp"),),
    ),
    EventType(
        "tcp_stats", "scraper", "Scraper",
        tuple(I(n, role=GAUGE) for n in (
            "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
            "close", "close_wait", "last_ack", "listen", "closing")),
    ),
    EventType(
        "tcp_retransmit_stats", "scraper", "Scraper",
        (I("retrans_segs", role=COUNTER), I("out_segs", role=COUNTER)),
    ),
    # Exact per-interval page-fault counts per process and fault type. page_fault_events
    # holds every major fault but only a rate-limited sample of minor faults; these rows carry
    # the true counts, and the latency of the timed faults: every major fault, the sampled
    # minor ones (sampled_events of them; before 2026-12-01 every minor one: faultlatency).
    EventType(
        "page_fault_totals", "pagefaults", "eBPF Page Fault Tracer (exact totals)",
        (I("pid"), COMM, S("fault_type", 8, ("major", "minor"), role=KEY),
         I("fault_count", role=SUM), I("latency_sum_ns", role=SUM),
         I("latency_max_ns", role=MAX), I("sampled_events", role=SUM), I("interval_ns")),
        (("pid", "timestamp"),),
        core=False,
    ),
    # Pressure stall information, one row per resource (cpu, memory, io) per interval: the
    # kernel's moving averages in percent of wall time, and its cumulative stall time. A cpu
    # "full" line absent (kernels before 5.13) reads as the zeros newer kernels print.
    EventType(
        "pressure_stats", "scraper", "Scraper (/proc/pressure)",
        (S("resource", 8, ("cpu", "memory", "io"), role=KEY),
         *(F(f"{k}_{a}_pct", role=GAUGE) if a != "total" else I(f"{k}_total_us", role=COUNTER)
           for k in ("some", "full") for a in ("avg10", "avg60", "avg300", "total"))),
        core=False,
    ),
    # The essentials of /proc/vmstat, cumulative since boot as the kernel counts them
    # (*_total; pgscan/pgsteal/pswp in pages, the others in events): rates are differences.
    EventType(
        "vmstat_stats", "scraper", "Scraper (/proc/vmstat)",
        tuple(I(n, role=COUNTER) for n in (
            "pgfault_total", "pgmajfault_total", "pgscan_kswapd_total", "pgscan_direct_total",
            "pgsteal_kswapd_total", "pgsteal_direct_total", "oom_kill_total", "pswpin_total",
            "pswpout_total", "workingset_refault_anon_total", "workingset_refault_file_total",
            "compact_stall_total", "allocstall_total")),
        core=False,
    ),
    # Blocking waits (waits.py: futex, epoll/poll/select, nanosleep, wait4, reads on fd 0, ...)
    # slower than the syscall tracer's threshold, summarised exactly per interval and
    # (pid, comm, syscall): how many, their total and their longest latency. Service-time
    # slow syscalls stay one row each in syscall_events; `--record-waits` puts waits there too.
    EventType(
        "syscall_wait_summaries", "syscalls", "eBPF Syscall Tracer (wait summaries)",
        (I("pid"), COMM, I("syscall_nr", -1), S("syscall_name", 64, role=KEY),
         I("wait_count", role=SUM), I("latency_sum_ns", role=SUM),
         I("latency_max_ns", role=MAX), I("interval_ns")),
        (("pid", "timestamp"),),
        core=False,
    ),
    # Run records (`kernelsight run`, the stress tests, the soak), written through the pipeline
    # like any event. A run's later state (its end, its verdict) is a new row with the same
    # run_id: readers take the newest row per run_id (highest stream_id). end_ns is 0 and
    # verdict "" while the run is going.
    EventType(
        "runs", "runs", "Run records",
        (S("run_id", 64), S("kind", 32), I("start_ns"), I("end_ns"), S("verdict", 32)),
        (("run_id",),),
        core=False,
    ),
)

BY_NAME: dict[str, EventType] = {e.name: e for e in EVENT_TYPES}
CORE_EVENT_TYPES: tuple[EventType, ...] = tuple(e for e in EVENT_TYPES if e.core)

_SQL = {"int": BigInteger, "float": Float, "str": Text}
UNIT_SUFFIXES = ("_ns", "_us", "_ms", "_kb", "_bytes", "_pct")


def stat_name(col: str, stat: str) -> str:
    """A rollup column's name: the statistic goes before the unit, which stays last
    (latency_ns -> latency_p95_ns, mem_free_kb -> mem_free_min_kb, read_ios -> read_ios_last)."""
    for u in UNIT_SUFFIXES:
        if col.endswith(u):
            return f"{col[:-len(u)]}_{stat}{u}"
    return f"{col}_{stat}"


ROLLUP_STATS = {GAUGE: ("min", "avg", "max"), COUNTER: ("last",), SUM: ("",), MAX: ("",),
                LATENCY: ("p50", "p95", "p99", "max")}


def rollup_columns(et: EventType) -> list[tuple[str, str, Col]]:
    """(rollup column, statistic, raw column) for every rolled-up value of ``et``; the
    statistic "" keeps the raw column's name (sums and maxima of per-interval values)."""
    return [(stat_name(c.name, st) if st else c.name, st or c.role, c)
            for c in et.columns if c.role in ROLLUP_STATS for st in ROLLUP_STATS[c.role]]


class _Tables:
    """Every table of one dialect, built from the definitions above. SQLite's and
    PostgreSQL's differ only where the engines force it: the ``id`` (SQLite's rowid alias;
    a 64-bit identity on PostgreSQL) and the event tables' partitioning by day on PostgreSQL,
    whose unique key must then include ``timestamp``. Same names and columns, so a query
    built from either compiles for both."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        self.metadata = MetaData()
        self.tables = {et.name: self._event_table(et) for et in EVENT_TYPES}
        self.rollups = {et.name: self._rollup_table(et) for et in EVENT_TYPES if et.rollup}
        self._other_tables()

    def _id(self) -> Column:
        if self.postgres:
            return Column("id", BigInteger, Identity(), primary_key=True)
        return Column("id", Integer, primary_key=True)

    def _event_table(self, et: EventType) -> Table:
        cols = [Column("stream_id", BigInteger, nullable=True),
                Column("timestamp", BigInteger, nullable=False),
                Column("host", Text, nullable=False),
                *(Column(c.name, _SQL[c.kind]) for c in et.columns)]
        if self.postgres:
            table = Table(
                et.name, self.metadata,
                # No primary key: it would have to include timestamp, and its index cost
                # the COPY path a third of its rate (measured); ids come from the identity.
                Column("id", BigInteger, Identity(), nullable=False), *cols,
                UniqueConstraint("host", "stream_id", "timestamp",
                                 name=f"uq_{et.name}_host_stream_id"),
                postgresql_partition_by="RANGE (timestamp)",
            )
        else:
            table = Table(
                et.name, self.metadata,
                Column("id", Integer, primary_key=True), *cols,
                UniqueConstraint("host", "stream_id", name=f"uq_{et.name}_host_stream_id"),
            )
        Index(f"ix_{et.name}_timestamp", table.c.timestamp)
        for names in et.indexes:
            if names == ("latency_ns",):
                # The report and runbook sort slowest first.
                Index(f"ix_{et.name}_latency_desc", table.c.latency_ns.desc())
            else:
                Index(f"ix_{et.name}_{'_'.join(names)}", *(table.c[n] for n in names))
        return table

    def _rollup_table(self, et: EventType) -> Table:
        """``<table>_1m``: one row per (host, minute, key columns); ``timestamp`` is the
        minute's start in epoch ns and ``samples`` the raw rows it summarises."""
        assert et.rollup
        keys = [c for c in et.columns if c.role == KEY]
        cols = [Column(name, Float if st == "avg" or c.kind == "float" else BigInteger)
                for name, st, c in rollup_columns(et)]
        table = Table(
            et.rollup, self.metadata,
            self._id(),
            Column("timestamp", BigInteger, nullable=False),
            Column("host", Text, nullable=False),
            *(Column(c.name, _SQL[c.kind], nullable=False) for c in keys),
            Column("samples", BigInteger, nullable=False),
            *cols,
            UniqueConstraint("host", "timestamp", *(c.name for c in keys),
                             name=f"uq_{et.rollup}_key"),
        )
        Index(f"ix_{et.rollup}_timestamp", table.c.timestamp)
        return table

    def _other_tables(self) -> None:
        md = self.metadata
        # How far each table's rollup has got: every minute before done_until_ns is in
        # <table>_1m. The pruner never deletes a raw row at or after it.
        self.rollup_state = Table(
            "rollup_state", md,
            Column("table_name", String(64), primary_key=True),
            Column("done_until_ns", BigInteger, nullable=False),
        )
        # Pipeline accounting: cumulative counters published by each component instance. The
        # report takes MAX(value) per (instance, event_type, metric, reason) and sums over
        # instances, so re-delivered or repeated snapshots never double count.
        self.pipeline_accounting = Table(
            "pipeline_accounting", md,
            self._id(),
            Column("timestamp", BigInteger, nullable=False),
            Column("host", Text, nullable=False),
            Column("instance", Text, nullable=False),
            Column("source", Text, nullable=False),
            Column("event_type", Text, nullable=False),
            Column("metric", Text, nullable=False),  # produced | dropped | started | ...
            Column("reason", Text, nullable=False, default=""),
            Column("value", BigInteger, nullable=False),
            Column("detail", Text, nullable=True),
            # The producer's own packed stream id when it took this snapshot: every event the
            # snapshot counts has a smaller id from the same producer, every later one a larger
            # id. NULL for the ingester's and maintenance's own counters (their position is
            # their timestamp). Reports of a window read the snapshots at its boundaries by
            # this position (report.py).
            Column("stream_id", BigInteger, nullable=True),
            # With value last, MAX(value) per key is one index seek (the report, and
            # retention, which keeps that row of every key); the timestamp index lets
            # retention find old snapshots.
            Index("ix_pipeline_accounting_key", "instance", "event_type", "metric", "reason",
                  "value"),
            Index("ix_pipeline_accounting_timestamp", "timestamp"),
            Index("ix_pipeline_accounting_line", "host", "source", "stream_id"),
        )
        # Entries the ingester could not store, with why. Also mirrored to the dead-letter
        # stream.
        self.dead_letters = Table(
            "dead_letters", md,
            self._id(),
            Column("timestamp", BigInteger, nullable=False),
            Column("stream", Text, nullable=False),
            Column("entry_id", Text, nullable=False),
            Column("event_type", Text, nullable=False),
            Column("reason", Text, nullable=False),
            Column("payload", LargeBinary, nullable=True),
            UniqueConstraint("stream", "entry_id"),
            Index("ix_dead_letters_timestamp", "timestamp"),
        )
        self.schema_meta = Table(
            "schema_meta", md,
            Column("key", String(64), primary_key=True),
            Column("value", Text, nullable=False),
        )


_sqlite = _Tables(postgres=False)
PG = _Tables(postgres=True)  # the PostgreSQL DDL (storage/postgres.py); readers use the below

metadata = _sqlite.metadata
TABLES: dict[str, Table] = _sqlite.tables
ROLLUPS: dict[str, Table] = _sqlite.rollups
rollup_state = _sqlite.rollup_state
pipeline_accounting = _sqlite.pipeline_accounting
dead_letters = _sqlite.dead_letters
schema_meta = _sqlite.schema_meta

# Accounting metrics and well-known drop reasons.
PRODUCED = "produced"
DROPPED = "dropped"
STARTED = "started"
FAILED = "failed"
RETENTION_DELETED = "retention_deleted"  # raw rows removed by retention (reason time|size)
DEAD_LETTERS_DELETED = "dead_letters_deleted"  # dead letters removed by time retention
# A producer's first packed stream id, taken before any event (so below all of them), in every
# snapshot as this metric's detail (its value is 0, so sums over instances never overflow):
# where its stretch of its (host, source) line begins (report.py, late rows).
START_MARK = "start_mark"

DEADLETTER_PAYLOAD_MAX = 4096


# Stream-id packing lives in kernelsight.streamid (bounds included); these names stay for callers.
stream_id_to_int = _streamid.pack
int_to_stream_id = _streamid.unpack
