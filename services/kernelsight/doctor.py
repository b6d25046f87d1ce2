"""`kernelsight doctor`: can this kernel run our tracers, and if not, exactly what to do.

Checks BTF, tracefs/debugfs, kernel headers (and the fallback used when the running kernel
ships none), bcc, and for each tracer whether its attach points really load (it compiles and
attaches the tracer's own program, then detaches).

A check changes nothing on the host. The two fixes it knows (mounting tracefs/debugfs, linking
Debian's headers of another version into /lib/modules/$(uname -r)) run only with ``--fix``;
without it the output says what --fix would do. The tracers and `make stress` apply the same
fixes themselves when they start."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kernelsight import collectors
from kernelsight.bpfsupport import (
    TRACEFS,
    ensure_headers,
    ensure_tracefs,
    headers_missing,
    tracefs_missing,
)
from kernelsight.config import Settings
from kernelsight.exceptions import KernelSightError
from kernelsight.safetext import printable


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


def run_checks(settings: Settings, tracers: tuple[str, ...] = collectors.TRACERS,
               fix: bool = False, pending: list[str] | None = None) -> list[Check]:
    """The checks; with ``fix`` also mount tracefs/debugfs and link fallback headers.
    Without it, what --fix would do is appended to ``pending`` and nothing is changed."""
    out: list[Check] = []
    pending = pending if pending is not None else []
    root = os.geteuid() == 0
    out.append(Check("root", root, f"euid {os.geteuid()}", "run as root (sudo)"))
    out.append(Check("kernel", True, f"{platform.release()} {platform.machine()}"))
    btf = Path("/sys/kernel/btf/vmlinux").exists()
    out.append(Check("BTF", btf, "/sys/kernel/btf/vmlinux" + (" present" if btf else " missing"),
                     "a kernel built with CONFIG_DEBUG_INFO_BTF=y (the sched tracer's "
                     "raw-tracepoint program needs it; without it sched uses regular "
                     "tracepoints)",
                     required=False))
    if fix:
        try:
            done = ensure_tracefs()
            out.append(Check("tracefs/debugfs", True, "; ".join(done) or f"mounted at {TRACEFS}"))
        except KernelSightError as e:
            out.append(Check("tracefs/debugfs", False, str(e),
                             f"mount -t tracefs tracefs {TRACEFS}"))
    else:
        missing = tracefs_missing()
        pending += [f"mount -t {t} {t} {p}" for p, t in missing]
        out.append(Check("tracefs/debugfs", not missing, "; ".join(
            f"{t} not mounted at {p}" for p, t in missing) or f"mounted at {TRACEFS}",
            "kernelsight doctor --fix (mounts it)",
            required=any(t == "tracefs" for _, t in missing)))
    kprobes = (TRACEFS / "kprobe_events").exists()
    out.append(Check("kprobes", kprobes, "available" if kprobes else
                     "CONFIG_KPROBES off: tracers use tracepoints/perf events only (fine)",
                     required=False))
    links = None if fix else headers_missing()
    if links:
        build, target, source, common = links
        pending += [f"ln -sfn {target} {build}", f"ln -sfn {common} {source}"]
        out.append(Check("kernel headers", False,
                         f"none for {platform.release()}; fallback {target.name} available",
                         "kernelsight doctor --fix (links the fallback into /lib/modules)"))
    else:
        try:
            h = ensure_headers()  # without --fix: headers in place, or the install hint
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
    if pending and tracers:  # loading a tracer would apply the fixes itself
        out += [Check(f"tracer {name}", False, "not loaded: needs the fixes above",
                      "kernelsight doctor --fix") for name in tracers]
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
@click.option("--fix", is_flag=True,
              help="Change the host where needed: mount tracefs/debugfs and link fallback "
                   "kernel headers into /lib/modules/$(uname -r). Without it nothing is "
                   "changed and the output lists what --fix would do.")
def command(tracers: str, fix: bool) -> None:
    """Check this kernel and host for every tracer; print the fix for anything missing.

    Read-only unless --fix is given (the tracers and `make stress` apply the same fixes
    themselves when they start).

    \b
    Examples:
      sudo kernelsight doctor
      sudo kernelsight doctor --fix
      sudo kernelsight doctor --tracers syscalls,io
    """
    names = tuple(n for n in collectors.parse_list(tracers) if n != collectors.SCRAPER)
    pending: list[str] = []
    checks = run_checks(Settings(), names, fix=fix, pending=pending)
    t = Table(title="kernelsight doctor", title_justify="left")
    t.add_column("")
    t.add_column("check")
    t.add_column("result")
    t.add_column("fix")
    for c in checks:
        mark = "✓" if c.ok else ("✗" if c.required else "–")
        t.add_row(mark, Text(c.name), Text(printable(c.detail, 1000)),
                  Text("" if c.ok else printable(c.fix, 1000)))
    console = Console()
    console.print(t)
    if pending:
        console.print(Text("Nothing was changed. `kernelsight doctor --fix` would run:"))
        for cmd in pending:
            console.print(Text(f"  {cmd}"))
    elif not fix:
        console.print(Text("Nothing was changed (nothing for --fix to do)."))
    bad = [c for c in checks if c.required and not c.ok]
    sys.exit(1 if bad else 0)
