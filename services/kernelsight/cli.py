"""The `kernelsight` command. Every option also reads a KS_* environment variable."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kernelsight import collectors, defaults
from kernelsight.config import Settings
from kernelsight.exceptions import ConfigError, KernelSightError
from kernelsight.window import options as window_options

CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _opt(*decls: str, field: str, **kw: Any) -> Callable:
    kw.setdefault("show_envvar", True)
    kw.setdefault("envvar", "KS_" + field.upper())
    return click.option(*decls, field, default=None, **kw)


REDIS = _opt("--redis-url", field="redis_url",
             help="Redis URL, e.g. redis://:PASSWORD@127.0.0.1:6379/0, or a Redis Cluster as "
                  "redis+cluster://:PASSWORD@host:port[,host:port...] (any nodes, as seeds); "
                  "prefer KS_REDIS_URL (a flag's value is visible to every local user in ps).")
DB = _opt("--db", "--db-path", field="db_path", envvar=["KS_DB_PATH", "KS_DB_URL"],
          help="SQLite file, or a PostgreSQL URL such as postgresql+psycopg://ks@db:5432/ks "
               "(password from PGPASSWORD or ~/.pgpass, or in KS_DB_URL: a flag's value is "
               f"visible in ps) [default: {defaults.DB_PATH}].")
PROCFS = _opt("--procfs", field="procfs", help="procfs root, e.g. /host/proc [default: /proc].")
HOST = _opt("--host", field="host", help="Host name stored with each event [default: hostname].")
INTERVAL = _opt("--interval", field="interval", type=float,
                help="Seconds between samples/intervals [default: 1; `run`: "
                     f"{defaults.SERVICE_INTERVAL_S:g}].")
BUFFER = _opt("--buffer-max", field="buffer_max", type=int,
              help=f"Events buffered while Redis is unreachable [default: {defaults.BUFFER_MAX}].")
BUFFER_BYTES = _opt("--buffer-max-bytes", field="buffer_max_bytes", type=int,
                    help="Payload bytes buffered while Redis is unreachable or full "
                         f"[default: {defaults.BUFFER_MAX_BYTES}].")
METRICS = _opt("--metrics-addr", field="metrics_addr",
               help=f"Serve Prometheus /metrics on HOST:PORT; 'off' (or an empty KS_METRICS_ADDR) "
                    f"disables [default: {defaults.METRICS_ADDR}].")
LINGER = _opt("--publish-linger", field="publish_linger_s", type=float,
              help="Seconds a few buffered rows wait for more before they are sent in one "
                   f"round trip; 0 sends at every poll [default: {defaults.PUBLISH_LINGER_S:g}].")
MAXLEN = _opt("--stream-maxlen", field="stream_maxlen", type=int,
              help="Unread entries per stream above which producers hold back "
                   f"[default: {defaults.STREAM_MAXLEN}].")

RETENTION = _opt("--retention", field="retention",
                 help="Delete raw rows older than this (rolled up per minute first), e.g. 30m, "
                      f"12h, 7d [default: {defaults.RETENTION}].")
RETENTION_SIZE = _opt("--retention-size", field="retention_size",
                      help="Also delete the oldest raw rows when the database's data passes "
                           "this size, e.g. 64MiB, 2GiB [default: no size cap].")
RECORD_WAITS = click.option(
    "--record-waits", "record_waits", is_flag=True, default=None, envvar="KS_RECORD_WAITS",
    show_envvar=True,
    help="syscalls: one syscall_events row per slow blocking wait (futex, poll, nanosleep, "
         "...) as well, instead of exact per-interval summaries in syscall_wait_summaries.")
ROLLUP_RETENTION = _opt("--rollup-retention", field="rollup_retention",
                        help="Keep the per-minute rollups (<table>_1m) this long "
                             f"[default: {defaults.ROLLUP_RETENTION}].")


def settings_from(kw: dict[str, Any]) -> Settings:
    known = {k: kw.pop(k) for k in list(kw) if k in Settings.__dataclass_fields__}
    return Settings().with_(**known)


def common(*opts: Callable) -> Callable:
    def deco(f: Callable) -> Callable:
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Group(click.Group):
    """Commands of their own modules are imported only when asked for (or listed): each
    process of `run` (ingester, collectors) then loads what it runs, not the report, the
    analysis and the stress workloads (~9 MB of RSS per process)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name == "host":  # what `run` starts: only its own module
            from kernelsight.collectors.host import command as host

            self.add_command(host)
            cmd = host
        if cmd is None:
            _register_optional()
            cmd = super().get_command(ctx, cmd_name)
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register_optional()
        return super().list_commands(ctx)


