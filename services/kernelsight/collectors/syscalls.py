"""eBPF syscall latency tracer -> ``syscall_events``."""

from __future__ import annotations

import gzip
import logging
import os
import platform
import re
import time
from typing import Any, ClassVar

from kernelsight import bpfsupport
from kernelsight.clock import MonoToEpoch
from kernelsight.collectors.base import Collector
from kernelsight.config import Settings
from kernelsight.exceptions import CollectorError
from kernelsight.streams import Publisher

log = logging.getLogger(__name__)

EVENT = "syscall_events"
POLL_MS = 100
# Slots of the per-thread start array: pid_max, capped (24 bytes each, so 6 MiB at the cap).
# Threads whose tid is beyond it use a hash map of --map-entries entries instead.
TID_SLOTS_MAX = 262_144
# Slots of the per-CPU counters, defined in bpf/ks_syscalls.h (read from there at start).
SLOTS = ("CNT_RINGBUF_FULL", "CNT_START_MAP_FULL")

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
    """Every syscall slower than ``--min-latency-ms`` (default 10 ms), one row each.

    Hooks: raw tracepoints ``sys_enter`` and ``sys_exit`` (RAW_TRACEPOINT_PROBE; no kprobes,
    no fentry, no task_struct reads, so it runs on kernels whose headers BCC only has a
    fallback for). sys_enter stores {enter time, syscall id, first argument register} in a
    BPF_ARRAY indexed by tid (``pid_max`` slots, capped at 262144; larger tids use a bounded
    hash). sys_exit computes the latency and, only when it is over the threshold, sends one
    event through a BPF ring buffer (``--ringbuf-pages``). User space polls the ring buffer
    every 100 ms.

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
    - This collector's own process is not traced (its poll waits would report themselves).
    - Syscalls already in flight when the tracer starts, and exit()/exit_group()/a
      successful execve() from another thread (they never return to the same tid), are not
      recorded; a stale start left by such a thread is never paired with another syscall.
    - Ring buffer full: the event is counted as lost (``ringbuf_full``) in the accounting.
    - Threads with a tid beyond the slots share a --map-entries hash; when it is full their
      syscalls are not timed (logged as a warning, not an event loss).
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
    event_types: ClassVar[tuple[str, ...]] = (EVENT,)
    # Trace this collector's own process too (off: its waits would be reported as slow).
    trace_self: ClassVar[bool] = False
    # Skip the clock read at sys_exit when jiffies prove the syscall was fast (see Caveats).
    jiffies_shortcut: ClassVar[bool] = True

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        super().__init__(settings, publisher)
        self.bpf: Any = None
        self.clock = MonoToEpoch()
        self._names: dict[int, str] = {}
        self._rows: list[dict] = []
        self._lost_seen = 0
        self._map_full_seen = 0

    def cflags(self) -> list[str]:
        s = self.settings
        min_ns = int(s.min_latency_ms * 1_000_000)
        return [
            f"-DMIN_LATENCY_NS={min_ns}ULL",
            f"-DSKIP_JIFFIES="
            f"{skip_jiffies(min_ns, kernel_hz(s.procfs)) if self.jiffies_shortcut else -1}",
            f"-DSELF_TGID={0 if self.trace_self else os.getpid()}",
            f"-DTID_SLOTS={tid_slots(s.procfs)}",
            f"-DHASH_ENTRIES={s.map_entries}",
            f"-DRINGBUF_PAGES={s.ringbuf_pages}",
            f"-I{s.bpf_path}",
        ]

    def start(self) -> None:
        # RAW_TRACEPOINT_PROBE programs attach while loading (a failure there is a load
        # error with its own message); make sure both really are attached.
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
        self._events = self.bpf[b"events"]
        self._events.open_ring_buffer(self._on_event)
        self._counters = self.bpf[b"counters"]

    def _name(self, nr: int) -> str:
        n = self._names.get(nr)
        if n is None:
            n = self._names[nr] = syscall_name(nr)
        return n

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> None:
        e = self._events.event(data)
        ret = int(e.ret)
        self._rows.append({
            "timestamp": self.clock(int(e.ts_ns)),
            "host": self.settings.host,
            "pid": int(e.tgid),
            "tid": int(e.tid),
            "cpu": int(e.cpu),
            "uid": int(e.uid),
            "syscall_nr": max(int(e.nr), -1),  # the column allows -1 (no syscall) and up
            "syscall_name": self._name(int(e.nr)),
            "latency_ns": int(e.latency_ns),
            "ret_value": ret,
            "is_error": 1 if -4095 <= ret <= -1 else 0,
            "arg0": int(e.arg0),
            "comm": bytes(e.comm).split(b"\0", 1)[0].decode(errors="replace"),
        })

    def _drain(self, timeout_ms: int) -> None:
        if timeout_ms > 0:
            self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()
        if self._rows:
            rows, self._rows = self._rows, []
            self.pub.publish(EVENT, rows)
        self._count_losses()

    def _count_losses(self) -> None:
        lost = bpfsupport.read_percpu_sum(self._counters, self.slots["CNT_RINGBUF_FULL"])
        if lost > self._lost_seen:
            self.pub.lost(EVENT, "ringbuf_full", lost - self._lost_seen)
            self._lost_seen = lost
        full = bpfsupport.read_percpu_sum(self._counters, self.slots["CNT_START_MAP_FULL"])
        if full > self._map_full_seen:
            # Not lost events (those syscalls were just not timed), so not in the accounting.
            log.warning("syscalls: %d syscalls untimed: start hash full (raise --map-entries)",
                        full - self._map_full_seen)
            self._map_full_seen = full

    def poll(self) -> None:
        self._drain(POLL_MS)

    def stop(self) -> None:
        if self.bpf is None:
            return
        try:
            time.sleep(0.01)  # let in-flight exits land in the ring buffer
            self._drain(0)
        finally:
            self.bpf.cleanup()
            self.bpf = None


COLLECTOR = SyscallTracer
