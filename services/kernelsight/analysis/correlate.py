"""Kernel knowledge as data: cause -> effect chains, and how a candidate chain is scored.

A chain names the signals that can show its cause (any one suffices; more agreeing ones add
weight) and the signals where its effects appear. A candidate is one anomalous episode of a
cause signal; its score combines how far the cause departs from its baseline, how strongly
an effect follows it (Pearson correlation with the cause leading by 0..MAX_LAG bins), and
whether the cause changed first."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from kernelsight.analysis.baselines import Anomaly
from kernelsight.analysis.signals import Series
from kernelsight.sqlcompat import greatest, least, real

MAX_LAG = 3  # bins the effect may trail the cause by
OVERLAP_SLACK = 2  # bins around the cause episode in which effects count
EPISODE_GAP = 4  # cause anomalies closer than this (bins) are one episode


@dataclass(frozen=True)
class Chain:
    kind: str
    title: str
    causes: tuple[str, ...]  # signal name patterns, strongest evidence first
    effects: tuple[str, ...]
    # :lo :hi, {not_own} -> (pid, comm, weight): who is behind the cause. Slow syscalls are
    # counted, not summed: one process blocked for seconds must not hide many slowed ones.
    processes_sql: str
    # (cause pattern, effect patterns): a cause signal that leads an episode only when one
    # of those effects is anomalous with it (an IOPS surge is load, not latency: it names the
    # block device as cause only when syncs or writes slowed with it).
    led_only_with: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # processes: each one's rise over the window before the finding (what changed), or
    # its plain weight in the finding's span.
    by_rise: bool = True


CHAINS: tuple[Chain, ...] = (
    Chain("cpu_oversubscription",
          "CPU oversubscription -> run-queue latency -> slow syscalls",
          ("sched.runq_p95_us", "load.running", "sched.involuntary_per_s", "load.load_1min"),
          ("syscall.*.slow_per_s", "syscall.*.slow_ms_per_s"),
          # Who kept the CPUs busy: CPU time used (ms). (Ranking by time spent waiting for
          # a CPU named the bystanders on a host loaded by others, not the hogs.)
          """SELECT pid, comm, SUM(cpu_time_ms)
          FROM sched_events
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          GROUP BY pid, comm ORDER BY 3 DESC, 1, 2 LIMIT 50"""),
    Chain("block_latency",
          "Block device latency -> slow fsync/read/write",
          # Latency first; a surge of IOPS on a device leads when its p99 stays under the
          # floor (a fast disk): the slow syncs that follow still name the device as cause.
          ("io.*.p99_us", "io.*.iops"),
          ("syscall.sync.*", "syscall.write.*", "syscall.read.*", "syscall.open.*"),
          """SELECT pid, comm, COUNT(*) FROM syscall_events
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          AND syscall_name IN ('fsync', 'fdatasync', 'sync', 'syncfs', 'write', 'pwrite64',
          'read', 'pread64', 'msync')
          GROUP BY pid, comm ORDER BY 3 DESC, 1, 2 LIMIT 50""",
          led_only_with=(("io.*.iops", ("syscall.sync.*", "syscall.write.*")),)),
    Chain("memory_pressure",
          "Memory pressure -> major faults -> fault latency -> slow read/mmap",
          # The tracer's per-process totals first; the kernel's own count (vmstat, read by the
          # scraper) times it right when the fault tracer stalls under load (seen: one row
          # for 24 s at load 36, which spread the incident over the whole window).
          ("faults.major_per_s", "vmstat.pgmajfault_per_s"),
          ("faults.major_latency_us", "syscall.read.*", "syscall.memory.*"),
          # Each totals row by the part of its interval inside the span (a late row still
          # names who faulted).
          f"""SELECT pid, comm, SUM({real(f"fault_count * ({least('timestamp', ':hi')} - "
                                        f"{greatest('timestamp - interval_ns', ':lo')})")}
          / {greatest('interval_ns', '1')})
          FROM page_fault_totals
          WHERE timestamp >= :lo AND timestamp - interval_ns <= :hi AND fault_type = 'major'
          AND {{not_own}} GROUP BY pid, comm ORDER BY 3 DESC, 1, 2 LIMIT 50""",
          # Major faults are rare at rest: name who faulted, not who faulted more than before.
          by_rise=False),
    # A futex wait is a wait (waits.py): idle thread pools sleep in futex by design, at a low
    # steady rate the baseline absorbs. Many threads queueing on one lock raise the rate of
    # slow futex waits by an order of magnitude, each a voluntary context switch.
    Chain("lock_contention",
          "Lock contention -> futex waits -> time lost waiting",
          # One process's rate only: the host-wide rate moved by 40 % for half a minute in an
          # idle run on a shared host (other suites' thread pools), a false finding.
          ("lock.top_process_futex_waits_per_s",
           "lock.top_process_futex_waits_summarised_per_s"),
          # The cost: time its threads spend waiting, and the switches each wait takes.
          ("lock.top_process_futex_wait_ms_per_s",
           "lock.top_process_futex_wait_ms_summarised_per_s", "lock.futex_wait_ms_per_s",
           "sched.voluntary_per_s"),
          # Waits are rows (--record-waits) or per-interval summaries (the default): both.
          """SELECT pid, comm, SUM(n) FROM (
          SELECT pid, comm, 1 AS n FROM syscall_events
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          AND syscall_name IN ('futex', 'futex_waitv')
          UNION ALL SELECT pid, comm, wait_count FROM syscall_wait_summaries
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          AND syscall_name IN ('futex', 'futex_waitv')) AS waits
          GROUP BY pid, comm ORDER BY 3 DESC, 1, 2 LIMIT 50"""),
    Chain("tcp_retransmits",
          "TCP retransmits -> slow send/recv",
          ("tcp.retrans_per_s",),
          ("syscall.net.*",),
          """SELECT pid, comm, SUM(n) FROM (
          SELECT pid, comm, 1 AS n FROM syscall_events
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          AND syscall_name IN ('sendto', 'sendmsg', 'recvfrom', 'recvmsg', 'connect')
          UNION ALL SELECT pid, comm, wait_count FROM syscall_wait_summaries
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          AND syscall_name IN ('sendto', 'sendmsg', 'recvfrom', 'recvmsg', 'connect')) AS waits
          GROUP BY pid, comm ORDER BY 3 DESC, 1, 2 LIMIT 50"""),
)
# Slow syscalls no chain explains still make a (weaker) finding of their own.
UNEXPLAINED = Chain("slow_syscalls", "Slow service-time syscalls (no kernel cause seen)",
                    ("syscall.*.slow_ms_per_s",), (),
                    """SELECT pid, comm, COUNT(*) FROM syscall_events
                    WHERE timestamp BETWEEN :lo AND :hi AND {not_own} GROUP BY pid, comm
                    ORDER BY 3 DESC, 1, 2 LIMIT 50""")


def matching(patterns: tuple[str, ...], names: list[str]) -> list[str]:
    """Signal names matching any pattern, in pattern order (the 'all' family last)."""
    out: list[str] = []
    for p in patterns:
        hits = sorted(n for n in names if fnmatch.fnmatchcase(n, p) and n not in out)
        out += [n for n in hits if ".all." not in n] + [n for n in hits if ".all." in n]
    return out


def lagged_corr(cause: np.ndarray, effect: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, int]:
    """The best Pearson correlation of ``effect`` with ``cause`` leading by 0..max_lag bins,
    and that lag; (0, 0) when either side is flat."""
    best, best_lag = 0.0, 0
    c = np.nan_to_num(cause)
    e = np.nan_to_num(effect)
    for lag in range(0, max_lag + 1):
        a, b = (c, e) if lag == 0 else (c[:-lag], e[lag:])
        if len(a) < 4 or np.std(a) == 0 or np.std(b) == 0:
            continue
        r = float(np.corrcoef(a, b)[0, 1])
        if r > best:
            best, best_lag = r, lag
    return best, best_lag


def severity(z: float) -> float:
    """0..1: how far from the baseline, saturating (z 10 -> 0.5, z 40 -> 0.8)."""
    return z / (z + 10.0)


@dataclass
class Candidate:
    chain: Chain
    cause: Anomaly
    support: list[Anomaly]  # other cause signals of the chain anomalous at the same time
    effects: list[tuple[Anomaly, float, int]]  # anomaly, correlation, lag in bins
    score: float

    @property
    def start(self) -> int:
        return min([self.cause.start] + [a.start for a, _, _ in self.effects])

    @property
    def end(self) -> int:
        return max([self.cause.end] + [a.end for a, _, _ in self.effects])


def _overlaps(a: Anomaly, b: Anomaly, slack: int = OVERLAP_SLACK) -> bool:
    return a.start < b.end + slack and b.start < a.end + slack


def candidates(series: dict[str, Series], found: dict[str, list[Anomaly]]) -> list[Candidate]:
    """Every chain's candidates, best first; one per anomalous episode of the chain's cause."""
    names = sorted(series)
    out: list[Candidate] = []
    for chain in CHAINS:
        cause_names = matching(chain.causes, names)
        causes = [a for n in cause_names for a in found.get(n, [])]
        effects = [a for n in matching(chain.effects, names) for a in found.get(n, [])]
        # The most direct signal of the chain leads an episode (run-queue latency before the
        # 1-minute load average, which lags); strength breaks ties.
        causes.sort(key=lambda a: (cause_names.index(a.signal), -a.z))
        used: list[Anomaly] = []
        for c in causes:
            # Cause anomalies of one chain less than EPISODE_GAP bins apart are one episode (a
            # storm whose p99 dipped for 3 intervals is one incident, not two findings).
            if any(_overlaps(c, u, EPISODE_GAP) for u in used):
                continue  # the same episode, already led by a stronger cause signal
            support = [u for u in causes if u is not c and _overlaps(c, u, EPISODE_GAP)]
            used += [c, *support]
            eff = []
            for e in effects:  # begins before the cause ends, ends after it began
                if e.start < c.end and e.end > c.start - OVERLAP_SLACK:
                    r, lag = lagged_corr(series[c.signal].values * series[c.signal].direction,
                                         series[e.signal].values)
                    eff.append((e, r, lag))
            eff.sort(key=lambda t: -t[1])
            if not _may_lead(chain, c, eff):
                continue
            out.append(Candidate(chain, c, support, eff, _score(c, support, eff)))
    explained = [a for cand in out for a, _, _ in cand.effects]
    for n in matching(UNEXPLAINED.causes, names):
        for a in found.get(n, []):
            if not any(_overlaps(a, e, 0) for e in explained):
                out.append(Candidate(UNEXPLAINED, a, [], [], 0.6 * severity(a.z) * 0.5))
    out.sort(key=lambda c: (-c.score, c.cause.start, c.chain.kind))
    return out


def _may_lead(chain: Chain, c: Anomaly, eff: list[tuple[Anomaly, float, int]]) -> bool:
    for cause_pat, effect_pats in chain.led_only_with:
        if fnmatch.fnmatchcase(c.signal, cause_pat):
            return any(fnmatch.fnmatchcase(e.signal, p) for e, _, _ in eff for p in effect_pats)
    return True


def _score(cause: Anomaly, support: list[Anomaly],
           effects: list[tuple[Anomaly, float, int]]) -> float:
    """0..1. Cause strength 0.5 (+0.1 per agreeing cause signal, up to two), effect
    correlation 0.25, precedence 0.15 (the cause changed no later than its effects)."""
    s = 0.5 * severity(cause.z) + 0.05 * min(len(support), 2)
    if effects:
        best_r = max(0.0, effects[0][1])
        first = cause.start <= min(a.start for a, _, _ in effects)
        s += 0.25 * best_r + (0.15 if first else 0.05)
    return min(1.0, s)
