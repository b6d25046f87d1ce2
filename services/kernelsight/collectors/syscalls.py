"""eBPF syscall latency tracer -> ``syscall_events`` (service time) and
``syscall_wait_summaries`` (blocking waits, summarised per interval)."""

from __future__ import annotations

import gzip
import logging
import os
import platform
import re
import time
from typing import Any, ClassVar

from kernelsight import bpfsupport, waits
from kernelsight.clock import MonoToEpoch
from kernelsight.collectors.base import Collector, Ticker
from kernelsight.config import Settings
from kernelsight.exceptions import CollectorError
from kernelsight.streams import Publisher

log = logging.getLogger(__name__)

EVENT = "syscall_events"
WAITS = "syscall_wait_summaries"
POLL_MS = 500  # the ring buffer ends the wait early only once it is 1/8 full (ks_ringbuf.h)
# Slots of the per-thread start array: pid_max, capped (24 bytes each, so 6 MiB at the cap).
# Threads whose tid is beyond it use a hash map of --map-entries entries instead.
TID_SLOTS_MAX = 262_144
# Slots of the per-CPU counters, defined in bpf/ks_syscalls.h (read from there at start).
SLOTS = ("CNT_RINGBUF_FULL", "CNT_START_MAP_FULL", "CNT_UNTIMED", "CNT_UNTIMED_MAYBE",
         "CNT_SUBMITTED")  # the last is not a loss: events submitted (wakeup batching)
# Accounting reasons of syscall_events drops (pipeline_accounting.reason)
R_RINGBUF_FULL = "ringbuf_full"
R_START_MAP_FULL = "start_map_full"  # not timed: the start hash (tids > slots) was full
R_UNTIMED = "untimed"  # in flight when tracing started, returned >= threshold after: slow
R_UNTIMED_MAYBE = "untimed_maybe"  # in flight at the start, returned sooner: maybe slow
LOSSES = (("CNT_RINGBUF_FULL", R_RINGBUF_FULL), ("CNT_START_MAP_FULL", R_START_MAP_FULL),
          ("CNT_UNTIMED", R_UNTIMED), ("CNT_UNTIMED_MAYBE", R_UNTIMED_MAYBE))
COUNT_NRS = 1024  # slots of the --count map (syscall numbers below it)

# bcc's syscall table (from strace) stops at 334 on x86_64; these are the newer ones, so that
# common slow syscalls (io_uring_enter, futex_waitv, epoll_pwait2) get a name.
_X86_64_NEWER = {
    334: "rseq", 424: "pidfd_send_signal", 425: "io_uring_setup", 426: "io_uring_enter",
    427: "io_uring_register", 428: "open_tree", 429: "move_mount", 430: "fsopen",
    431: "fsconfig", 432: "fsmount", 433: "fspick", 434: "pidfd_open", 435: "clone3",
    436: "close_range", 437: "openat2", 438: "pidfd_getfd", 439: "faccessat2",
    440: "process_madvise", 441: "epoll_pwait2", 442: "mount_setattr", 443: "quotactl_fd",
    444: "landlock_create_ruleset", 445: "landlock_add_rule", 446: "landlock_restrict_self",
    447: "memfd_secret", 448: "process_mrelease", 449: "futex_waitv",
    450: "set_mempolicy_home_node", 451: "cachestat", 452: "fchmodat2",
    453: "map_shadow_stack", 454: "futex_wake", 455: "futex_wait", 456: "futex_requeue",
    457: "statmount", 458: "listmount", 459: "lsm_get_self_attr", 460: "lsm_set_self_attr",
    461: "lsm_list_modules", 462: "mseal", 463: "setxattrat", 464: "getxattrat",
    465: "listxattrat", 466: "removexattrat", 467: "open_tree_attr",
}


def syscall_name(nr: int) -> str:
    """bcc's name for syscall ``nr`` (decoded), with the newer x86_64 ones filled in."""
    from bcc.syscall import syscall_name as bcc_name

    name = bcc_name(nr).decode(errors="replace")
    if name.startswith("[unknown") and platform.machine() == "x86_64":
        return _X86_64_NEWER.get(nr, name)
    return name


def tid_slots(procfs: str = "/proc") -> int:
    """Size of the per-thread start array: the kernel's pid_max, capped at TID_SLOTS_MAX."""
    try:
        with open(os.path.join(procfs, "sys/kernel/pid_max")) as f:
            pid_max = int(f.read())
    except (OSError, ValueError):
        pid_max = 32768
    return max(1024, min(pid_max, TID_SLOTS_MAX))


