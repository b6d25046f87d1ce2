"""eBPF scheduler tracer -> ``sched_events`` (per process and interval)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kernelsight import bpfsupport, histogram
from kernelsight.btf import BTF_ERRORS, VMLINUX_BTF, vmlinux
from kernelsight.clock import now_ns
from kernelsight.collectors.base import Collector, Ticker
from kernelsight.collectors.cumulative import CumulativeMap, delete_keys, proc_alive
from kernelsight.config import Settings
from kernelsight.exceptions import CollectorError
from kernelsight.streams import Publisher

log = logging.getLogger(__name__)

EVENT = "sched_events"
TRACEPOINTS = (b"sched:sched_switch", b"sched:sched_wakeup", b"sched:sched_wakeup_new",
               b"sched:sched_process_exit")
# Slots of the per-CPU `counters` array, defined in bpf/ks_sched.h (read from there at start).
SLOTS = ("CNT_MAP_FULL",)
# Fallbacks when the sched_switch print fmt cannot be parsed (kernel >= 4.14 values).
PREEMPT_MASK = 0x100  # TASK_REPORT_MAX: "R+"
DEAD_MASK = 0x30  # "X" (EXIT_DEAD) | "Z" (EXIT_ZOMBIE)
RAW_TRACEPOINTS = (b"sched_switch", b"sched_wakeup", b"sched_wakeup_new")
# task_struct fields the raw-tracepoint program reads (-DKS_OFF_<NAME>=byte offset), and the
# size each must have.
TASK_FIELDS = {"NVCSW": ("nvcsw", 8), "NIVCSW": ("nivcsw", 8),
               "RUNTIME": ("se.sum_exec_runtime", 8), "PCOUNT": ("sched_info.pcount", 8),
               "RUN_DELAY": ("sched_info.run_delay", 8), "START_TIME": ("start_time", 8),
               "TGID": ("tgid", 4), "COMM": ("comm", 16)}
# Raw tracepoint arguments the program relies on (after the hidden void *__data).
TP_ARGS = {"sched_switch": ("_Bool", "task_struct*", "task_struct*", "unsigned int"),
           "sched_wakeup": ("task_struct*",), "sched_wakeup_new": ("task_struct*",)}


def raw_cflags(path: str = VMLINUX_BTF) -> list[str]:
    """-D flags for the raw-tracepoint program (task_struct offsets from the running kernel's
    BTF); raises OSError/KeyError/ValueError when the kernel cannot run it."""
    btf = vmlinux(path)
    for tp, want in TP_ARGS.items():
        if tuple(btf.proto_args(f"btf_trace_{tp}")[1:]) != want:
            raise ValueError(f"{tp} arguments are not {want}")
    flags = ["-DKS_RAW=1"]
    for macro, (path_, size) in TASK_FIELDS.items():
        flags.append(f"-DKS_OFF_{macro}={btf.field('task_struct', path_, size)}")
    return flags


def switch_state_masks(fmt: str) -> tuple[int, int]:
    """(preempted bit, dead bits) of sched_switch's prev_state, from the event's print fmt.

    The kernel reports a preempted task as TASK_REPORT_MAX (printed "R+") and a task's last
    switch as "X" or "Z"; both values moved between kernel versions, the format says them."""
    preempt, dead = PREEMPT_MASK, DEAD_MASK
    m = re.findall(r'REC->prev_state & ([0-9a-fA-FxX|+<>() -]+?) \? "\+"', fmt)
    if m and re.fullmatch(r"[0-9a-fA-FxX|+<>() -]+", m[-1]):
        try:
            v = eval(m[-1], {"__builtins__": {}}, {})  # digits and operators only
            if isinstance(v, int) and v > 0:
                preempt = v
        except (SyntaxError, TypeError, ValueError):
            pass
    flags = {name: int(v, 0) for v, name in
             re.findall(r'\{\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*"([A-Z])"\s*\}', fmt)}
    if "X" in flags and "Z" in flags:
        dead = flags["X"] | flags["Z"]
    return preempt, dead


@dataclass
class ProcSnapshot:
    """One read of a process's cumulative counters."""

    comm: str = ""
    nvcsw: int = 0
    nivcsw: int = 0
    wakeups: int = 0
    cpu_ns: int = 0
    hist: dict[int, int] = field(default_factory=dict)

    def counters(self) -> dict[object, int]:
        """The cumulative counters (histogram buckets by number) for CumulativeMap."""
        return {"nvcsw": self.nvcsw, "nivcsw": self.nivcsw, "wakeups": self.wakeups,
                "cpu_ns": self.cpu_ns, **self.hist}


