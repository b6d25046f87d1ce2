"""`make bench` side by side with bcc's own tools (Debian ``bpfcc-tools``), same workload,
same run (issue 14 item 7). Every figure is a ``peer_*`` line in bench/results.json.

- Overhead: the CPU time a workload needs with nothing attached, with the bcc tool running,
  and with ours running, each the minimum of several runs (interference only adds time).
  ``peer_*_overhead_vs_*`` is ours' added time over the tool's: below 1 means cheaper.
  syscalls: our tracer as deployed (10 ms threshold) and our ``--count`` mode (every
  syscall timed and counted, what ``syscount -L`` does) on the ``dd bs=1`` workload. sched: our
  tracer against ``runqlat`` on the pinned context-switch workload.
- Numbers: per-syscall counts of a workload of known counts (N getppid, K nanosleeps) from our
  ``--count`` mode and from ``syscount -L -p PID``, both attached before it starts; run-queue
  p50/p95 from our sched tracer (all processes, the same window) against the log2 bucket of
  runqlat's histogram that holds its p50/p95.
- biolatency needs kprobes; where the kernel has none, the line says so (no number).
"""

from __future__ import annotations

import gzip
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from kernelsight import histogram

Put = Callable[[str, "float | None", str], None]

TOOL_DIRS = ("/usr/share/bcc/tools", "/usr/sbin")
START_TIMEOUT_S = 180.0  # a bcc tool compiles its program at start: slow on a loaded host


def tool(name: str) -> str | None:
    """The path of bcc tool ``name`` (Debian: /usr/sbin/<name>-bpfcc), or None."""
    for cand in (f"{name}-bpfcc", name):
        p = shutil.which(cand)
        if p:
            return p
    for d in TOOL_DIRS:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def kernel_has_kprobes() -> bool | None:
    """CONFIG_KPROBES of the running kernel (None when its config is unreadable)."""
    for path, opener in (("/proc/config.gz", gzip.open),
                         (f"/boot/config-{platform.release()}", open)):
        try:
            with opener(path, "rt") as f:  # type: ignore[operator]
                text = f.read()
        except OSError:
            continue
        return bool(re.search(r"^CONFIG_KPROBES=y$", text, re.M))
    return None


