"""`make stress` / `kernelsight stresstest`: every collector, the host driven hard, and the
verdict. The six steps and their output follow the original stress test guide."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from kernelsight import collectors, defaults
from kernelsight.config import Settings, check_db_path, db_label
from kernelsight.db import open_db
from kernelsight.doctor import run_checks
from kernelsight.exceptions import ConfigError
from kernelsight.report import build, render
from kernelsight.runner import Proc, Stack
from kernelsight.runs import RunRecorder, resolve, wait_drained_until
from kernelsight.safetext import printable
from kernelsight.window import Selection, ns_to_id

STEPS = 6
DRAIN_TIMEOUT_S = 300.0


def _step(con: Console, n: int, title: str) -> None:
    con.print(f"\n[bold][{n}/{STEPS}] {title}[/bold]")


def _ok(con: Console, msg: str) -> None:
    con.print(Text("✓", style="green").append(f" {printable(msg, 1000)}"))


def _open_db(path: str) -> str:
    """Create the database if absent; an existing one is kept (this run's rows are added,
    and the report covers this run only). Says which."""
    check_db_path(path)
    existed = Path(path).exists()
    open_db(path).dispose()
    return "kept, this run is added to it" if existed else "created"


def stresstest(settings: Settings, duration: int, log_dir: Path, con: Console,
               names: list[str]) -> int:
    con.rule("[bold]KernelSight — Comprehensive Stress Test")
    con.print("All collectors + system stress + full validation", justify="center")

    _step(con, 1, "Checking Prerequisites")
    if os.geteuid() != 0:
        raise ConfigError("the stress test loads eBPF programs: run it as root (sudo make stress)")
    tracers = tuple(n for n in names if n in collectors.TRACERS)
    checks = run_checks(settings, tracers=(), fix=True)  # mounts tracefs, links headers
    for c in checks:
        if not c.ok and c.required:
            raise ConfigError(f"{c.name}: {c.detail} — fix: {c.fix}")
        con.print(Text(f"  {'✓' if c.ok else '–'} {c.name}: {printable(c.detail, 1000)}"))
    if not shutil.which("redis-server") and not settings.redis_url:
        raise ConfigError("redis-server is missing: apt-get install redis-server (or make setup)")
    sng = shutil.which("stress-ng")
    con.print(f"  {'✓' if sng else '–'} stress-ng: "
              f"{sng or 'absent; the Python workers cover every category'}")
    _ok(con, "Prerequisites checked")

    _step(con, 2, "Initializing Database")
    how = _open_db(settings.db_path)
    _ok(con, f"Database initialized: {db_label(settings.db_path)} ({how})")

    stack = Stack(settings, log_dir)
    interrupted = threading.Event()
    rec: RunRecorder | None = None
    rep = None

    def on_signal(signum: int, _frame: object) -> None:
        interrupted.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _step(con, 3, "Starting Ingestion Daemon")
        stack.start_redis()
        ing = stack.start_ingest()
        con.print(f"  Ingestion daemon PID: {ing.popen.pid}")
        _ok(con, "Ingestion daemon started")
        rec = RunRecorder(stack.settings, "stress").begin()
        con.print(f"  Run: {rec.run_id}")

        _step(con, 4, "Starting All Collectors")

        def show(p: Proc) -> None:
            kind = "eBPF" if p.name in collectors.TRACERS else "/proc"
            if p.state == "started":
                con.print(f"  [green]✓[/green] {p.name} ({kind}) started, PID {p.popen.pid}")
            else:
                con.print(Text("  ").append("✗", style="red").append(  # detail: from Redis
                    f" {p.name} ({kind}) FAILED: {printable(p.detail, 1000)}"))

        con.print(f"  Starting {', '.join(names)} (compiling {len(tracers)} BPF programs)...")
        procs = stack.start_collectors(names, on_status=show)
        failed = [p.name for p in procs.values() if p.state != "started"]
        if failed:
            con.print(f"[yellow]! {len(failed)} collector(s) failed: {', '.join(failed)}; "
                      f"continuing with the others (logs in {log_dir}/)[/yellow]")
        else:
            _ok(con, "All collectors started")

        _step(con, 5, f"Generating System Stress ({duration}s)")
        summary = _drive(con, duration, settings, log_dir, interrupted)
        if interrupted.is_set():
            con.print("[yellow]! interrupted: stopping early and reporting what was captured")
        else:
            _ok(con, "Stress test complete")
        for cat, counts in summary.items():
            if isinstance(counts, dict):
                con.print(f"    - {cat}: " + ", ".join(
                    f"{k}={_fmt(v)}" for k, v in counts.items() if k != "cpu_seconds"))

        _step(con, 6, "Stopping Collectors & Analyzing Results")
        stack.stop_collectors()
        end_ns = rec.end()
        con.print("  Collectors stopped; waiting until everything up to the run's end is "
                  "stored...")
        if wait_drained_until(stack.settings.redis_url, ns_to_id(end_ns), DRAIN_TIMEOUT_S):
            _ok(con, "Streams drained")
        else:
            con.print(f"[red]✗ the ingester did not store the run within {DRAIN_TIMEOUT_S:.0f}s"
                      f"; see {log_dir}/ingest.log (the report counts what is missing)")
        eng = open_db(settings.db_path, create=False)
        try:
            rep = build(eng, settings.db_path, None, names, resolve(
                eng, Selection(run=rec.run_id)))
        finally:
            eng.dispose()
        rec.verdict(rep.verdict)  # stored by the ingester's drain below
        rc = stack.drain_ingest()
        if rc != 0:
            con.print(f"[red]✗ ingestion daemon exited with {rc}; see {log_dir}/ingest.log")
    finally:
        if rec is not None:
            rec.close()
        stack.close()
        for s, h in old.items():
            signal.signal(s, h)

    render(rep, con)
    con.print(f"Run: {rec.run_id} (kernelsight report --db {settings.db_path} --run "
              f"{rec.run_id})")
    con.print(f"Logs: {log_dir}/")
    return rep.exit_code


def _fmt(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"


def _drive(con: Console, duration: int, settings: Settings, log_dir: Path,
           interrupted: threading.Event) -> dict:
    """Run the workloads with a live progress bar (a line every 10 s when not a terminal)."""
    from kernelsight.stress import run_stress

    con.print("  Workloads running in background: CPU (4 workers), memory (1 GiB), I/O, heavy "
              "disk I/O, file system operations, network (HTTP server + client, TCP bursts)")
    result: dict = {}
    err: list[BaseException] = []
    workdir = str(Path(settings.db_path).resolve().parent)
    progress = Progress(TextColumn("  Progress:"), BarColumn(bar_width=50),
                        TextColumn("{task.completed:.0f}/{task.total:.0f}s"),
                        TimeRemainingColumn(), console=con, transient=False)
    last_line = [0.0]

    def tick(elapsed: float) -> None:
        progress.update(task, completed=min(elapsed, duration))
        if not con.is_terminal and elapsed - last_line[0] >= 10:
            last_line[0] = elapsed
            con.print(f"  Progress: {elapsed:.0f}/{duration}s")

    with progress:
        task = progress.add_task("stress", total=duration)
        try:
            # Our SIGINT/SIGTERM handler stays in place; the driver stops early on `stop` and
            # still returns the partial summary.
            result = run_stress(duration, workdir=workdir, on_tick=tick, stop=interrupted)
        except Exception as e:  # noqa: BLE001 - a failed workload must not lose the results
            err.append(e)
        progress.update(task, completed=duration if not interrupted.is_set() else None)
    if err:
        con.print(Text(f"✗ stress driver failed: {printable(err[0], 1000)}", style="red"))
    return result


@click.command("stresstest", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--duration", type=click.IntRange(5, 86400), default=60, envvar="TEST_DURATION",
              show_envvar=True, show_default=True, help="Seconds of stress.")
@click.option("--db", "--db-path", "db_path", default=defaults.DB_PATH, show_default=True,
              envvar="KS_DB_PATH", show_envvar=True,
              help="Database; created if absent, else this run is added to it (never emptied).")
@click.option("--log-dir", default="logs/stress_test", show_default=True,
              help="Each component's log goes to DIR/<component>.log.")
@click.option("--collectors", "collector_list", default="all", show_default=True,
              envvar="KS_COLLECTORS", show_envvar=True,
              help=f"Comma list of {', '.join(collectors.ALL)} or 'all'.")
@click.option("--redis-url", envvar="KS_REDIS_URL", default=None, show_envvar=True,
              help="Use this Redis instead of a private one.")
def command(duration: int, db_path: str, log_dir: str, collector_list: str,
            redis_url: str | None) -> None:
    """The comprehensive stress test (root): all collectors, stress workloads, verdict.

    The test is recorded as a run (kind `stress`) in the database, and its verdict covers
    that run only, even in a database holding older runs. Exit code 0 only for SUCCESS.

    \b
    Examples:
      sudo make stress
      sudo TEST_DURATION=120 make stress
      sudo kernelsight stresstest --duration 30 --db /tmp/st.db
    """
    s = Settings().with_(db_path=db_path, redis_url=redis_url or "")
    names = collectors.parse_list(collector_list)
    ld = Path(log_dir)
    ld.mkdir(parents=True, exist_ok=True)
    for f in ld.glob("*.log"):
        f.unlink()
    sys.exit(stresstest(s, duration, ld, Console(), names))
