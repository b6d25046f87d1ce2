"""cpu: 4 busy workers (stress-ng --cpu 4 when installed, else 4 forked Python loops)."""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

from kernelsight.stress.context import Ctx, alive

NAME = "cpu"
CPU_WORKERS = 4


def run(ctx: Ctx) -> None:
    """CPU-bound workers; stress-ng when the driver found it (its bogo-ops are comparable
    across machines), else forked Python loops."""
    exe = ctx.params.get("stress_ng")
    ctx.res.update(workers=CPU_WORKERS, engine="stress-ng" if exe else "python", bogo_ops=0)
    if exe:
        _cpu_stress_ng(ctx, exe)
    else:
        _cpu_python(ctx)


def _cpu_stress_ng(ctx: Ctx, exe: str) -> None:
    """stress-ng runs as our child in our process group, so the driver's group signal reaches
    its workers too; we also stop it ourselves when told to stop or orphaned."""
    yaml_path = ctx.workdir / "stress-ng.yaml"
    secs = max(1, math.ceil(ctx.remaining()))
    with open(ctx.workdir / "stress-ng.log", "wb") as log:
        p = subprocess.Popen(
            [exe, "--cpu", str(CPU_WORKERS), "--timeout", f"{secs}s", "--metrics-brief",
             "--yaml", str(yaml_path), "--temp-path", str(ctx.workdir)],
            cwd=ctx.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        # stress-ng's timeout is whole seconds: give it up to that second to end by itself.
        while p.poll() is None and (ctx.running() or
                                    (not ctx.stopping and time.monotonic() < ctx.deadline + 1.5)):
            time.sleep(0.1)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # stress-ng stops its workers and writes metrics
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    ctx.res["bogo_ops"] = _stress_ng_bogo_ops(yaml_path)
    if p.returncode not in (0, -signal.SIGTERM):
        tail = (ctx.workdir / "stress-ng.log").read_text(errors="replace").strip()[-300:]
        ctx.res["error"] = f"stress-ng exited with {p.returncode}: {tail}"


def _stress_ng_bogo_ops(path: Path) -> int:
    """The cpu stressor's bogo-ops from stress-ng's --yaml file (no YAML library needed)."""
    try:
        for line in path.read_text().splitlines():
            key, _, val = line.strip().partition(":")
            if key == "bogo-ops":
                return int(float(val))
    except (OSError, ValueError):
        pass
    return 0


def _cpu_python(ctx: Ctx) -> None:
    """Forked busy loops; counters live in a shared anonymous mapping so we read them even if
    a loop is killed. os.fork instead of multiprocessing: no helper processes or temp dirs."""
    shared = mmap.mmap(-1, 8 * (CPU_WORKERS + 1))  # [stop flag, counter 0..N-1]
    me = os.getpid()
    pids: list[int] = []
    try:
        for i in range(CPU_WORKERS):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child: never return into the worker's code
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    _busy(ctx.deadline, me, shared, i)
                finally:
                    os._exit(0)
            pids.append(pid)
        while any(alive(p) for p in pids):
            if not ctx.running():
                struct.pack_into("q", shared, 0, 1)
            time.sleep(0.1)
    finally:
        struct.pack_into("q", shared, 0, 1)
        end = time.monotonic() + 3
        for pid in pids:
            while alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)  # our unreaped child: the PID is still ours
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        ctx.res["bogo_ops"] = sum(struct.unpack_from("q", shared, 8 * (i + 1))[0]
                                  for i in range(CPU_WORKERS))
        shared.close()


def _busy(deadline: float, parent: int, shared: mmap.mmap, i: int) -> None:
    n = 0
    x = 1
    while True:
        for _ in range(20000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        n += 1
        struct.pack_into("q", shared, 8 * (i + 1), n)
        if (struct.unpack_from("q", shared, 0)[0] or time.monotonic() >= deadline
                or os.getppid() != parent):
            return