def kernel_hz(procfs: str = "/proc") -> int | None:
    """CONFIG_HZ of the running kernel (/proc/config.gz or /boot/config-*), or None."""
    texts = []
    try:
        with gzip.open(os.path.join(procfs, "config.gz"), "rt") as f:
            texts.append(f.read())
    except OSError:
        pass
    try:
        with open(f"/boot/config-{platform.release()}") as f:
            texts.append(f.read())
    except OSError:
        pass
    for text in texts:
        m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.M)
        if m and int(m.group(1)) > 0:
            return int(m.group(1))
    return None


def skip_jiffies(min_latency_ns: int, hz: int | None) -> int:
    """Largest jiffies difference that proves a syscall was faster than the threshold.

    A difference of d ticks means less than (d + 1) ticks really passed, plus up to one more
    while jiffies lags the clock (ticks delayed by interrupts off or a preempted vCPU); -1
    disables the shortcut."""
    if not hz:
        return -1
    tick_ns = 1_000_000_000 // hz
    return max(-1, min_latency_ns // tick_ns - 2)


class SyscallTracer(Collector):
    """Every syscall slower than ``--min-latency-ms`` (default 10 ms): service time one row
    each in ``syscall_events``; blocking waits (``waits.classify``) summarised per interval and
    (pid, comm, syscall) in ``syscall_wait_summaries`` (count, total and max latency: exact,
    every wait the kernel reported is in them), or one row each with ``--record-waits``.

    Hooks: raw tracepoints ``sys_enter`` and ``sys_exit`` (RAW_TRACEPOINT_PROBE; no kprobes,
    no fentry, no task_struct reads, so it runs on kernels whose headers BCC only has a
    fallback for). sys_enter stores {enter time, syscall id, first argument register} in a
    BPF_ARRAY indexed by tid (``pid_max`` slots, capped at 262144; larger tids use a bounded
    hash). sys_exit computes the latency and, only when it is over the threshold, sends one
    event through a BPF ring buffer (``--ringbuf-pages``). User space waits on the ring
    buffer (epoll), at most 500 ms at a time: an idle host wakes it twice a second.

    Columns: pid (tgid), tid, cpu and uid at exit, syscall_nr, syscall_name (bcc's table),
    latency_ns, ret_value (signed), is_error (ret in [-4095, -1]), comm at exit, and arg0: the
    64-bit first-argument register reinterpreted as a signed int64 so SQLite stores it without
    loss; ``arg0 & 0xffffffffffffffff`` gives back the unsigned value (a pointer, a large
    count). ``timestamp`` is when the syscall returned; it began ``latency_ns`` earlier.

    Cost (2-vCPU Firecracker VM, kernel 6.18, busy shared host, so figures are from
    interleaved runs; ``dd if=/dev/zero of=/dev/null bs=1`` = 2 syscalls per byte):
      Fast path (a syscall under the threshold, i.e. nearly all): sys_enter = pid/tgid, an
      inlined array-slot lookup, jiffies (a plain load), one clock read; sys_exit = pid/tgid,
      the slot, jiffies. Nothing else: arg0 and orig_ax are read only for slow syscalls, and
      the clock is not read at sys_exit unless enough timer ticks passed for the syscall to
      possibly be slow. bpf_ktime_get_ns() (~30 ns here) is most of what is left.
      BPF run time (kernel.bpf_stats_enabled=1, run_time_ns / run_cnt, min of 3 interleaved
      runs; ~35 ns of each figure is the accounting itself): sys_enter 73 ns, sys_exit 46 ns,
      an empty raw-tracepoint program 36-42 ns (before this version: 80 / 56 ns; sys_exit
      then made a real map-lookup call because one call site served both start maps).
      Workload CPU per syscall, 1M-byte dd, 9 interleaved rounds (median; min): untraced
      290 ns; empty programs on the regular raw_syscalls tracepoints +164 (the floor);
      empty raw-tracepoint programs +122 (0.74x; 0.64x); this tracer +210 (1.28x; 1.17x),
      previous version +248 (1.51x; 1.44x); a naive per-tid BPF_HASH start map ~2.9x.
      ``kernelsight bench --only syscalls`` (min of 11 rounds): 1.20, 1.27 (ratio of medians
      1.31, 1.29). Fast syscalls never leave the kernel; memory: 24 bytes per tid slot
      (768 KiB at pid_max 32768) plus the ring buffer.

    Caveats:
    - KernelSight's own processes are not traced (bpf/ks_self.h, selfpids.py): their waits
      would report themselves.
    - Syscalls already in flight when the tracer starts are not recorded; they are counted
      (tids within the slots) when they return: ``untimed`` (returned at least the threshold
      after the attach: certainly slow) or ``untimed_maybe`` (sooner: maybe not slow).
      exit()/exit_group()/a successful execve() from another thread never return to the same
      tid; a stale start left by such a thread is never paired with another syscall.
    - Ring buffer full: the event is counted as lost (``ringbuf_full``) in the accounting.
    - Threads with a tid beyond the slots share a --map-entries hash; when it is full their
      syscalls are not timed, counted as ``start_map_full`` (maybe not slow either).
    - Waits are classified without the descriptor's kind (waits.py): a slow read or write is
      a wait only on fd 0 or a socket call; on other fds it is service time.
    - The jiffies shortcut assumes jiffies lag the clock by at most one tick. If the CPU that
      advances jiffies stalls longer (a vCPU descheduled by the hypervisor; the kernel hands
      the duty over after 5 stalled ticks), a syscall at most that stall over the threshold
      can be missed. ``jiffies_shortcut = False`` trades ~50 ns per syscall for exactness;
      without CONFIG_HZ (/proc/config.gz, /boot/config-*) every exit reads the clock.
    - ``comm`` is the name at exit (after execve, the new program).
    - x86_64: arg0 is read from the saved user registers at sys_exit (slow syscalls only).
      Syscalls do not write that register, and those that load a new register set (execve,
      execveat, rt_sigreturn) have theirs read at sys_enter; a ptrace tracer that rewrites
      rdi at a PTRACE_EVENT stop inside the syscall (fork/clone/exec events) changes it.
    """

    name: ClassVar[str] = "syscalls"
    event_types: ClassVar[tuple[str, ...]] = (EVENT, WAITS)
    skip_own_process: ClassVar[bool] = True  # its ring-buffer polls would report themselves
    # Skip the clock read at sys_exit when jiffies prove the syscall was fast (see Caveats).
    jiffies_shortcut: ClassVar[bool] = True

    def __init__(self, settings: Settings, publisher: Publisher, *, pid: int = 0,
                 comm: str = "", count: bool = False) -> None:
        """``pid``/``comm``: only that process / task name (filtered in the kernel, at
        sys_enter); ``count``: no events, per-syscall counts (`trace --count`)."""
        super().__init__(settings, publisher)
        self.bpf: Any = None
        self.clock = MonoToEpoch()
        self.filter_pid = pid
        self.filter_comm = comm
        self.count_mode = count
        self._names: dict[int, str] = {}
        self._wait_of: dict[int, bool | None] = {}  # nr -> wait / service / depends on fd
        self._rows: list[dict] = []
        self._waits: dict[tuple[int, str, int], list[int]] = {}
        self._seen: dict[str, int] = {}
        self.counts_final: dict[str, tuple[int, int]] = {}
        self.ticker = Ticker(settings.interval)
        self._interval_start = time.monotonic_ns()

    def cflags(self) -> list[str]:
        s = self.settings
        min_ns = int(s.min_latency_ms * 1_000_000)
        shortcut = self.jiffies_shortcut and not self.count_mode
        slots = tid_slots(s.procfs)
        flags = [
            f"-DMIN_LATENCY_NS={min_ns}ULL",
            f"-DSKIP_JIFFIES={skip_jiffies(min_ns, kernel_hz(s.procfs)) if shortcut else -1}",
            f"-DTID_SLOTS={slots}",
            f"-DKS_SELF_SLOTS={slots}",
            f"-DHASH_ENTRIES={s.map_entries}",
            f"-DRINGBUF_PAGES={s.ringbuf_pages}",
            f"-I{s.bpf_path}",
        ]
        if self.filter_pid:
            flags.append(f"-DFILTER_TGID={int(self.filter_pid)}")
        if self.filter_comm:
            lo, hi = comm_words(self.filter_comm)
            flags += [f"-DFILTER_COMM_LO={lo}ULL", f"-DFILTER_COMM_HI={hi}ULL"]
        if self.count_mode:
            flags.append("-DCOUNT_MODE=1")
        return flags

    def start(self) -> None:
        # RAW_TRACEPOINT_PROBE programs attach while loading (a failure there is a load
        # error with its own message); make sure both really are attached.
        import ctypes as ct

        self.slots = bpfsupport.header_slots(self.settings, self.name, SLOTS)
        self.bpf = bpfsupport.load(self.settings, self.name, self.cflags())
        missing = [tp for tp in (b"sys_enter", b"sys_exit")
                   if tp not in self.bpf.raw_tracepoint_fds]
        if missing:
            self.bpf.cleanup()
            self.bpf = None
            raise CollectorError(
                f"syscalls: raw tracepoint(s) {b', '.join(missing).decode()} did not attach; "
                "the kernel needs CONFIG_BPF_EVENTS and CONFIG_FTRACE_SYSCALLS; run "
                "`kernelsight doctor`")
        # Both programs are attached: a syscall returning from now on without its entry
        # was in flight before this instant.
        self.bpf[b"attach_ns"][0] = ct.c_uint64(time.monotonic_ns())
        self.watch_self(self.bpf)
        self._events = self.bpf[b"events"]
        self._events.open_ring_buffer(self._on_event)
        self._counters = self.bpf[b"counters"]
        self._interval_start = time.monotonic_ns()

    def _name(self, nr: int) -> str:
        n = self._names.get(nr)
        if n is None:
            n = self._names[nr] = syscall_name(nr)
        return n

    def _is_wait(self, nr: int, name: str, arg0: int) -> bool:
        """waits.classify, cached per syscall unless the answer depends on the descriptor."""
        if nr not in self._wait_of:
            depends = name in waits.FD_IO_NAMES and name not in waits.WAIT_NAMES
            self._wait_of[nr] = None if depends else waits.classify(name) == waits.WAIT
        w = self._wait_of[nr]
        return waits.classify(name, fd=arg0) == waits.WAIT if w is None else w

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        e = self._events.event(data)
        nr = int(e.nr)
        name = self._name(nr)
        comm = bytes(e.comm).split(b"\0", 1)[0].decode(errors="replace")
        arg0 = int(e.arg0)
        lat = int(e.latency_ns)
        if not self.settings.record_waits and self._is_wait(nr, name, arg0):
            key = (int(e.tgid), comm, nr)
            agg = self._waits.get(key)
            if agg is None:
                self._waits[key] = [1, lat, lat]
            else:
                agg[0] += 1
                agg[1] += lat
                if lat > agg[2]:
                    agg[2] = lat
            return
        ret = int(e.ret)
        self._rows.append({
            "timestamp": self.clock(int(e.ts_ns)),
            "host": self.settings.host,
            "pid": int(e.tgid),
            "tid": int(e.tid),
            "cpu": int(e.cpu),
            "uid": int(e.uid),
            "syscall_nr": max(nr, -1),  # the column allows -1 (no syscall) and up
            "syscall_name": name,
            "latency_ns": lat,
            "ret_value": ret,
            "is_error": 1 if -4095 <= ret <= -1 else 0,
            "arg0": arg0,
            "comm": comm,
        })

    def _wait_rows(self) -> list[dict]:
        """The interval's wait summaries (and a new interval)."""
        now = time.monotonic_ns()
        interval_ns = max(1, now - self._interval_start)
        self._interval_start = now
        if not self._waits:
            return []
        ts = self.clock(now)
        rows = [{"timestamp": ts, "host": self.settings.host, "pid": pid, "comm": comm,
                 "syscall_nr": max(nr, -1), "syscall_name": self._name(nr),
                 "wait_count": n, "latency_sum_ns": total, "latency_max_ns": mx,
                 "interval_ns": interval_ns}
                for (pid, comm, nr), (n, total, mx) in self._waits.items()]
        self._waits = {}
        return rows

    def _drain(self, timeout_ms: int, final: bool = False) -> None:
        if timeout_ms > 0:
            self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()
        if self._rows:
            rows, self._rows = self._rows, []
            self.pub.publish(EVENT, rows)
        if final or self.ticker.due():
            summaries = self._wait_rows()
            if summaries:
                self.pub.publish(WAITS, summaries)
            # Once per interval, not per drain: each read of the per-CPU counters is four
            # BCC map reads (a measurable part of an idle host's cost at 2 drains a second).
            self._count_losses()

    def _count_losses(self) -> None:
        for slot, reason in LOSSES:
            n = bpfsupport.read_percpu_sum(self._counters, self.slots[slot])
            if n > self._seen.get(slot, 0):
                self.pub.lost(EVENT, reason, n - self._seen.get(slot, 0))
                self._seen[slot] = n

    def counts(self) -> dict[str, tuple[int, int]]:
        """--count mode: syscall name -> (count, latency sum ns), summed over CPUs."""
        out: dict[str, tuple[int, int]] = {}
        for k, per_cpu in self.bpf[b"counts"].items():
            n = sum(int(v.count) for v in per_cpu)
            if n:
                out[self._name(int(k.value))] = (n, sum(int(v.latency_ns) for v in per_cpu))
        return out

    def poll(self) -> None:
        self._drain(POLL_MS)

    def stop(self) -> None:
        if self.bpf is None:
            return
        try:
            time.sleep(0.01)  # let in-flight exits land in the ring buffer
            self._drain(0, final=True)
            if self.count_mode:
                self.counts_final = self.counts()
        finally:
            self.unwatch_self()
            self.bpf.cleanup()
            self.bpf = None


def comm_words(comm: str) -> tuple[int, int]:
    """A task name as the kernel holds it (16 bytes, NUL-padded, at most 15 used) as two
    little-endian words, for the in-kernel --comm filter."""
    raw = comm.encode()[:15].ljust(16, b"\0")
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


COLLECTOR = SyscallTracer
