"""The page-fault tracer (bpf/pagefaults.bpf.c)."""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kernelsight import bpfsupport
from kernelsight.clock import MonoToEpoch, mono_ns, now_ns
from kernelsight.collectors.base import Collector, Ticker
from kernelsight.collectors.cumulative import (
    CumulativeMap,
    delete_keys,
    max_for_epoch,
    proc_alive,
)
from kernelsight.exceptions import CollectorError

log = logging.getLogger(__name__)

EVENTS = "page_fault_events"
TOTALS = "page_fault_totals"

# Slots of cpu_t.drops (per-CPU `cpu_state` array), defined in bpf/ks_pagefaults.h (read from
# there at start).
SLOTS = ("DROP_RINGBUF_FULL", "DROP_MINOR_SAMPLED", "DROP_MAP_FULL", "DROP_NO_ENTRY",
         "DROP_SLOTS")

FAULT_TYPE = ("minor", "major")
ACCESS = ("read", "write", "exec")
COMM_LEN = 16


class Event(ctypes.Structure):
    """struct event_t in bpf/pagefaults.bpf.c."""

    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("latency_ns", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("major", ctypes.c_uint8),
        ("access", ctypes.c_uint8),
        ("user_mode", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


@dataclass
class Cumulative:
    """One (tgid, type) as last read: the kernel's cumulative counters."""

    count: int = 0
    lat_sum: int = 0
    sampled: int = 0


@dataclass
class Totals:
    """One read of a (tgid, type) key: its counters, the finished epoch's max, its comm."""

    cum: Cumulative
    max_ns: int
    comm: bytes

    def counters(self) -> dict[str, int]:
        return {"count": self.cum.count, "lat_sum": self.cum.lat_sum,
                "sampled": self.cum.sampled}


def decode_comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def sum_cpus(per_cpu, epoch: int) -> tuple[Cumulative, int, bytes]:
    """One (tgid, type) of the per-CPU totals map: the counters summed over CPUs, the max of
    the CPUs' maxes for ``epoch``, and the comm of whichever CPU created the entry."""
    cur = Cumulative()
    mx = 0
    comm = b""
    for v in per_cpu:
        cur.count += int(v.count)
        cur.lat_sum += int(v.lat_sum)
        cur.sampled += int(v.sampled)
        mx = max(mx, max_for_epoch(v, epoch))
        if not comm:
            comm = bytes(v.comm)
    return cur, mx, comm


class PageFaults(Collector):
    """Page faults on user addresses: every major fault and a rate-limited sample of minor
    faults as ``page_fault_events``, plus exact per-process totals as ``page_fault_totals``.

    HOOKS
      page_fault_user, page_fault_kernel (raw tracepoints of x86's exceptions:* events, fault
      entry: address, error_code) and the PAGE_FAULTS_MAJ / PAGE_FAULTS_MIN software perf
      events with a BPF program on every CPU (sample_period=1), which the kernel emits at the
      end of handle_mm_fault (mm_account_fault). latency_ns = perf event time - entry time of
      the same thread (matched on the fault address), for the timed faults: every major
      fault, and the minor faults that become events. No kprobes, no fentry.

    OUTPUT
      page_fault_events: pid, tid, cpu, address, latency_ns, fault_type (major|minor),
        access_type (read|write|exec, from the x86 error code), user_mode (the faulting
        context was in user mode; 0 = copy_to_user & co. inside a syscall), comm.
        Every major fault is an event. Minor faults are sampled by a per-CPU token bucket
        sharing --minor-fault-rate events/s (default 10); the rest are counted as
        dropped, reason ``minor_sampled`` - by design, since the counts stay exact.
      page_fault_totals: every --interval, one row per (pid, fault_type) with faults in it:
        fault_count (every fault), latency_sum_ns and latency_max_ns (major: of every fault;
        minor: of the sampled ones only), sampled_events (how many of them are in
        page_fault_events), interval_ns. Mean latency: latency_sum_ns / fault_count for
        major, latency_sum_ns / sampled_events for minor (since 2026-12-01; before, every
        minor fault was timed and the divisor was fault_count). Counts come from cumulative
        in-kernel per-CPU counters that user space only reads and sums (diff of two reads),
        so nothing is lost between reads.

    COST (2-vCPU Firecracker VM, kernel 6.18, a busy shared host: figures are from
      interleaved runs, and CPU time is the faulting process's, where the BPF programs run)
      Per fault: entry = the task's storage slot (created once per task), one clock read and
      the per-CPU token bucket; completion = the task storage slot, one per-CPU hash lookup
      for the (tgid, type) totals, plain adds on per-CPU data (no atomics, no shared cache
      line); a second clock read, the ring buffer, pid/tid and comm only for timed faults
      (majors, sampled minors). BPF run time since 2026-12-01 (same method as below, the
      python workload of `kernelsight bench`): entry 61-63 ns (the clock read 24 of them),
      completion 49 ns; with a second clock read for every fault the completion took 74-76 ns.
      `kernelsight bench --only pagefaults` (min of 21 rounds, alternating in the same
      minutes): 1.12 and 1.16 with one read for untimed minor faults, 1.20 and 1.29 with two;
      1.105 and 1.116 with the token drawn at entry, 1.10 and 1.22 with it drawn at completion.
      The figures below are from the two-read version.
      BPF run time (kernel.bpf_stats_enabled=1, run_time_ns / run_cnt, min of 3 interleaved
      runs of the C loop below; ~35 ns of each figure is the accounting itself): entry 79 ns,
      completion 102 ns; empty programs 36 (entry, regular or raw) / 40 ns (perf event).
      The previous version (regular tracepoints, shared totals with atomics): 83 / 118 ns.
      The raw tracepoint's gain is mostly outside run_time_ns: a regular tracepoint first
      builds a trace record (below: an empty raw program costs ~0.65x an empty regular one).
      C loop: mmap 256 MiB anonymous, MADV_NOHUGEPAGE, write one byte per 4 KiB page,
      munmap; 6 x 64k faults per run, 15 interleaved runs, median over untraced (1.88 us per
      fault): empty regular-tracepoint programs +214 ns (the floor), empty raw +139 (0.65x),
      this tracer's programs +271 (1.27x), previous version +389 (1.82x).
      ``kernelsight bench --only pagefaults`` (python memset workload, collector running,
      min of 11 rounds): 0.96, 0.84; its ratio of medians 1.88, 1.76. The medians are
      inflated by the collector thread running beside the workload (~3% of a CPU: 2000
      events/s into Redis); the same rounds with the BPF programs alone: 0.62 (min) / 0.76
      (median) in one series, 1.40 / 1.55 in another - noise on this host is that large.
      Software perf events with sample_period=1 are not throttled by
      perf_event_max_sample_rate, so every fault is counted. The collector is woken every 64
      events per CPU (and drains every 0.5 s), not per event. An LRU hash keyed by tid for
      the entries (the fallback, -DKS_START_LRU) costs ~150-165 / ~170-210 ns instead.
      Memory: the totals map, allocated as used: ncpu x 72 bytes per (process, type) with
      faults, up to --map-entries keys; 32 bytes of task storage per faulting task; the ring
      buffer (--ringbuf-pages).

    CAVEATS
      - x86 only: the exceptions:* tracepoints are x86's.
      - Faults taken by get_user_pages() (regs == NULL: O_DIRECT user buffers,
        process_vm_readv, ptrace, execve argument pages, mlock/MAP_POPULATE/madvise
        populate, futex fault-in) increment getrusage() counters but emit no perf event:
        this tracer does not see them. Failed faults (SIGSEGV/SIGBUS) are not counted
        either, as perf does not count them.
      - A fault in flight when the tracer starts (its entry fired before we attached) has
        no entry and an unknown latency: it is neither in page_fault_totals (so a major
        row's latency_sum_ns / fault_count is the exact mean of the faults counted) nor an
        event;
        it is counted as dropped ``page_fault_events``, reason ``no_entry``. Totals count
        the faults that began after the tracer started, as io counts requests.
      - The per-CPU token bucket gives each CPU --minor-fault-rate / ncpu events/s (burst:
        0.1 s of that), so one busy CPU alone stores fewer than --minor-fault-rate. The
        minor latency figures are those of this sample. The token is drawn at fault entry,
        so the sample does not depend on the faults' latency; but after an idle stretch a
        CPU's first minor faults get the tokens, so a workload that faults in bursts has its
        bursts' first faults over-represented.
      - latency_max_ns is per interval; a fault completing within microseconds of the
        interval switch may land its max in the next interval (it is clamped to at least
        the interval's mean).
      - Totals of a process are deleted from the kernel map once it has been gone from /proc
        at two interval checks with no change in between, after its final delta was
        published (collectors/cumulative.py); a process exiting between a read and the
        check is published at the next read. Per-process keys are bounded by
        --map-entries; faults of processes that do not fit are counted as dropped, reason
        ``map_full``.
    """

    name = "pagefaults"
    event_types = (EVENTS, TOTALS)

    def start(self) -> None:
        s = self.settings
        self.slots = bpfsupport.header_slots(s, "pagefaults", SLOTS)
        ncpu = max(1, os.cpu_count() or 1)
        cflags = [f"-DKS_MAP_ENTRIES={s.map_entries}", f"-DKS_RINGBUF_PAGES={s.ringbuf_pages}",
                  f"-DKS_MINOR_RATE={max(0, int(s.minor_fault_rate))}", f"-DKS_NCPU={ncpu}",
                  f"-I{s.bpf_path}"]
        try:
            self.bpf = bpfsupport.load(s, "pagefaults", cflags)
            self.start_map = "task storage"
        except CollectorError as e:  # no task storage for tracing programs: per-tid LRU hash
            log.warning("pagefaults: task storage unavailable (%s); using an LRU hash", e)
            self.bpf = bpfsupport.load(s, "pagefaults", [*cflags, "-DKS_START_LRU"])
            self.start_map = "lru hash"
        try:
            self._attach_perf_events()
        except CollectorError as e:
            # Before 6.1 the verifier refuses perf_event programs that use a map allocated at
            # run time: retry with the totals map preallocated (--map-entries x ncpu values).
            log.warning("pagefaults: %s; retrying with a preallocated totals map", e)
            self.bpf.cleanup()
            extra = ["-DKS_START_LRU"] if self.start_map == "lru hash" else []
            self.bpf = bpfsupport.load(s, "pagefaults", [*cflags, *extra,
                                                          "-DKS_TOTALS_PREALLOC"])
            try:
                self._attach_perf_events()
            except CollectorError:
                self.bpf.cleanup()
                raise
            self.start_map += ", preallocated totals"
        log.info("pagefaults: per-thread fault entries in %s", self.start_map)
        self.mono_to_epoch = MonoToEpoch()
        self.totals = self.bpf[b"totals"]
        self.epoch_tbl = self.bpf[b"epoch"]
        self.cpu_state = self.bpf[b"cpu_state"]
        self.epoch = 1
        self.epoch_tbl[ctypes.c_int(0)] = ctypes.c_uint64(self.epoch)
        self.cumulative: CumulativeMap[tuple[int, int], Totals] = CumulativeMap(
            Totals.counters, owner=lambda key: key[0])
        self.alive = proc_alive(s.procfs)
        self.drops_seen = [0] * self.slots["DROP_SLOTS"]
        self.pending: list[dict] = []
        self.bpf[b"events"].open_ring_buffer(self._on_event)
        self.procfs = Path(s.procfs)
        self.interval_start = mono_ns()
        self.ticker = Ticker(s.interval)
        self.watch_self(self.bpf)

    def _attach_perf_events(self) -> None:
        try:
            from bcc import PerfSWConfig, PerfType
        except ImportError as e:  # load() already imported bcc; this is for the type checker
            raise CollectorError(f"pagefaults: bcc is incomplete: {e}") from None
        for cfg, fn in ((PerfSWConfig.PAGE_FAULTS_MAJ, b"on_major"),
                        (PerfSWConfig.PAGE_FAULTS_MIN, b"on_minor")):
            try:
                self.bpf.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=cfg,
                                           fn_name=fn, sample_period=1)
            except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                raise CollectorError(
                    f"pagefaults: cannot attach the {fn.decode()[3:]} page-fault software "
                    f"perf event ({e}); needs perf_event_open as root (check "
                    "kernel.perf_event_paranoid and that CONFIG_PERF_EVENTS is on), or run "
                    "`kernelsight doctor`") from None

    # -- events ---------------------------------------------------------------------------
    def _on_event(self, _ctx: object, data: int, _size: int) -> None:
        e = ctypes.cast(data, ctypes.POINTER(Event)).contents
        self.pending.append({
            "timestamp": self.mono_to_epoch(e.ts), "host": self.settings.host,
            "pid": e.pid, "tid": e.tid, "cpu": e.cpu, "address": e.addr,
            "latency_ns": e.latency_ns, "fault_type": FAULT_TYPE[e.major & 1],
            "access_type": ACCESS[min(e.access, 2)], "user_mode": e.user_mode & 1,
            "comm": decode_comm(e.comm),
        })

    def _publish_events(self) -> None:
        if self.pending:
            self.pub.publish(EVENTS, self.pending)
            self.pending = []

    # -- totals ---------------------------------------------------------------------------
    def _comm(self, tgid: int, fallback: bytes) -> str:
        try:
            return (self.procfs / str(tgid) / "comm").read_text().rstrip("\n")
        except OSError:
            return decode_comm(fallback)

    def _read_totals(self, finished: int) -> dict[tuple[int, int], Totals]:
        """One read of the per-CPU totals map, summed over CPUs, keyed (tgid, major)."""
        out: dict[tuple[int, int], Totals] = {}
        for k, v in bpfsupport.read_hash(self.totals):
            cur, mx, comm = sum_cpus(v, finished)
            out[(int(k.tgid), int(k.major))] = Totals(cur, mx, comm)
        return out

    def _interval(self) -> None:
        now_mono = mono_ns()
        ts = now_ns()
        interval_ns = max(1, now_mono - self.interval_start)
        self.interval_start = now_mono
        finished = self.epoch
        self.epoch += 1
        self.epoch_tbl[ctypes.c_int(0)] = ctypes.c_uint64(self.epoch)
        rows = []
        for ch in self.cumulative.diff(self._read_totals(finished)):
            (tgid, major), cur = ch.key, ch.now.cum
            before = ch.before.cum if ch.before else Cumulative()
            n = cur.count - before.count
            if n <= 0:
                continue
            lat_sum = cur.lat_sum - before.lat_sum
            sampled = max(0, cur.sampled - before.sampled)
            # Majors: every fault is timed. Minors: the sampled ones (the events) only.
            timed = n if major & 1 else sampled
            rows.append({
                "timestamp": ts, "host": self.settings.host, "pid": tgid,
                "comm": self._comm(tgid, ch.now.comm), "fault_type": FAULT_TYPE[major & 1],
                "fault_count": n, "latency_sum_ns": lat_sum,
                "latency_max_ns": max(ch.now.max_ns, -(-lat_sum // max(timed, 1))),
                "sampled_events": sampled,
                "interval_ns": interval_ns,
            })
        if rows:
            self.pub.publish(TOTALS, rows)
        # Only now, with the final deltas published: forget processes that are gone.
        delete_keys(self.totals, (self.totals.Key(tgid, major) for (tgid, major), _ in
                                  self.cumulative.expire(self.alive)))
        self._account_drops()

    def _account_drops(self) -> None:
        per_cpu = self.cpu_state[ctypes.c_int(0)]
        now = [sum(int(c.drops[i]) for c in per_cpu) for i in range(self.slots["DROP_SLOTS"])]
        d = [a - b for a, b in zip(now, self.drops_seen, strict=True)]
        self.drops_seen = now
        self.pub.lost(EVENTS, "ringbuf_full", d[self.slots["DROP_RINGBUF_FULL"]])
        self.pub.lost(EVENTS, "minor_sampled", d[self.slots["DROP_MINOR_SAMPLED"]])
        self.pub.lost(EVENTS, "no_entry", d[self.slots["DROP_NO_ENTRY"]])
        self.pub.lost(TOTALS, "map_full", d[self.slots["DROP_MAP_FULL"]])

    # -- lifecycle ------------------------------------------------------------------------
    def poll(self) -> None:
        # The kernel side wakes us every KS_WAKEUP_EVERY events per CPU only, so after the
        # timeout drain what is there: events are batched per ~0.5 s, not one per wakeup (2
        # idle wake-ups a second; a busy CPU wakes it every KS_WAKEUP_EVERY events).
        self.bpf.ring_buffer_poll(500)
        self.bpf.ring_buffer_consume()
        self._publish_events()
        if self.ticker.due():
            self._interval()

    def stop(self) -> None:
        bpf = getattr(self, "bpf", None)
        if bpf is None:
            return
        if not hasattr(self, "totals"):  # start() failed half way
            bpf.cleanup()
            return
        try:
            bpf.ring_buffer_consume()
            self._publish_events()
            self._interval()
        finally:
            self.unwatch_self()
            bpf.cleanup()


COLLECTOR = PageFaults