class BccTool:
    """A bcc tool running in the background: started, waited for until it says it is tracing
    (its "Tracing ..." line), then ended with SIGINT, which makes it print its summary."""

    def __init__(self, name: str, args: list[str]) -> None:
        path = tool(name)
        if path is None:
            raise FileNotFoundError(f"{name}: bpfcc-tools is not installed "
                                    "(apt-get install bpfcc-tools)")
        self.argv = [path, *args]
        self.output = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its "Tracing" line before it exits
        # SIGINT is how the tool is told to print its summary. A process started in the
        # background by a non-interactive shell (CI, `setsid cmd &`) ignores SIGINT, its
        # children inherit that, and Python then installs no KeyboardInterrupt handler: the
        # tool would never print. coreutils' env puts SIGINT back to the default before the
        # exec (same pid, so /proc/PID/syscall below is the tool's).
        self.proc = subprocess.Popen(["env", "--default-signal=INT", *self.argv],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        assert self.proc.stdout is not None
        first: list[str] = []
        got = threading.Event()

        def read_first() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                first.append(line)
                if line.startswith("Tracing"):
                    break
            got.set()

        th = threading.Thread(target=read_first, daemon=True)
        th.start()
        if not got.wait(START_TIMEOUT_S) or not first or not first[-1].startswith("Tracing"):
            self._end()
            raise RuntimeError(f"{os.path.basename(self.argv[0])} did not start: "
                               + "".join(first)[-500:])
        th.join()
        self.output = "".join(first)
        # bcc's tools print "Tracing..." just before their `try: sleep()`: a SIGINT in
        # between (the tool starved of CPU on a loaded host) raises outside the try and it
        # dies with a traceback and no summary. Wait until it sleeps in that try.
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _sleeping(self.proc.pid):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._end()
                raise RuntimeError(f"{os.path.basename(self.argv[0])} did not reach its "
                                   "sleep after 'Tracing': " + self.output[-300:])
            time.sleep(0.01)
        return self

    def _end(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output += out or ""

    def __exit__(self, *exc: object) -> None:
        self._end()
        if exc[0] is None and "Traceback" in self.output:
            raise RuntimeError(f"{os.path.basename(self.argv[0])} failed: "
                               + self.output[-300:])


# x86_64 and aarch64 numbers: time.sleep() is clock_nanosleep since Python 3.11, and a long
# sleep may show as the restart after a signal.
_SLEEP_SYSCALLS = {"x86_64": {"35", "230"}, "aarch64": {"101", "115"}}.get(
    platform.machine(), set())


def _sleeping(pid: int) -> bool:
    """The process is blocked in a nanosleep (from /proc/PID/syscall; root only). Where that
    cannot be read, assume so after its state says sleeping."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        nr = ""
    if nr and _SLEEP_SYSCALLS:
        return nr in _SLEEP_SYSCALLS
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "S"
    except (OSError, IndexError):
        return False


def parse_syscount(text: str) -> dict[str, int]:
    """``syscount [-L]`` output -> syscall name: count."""
    out: dict[str, int] = {}
    seen = False
    for line in text.splitlines():
        if line.startswith("SYSCALL"):
            seen = True
            continue
        parts = line.split()
        if seen and len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


_HIST = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*:\s*(\d+)\s*\|")


def parse_log2_hist(text: str) -> list[tuple[int, int, int]]:
    """A bcc log2 histogram (``lo -> hi : count |***|``) -> [(lo, hi, count)], summed over
    every histogram in the text."""
    acc: dict[tuple[int, int], int] = {}
    for line in text.splitlines():
        m = _HIST.match(line)
        if m:
            key = (int(m.group(1)), int(m.group(2)))
            acc[key] = acc.get(key, 0) + int(m.group(3))
    return sorted((lo, hi, n) for (lo, hi), n in acc.items())


def log2_bucket_of(hist: list[tuple[int, int, int]], p: float) -> tuple[int, int] | None:
    """The [lo, hi] bucket holding percentile ``p`` (nearest rank) of a log2 histogram."""
    total = sum(n for _, _, n in hist)
    if total <= 0:
        return None
    rank = max(1, -(-total * p // 100))
    seen = 0
    for lo, hi, n in hist:
        seen += n
        if seen >= rank:
            return lo, hi
    return None


def min_cpu(time_fn: Callable[[list[str]], float], workload: list[str], rounds: int) -> float:
    return min(time_fn(workload) for _ in range(rounds))


# Blocked on stdin, then N getppid and K 20 ms nanosleeps (argv: N K).
KNOWN_COUNTS = [sys.executable, "-c", """
import ctypes, sys
libc = ctypes.CDLL(None)
libc.syscall.restype = ctypes.c_long
class TS(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
n, k = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
for _ in range(n):
    libc.syscall(110)
ts = TS(0, 20_000_000)
for _ in range(k):
    libc.syscall(35, ctypes.byref(ts), None)
"""]


class Peers:
    """The peer comparisons; ``put(name, value, note)`` records a figure (bench.Bench.put),
    ``time_fn(argv)`` is the workload CPU time (bench.Bench._time), ``running(cls)`` runs one
    of our tracers in this process (bench_workloads.running_tracer)."""

    def __init__(self, put: Put, echo: Callable[[str], None], time_fn: Callable[[list[str]],
                 float], running: Callable[[Any], Any], quick: bool) -> None:
        self.put = put
        self.echo = echo
        self.time = time_fn
        self.running = running
        self.rounds = 3 if quick else 7
        self.quick = quick
        self.notes: dict[str, str] = {}

    def unavailable(self, name: str, why: str) -> None:
        """A comparison that cannot run here: a line saying why, no number."""
        self.notes[name] = why
        self.echo(f"{name}: n/a   # {why}")

    # -- syscalls ------------------------------------------------------------------------
    def syscount_overhead(self, dd: list[str]) -> None:
        from kernelsight.collectors.syscalls import SyscallTracer

        class CountMode(SyscallTracer):
            def __init__(self, settings: Any, pub: Any) -> None:
                super().__init__(settings.with_(min_latency_ms=0.0), pub, count=True)

        self.time(dd)  # warm caches
        bare = min_cpu(self.time, dd, self.rounds)
        with BccTool("syscount", ["-L", "-T", "5"]):
            theirs = min_cpu(self.time, dd, self.rounds)
        with self.running(SyscallTracer):
            ours = min_cpu(self.time, dd, self.rounds)
        with self.running(CountMode):
            ours_count = min_cpu(self.time, dd, self.rounds)
        bare2 = min_cpu(self.time, dd, self.rounds)
        bare = min(bare, bare2)
        d_theirs = theirs - bare
        note = (f"workload CPU s, min of {self.rounds}: bare {bare:.3f}, syscount -L "
                f"{theirs:.3f}, ours {ours:.3f}, ours --count {ours_count:.3f} "
                f"({' '.join(dd[:2])} {dd[-1]})")
        ok = d_theirs > 0
        self.put("peer_syscall_overhead_vs_syscount", (ours - bare) / d_theirs if ok else None,
                 note)
        self.put("peer_syscall_count_mode_overhead_vs_syscount",
                 (ours_count - bare) / d_theirs if ok else None, "ours in --count mode "
                 "(every syscall timed and counted, as syscount -L does)")

    def syscount_counts(self, n: int = 10_000, k: int = 3) -> None:
        from kernelsight.collectors.syscalls import SyscallTracer
        from kernelsight.config import Settings

        work = subprocess.Popen([*KNOWN_COUNTS, str(n), str(k)], stdin=subprocess.PIPE,
                                text=True)
        try:
            s = Settings(redis_url="", host="bench", min_latency_ms=0.0)
            ours = SyscallTracer(s, _Discard(), pid=work.pid, count=True)
            ours.start()
            try:
                with BccTool("syscount", ["-L", "-T", "200", "-p", str(work.pid)]) as sc:
                    assert work.stdin is not None
                    work.stdin.write("go\n")
                    work.stdin.close()
                    work.wait(120)
                    time.sleep(0.2)
            finally:
                ours.stop()
        finally:
            if work.poll() is None:
                work.kill()
                work.wait()
        theirs = parse_syscount(sc.output)
        mine = {name: c for name, (c, _) in ours.counts_final.items()}
        common = set(theirs) | set(mine)
        differ = sorted(x for x in common if theirs.get(x) != mine.get(x))
        self.put("peer_syscount_getppid_count", theirs.get("getppid"), f"truth {n}")
        self.put("peer_ours_getppid_count", mine.get("getppid"), f"truth {n}; nanosleep: ours "
                 f"{mine.get('nanosleep')}, syscount {theirs.get('nanosleep')}, truth {k}")
        self.put("peer_count_syscalls_differing", float(len(differ)),
                 "syscalls whose count differs between ours and syscount: "
                 + (", ".join(f"{x} {mine.get(x)}/{theirs.get(x)}" for x in differ) or "none"))

    # -- sched ---------------------------------------------------------------------------
    def runqlat_overhead(self, workload: list[str]) -> None:
        from kernelsight.collectors.sched import SchedTracer

        self.time(workload)
        bare = min_cpu(self.time, workload, self.rounds)
        with BccTool("runqlat", []):
            theirs = min_cpu(self.time, workload, self.rounds)
        with self.running(SchedTracer):
            ours = min_cpu(self.time, workload, self.rounds)
        bare = min(bare, min_cpu(self.time, workload, self.rounds))
        d = theirs - bare
        self.put("peer_sched_overhead_vs_runqlat", (ours - bare) / d if d > 0 else None,
                 f"workload CPU s, min of {self.rounds}: bare {bare:.3f}, runqlat "
                 f"{theirs:.3f}, ours {ours:.3f} ({os.path.basename(workload[0])} pinned "
                 "switch workload)")

    def runqlat_percentiles(self, workload: list[str]) -> None:
        """System-wide, same window: runqlat -p/-P read task_struct at the offsets of the
        headers BCC compiles against, which on a kernel without its own headers are another
        version's (their pids are garbage here), so neither side filters."""
        from kernelsight.collectors.sched import SchedTracer
        from kernelsight.config import Settings

        s = Settings(redis_url="", host="bench")
        ours = SchedTracer(s, _Discard())
        ours.start()
        try:
            with BccTool("runqlat", []) as rq:
                before = ours.read()
                self.time(workload)
                after = ours.read()
        finally:
            ours.stop()
        merged: dict[int, int] = {}
        for tgid, snap in after.items():
            old = before.get(tgid)
            for b, c in histogram.delta(snap.hist, old.hist if old else {}).items():
                merged[b] = merged.get(b, 0) + c
        hist = parse_log2_hist(rq.output)
        for p in (50, 95):
            mine = histogram.percentiles(merged, (p,))[0] / 1000.0
            bucket = log2_bucket_of(hist, p)
            inside = bucket is not None and bucket[0] <= mine < bucket[1] + 1
            self.put(f"peer_runq_p{p}_us_ours", mine,
                     f"runqlat's p{p} bucket: {bucket[0]}-{bucket[1]} us" if bucket else
                     "runqlat printed no histogram")
            self.put(f"peer_runq_p{p}_in_runqlat_bucket", 1.0 if inside else 0.0,
                     f"{sum(merged.values())} run-queue waits ours, "
                     f"{sum(n for _, _, n in hist)} runqlat's, same window, all processes")

    # -- io --------------------------------------------------------------------------------
    def biolatency(self) -> None:
        has = kernel_has_kprobes()
        if tool("biolatency") is None:
            self.unavailable("peer_io_vs_biolatency", "biolatency is not installed")
        elif has is False:
            self.unavailable("peer_io_vs_biolatency", "biolatency cannot run on this kernel: "
                             "it attaches kprobes and CONFIG_KPROBES is not set")
        else:
            self.unavailable("peer_io_vs_biolatency", "not compared yet (kprobes "
                             + ("present" if has else "unknown") + ")")


class _Discard:
    """A publisher for tracers whose rows the comparison does not need."""

    def __init__(self) -> None:
        self.counters: dict = {}

    def publish(self, event_type: str, rows: Any) -> None:
        pass

    def lost(self, event_type: str, reason: str, n: int) -> None:
        pass


def run(bench: Any, dd: list[str], sched_workload: list[str], running: Callable[[Any], Any],
        only: set[str] | None = None) -> dict[str, str]:
    """All peer comparisons for `make bench` (its one call); returns the n/a notes."""
    p = Peers(bench.put, bench.echo, bench._time, running, bench.quick)
    steps: dict[str, Callable[[], None]] = {
        "syscount_overhead": lambda: p.syscount_overhead(dd),
        "syscount_counts": p.syscount_counts,
        "runqlat_overhead": lambda: p.runqlat_overhead(sched_workload),
        "runqlat_percentiles": lambda: p.runqlat_percentiles(sched_workload),
        "biolatency": p.biolatency,
    }
    if os.geteuid() != 0:
        for name in ("peer_syscall_overhead_vs_syscount", "peer_sched_overhead_vs_runqlat"):
            p.unavailable(name, "needs root")
        return p.notes
    for name, fn in steps.items():
        if only and name not in only:
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failing comparison must not hide the rest
            p.unavailable(f"peer_{name}", f"failed: {e.__class__.__name__}: {e}")
    bench.notes.update(p.notes)
    return p.notes
