"""The tiny interface every collector implements (node_exporter style)."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from kernelsight import defaults
from kernelsight.config import Settings
from kernelsight.streams import Publisher


class Collector:
    """``name`` is the module name, the CLI name and the event ``source``.

    Lifecycle: ``start()`` (raise CollectorError with a one-line reason if this host cannot
    run it), then ``poll()`` repeatedly (block at most ~0.1-0.5 s, publish what is due), then
    ``stop()`` (publish the last partial interval and count anything lost)."""

    name: ClassVar[str] = ""
    event_types: ClassVar[tuple[str, ...]] = ()
    # Never record this process, even when it is not a KernelSight command (a collector run
    # inside another program, e.g. a test): the syscall tracer's own polling would report
    # itself. Otherwise this process is skipped when it is marked as ours (selfpids.mark).
    skip_own_process: ClassVar[bool] = False

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.settings = settings
        self.pub: Any = _OwnRowsDropped(publisher, self)
        self.self_filter: Any = None
        # Set when the collector is asked to stop (the runner replaces it with its own stop
        # event): a Ticker waiting on it returns at once instead of sleeping out its wait.
        self.stopping = threading.Event()

    def watch_self(self, bpf: Any) -> None:
        """Tracers: after loading ``bpf`` (which includes bpf/ks_self.h), keep KernelSight's
        own processes out of it until :meth:`unwatch_self`."""
        from kernelsight import selfpids

        self.self_filter = selfpids.SelfFilter(
            bpf, self.settings.redis_url, self.settings.host,
            own=self.skip_own_process or selfpids.marked()).start()

    def unwatch_self(self) -> None:
        """Before ``bpf.cleanup()``: stop writing into its maps."""
        if self.self_filter is not None:
            self.self_filter.stop()
            self.self_filter = None

    def start(self) -> None:
        pass

    def poll(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class Ticker:
    """A fixed cadence for interval collectors: ticks do not drift, and ticks missed while we
    were busy are skipped rather than fired in a burst. ``wake``: an event (the collector's
    ``stopping``) that ends a wait early."""

    # Longest sleep in wait(): the loop around poll() must flush (heartbeat) at least every
    # HEARTBEAT_S. Half of it, so a beat is at most 1.5 x HEARTBEAT_S apart (an idle host's
    # interval collectors wake ~0.7 times a second instead of 2).
    MAX_SLEEP_S = defaults.HEARTBEAT_S / 2

    def __init__(self, seconds: float, first_in: float | None = None,
                 wake: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.next = time.monotonic() + (seconds if first_in is None else first_in)
        self.wake = wake

    def due(self) -> bool:
        """True (and the next tick scheduled) when a tick is due now."""
        now = time.monotonic()
        if now < self.next:
            return False
        self.next += self.seconds
        if self.next < now:
            self.next = now + self.seconds
        return True

    def wait(self, max_sleep: float = MAX_SLEEP_S) -> bool:
        """Sleep towards the next tick (at most ``max_sleep``, less if ``wake`` is set);
        True when one is due."""
        left = self.next - time.monotonic()
        if left > 0:
            if self.wake is not None:
                if self.wake.wait(min(left, max_sleep)):
                    return False  # stopping: stop() publishes the partial interval
            else:
                time.sleep(min(left, max_sleep))
        return self.due()


class _OwnRowsDropped:
    """The publisher as a collector sees it: rows whose ``pid`` is one of KernelSight's own
    processes are not published. The kernel filters them (bpf/ks_self.h); this catches what a
    tracer's maps and ring buffer gathered between its attach and its first filter sync."""

    def __init__(self, pub: Publisher, col: Collector) -> None:
        self._pub = pub
        self._col = col

    def publish(self, event_type: str, rows: Any) -> None:
        f = self._col.self_filter
        if f is not None:
            own = f.pids
            rows = [r for r in rows if r.get("pid") not in own]
        self._pub.publish(event_type, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pub, name)
