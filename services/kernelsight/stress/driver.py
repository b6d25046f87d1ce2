"""The driver: starts one worker process per selected workload, waits, stops and reaps them.

Why one process per workload: the workloads must not share a GIL (the net clients would
starve the CPU loops and vice versa), and a process is the unit we can stop for certain.
Every worker is started by us with ``start_new_session=True``; we stop it by signalling the
process group whose id is the PID we hold, and only while that PID is still unreaped (so it
cannot have been reused). Workers also watch their own deadline and their parent, so they
end on time even if the driver is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernelsight import defaults
from kernelsight.exceptions import ConfigError
from kernelsight.stress.checks import check_duration, check_mem_mib, int_setting, parse_only
from kernelsight.stress.context import alive

TICK_S = 0.5  # on_tick period
FINISH_GRACE_S = 5.0  # after the deadline: workers finish their current operation
STOP_GRACE_S = 5.0  # after SIGTERM: workers report and exit, else SIGKILL


@dataclass
class _Worker:
    category: str
    popen: subprocess.Popen
    err_path: Path

    def exited(self) -> bool:
        """True once the process has exited; it stays unreaped so its PID stays ours."""
        return self.popen.returncode is not None or not alive(self.popen.pid)

    def signal_group(self, sig: int) -> None:
        """Signal the worker's process group (its id is the worker's PID, it leads a session
        of its own). Only before reaping: until then the PID cannot belong to anyone else."""
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def reap(self) -> dict[str, Any]:
        """Kill any straggler in the group (the exited leader still pins the group id), reap,
        and return the worker's counts."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        out = self.popen.stdout.read() if self.popen.stdout else b""
        if self.popen.stdout:
            self.popen.stdout.close()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            res = json.loads(lines[-1]) if lines else {}
        except ValueError:
            res = {}
        if not res or self.popen.returncode not in (0, 1):
            try:
                err = self.err_path.read_text(errors="replace").strip().splitlines()
            except OSError:
                err = []
            why = err[-1] if err else f"exit code {self.popen.returncode}"
            res.setdefault("error", f"worker ended without a report: {why}"[:300])
        return res


def _default_base() -> Path:
    """Next to the database (KS_DB_PATH or the default) when that directory exists: the disk
    workloads should load the device the pipeline writes to. Else the temp directory."""
    db_dir = Path(os.environ.get("KS_DB_PATH") or defaults.DB_PATH).expanduser().parent
    if db_dir.is_dir() and os.access(db_dir, os.W_OK | os.X_OK):
        return db_dir
    return Path(tempfile.gettempdir())


