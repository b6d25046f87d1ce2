"""The BPF-time (CLOCK_MONOTONIC) to wall-clock conversion follows steps of the wall clock:
checked with injected clock sources (the machine's clock is never touched), and end to end
with the page-fault tracer's events."""

from __future__ import annotations

import subprocess
import sys
import time

from kernelsight.clock import MonoToEpoch
from kernelsight.config import Settings

from conftest import need_root

S = 1_000_000_000


class FakeClocks:
    """CLOCK_REALTIME and CLOCK_MONOTONIC that advance together, except when stepped."""

    def __init__(self) -> None:
        self.mono = 5_000 * S
        self.real = 1_700_000_000 * S

    def realtime(self) -> int:
        return self.real

    def monotonic(self) -> int:
        return self.mono

    def advance(self, ns: int) -> None:
        self.mono += ns
        self.real += ns


def test_offset_follows_a_step_within_the_check_period() -> None:
    c = FakeClocks()
    conv = MonoToEpoch(c.realtime, c.monotonic)
    assert conv(c.mono) == c.real
    c.advance(S // 2)
    c.real += 3600 * S  # the wall clock is stepped an hour ahead (NTP step, settimeofday)
    # Within the check period the old offset still applies ...
    assert conv(c.mono) == c.real - 3600 * S
    c.advance(S // 2)
    # ... then the step is seen and every later timestamp carries the new wall clock.
    assert conv(c.mono) == c.real
    assert conv.steps == 1
    assert conv(c.mono - S // 4) == c.real - S // 4  # a timestamp from just before the check
    c.advance(3 * S)
    c.real -= 7 * S  # stepped back
    assert conv(c.mono) == c.real and conv.steps == 2


def test_suspend_is_a_step() -> None:
    """Suspended for 10 minutes: CLOCK_MONOTONIC stopped, the wall clock did not."""
    c = FakeClocks()
    conv = MonoToEpoch(c.realtime, c.monotonic)
    c.advance(2 * S)
    c.real += 600 * S
    assert conv(c.mono) == c.real and conv.steps == 1


def test_small_moves_are_not_steps_but_are_picked_up_periodically() -> None:
    c = FakeClocks()
    conv = MonoToEpoch(c.realtime, c.monotonic)
    start = conv.offset_ns
    for _ in range(30):  # 0.4 ms: below the step threshold (1 ms), checked every second
        c.advance(S)
        c.real += 400_000 // 30
        conv(c.mono)
    assert conv.steps == 0 and conv.offset_ns == start
    c.advance(31 * S)  # 61 s since the last full measurement
    assert conv(c.mono) == c.real and conv.steps == 0


def test_real_clocks_agree_with_time_time_ns() -> None:
    conv = MonoToEpoch()
    wall = time.time_ns()
    got = conv(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    assert abs(got - wall) < 5_000_000, (got, wall)
    assert not conv.check() and conv.steps == 0


def test_pagefault_events_follow_an_injected_step(settings: Settings) -> None:
    """The tracer's converter with a wall clock that jumps a day ahead mid-run: events
    converted after the jump carry it, as rows stamped by time.time_ns() would."""
    need_root()
    from kernelsight.collectors.pagefaults import EVENTS, PageFaults
    from kernelsight.streams import Publisher

    day = 86_400 * S
    shift = [0]

    def stepped_realtime() -> int:
        return time.clock_gettime_ns(time.CLOCK_REALTIME) + shift[0]

    events: list[dict] = []

    class Recording(Publisher):
        def publish(self, event_type: str, rows) -> None:  # type: ignore[no-untyped-def]
            rows = list(rows)
            if event_type == EVENTS:
                events.extend(rows)
            super().publish(event_type, rows)

    child = [sys.executable, "-c", "import mmap\nm = mmap.mmap(-1, 1 << 20)\n"
             "for i in range(0, 1 << 20, 4096): m[i] = 1"]
    # Every minor fault an event (no sampling): at the default 10/s budget the second
    # child's faults can all fall outside the bucket and leave nothing to check.
    s = settings.with_(minor_fault_rate=10**7)
    pub = Recording(s, "pagefaults")
    col = PageFaults(s, pub)
    col.start()
    try:
        col.mono_to_epoch = MonoToEpoch(realtime=stepped_realtime, check_every_ns=0)
        subprocess.run(child, check=True)
        col.poll()
        before = [e["timestamp"] for e in events]
        events.clear()
        shift[0] = day
        t0 = time.time_ns()
        subprocess.run(child, check=True)
        col.poll()
        after = [e["timestamp"] for e in events]
    finally:
        col.stop()
        pub.close()
    assert before and after
    assert all(abs(ts - t0) < 60 * S for ts in before), (before[:3], t0)
    assert all(abs(ts - (t0 + day)) < 60 * S for ts in after), (after[:3], t0)
    assert col.mono_to_epoch.steps == 1
