"""`kernelsight stress`: the click command and its human summary."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from kernelsight.exceptions import ConfigError
from kernelsight.stress.checks import check_duration, check_mem_mib, int_setting, parse_only
from kernelsight.stress.context import MiB
from kernelsight.stress.driver import run_stress
from kernelsight.stress.registry import CATEGORIES

CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_HUMAN_SKIP = {"seconds"}


def _fmt(key: str, v: Any) -> str:
    if "bytes" in key and isinstance(v, int) and not isinstance(v, bool):
        return f"{key.replace('bytes', 'mib')}={v / MiB:.1f}"
    if isinstance(v, float):
        return f"{key}={v:.2f}"
    return f"{key}={v}"


def format_summary(summary: dict[str, Any]) -> str:
    """One line per category: name, seconds, then its counts (bytes as MiB)."""
    lines = []
    for cat in CATEGORIES:
        res = summary.get(cat)
        if not isinstance(res, dict):
            continue
        parts = [_fmt(k, v) for k, v in res.items() if k not in _HUMAN_SKIP]
        lines.append(f"{cat:<5} {res.get('seconds', 0):6.1f}s  " + " ".join(parts))
    lines.append(f"stress-ng: {'yes' if summary.get('stress_ng') else 'no'}")
    return "\n".join(lines)


@click.command("stress", context_settings=CTX)
@click.option("--duration", envvar="KS_DURATION", show_envvar=True, default=None,
              metavar="SECONDS", help="Run for this long, 1..86400 (required).")
@click.option("--only", envvar="KS_STRESS_ONLY", show_envvar=True, default="all",
              metavar="LIST",
              help=f"Comma list of {','.join(CATEGORIES)} or 'all'.")
@click.option("--mem-mib", envvar="KS_STRESS_MEM_MIB", show_envvar=True, default="1024",
              metavar="MIB",
              help="MiB the memory workload allocates and keeps touching [default: 1024].")
@click.option("--disk-mib", envvar="KS_STRESS_DISK_MIB", show_envvar=True, default="256",
              metavar="MIB",
              help="Size of the file the disk workload writes and reads back [default: 256].")
@click.option("--workdir", envvar="KS_STRESS_WORKDIR", show_envvar=True, default=None,
              metavar="DIR",
              help="Parent of the private temp directory [default: the database's directory "
                   "if it exists, else $TMPDIR]. Everything created is removed at the end.")
@click.option("--engine", envvar="KS_STRESS_ENGINE", show_envvar=True, default="auto",
              metavar="auto|stress-ng|python",
              help="CPU workers: stress-ng if installed (auto), or force one [default: auto].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def command(duration: str | None, only: str, mem_mib: str, disk_mib: str, workdir: str | None,
            engine: str, as_json: bool) -> None:
    """Load CPU, memory, disk, file system, loopback network and syscall latency for
    DURATION seconds, then print what each workload did.

    All workloads stop by themselves; SIGTERM/SIGINT stop them early (exit 143/130). Nothing
    is left behind: no processes, files or listening ports. Network traffic stays on
    127.0.0.1. Run as root so the disk workload can drop the page cache.

    \b
    Examples:
      kernelsight stress --duration 60
      kernelsight stress --duration 30 --only cpu,mem --mem-mib 2048 --json
      KS_DURATION=10 kernelsight stress --only net,slow --engine python
    """
    d = check_duration(duration)
    cats = parse_only(only)
    eng = engine.strip().lower()
    if eng not in ("auto", "stress-ng", "python"):
        raise ConfigError(f"--engine must be auto, stress-ng or python, got {engine!r}")
    use_ng = {"auto": None, "stress-ng": True, "python": False}[eng]
    mem = check_mem_mib(mem_mib) if "mem" in cats else int_setting("mem-mib", mem_mib, 1, 1 << 20)
    disk = int_setting("disk-mib", disk_mib, 1, 1 << 20)

    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    tty = sys.stderr.isatty()

    def tick(elapsed: float) -> None:
        if tty:
            click.echo(f"\rstress: {elapsed:5.1f}/{d:g} s", err=True, nl=False)

    try:
        click.echo(f"stress: {','.join(cats)} for {d:g} s", err=True)
        summary = run_stress(d, workdir, cats, tick, mem, disk_mib=disk,
                             use_stress_ng=use_ng, stop=stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if tty:
            click.echo("", err=True)
    if got:
        click.echo(f"stress: stopped early by {signal.Signals(got[0]).name}", err=True)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    errors = {c: r["error"] for c, r in summary.items() if isinstance(r, dict) and "error" in r}
    for c, e in errors.items():
        click.echo(f"stress: {c}: {e}", err=True)
    if got:
        sys.exit(128 + got[0])
    if errors:
        sys.exit(1)
