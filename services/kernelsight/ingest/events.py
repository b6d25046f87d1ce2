"""What an ingest worker tells the outside world: ready, alive, stopping, batch latency.

One process (`--workers 1`) speaks sd_notify itself and observes the /metrics histogram
directly. Under a Supervisor, a worker reports over its Pipe instead and the supervisor, the
main PID systemd watches (NotifyAccess=main), speaks for all of them.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from kernelsight import sdnotify
from kernelsight.config import db_label

if TYPE_CHECKING:
    from kernelsight.ingest.worker import Ingester

STATUS_INTERVAL_S = 5.0  # STATUS= lines (backlog costs one XINFO per stream)


class Events:
    """No-ops: an Ingester used as a library (tests, bench) tells nobody."""

    def ready(self, ing: Ingester) -> None:
        pass

    def beat(self, ing: Ingester) -> None:
        pass

    def stopping(self, ing: Ingester) -> None:
        pass

    def batch(self, seconds: float) -> None:
        pass


def status_line(stored: int, backlog: int | None) -> str:
    return f"stored {stored} events" + ("" if backlog is None else f", backlog {backlog}")


class ServiceEvents(Events):
    """A single ingest process: sd_notify to systemd, latencies into ``histogram``."""

    def __init__(self, histogram: Any = None) -> None:
        self.histogram = histogram
        self.watchdog = sdnotify.Watchdog()
        self._next_status = 0.0

    def ready(self, ing: Ingester) -> None:
        sdnotify.ready(f"ingesting into {db_label(ing.s.db_path)}")

    def beat(self, ing: Ingester) -> None:
        # The beat comes from the loop itself, after a batch: if the loop hangs, pings stop.
        self.watchdog.tick()
        now = time.monotonic()
        if os.environ.get(sdnotify.ENV_SOCKET) and now >= self._next_status:
            from kernelsight.ingest.progress import backlog

            self._next_status = now + STATUS_INTERVAL_S
            sdnotify.status(status_line(sum(ing.stats.stored.values()), backlog(ing.r)))

    def stopping(self, ing: Ingester) -> None:
        sdnotify.stopping("draining: " + status_line(sum(ing.stats.stored.values()), None))

    def batch(self, seconds: float) -> None:
        if self.histogram is not None:
            self.histogram.observe(seconds)


class WorkerEvents(Events):
    """A worker under the Supervisor: messages on its Pipe (latencies sent with the beat)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.latencies: list[float] = []

    def ready(self, ing: Ingester) -> None:
        self.conn.send(("ready",))

    def beat(self, ing: Ingester) -> None:
        self.conn.send(("beat", sum(ing.stats.stored.values()), self.latencies))
        self.latencies = []

    def stopping(self, ing: Ingester) -> None:
        self.conn.send(("stopping",))

    def batch(self, seconds: float) -> None:
        self.latencies.append(seconds)