def _ensure_dir(path: Path) -> list[Path]:
    """mkdir -p that returns what it created (deepest last) so we can remove exactly that."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
    except OSError as e:
        _remove_dirs(created)
        raise ConfigError(f"--workdir {path}: cannot create it ({e.strerror})") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {path}: not a writable directory")
    return created


def _remove_dirs(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


def _spawn(category: str, tmp: Path, params: dict[str, Any]) -> _Worker:
    wdir = tmp / category
    wdir.mkdir()
    env = dict(os.environ)
    env["TMPDIR"] = str(wdir)  # anything a library puts in "temp" is removed with our tree
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(x for x in (pkg_root, env.get("PYTHONPATH")) if x)
    err_path = tmp / f"{category}.err"
    with open(err_path, "wb") as err:
        p = subprocess.Popen(
            [sys.executable, "-m", "kernelsight.stress.worker", category,
             json.dumps({**params, "workdir": str(wdir)})],
            cwd=wdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True)
    return _Worker(category, p, err_path)


def _stop_all(workers: list[_Worker], grace: float) -> None:
    """SIGTERM every live group, wait up to ``grace``, then SIGKILL what is left."""
    live = [w for w in workers if not w.exited()]
    for w in live:
        w.signal_group(signal.SIGTERM)
    end = time.monotonic() + grace
    while any(not w.exited() for w in live) and time.monotonic() < end:
        time.sleep(0.05)
    for w in live:
        if not w.exited():
            w.signal_group(signal.SIGKILL)


def run_stress(duration: float, workdir: str | None = None, only: list[str] | None = None,
               on_tick: Callable[[float], None] | None = None, mem_mib: int = 1024, *,
               disk_mib: int = 256, use_stress_ng: bool | None = None,
               stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the selected workloads concurrently for ``duration`` seconds and return
    ``{category: {counts...}, "stress_ng": bool}``.

    ``on_tick(elapsed_s)`` is called about every 0.5 s from this thread (for progress bars).
    ``workdir``: parent of our private temp directory (created if missing; whatever we
    created is removed at the end); default next to the database. ``use_stress_ng``: None =
    use it if installed. ``stop``: set it (from any thread) to end early.

    Without ``stop``, and on the main thread, SIGTERM/SIGINT end the run early: everything is
    stopped and removed, the previous handlers are restored and the signal is raised again,
    so the caller sees it exactly as if we had not been there (default SIGTERM: exit;
    SIGINT: KeyboardInterrupt). An exception (including from on_tick) also cleans up first.
    """
    duration = check_duration(duration)
    cats = parse_only(only)
    mem_mib = (check_mem_mib(mem_mib) if "mem" in cats
               else int_setting("mem-mib", mem_mib, 1, 1 << 20))
    disk_mib = int_setting("disk-mib", disk_mib, 1, 1 << 20)
    exe = None
    if "cpu" in cats and use_stress_ng is not False:
        exe = shutil.which("stress-ng")
        if exe is None and use_stress_ng:
            raise ConfigError("stress-ng is not installed (apt-get install stress-ng), "
                              "or use the Python CPU workers")
    base = Path(workdir).expanduser() if workdir else _default_base()
    created = _ensure_dir(base.resolve())

    caught: list[int] = []
    old: dict[int, Any] = {}
    if stop is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
    stopped = (lambda: stop.is_set() or bool(caught)) if stop else (lambda: bool(caught))

    workers: list[_Worker] = []
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix="ks-stress-", dir=base.resolve()))
        start = time.monotonic()
        params = {"deadline": start + duration, "parent": os.getpid(), "mem_mib": mem_mib,
                  "disk_mib": disk_mib, "stress_ng": exe}
        for c in cats:
            workers.append(_spawn(c, tmp, params))
        _wait(workers, start, duration, stopped, on_tick)
        _stop_all(workers, STOP_GRACE_S)
        summary: dict[str, Any] = {w.category: w.reap() for w in workers}
        summary["stress_ng"] = exe is not None
    finally:
        _stop_all(workers, STOP_GRACE_S)  # no-op when all have exited
        for w in workers:
            if w.popen.returncode is None:
                w.signal_group(signal.SIGKILL)
                w.popen.wait()
            if w.popen.stdout:
                w.popen.stdout.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        for sig, h in old.items():
            signal.signal(sig, h)
    if caught and old:
        signal.raise_signal(caught[0])
    return summary


def _wait(workers: list[_Worker], start: float, duration: float, stopped: Callable[[], bool],
          on_tick: Callable[[float], None] | None) -> None:
    """Until the deadline (then up to FINISH_GRACE_S for workers to end by themselves), a
    stop request, or every worker exiting; calls on_tick every TICK_S."""
    deadline = start + duration
    next_tick = start
    while not stopped():
        now = time.monotonic()
        if on_tick and now >= next_tick:
            on_tick(min(now - start, duration))
            next_tick = now + TICK_S
        if all(w.exited() for w in workers) or now >= deadline + FINISH_GRACE_S:
            break
        time.sleep(0.05 if now >= deadline else min(0.1, max(0.01, deadline - now)))
    if on_tick:
        on_tick(min(time.monotonic() - start, duration))