@click.group(cls=_Group, context_settings=CTX)
@click.option("--log-level", envvar="KS_LOG_LEVEL", default="info", show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.version_option(package_name="kernelsight")
def cli(log_level: str) -> None:
    """KernelSight: kernel telemetry (/proc scraper + eBPF tracers) -> Redis streams -> SQLite.

    \b
    Examples:
      kernelsight run --duration 30 --db data/ks.db --collectors scraper,syscalls
      kernelsight doctor
      kernelsight report --db data/stress_test.db
      kernelsight query --db-path data/stress_test.db --demo
    """
    _logging(log_level)


@cli.command(context_settings=CTX)
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              envvar="KS_DURATION", show_envvar=True,
              help="Seconds to collect [default: until SIGTERM/SIGINT].")
@click.option("--collectors", "collector_list", default="all", envvar="KS_COLLECTORS",
              show_envvar=True, help=f"Comma list of {', '.join(collectors.ALL)} or 'all'.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              envvar="KS_LOG_DIR", help="Write each component's log to DIR/<name>.log.")
@click.option("--ingest-restarts", type=click.IntRange(0, 1000),
              default=defaults.INGEST_RESTARTS_MAX, show_default=True,
              envvar="KS_INGEST_RESTARTS", show_envvar=True,
              help="Restarts of an ingester that exits before the run ends (pause 1 s, "
                   "doubling up to 30 s); 0: the run stops when it exits.")
@click.option("--process-per-collector", is_flag=True, envvar="KS_PROCESS_PER_COLLECTOR",
              show_envvar=True, help="Each collector in its own process (each tracer then "
              "loads its own BCC, ~200 MB each) instead of all in one process.")
@common(REDIS, DB, PROCFS, HOST, INTERVAL, BUFFER, BUFFER_BYTES, MAXLEN, LINGER, RETENTION,
        RETENTION_SIZE, ROLLUP_RETENTION, METRICS, RECORD_WAITS)
def run(duration: float | None, collector_list: str, log_dir: str | None,
        ingest_restarts: int, process_per_collector: bool, **kw: Any) -> None:
    """Run collectors and the ingester natively until SIGTERM/SIGINT (or for DURATION
    seconds), then drain every stream into the database and exit.

    Uses KS_REDIS_URL when set; otherwise starts a private redis-server on a free loopback
    port (with a generated password) and stops it afterwards. The ingester is supervised: if
    it exits, it is restarted (--ingest-restarts times, with a growing pause) while Redis
    keeps the unstored entries; anything still unstored at the end is counted as dropped
    (unstored_at_exit) and the exit code is 1. The run is recorded in the `runs` table:
    `kernelsight report --run latest` reports it. The database is never emptied: the rows
    are added to what it holds (pass another --db for a separate file).

    \b
    Examples:
      kernelsight run --collectors scraper            # until Ctrl-C, into data/kernelsight.db
      kernelsight run --duration 10 --db /tmp/ks.db --collectors scraper
      sudo kernelsight run --db data/ks.db --collectors all
      sudo kernelsight run --retention 2m --retention-size 64MiB
      sudo kernelsight run --collectors all --process-per-collector
    """
    from kernelsight import runner
    from kernelsight.config import check_db_path
    from kernelsight.db import open_db
    from kernelsight.metrics import resolve_addr

    interval_given = kw.get("interval") is not None
    s = settings_from(kw)
    if not interval_given:
        s = s.with_(interval=defaults.SERVICE_INTERVAL_S)
    # The ingest child serves /metrics (it owns the batch histogram); it gets the address
    # resolved here through KS_METRICS_ADDR.
    s = s.with_(metrics_addr=resolve_addr(s.metrics_addr or None))
    names = collectors.parse_list(collector_list)
    check_db_path(s.db_path)
    open_db(s.db_path).dispose()
    rc = runner.run(s, duration, names, Path(log_dir) if log_dir else None,
                    echo=lambda m: click.echo(m, err=True), ingest_restarts=ingest_restarts,
                    one_process=not process_per_collector)
    sys.exit(rc)


@cli.command(context_settings=CTX)
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds [default: run until SIGTERM].")
@common(REDIS, PROCFS, HOST, INTERVAL, BUFFER, BUFFER_BYTES, MAXLEN, LINGER)
@_opt("--ignored-devices", field="ignored_devices",
      help="Regex of block device names to skip (node_exporter's default).")
def collect(duration: float | None, **kw: Any) -> None:
    """Run the /proc scraper (memory, load, block, network, TCP states, retransmits, PSI,
    vmstat).

    \b
    Examples:
      KS_REDIS_URL=redis://:pw@127.0.0.1:6379/0 kernelsight collect --interval 1
      KS_REDIS_URL=redis://:pw@redis:6379/0 kernelsight collect --procfs /host/proc
    """
    from kernelsight import selfpids
    from kernelsight.runner import run_collector

    s = settings_from(kw)
    _need_redis(s)
    selfpids.mark(s.redis_url, s.host, collectors.SCRAPER)
    sys.exit(run_collector(collectors.SCRAPER, s, duration))


@cli.command(context_settings=CTX)
@click.argument("tracer", type=click.Choice(collectors.TRACERS))
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds [default: run until SIGTERM].")
@common(REDIS, HOST, INTERVAL, BUFFER, BUFFER_BYTES, MAXLEN, LINGER, RECORD_WAITS)
@_opt("--min-latency-ms", field="min_latency_ms", type=float,
      help=f"syscalls: record syscalls slower than this [default: "
           f"{defaults.SYSCALL_MIN_LATENCY_MS:g}].")
@_opt("--ringbuf-pages", field="ringbuf_pages", type=int,
      help=f"BPF ring buffer size in pages, power of two [default: {defaults.RINGBUF_PAGES}].")
@_opt("--map-entries", field="map_entries", type=int,
      help=f"Max entries of each BPF hash map [default: {defaults.MAP_ENTRIES}].")
@_opt("--minor-fault-rate", field="minor_fault_rate", type=int,
      help="pagefaults: minor-fault events stored per second, the minor faults whose "
           "latency is measured (counts stay exact) "
           f"[default: {defaults.PAGEFAULT_MINOR_RATE}].")
@click.option("--stdout", "to_stdout", is_flag=True, envvar="KS_STDOUT", show_envvar=True,
              help="Ad-hoc: print rows (a table, or JSON lines with --json) instead of "
                   "publishing them; no Redis needed.")
@click.option("--pid", type=int, default=0, envvar="KS_PID", show_envvar=True,
              help="With --stdout: only this process (syscalls: filtered in the kernel).")
@click.option("--comm", default="", envvar="KS_COMM", show_envvar=True,
              help="With --stdout: only tasks of this name (the kernel's 15-character comm; "
                   "syscalls: filtered in the kernel).")
@click.option("--json", "as_json", is_flag=True, envvar="KS_JSON", show_envvar=True,
              help="With --stdout: one JSON object per line.")
@click.option("--count", is_flag=True, envvar="KS_COUNT", show_envvar=True,
              help="With --stdout, syscalls: count per syscall in the kernel (no events) and "
                   "print COUNT and TIME_MS at the end, like bcc's syscount -L.")
def trace(tracer: str, duration: float | None, to_stdout: bool, pid: int, comm: str,
          as_json: bool, count: bool, **kw: Any) -> None:
    """Run one eBPF tracer (root): syscalls, pagefaults, io or sched.

    Publishes to Redis for the ingester, or with --stdout prints what it sees (ad-hoc, like
    bcc's tools; Ctrl-C or --duration ends it).

    \b
    Examples:
      sudo kernelsight trace syscalls --min-latency-ms 20
      sudo kernelsight trace io --interval 1 --duration 60
      sudo kernelsight trace syscalls --stdout --pid 1234 --min-latency-ms 1
      sudo kernelsight trace syscalls --stdout --min-latency-ms 0 --count --duration 10
      sudo kernelsight trace sched --stdout --comm postgres --json
    """
    from kernelsight import adhoc, selfpids
    from kernelsight.runner import run_collector

    adhoc.check_options(tracer, to_stdout, pid, comm, count, as_json)
    if to_stdout:
        kw["redis_url"] = ""
        s = settings_from(kw)
        selfpids.mark("", s.host)
        sys.exit(adhoc.run_stdout(tracer, s, duration, pid=pid, comm=comm, count=count,
                                  as_json=as_json))
    s = settings_from(kw)
    _need_redis(s)
    selfpids.mark(s.redis_url, s.host, tracer)
    sys.exit(run_collector(tracer, s, duration))


@cli.command(context_settings=CTX)
@common(REDIS, DB, HOST, RETENTION, RETENTION_SIZE, ROLLUP_RETENTION, METRICS)
@_opt("--batch-size", field="batch_size", type=int,
      help=f"Max entries per transaction [default: {defaults.BATCH_SIZE}].")
@_opt("--batch-ms", field="batch_ms", type=int,
      help=f"Max milliseconds to fill a batch [default: {defaults.BATCH_MS}].")
@_opt("--ingest-linger-ms", field="ingest_linger_ms", type=int,
      help="After a batch of fewer than "
           f"{defaults.INGEST_LINGER_ROWS} entries, read again only this many ms after the "
           "last read (a quiet host: one batch and one commit for every producer's chunks); "
           f"0: at once; at most {defaults.INGEST_LINGER_MAX_MS} "
           f"[default: {defaults.INGEST_LINGER_MS}].")
@_opt("--consumer", field="consumer", help="Consumer name in the group [default: ingest-1].")
@_opt("--workers", field="ingest_workers", type=int,
      help="Worker processes sharing the group; 0 = one per CPU, at most 2 [default: 1].")
@_opt("--stream-retain", field="stream_retain", type=int,
      help="A stream holding more entries than this loses its acknowledged ones (about once "
           "a second; unacknowledged entries are never trimmed) "
           f"[default: {defaults.STREAM_RETAIN}].")
@click.option("--drain", is_flag=True, help="Exit once every stream is empty.")
def ingest(drain: bool, **kw: Any) -> None:
    """Ingest the event streams into SQLite (consumer group, exactly once).

    SIGTERM/SIGINT drain the streams before exiting; a second signal exits at once.

    \b
    Examples:
      KS_REDIS_URL=redis://:pw@127.0.0.1:6379/0 kernelsight ingest --db data/ks.db
      KS_REDIS_URL=redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000 kernelsight ingest
      kernelsight ingest --drain --db data/ks.db
      kernelsight ingest --workers 2   # two processes: more throughput, more CPU
      kernelsight ingest --retention 30d --retention-size 10GiB --rollup-retention 52w
      kernelsight ingest --metrics-addr 0.0.0.0:9477   # scrape from other hosts
    """
    from kernelsight import selfpids
    from kernelsight.ingest import run_ingest
    from kernelsight.metrics import OFF, resolve_addr

    s = settings_from(kw)
    _need_redis(s)
    selfpids.mark(s.redis_url, s.host, "ingest", tree=True)  # its --workers too
    addr = resolve_addr(s.metrics_addr or None)
    metrics = None
    if addr != OFF:
        from kernelsight.metrics import MetricsServer

        metrics = MetricsServer(s).start(addr)
    try:
        st = run_ingest(s, s.ingest_workers, drain=drain,
                        histogram=metrics.batch_seconds if metrics else None)
    finally:
        if metrics:
            metrics.stop()
    click.echo(f"ingest: stored {sum(st.stored.values())}, duplicates skipped "
               f"{sum(st.duplicates.values())}, dead letters {sum(st.dead.values())}", err=True)


@cli.command(context_settings=CTX)
@common(DB)
@click.option("--demo", is_flag=True, help="Print the demo overview (counts, slowest syscalls, "
              "recent memory and I/O latency).")
@click.option("--runs", "list_runs", is_flag=True, help="List the recorded runs, newest first.")
@window_options
@click.option("--limit", type=click.IntRange(1, 1000), default=10)
def query(demo: bool, list_runs: bool, run: str | None, since: str | None,
          until: str | None, limit: int, **kw: Any) -> None:
    """Explore a KernelSight database: the whole of it, or one run (--run) or time window
    (--since/--until): rows whose timestamp lies in it.

    \b
    Examples:
      kernelsight query --db-path data/stress_test.db --demo
      kernelsight query --runs
      kernelsight query --demo --run latest
      kernelsight query --demo --since 15m
    """
    from kernelsight import query as q
    from kernelsight.window import parse_selection

    s = settings_from(kw)
    sel = parse_selection(run, since, until)
    if list_runs:
        q.runs(s.db_path, limit)
    if demo:
        q.demo(s.db_path, limit, sel)
    if not (demo or list_runs):
        raise ConfigError("nothing to do; pass --demo or --runs (or use sqlite3 on the "
                          "database)")


@cli.command(context_settings=CTX)
@click.argument("name", type=click.Choice(collectors.ALL + ("ingest",)))
@common(REDIS)
@click.option("--max-age", type=float, default=15.0, help="Heartbeat older than this is unhealthy.")
def health(name: str, max_age: float, **kw: Any) -> None:
    """Exit 0 if NAME has published a heartbeat recently (for compose healthchecks)."""
    import time

    import orjson

    from kernelsight.streams import HEALTH_KEY, ping

    s = settings_from(kw)
    _need_redis(s)
    raw = ping(s.redis_url).get(HEALTH_KEY.format(source=name))
    if not raw:
        raise ConfigError(f"{name}: no heartbeat in Redis yet")
    age = time.time() - orjson.loads(raw)["timestamp"] / 1e9
    if age > max_age:
        raise ConfigError(f"{name}: last heartbeat {age:.0f}s ago")
    click.echo(f"{name}: healthy (heartbeat {age:.1f}s ago)")


def _need_redis(s: Settings) -> None:
    if not s.redis_url:
        raise ConfigError("this command needs Redis: set --redis-url or KS_REDIS_URL "
                          "(e.g. redis://:PASSWORD@127.0.0.1:6379/0)")


def _register_optional() -> None:
    """Commands that live in their own modules (added as they land)."""
    import importlib

    for mod in ("report", "doctor", "stress", "stresstest", "loadgen", "soak", "bench", "rqjobs",
                "compose_stress", "collectors.host", "analysis.command", "status", "service",
                "copydb", "fleet"):
        try:
            m = importlib.import_module(f"kernelsight.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"kernelsight.{mod}":
                continue
            raise
        for attr in ("command", "soak_command", "ask_command", "baselines_command"):
            cmd = getattr(m, attr, None)
            if cmd is not None:
                cli.add_command(cmd)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KernelSightError as e:
        click.echo(f"kernelsight: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
