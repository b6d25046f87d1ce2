"""Baselines, change points and lagged correlation on synthetic series (pure, as netdata's
ml-unittest does for its features): the detector's contract, independent of any machine."""

from __future__ import annotations

import numpy as np

from kernelsight.analysis.baselines import anomalies
from kernelsight.analysis.correlate import lagged_corr
from kernelsight.analysis.signals import Series

RNG = np.random.default_rng(7)


def series(x, floor=1.0, direction=1) -> Series:
    return Series("s", "t", "u", "gauge", np.asarray(x, dtype=float), direction, floor)


def test_step_is_found_with_its_bounds():
    x = RNG.normal(10, 1, 60)
    x[30:42] += 15
    (a,) = anomalies(series(x))
    assert abs(a.start - 30) <= 1 and abs(a.end - 42) <= 1
    assert 20 < a.level < 30 and 9 < a.baseline < 11 and a.z > 4


def test_noise_and_sparse_blips_are_not_anomalies():
    assert anomalies(series(RNG.normal(10, 1, 120))) == []
    y = np.zeros(60)
    y[[5, 20, 41]] = 3.0  # isolated slow syscalls: no sustained change
    assert anomalies(series(y, floor=2.0)) == []


def test_floor_ignores_real_but_irrelevant_shifts():
    x = np.r_[np.full(30, 100.0), np.full(15, 101.0), np.full(15, 100.0)]
    x += RNG.normal(0, 0.01, 60)
    assert anomalies(series(x, floor=50.0)) == []
    assert anomalies(series(x, floor=0.5))


def test_direction_minus_one_flags_drops_only():
    x = RNG.normal(1000, 5, 60)
    x[20:35] -= 500
    assert anomalies(series(x, floor=100, direction=-1))
    up = RNG.normal(1000, 5, 60)
    up[20:35] += 500
    assert anomalies(series(up, floor=100, direction=-1)) == []


def test_unobserved_start_is_skipped():
    x = np.r_[np.full(10, np.nan), RNG.normal(5, 0.5, 40)]
    x[30:40] += 20
    (a,) = anomalies(series(x))
    assert abs(a.start - 30) <= 1


def test_lagged_correlation_finds_the_lag():
    c = np.zeros(50)
    c[10:20] = 1.0
    e = np.roll(c, 2) + RNG.normal(0, 0.05, 50)
    r, lag = lagged_corr(c, e)
    assert lag == 2 and r > 0.9
    assert lagged_corr(c, np.ones(50)) == (0.0, 0)
