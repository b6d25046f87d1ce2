"""Clock conversion, in one place: BPF timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns);
we store wall-clock epoch nanoseconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# CLOCK_REALTIME - CLOCK_MONOTONIC moves only when the wall clock is stepped (settimeofday,
# an NTP step, a leap second) or the machine was suspended (CLOCK_MONOTONIC stops, the wall
# clock does not): NTP slewing adjusts both clocks' rate alike. A move beyond this is a step.
STEP_NS = 1_000_000
# How often (in BPF time) the offset is checked for a step: one pair of clock reads.
CHECK_EVERY_NS = 1_000_000_000
# How often it is measured again in full even without a step.
REMEASURE_EVERY_NS = 60_000_000_000

Clock = Callable[[], int]


def _realtime() -> int:
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def _monotonic() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class MonoToEpoch:
    """CLOCK_MONOTONIC nanoseconds -> wall-clock epoch nanoseconds.

    The offset is the midpoint of a tight realtime/monotonic/realtime sandwich (best of
    several tries), so the conversion error is well under a microsecond. It is kept current:
    at most every ``check_every_ns`` of the timestamps converted, one realtime - monotonic
    pair is compared with it, and a difference beyond ``step_ns`` (the wall clock was stepped,
    or the machine resumed from suspend) measures it again at once; it is also measured again
    every ``remeasure_every_ns``. So rows converted after a step carry the new wall clock
    (as the scraper's rows, stamped with time.time_ns(), do); timestamps taken before the
    step but converted within ``check_every_ns`` after it get the new offset too.

    ``realtime`` and ``monotonic`` are the clock sources (tests inject a step with them)."""

    def __init__(self, realtime: Clock = _realtime, monotonic: Clock = _monotonic,
                 step_ns: int = STEP_NS, check_every_ns: int = CHECK_EVERY_NS,
                 remeasure_every_ns: int = REMEASURE_EVERY_NS) -> None:
        self.realtime, self.monotonic = realtime, monotonic
        self.step_ns = step_ns
        self.check_every_ns = check_every_ns
        self.remeasure_every_ns = remeasure_every_ns
        self.steps = 0  # steps detected since start
        self.offset_ns = 0
        self.measured_at = 0  # monotonic ns of the last full measurement
        self.checked_at = 0  # monotonic ns of the last check
        self.measure()

    def measure(self) -> int:
        """Measure the offset in full; returns it."""
        best = None
        for _ in range(5):
            r1 = self.realtime()
            m = self.monotonic()
            r2 = self.realtime()
            if best is None or r2 - r1 < best[0]:
                best = (r2 - r1, (r1 + r2) // 2 - m, m)
        assert best is not None
        self.offset_ns, self.measured_at = best[1], best[2]
        self.checked_at = best[2]
        return self.offset_ns

    def check(self) -> bool:
        """Compare one realtime - monotonic pair with the offset; measure again on a step or
        when the last measurement is old. True when the offset was stepped."""
        m = self.monotonic()
        drift = self.realtime() - m - self.offset_ns
        self.checked_at = m
        if abs(drift) > self.step_ns:
            old = self.offset_ns
            self.measure()
            self.steps += 1
            log.warning("wall clock stepped by %+.3f ms against CLOCK_MONOTONIC (NTP step, "
                        "settimeofday or resume): BPF timestamps now convert with the new "
                        "offset", (self.offset_ns - old) / 1e6)
            return True
        if m - self.measured_at >= self.remeasure_every_ns:
            self.measure()
        return False

    def __call__(self, mono_ns: int) -> int:
        if mono_ns - self.checked_at >= self.check_every_ns:
            self.check()
        return mono_ns + self.offset_ns


def now_ns() -> int:
    return time.time_ns()


def mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
