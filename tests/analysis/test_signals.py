"""How rows become per-interval values (signals._bin) for the signal definitions analyze uses,
and why: each case below is a shape real recordings had that once made a false or a missed
finding."""

from __future__ import annotations

import numpy as np

from kernelsight.analysis import signals
from kernelsight.analysis.baselines import MIN_BINS, anomalies
from kernelsight.analysis.signals import SIGNALS, Series, Window

S = 1_000_000_000
W = Window(0, 29 * S, S)  # 30 bins of 1 s


def _def(name: str) -> signals.SignalDef:
    return next(d for d in SIGNALS if d.name == name)


def test_a_late_fault_total_is_spread_over_its_interval():
    """The page-fault tracer fell behind under 15k major faults/s and wrote one row for 6.7 s:
    read as one bin it was a 30,750/s spike between gaps (the memory incident split into
    short anomalies); spread over the interval it covers, the rate is flat and right."""
    d = _def("faults.{key}_per_s")
    rows = [(10 * S, (4600, S)), (17 * S, (30_800, 7 * S)), (18 * S, (4400, S))]
    x = signals._bin(W, rows, d)
    # Each row covers the interval ending at its timestamp: [9 s, 18 s) here.
    assert np.allclose(x[9:18], 4400.0, rtol=0.05), x[8:20]
    assert x[:9].sum() == 0 and x[18:].sum() == 0
    assert abs(x.sum() - (4600 + 30_800 + 4400)) < 1e-6  # nothing lost or made up


def test_one_long_wait_counts_one_interval():
    """A read on a pipe that blocked for a minute (fd kind unknown: counted as service) is at
    most one interval's worth of slow time, not 60,000 ms landing in one bin."""
    d = _def("syscall.{key}.slow_ms_per_s")
    x = signals._bin(W, [(15 * S, 60_000.0)], d)
    assert x.max() == 1000.0 and x.sum() == 1000.0


def test_blips_shorter_than_min_bins_are_not_anomalies():
    x = np.zeros(60)
    x[20:22] = 900.0  # two intervals of a burst: a PELT segment, but nothing to act on
    assert anomalies(Series("s", "t", "ms/s", "count", x, 1, 50.0)) == []
    x[40:40 + MIN_BINS] = 900.0
    (a,) = anomalies(Series("s", "t", "ms/s", "count", x, 1, 50.0))
    assert (a.start, a.end) == (40, 40 + MIN_BINS)


def test_top_process_futex_rate_is_one_process_not_the_host():
    """Lock contention is many waits in one process; a host's idle thread pools each wait now
    and then. The signal is the busiest process's rate per interval."""
    d = _def("lock.top_process_futex_waits_per_s")
    rows = [(t * S, pid, 1) for t in range(30) for pid in range(100, 130)]  # 30 pids x 1/s
    rows += [(t * S + i, 7, 1) for t in range(10, 20) for i in range(200)]  # one: 200/s
    by = signals._by_pid(rows, d)
    top = np.max([signals._bin(W, sorted(r), d) for r in by.values()], axis=0)
    assert top[:10].max() == 1.0 and top[10:20].min() == 200.0 and top[20:].max() == 1.0


def test_an_iops_surge_names_the_device_only_with_slow_syncs_or_writes():
    """On a fast disk an fsync storm may keep p99 under the floor: the IOPS surge leads the
    block-latency episode then, but only when syncs or writes slowed with it (a busy host's
    read traffic alone is load, not a latency incident: it made false findings idle)."""
    from kernelsight.analysis.correlate import candidates

    def s(name: str, x: np.ndarray, floor: float) -> Series:
        return Series(name, "t", "1/s", "count", x, 1, floor)

    base = np.zeros(40)
    surge = base.copy()
    surge[15:25] = 3000.0
    slow = base.copy()
    slow[15:25] = 40.0
    series = {"io.loop0.iops": s("io.loop0.iops", surge, 50.0),
              "syscall.read.slow_per_s": s("syscall.read.slow_per_s", slow, 2.0)}
    found = {n: anomalies(v) for n, v in series.items()}
    assert all(found.values())
    assert not [c for c in candidates(series, found) if c.chain.kind == "block_latency"]
    series["syscall.sync.slow_per_s"] = s("syscall.sync.slow_per_s", slow, 2.0)
    found = {n: anomalies(v) for n, v in series.items()}
    (c,) = [c for c in candidates(series, found) if c.chain.kind == "block_latency"]
    assert c.cause.signal == "io.loop0.iops" and c.effects