def make_row(ts: int, host: str, pid: int, now: ProcSnapshot,
             before: ProcSnapshot) -> dict | None:
    """The sched_events row for one process and interval, or None when it did nothing."""
    vol = now.nvcsw - before.nvcsw
    invol = now.nivcsw - before.nivcsw
    wake = now.wakeups - before.wakeups
    cpu = now.cpu_ns - before.cpu_ns
    hist = histogram.delta(now.hist, before.hist)
    if vol <= 0 and invol <= 0 and wake <= 0 and cpu <= 0 and not hist:
        return None
    vol, invol, wake, cpu = max(vol, 0), max(invol, 0), max(wake, 0), max(cpu, 0)
    switches = vol + invol
    p50, p95, pmax = histogram.percentiles(hist, (50, 95, 100))
    return {
        "timestamp": ts, "host": host, "pid": pid, "comm": now.comm,
        "context_switches": switches, "voluntary_switches": vol,
        "involuntary_switches": invol, "wakeups": wake,
        "cpu_time_ms": cpu / 1e6,
        # A slice still running at the end of the interval counts as one.
        "avg_timeslice_us": cpu / 1e3 / max(switches, 1),
        "runq_latency_p50_us": p50 / 1e3, "runq_latency_p95_us": p95 / 1e3,
        "runq_latency_max_us": pmax / 1e3,
    }


