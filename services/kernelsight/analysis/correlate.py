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

MAX_LAG = 3  # bins the effect may trail the cause by
OVERLAP_SLACK = 2  # bins around the cause episode in which effects count


@dataclass(frozen=True)
class Chain:
    kind: str
    title: str
    causes: tuple[str, ...]  # signal name patterns, strongest evidence first
    effects: tuple[str, ...]
    # :lo :hi, {not_own} -> (pid, comm, weight): who is behind the cause. Slow syscalls are
    # counted, not summed: one process blocked for seconds must not hide many slowed ones.
    processes_sql: str


CHAINS: tuple[Chain, ...] = (
    Chain("cpu_oversubscription",
          "CPU oversubscription -> run-queue latency -> slow syscalls",
          ("sched.runq_p95_us", "load.running", "sched.involuntary_per_s", "load.load_1min"),
          ("syscall.*.slow_per_s", "syscall.*.slow_ms_per_s"),
          # Who waited longest for a CPU: median run-queue latency x times scheduled (ms).
          """SELECT pid, comm, SUM(runq_latency_p50_us * context_switches) / 1e3
          FROM sched_events
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          GROUP BY pid, comm ORDER BY 3 DESC LIMIT 5"""),
    Chain("block_latency",
          "Block device latency -> slow fsync/read/write",
          ("io.*.p99_us",),
          ("syscall.sync.*", "syscall.write.*", "syscall.read.*", "syscall.open.*"),
          """SELECT pid, comm, COUNT(*) FROM syscall_events
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          AND syscall_name IN ('fsync', 'fdatasync', 'sync', 'syncfs', 'write', 'pwrite64',
          'read', 'pread64', 'msync')
          GROUP BY pid, comm ORDER BY 3 DESC LIMIT 5"""),
    Chain("memory_pressure",
          "Memory pressure -> major faults -> fault latency -> slow read/mmap",
          ("faults.major_per_s",),
          ("faults.major_latency_us", "syscall.read.*", "syscall.memory.*"),
          """SELECT pid, comm, SUM(fault_count) FROM page_fault_totals
          WHERE timestamp BETWEEN :lo AND :hi AND fault_type = 'major' AND {not_own}
          GROUP BY pid, comm ORDER BY 3 DESC LIMIT 5"""),
    Chain("tcp_retransmits",
          "TCP retransmits -> slow send/recv",
          ("tcp.retrans_per_s",),
          ("syscall.net.*",),
          """SELECT pid, comm, COUNT(*) FROM syscall_events
          WHERE timestamp BETWEEN :lo AND :hi AND {not_own}
          AND syscall_name IN ('sendto', 'sendmsg', 'recvfrom', 'recvmsg', 'connect')
          GROUP BY pid, comm ORDER BY 3 DESC LIMIT 5"""),
)
# Slow syscalls no chain explains still make a (weaker) finding of their own.
UNEXPLAINED = Chain("slow_syscalls", "Slow service-time syscalls (no kernel cause seen)",
                    ("syscall.*.slow_ms_per_s",), (),
                    """SELECT pid, comm, COUNT(*) FROM syscall_events
                    WHERE timestamp BETWEEN :lo AND :hi AND {not_own} GROUP BY pid, comm
                    ORDER BY 3 DESC LIMIT 5""")


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
            if any(_overlaps(c, u, 0) for u in used):
                continue  # the same episode, already led by a stronger cause signal
            support = [u for u in causes if u is not c and _overlaps(c, u, 0)]
            used += [c, *support]
            eff = []
            for e in effects:  # begins before the cause ends, ends after it began
                if e.start < c.end and e.end > c.start - OVERLAP_SLACK:
                    r, lag = lagged_corr(series[c.signal].values * series[c.signal].direction,
                                         series[e.signal].values)
                    eff.append((e, r, lag))
            eff.sort(key=lambda t: -t[1])
            out.append(Candidate(chain, c, support, eff, _score(c, support, eff)))
    explained = [a for cand in out for a, _, _ in cand.effects]
    for n in matching(UNEXPLAINED.causes, names):
        for a in found.get(n, []):
            if not any(_overlaps(a, e, 0) for e in explained):
                out.append(Candidate(UNEXPLAINED, a, [], [], 0.6 * severity(a.z) * 0.5))
    out.sort(key=lambda c: (-c.score, c.cause.start, c.chain.kind))
    return out


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
