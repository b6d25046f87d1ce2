"""`kernelsight doctor`: can this kernel run our tracers, and if not, exactly what to do.

Checks BTF, tracefs/debugfs (mounting them when missing and allowed), kernel headers (and the
fallback used when the running kernel ships none), bcc, and for each tracer whether its attach
points really load (it compiles and attaches the tracer's own program, then detaches)."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from kernelsight import collectors
from kernelsight.bpfsupport import TRACEFS, ensure_headers, ensure_tracefs
from kernelsight.config import Settings
from kernelsight.exceptions import KernelSightError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


class AttachOnly:
    """Stands in for the Publisher while doctor loads a tracer: nothing is published (there
    is no Redis here); only whether the programs attach matters."""

    def __init__(self) -> None:
        self.counters: dict = {}

    def publish(self, event_type: str, rows) -> None:
        pass

    def lost(self, event_type: str, reason: str, n: int) -> None:
        pass


def run_checks(settings: Settings, tracers: tuple[str, ...] = collectors.TRACERS) -> list[Check]:
    out: list[Check] = []
    root = os.geteuid() == 0
    out.append(Check("root", root, f"euid {os.geteuid()}", "run as root (sudo)"))
    out.append(Check("kernel", True, f"{platform.release()} {platform.machine()}"))
    btf = Path("/sys/kernel/btf/vmlinux").exists()
    out.append(Check("BTF", btf, "/sys/kernel/btf/vmlinux" + (" present" if btf else " missing"),
                     "a kernel built with CONFIG_DEBUG_INFO_BTF=y (the sched tracer's "
                     "raw-tracepoint program needs it; without it sched uses regular "
                     "tracepoints)",
                     required=False))
    try:
        done = ensure_tracefs()
        out.append(Check("tracefs/debugfs", True, "; ".join(done) or f"mounted at {TRACEFS}"))
    except KernelSightError as e:
        out.append(Check("tracefs/debugfs", False, str(e),
                         f"mount -t tracefs tracefs {TRACEFS}"))
    kprobes = (TRACEFS / "kprobe_events").exists()
    out.append(Check("kprobes", kprobes, "available" if kprobes else
                     "CONFIG_KPROBES off: tracers use tracepoints/perf events only (fine)",
                     required=False))
    try:
        h = ensure_headers()
        out.append(Check("kernel headers", True, h.note))
    except KernelSightError as e:
        out.append(Check("kernel headers", False, str(e), "see the message"))
    try:
        import bcc

        out.append(Check("bcc", True, f"python bcc from {Path(bcc.__file__).parent}"))
    except ImportError:
        out.append(Check("bcc", False, "python module bcc not importable",
                         "apt-get install python3-bpfcc; venv with --system-site-packages"))
        return out
    if not root:
        return out
    for name in tracers:
        try:
            cls = collectors.get(name)
        except (ImportError, AttributeError) as e:
            out.append(Check(f"tracer {name}", False, f"not available: {e}"))
            continue
        col = cls(settings, AttachOnly())  # type: ignore[arg-type]
        try:
            col.start()
            out.append(Check(f"tracer {name}", True, "programs compile and attach"))
        except KernelSightError as e:
            out.append(Check(f"tracer {name}", False, str(e)))
        finally:
            try:
                col.stop()
            except Exception:  # noqa: BLE001 - a failed start may leave nothing to stop
                pass
    return out


@click.command("doctor", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tracers", default=",".join(collectors.TRACERS), show_default=True,
              help="Tracers whose attach points to check.")
def command(tracers: str) -> None:
    """Check this kernel and host for every tracer; print the fix for anything missing.

    \b
    Examples:
      sudo kernelsight doctor
      sudo kernelsight doctor --tracers syscalls,io
    """
    names = tuple(n for n in collectors.parse_list(tracers) if n != collectors.SCRAPER)
    checks = run_checks(Settings(), names)
    t = Table(title="kernelsight doctor", title_justify="left")
    t.add_column("")
    t.add_column("check")
    t.add_column("result")
    t.add_column("fix")
    for c in checks:
        mark = "✓" if c.ok else ("✗" if c.required else "–")
        t.add_row(mark, c.name, c.detail, "" if c.ok else c.fix)
    Console().print(t)
    bad = [c for c in checks if c.required and not c.ok]
    sys.exit(1 if bad else 0)