class SchedTracer(Collector):
    """Per process (tgid) and ``--interval``: context switches (voluntary / involuntary,
    counted as the kernel counts /proc/PID/status voluntary_ctxt_switches and
    nonvoluntary_ctxt_switches), wakeups, CPU time, average timeslice and run-queue latency
    (p50, p95, max in microseconds), one ``sched_events`` row per process that did anything.

    HOOKS
      Raw tracepoints sched_switch, sched_wakeup and sched_wakeup_new (the default: needs
      /sys/kernel/btf/vmlinux and the 5.18+ sched_switch prototype, both checked at start),
      and a CPU_CLOCK perf event on each CPU every 50 ms (less with a short --interval).
      The kernel already counts, per task, nvcsw and nivcsw, its CPU time
      (se.sum_exec_runtime) and its run-queue waits (sched_info.run_delay, .pcount: the same
      numbers as /proc/PID/status and /proc/PID/schedstat). At each switch-out (prev is
      current) and tick, the program reads them from current at offsets taken from the
      kernel's BTF at start (plain loads, no helper) and charges to the process what they
      gained since the thread's last switch-out, kept in task-local storage (freed by the
      kernel with the task: no per-thread map to leak). Nothing is done for next: its switch-in
      is in its counters by its own switch-out. A wakeup reads the wakee's tgid (one probe
      read) and counts it for that process.
      Fallback (no BTF, older kernel, or the raw program fails to load; logged): regular
      tracepoints sched:sched_switch, sched_wakeup, sched_wakeup_new, sched_process_exit,
      whose field layout comes from tracefs, with per-thread state in a tid-keyed hash.
      There a switch-out is voluntary when the task was not preempted and was not runnable
      (prev_state neither TASK_REPORT_MAX nor 0, both from the tracepoint's print fmt), and
      run-queue latency is measured from sched_wakeup (or preemption) to running with
      bpf_ktime_get_ns(), as bcc's runqlat does.

    OUTPUT
      Kernel maps are cumulative and never reset; each interval is the difference of two
      reads, so nothing is lost between reading and resetting. Percentiles come from the
      log-linear histogram of bpf/ks_hist.h (bucket midpoints, within ~1.6%; the max is the
      top bucket's midpoint). avg_timeslice_us = CPU time / switch-outs in the interval (a
      slice still running counts as one). comm is the main thread's name.
      Run-queue latency (raw program) is the kernel's own: enqueue (wakeup, or preemption) to
      switch-in, one value per switch-in; a wait that straddles a migration is summed over
      both run queues. A process's keys are deleted once it has been gone from /proc at two
      interval checks with no change in between, after its final delta was published
      (collectors/cumulative.py, the rule every tracer shares).

    COST (2-vCPU Firecracker VM, kernel 6.18, busy shared host; raw program)
      BPF run time (kernel.bpf_stats_enabled=1, whose own accounting is ~40 ns of each
      figure; read from the programs' fdinfo run_time_ns / run_cnt): sched_switch ~110-125 ns
      (an empty raw program 46 ns; of the rest ~20 ns is the per-(tgid, bucket) histogram hash
      update and ~15 ns the per-process hash lookup), sched_wakeup ~92 ns (empty 55 ns), the
      tick ~1.5 us 20 times a second per CPU. Before (regular tracepoints, per-tid hash):
      sched_switch ~200-300 ns, sched_wakeup ~130-170 ns on the same VM.
      Worst case, `kernelsight bench --only sched` (a pipe ping-pong pinned to one CPU: 2
      switches and ~1 wakeup per round trip, ~500k switches/s): workload CPU over untraced
      is 1.2-1.5 times that of empty programs on the four regular tracepoints
      (sched_tracer_overhead_ratio; 1.9-2.4, up to 3.3 on a loaded host, before). Per switch
      that is ~60-100 ns of CPU over the empty-program floor; at a typical 10k switches/s
      per CPU, well under 0.5% of a CPU. User space reads two maps per interval (batch
      lookups, a few ms). Memory: --map-entries each for processes (48 B) and histogram
      buckets (8 B); task-local storage per thread that has run (40 B + the kernel's
      per-element overhead).

    CAVEATS
      - Switches before the tracer started are not counted. A thread that existed at start
        is counted from its first switch-out (that one classified by preempt / prev_state,
        so a sleeping task with a signal pending counts involuntary there once) or tick, and
        its first run-queue wait is not sampled; a thread forked since start (task
        start_time) is counted from zero, exactly.
      - CPU time is charged at switch-out and tick; at a tick the kernel's figure is as of its
        last scheduler tick, so an interval's cpu_time_ms can hold up to one tick period (50
        ms) of the interval before; sums over intervals are exact.
      - Raw program: a thread whose process entry cannot be made (map full) keeps its counts
        pending in its task storage and charges them at a later switch-out.
      - Fallback program: CPU time is measured with bpf_ktime_get_ns() (within ~2% of
        /proc/PID/schedstat); a sleeping task with a signal pending or a freezing task is
        counted involuntary (rare); regular tracepoint programs do not nest, so a wakeup from
        an interrupt while another tracing program runs on that CPU is skipped by the kernel.
        Either program's skips (recursion_misses, 6.7+) are reported as dropped, reason
        ``bpf_recursion``.
      - Maps are bounded by --map-entries; what cannot be recorded is counted as dropped,
        reason ``map_full``.
    """

    name: ClassVar[str] = "sched"
    event_types: ClassVar[tuple[str, ...]] = (EVENT,)

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        super().__init__(settings, publisher)
        self.bpf: Any = None
        self.cumulative: CumulativeMap[int, ProcSnapshot] = CumulativeMap(
            ProcSnapshot.counters)
        self.alive = proc_alive(settings.procfs)
        self.map_full_seen = 0
        self.misses_seen = 0
        self.prog_fds: list[int] = []
        self.tick_ns = int(max(0.001, min(0.05, settings.interval / 4)) * 1e9)
        self.use_raw = True  # False: the regular-tracepoint program (tests; old kernels)
        self.raw = False

    def start(self) -> None:
        s = self.settings
        bpfsupport.ensure_tracefs()
        self.slots = bpfsupport.header_slots(s, self.name, SLOTS)
        base = [f"-I{s.bpf_path}", f"-DMAP_ENTRIES={s.map_entries}"]
        self.bpf = None
        if self.use_raw:
            try:
                flags = raw_cflags()
            except BTF_ERRORS as e:
                log.info("sched: regular tracepoints (no raw-tracepoint program: %s)", e)
            else:
                try:
                    self.bpf = bpfsupport.load(s, self.name, base + flags)
                except CollectorError as e:
                    log.warning("sched: raw-tracepoint program failed (%s); using regular "
                                "tracepoints", e)
                else:
                    got = self.bpf.raw_tracepoint_fds
                    self._check_attached([tp for tp in RAW_TRACEPOINTS if tp not in got])
        self.raw = self.bpf is not None
        if not self.raw:
            fmt_path = bpfsupport.TRACEFS / "events/sched/sched_switch/format"
            try:
                preempt, dead = switch_state_masks(fmt_path.read_text())
            except OSError as e:
                raise CollectorError(
                    f"sched: cannot read {fmt_path} ({e.strerror}); the kernel needs "
                    "CONFIG_SCHED_TRACER/tracepoints; run `kernelsight doctor`") from None
            self.bpf = bpfsupport.load(s, self.name, base + [
                f"-DKS_PREEMPTED={preempt:#x}", f"-DKS_DEAD={dead:#x}"])
            self._check_attached([tp for tp in TRACEPOINTS
                                  if tp not in self.bpf.tracepoint_fds])
        try:
            from bcc import PerfSWConfig, PerfType

            self.bpf.attach_perf_event(ev_type=PerfType.SOFTWARE,
                                       ev_config=PerfSWConfig.CPU_CLOCK,
                                       fn_name=b"on_tick", sample_period=self.tick_ns)
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
            self.bpf.cleanup()
            self.bpf = None
            raise bpfsupport.attach_error(self.name, "a CPU_CLOCK perf event", e) from None
        if self.raw:
            # Threads forked from now on have counted everything from zero: all of it is ours.
            start = self.bpf[b"start_ns"]
            start[start.Key(0)] = start.Leaf(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        else:
            self.threads = self.bpf[b"threads"]
        self.procs = self.bpf[b"procs"]
        self.hist = self.bpf[b"runq_hist"]
        self.counters = self.bpf[b"counters"]
        self.prog_fds = [f.fd for f in self.bpf.funcs.values()]
        self.misses_seen = self._misses()
        self.ticker = Ticker(s.interval, wake=self.stopping)
        self.watch_self(self.bpf)

    def _check_attached(self, missing: list[bytes]) -> None:
        if missing:
            self.bpf.cleanup()
            self.bpf = None
            raise CollectorError(f"sched: tracepoint(s) {b', '.join(missing).decode()} did not "
                                 "attach; run `kernelsight doctor`")

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> dict[int, ProcSnapshot]:
        """One read of the cumulative per-process counters and histograms."""
        out: dict[int, ProcSnapshot] = {}
        for k, v in bpfsupport.read_hash(self.procs):
            out[bpfsupport.as_int(k)] = ProcSnapshot(
                bytes(v.comm).split(b"\0", 1)[0].decode(errors="replace"),
                int(v.nvcsw), int(v.nivcsw), int(v.wakeups), int(v.cpu_ns))
        for k, v in bpfsupport.read_hash(self.hist):
            snap = out.get(int(k.tgid))
            if snap is None:  # histogram entry made before its process entry: next read
                continue
            snap.hist[int(k.bucket)] = bpfsupport.as_int(v)
        return out

    def thread_entries(self) -> list[int]:
        """tids that have an entry in the kernel's per-thread hash map (for tests and doctor).
        Always empty with raw tracepoints: per-thread state is then task-local storage,
        which the kernel frees with the task."""
        if self.raw:
            return []
        return [bpfsupport.as_int(k) for k, _ in bpfsupport.read_hash(self.threads)]

    def interval(self) -> None:
        ts = now_ns()
        host = self.settings.host
        rows = []
        for ch in sorted(self.cumulative.diff(self.read()), key=lambda c: c.key):
            row = make_row(ts, host, ch.key, ch.now, ch.before or ProcSnapshot())
            if row:
                rows.append(row)
        if rows:
            self.pub.publish(EVENT, rows)
        # Processes gone from /proc with no change in two reads have had their final read
        # (collectors/cumulative.py); a thread may still be between exit_notify and its last
        # switch when its process leaves /proc, which the second read covers.
        for tgid, last in self.cumulative.expire(self.alive):
            delete_keys(self.hist, [self.hist.Key(tgid, b) for b in last.hist])
            delete_keys(self.procs, [self.procs.Key(tgid)])
        self._count_losses()

    def _misses(self) -> int:
        return sum(bpfsupport.prog_recursion_misses(fd) for fd in self.prog_fds)

    def _count_losses(self) -> None:
        full = bpfsupport.read_percpu_sum(self.counters, self.slots["CNT_MAP_FULL"])
        self.pub.lost(EVENT, "map_full", full - self.map_full_seen)
        self.map_full_seen = full
        misses = self._misses()
        self.pub.lost(EVENT, "bpf_recursion", misses - self.misses_seen)
        self.misses_seen = misses

    # -- lifecycle -------------------------------------------------------------------------
    def poll(self) -> None:
        if self.ticker.wait():  # stop() flushes the partial interval
            self.interval()

    def stop(self) -> None:
        if self.bpf is None:
            return
        try:
            self.interval()
        finally:
            self.unwatch_self()
            self.bpf.cleanup()
            self.bpf = None


COLLECTOR = SchedTracer
