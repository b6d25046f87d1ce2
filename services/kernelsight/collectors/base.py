"""The tiny interface every collector implements (node_exporter style)."""

from __future__ import annotations

import time
from typing import ClassVar

from kernelsight.config import Settings
from kernelsight.streams import Publisher


class Collector:
    """``name`` is the module name, the CLI name and the event ``source``.

    Lifecycle: ``start()`` (raise CollectorError with a one-line reason if this host cannot
    run it), then ``poll()`` repeatedly (block at most ~0.1-0.5 s, publish what is due), then
    ``stop()`` (publish the last partial interval and count anything lost)."""

    name: ClassVar[str] = ""
    event_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.settings = settings
        self.pub = publisher

    def start(self) -> None:
        pass

    def poll(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class Ticker:
    """A fixed cadence for interval collectors: ticks do not drift, and ticks missed while we
    were busy are skipped rather than fired in a burst."""

    def __init__(self, seconds: float, first_in: float | None = None) -> None:
        self.seconds = seconds
        self.next = time.monotonic() + (seconds if first_in is None else first_in)

    def due(self) -> bool:
        """True (and the next tick scheduled) when a tick is due now."""
        now = time.monotonic()
        if now < self.next:
            return False
        self.next += self.seconds
        if self.next < now:
            self.next = now + self.seconds
        return True

    def wait(self, max_sleep: float = 0.2) -> bool:
        """Sleep towards the next tick (at most ``max_sleep``); True when one is due."""
        left = self.next - time.monotonic()
        if left > 0:
            time.sleep(min(left, max_sleep))
        return self.due()
