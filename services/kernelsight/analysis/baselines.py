"""Robust baselines and change points for one series.

The baseline is the median and MAD of the whole window (robust while an incident covers less
than half of it: the median's breakdown point). Change points come from ``ruptures`` (PELT,
least-squares cost, on the series standardised by that baseline); a segment between two
change points is anomalous when its level is ``Z_MIN`` robust deviations away from the
baseline in the signal's bad direction AND at least the signal's ``floor`` (in its unit) away,
so a flat-but-noisy signal cannot raise a finding on a change nobody would act on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import ruptures

from kernelsight.analysis.signals import Series

Z_MIN = 4.0
# An anomaly lasts at least this many intervals: a one- or two-interval blip (one process's
# long wait ending, a burst of runnable tasks on a busy host) is not something to act on, and
# counting it would spend the false-positive budget (at most one finding in an idle 30 min).
MIN_BINS = 3
MAD_TO_SD = 1.4826
PENALTY_PER_LOG_N = 3.0  # PELT penalty = this * log(n), on unit-variance data (BIC-like)


@dataclass(frozen=True)
class Baseline:
    median: float
    scale: float  # robust standard deviation, never below floor / Z_MIN


@dataclass(frozen=True)
class Anomaly:
    """Bins [start, end) of ``signal`` where its level departs from the baseline."""

    signal: str
    start: int
    end: int
    baseline: float
    level: float
    z: float

    @property
    def magnitude(self) -> float:
        return self.level - self.baseline

    def to_json(self) -> dict[str, Any]:
        ratio = self.level / self.baseline if self.baseline else None
        return {"signal": self.signal, "baseline": round(self.baseline, 3),
                "level": round(self.level, 3), "change": round(self.magnitude, 3),
                "ratio": None if ratio is None else round(ratio, 2), "z": round(self.z, 1)}


def baseline(s: Series, prior: Any = None) -> Baseline:
    """The window's median and MAD, or ``prior`` (a history.Stored: the host's longer
    history) when given; never narrower than the signal's floor allows."""
    if prior is not None:
        return Baseline(float(prior.median), max(float(prior.scale), s.floor / Z_MIN, 1e-9))
    x = s.values[~np.isnan(s.values)]
    if not len(x):
        return Baseline(0.0, max(s.floor / Z_MIN, 1e-9))
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * MAD_TO_SD
    return Baseline(med, max(mad, s.floor / Z_MIN, 1e-9))


def change_points(x: np.ndarray) -> list[int]:
    """Segment ends (the last is len(x)) from PELT on ``x`` (already standardised)."""
    n = len(x)
    if n < 4 or not np.isfinite(x).all() or float(np.ptp(x)) == 0.0:
        return [n]
    algo = ruptures.Pelt(model="l2", min_size=2, jump=1).fit(x.reshape(-1, 1))
    return [int(b) for b in algo.predict(pen=PENALTY_PER_LOG_N * math.log(n))]


def noise(x: np.ndarray, ends: list[int], floor: float) -> float:
    """Robust standard deviation of ``x`` around its segments' medians: the noise left once
    the level shifts are taken out (a shift itself must not widen the yardstick)."""
    res, start = [], 0
    for end in ends:
        seg = x[start:end]
        res.append(seg - np.median(seg))
        start = end
    r = np.concatenate(res) if res else x
    return max(float(np.median(np.abs(r))) * MAD_TO_SD, floor / Z_MIN, 1e-9)


def anomalies(s: Series, prior: Any = None) -> list[Anomaly]:
    """The anomalous segments of ``s``, adjacent ones merged; bins before the signal's first
    sample (NaN) are left out."""
    valid = ~np.isnan(s.values)
    if not valid.any():
        return []
    first = int(np.argmax(valid))
    return [Anomaly(a.signal, a.start + first, a.end + first, a.baseline, a.level, a.z)
            for a in _anomalies(s, np.nan_to_num(s.values[first:], nan=0.0), prior)]


def _anomalies(s: Series, x: np.ndarray, prior: Any = None) -> list[Anomaly]:
    b = baseline(s, prior)
    # The spread around the median overstates the noise when the window holds a level shift
    # (the shift itself is spread), which hides smaller shifts: standardise, segment, measure
    # the noise within the segments, and segment again with that yardstick (until stable).
    ends: list[int] = []
    for _ in range(3):
        new = change_points(np.clip((x - b.median) / b.scale, -50, 50))
        # Against history, the yardstick is the wider of the history's and the window's noise.
        b = Baseline(b.median, max(noise(x, new, s.floor), b.scale if prior is not None else 0))
        if new == ends:
            break
        ends = new
    out: list[Anomaly] = []
    start = 0
    for end in ends:
        seg = x[start:end]
        level = float(np.median(seg)) if len(seg) > 2 else float(np.mean(seg))
        delta = (level - b.median) * s.direction
        z = delta / b.scale
        if z >= Z_MIN and delta >= s.floor:
            if out and out[-1].end == start:  # merge with the previous anomalous segment
                prev = out.pop()
                seg = x[prev.start:end]
                level = float(np.median(seg))
                z = max(prev.z, (level - b.median) * s.direction / b.scale)
                start = prev.start
            out.append(Anomaly(s.name, start, end, b.median, level, z))
        start = end
    return [a for a in out if a.end - a.start >= MIN_BINS]
