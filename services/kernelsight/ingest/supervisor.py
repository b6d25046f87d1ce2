"""Several ingest worker processes sharing the consumer group, and the single-process entry
point (run_ingest) that chooses between one Ingester and a Supervisor."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections import Counter
from dataclasses import fields, replace
from multiprocessing.connection import wait as wait_any
from typing import Any

from kernelsight import defaults, sdnotify
from kernelsight.config import Settings, db_label
from kernelsight.db import open_db
from kernelsight.exceptions import DatabaseError, KernelSightError
from kernelsight.ingest.events import ServiceEvents, WorkerEvents, status_line
from kernelsight.ingest.worker import Ingester, install_signal_handlers
from kernelsight.ingest.writer import IngestStats

log = logging.getLogger(__name__)


def worker_count(n: int) -> int:
    """0 means one worker per CPU, at most two: SQLite takes one writer at a time, and two
    workers already keep it busy (one writes while the other reads and validates)."""
    return n if n > 0 else max(1, min(2, os.cpu_count() or 1))


def run_ingest(s: Settings, workers: int = 0, drain: bool = False,
               idle_exit_s: float | None = None, histogram: Any = None) -> IngestStats:
    """The ingester as one process (workers=1) or as N worker processes sharing the group.

    Workers are named ``<consumer>``, ``<consumer>-w2``...; the same names on a restart pick
    up each one's pending entries. SIGTERM/SIGINT to this process reach every worker (drain,
    then exit; a second signal stops at once). A worker that fails with an expected error
    stops the others and its error is raised here; one killed by a signal is restarted.
    This process speaks sd_notify (READY, WATCHDOG, STOPPING, STATUS) and observes each
    batch's latency into ``histogram`` (a prometheus_client Histogram) when given."""
    workers = worker_count(workers)
    if workers == 1:
        ing = Ingester(s)
        ing.events = ServiceEvents(histogram)
        install_signal_handlers(ing)
        if drain:
            ing.request_stop(drain=True)
        return ing.run(idle_exit_s)
    open_db(s.db_path).dispose()  # schema once, and a bad path fails here, not in N workers
    return Supervisor(s, workers, drain, idle_exit_s, histogram).run()


def die_with_parent() -> None:
    """Workers must not outlive a supervisor that was SIGKILLed."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_EARLY_SIGNALS: list[int] = []  # SIGTERMs a worker got before its Ingester existed


def worker_main(s: Settings, conn, drain: bool, idle_exit_s: float | None,
                maintain: bool = True) -> None:
    die_with_parent()
    # Ctrl-C reaches the whole process group; the supervisor forwards it as SIGTERM, so a
    # worker taking both would count two signals and stop without draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, _f: _EARLY_SIGNALS.append(signum))
    try:
        ing = Ingester(s)
        ing.maintain = maintain
        ing.events = WorkerEvents(conn)
        install_signal_handlers(ing, sigint=False)
        if drain or _EARLY_SIGNALS:
            ing.request_stop(drain=True)
        if len(_EARLY_SIGNALS) > 1:
            ing.request_stop(drain=False)
        conn.send(("ok", ing.run(idle_exit_s)))
    except KernelSightError as e:
        conn.send(("error", e))
        os._exit(e.exit_code)


class Supervisor:
    RESTARTS_MAX = 10

    def __init__(self, s: Settings, n: int, drain: bool, idle_exit_s: float | None,
                 histogram: Any = None) -> None:
        self.s = s
        self.histogram = histogram
        self.watchdog = sdnotify.Watchdog()
        self.ready: set[int] = set()  # workers that reported READY (sent once all have)
        self.told_ready = self.told_stopping = self.stopping_seen = False
        self.beats: dict[int, float] = {}  # worker -> monotonic time of its last beat
        self.stored: dict[int, int] = {}
        self.finals: dict[int, tuple] = {}  # worker -> its ("ok"|"error", ...) message
        self.eof: set[int] = set()
        self._next_status = 0.0
        self.n = n
        self.drain = drain
        self.idle_exit_s = idle_exit_s
        self.ctx = multiprocessing.get_context("fork")
        self.procs: dict[int, tuple] = {}
        self.signals = 0
        self.restarts = 0
        self.pid = os.getpid()

    def _name(self, i: int) -> str:
        return self.s.consumer if i == 0 else f"{self.s.consumer}-w{i + 1}"

    def _start(self, i: int) -> None:
        rx, tx = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=worker_main, name=f"ingest-{self._name(i)}",
                             args=(replace(self.s, consumer=self._name(i)), tx, self.drain,
                                   self.idle_exit_s, i == 0))
        p.start()
        tx.close()
        self.procs[i] = (p, rx)

    def _forward(self, signum: int, _frame: object) -> None:
        if os.getpid() != self.pid:  # a new worker, before it set its own handlers
            _EARLY_SIGNALS.append(signum)
            return
        self.signals += 1
        for p, _ in self.procs.values():
            if p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def run(self) -> IngestStats:
        total = IngestStats()
        error: BaseException | None = None
        old = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for i in range(self.n):
                self._start(i)
            while self.procs:
                waits: dict[Any, tuple[str, int]] = {}
                for i, (p, rx) in self.procs.items():
                    waits[p.sentinel] = ("exit", i)
                    if i not in self.eof:
                        waits[rx] = ("msg", i)
                done = wait_any(list(waits), timeout=0.5)
                for obj in done:
                    kind, i = waits[obj]
                    if kind == "msg":
                        self._message(i, self.procs[i][1])
                for obj in done:
                    kind, i = waits[obj]
                    if kind == "exit":
                        error = self._exited(i, total, error)
                self._tell_systemd()
            self._tell_systemd()
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            for p, _ in self.procs.values():  # only after a bug here: don't leave orphans
                p.kill()
                p.join()
        if error is not None:
            raise error
        return total

    def _exited(self, i: int, total: IngestStats, error: BaseException | None
                ) -> BaseException | None:
        p, rx = self.procs.pop(i)
        p.join()
        msg = self.finals.pop(i, None) or _result(rx)
        rx.close()
        self.eof.discard(i)
        self.beats.pop(i, None)
        if msg and msg[0] == "ok":
            _add(total, msg[1])
        elif msg and msg[0] == "error":
            error = error or msg[1]
            self._forward(signal.SIGTERM, None)
        elif (p.exitcode or 0) < 0 and not self.signals and error is None \
                and self.restarts < self.RESTARTS_MAX:
            self.restarts += 1
            log.error("ingest worker %s killed by signal %d; restarting it (its "
                      "pending entries are re-read)", self._name(i), -p.exitcode)
            self._start(i)
        elif error is None:
            error = DatabaseError(f"ingest worker {self._name(i)} exited with code "
                                  f"{p.exitcode}; see its log above")
            self._forward(signal.SIGTERM, None)
        return error

    def _message(self, i: int, rx: Any) -> None:
        """A worker's progress: ready, beat (with its batch latencies), stopping, or its
        final result (kept until its process is reaped)."""
        try:
            while rx.poll():
                msg = rx.recv()
                kind = msg[0]
                if kind == "ready":
                    self.ready.add(i)
                    self.beats[i] = time.monotonic()
                elif kind == "beat":
                    self.beats[i] = time.monotonic()
                    self.stored[i] = msg[1]
                    if self.histogram is not None:
                        for v in msg[2]:
                            self.histogram.observe(v)
                elif kind == "stopping":
                    self.stopping_seen = True
                elif kind in ("ok", "error"):
                    self.finals[i] = msg
        except (EOFError, OSError):
            self.eof.add(i)

    def _tell_systemd(self) -> None:
        """READY once every worker has reported; WATCHDOG while every worker beats."""
        if not self.told_ready and len(self.ready) == self.n:
            self.told_ready = True
            sdnotify.ready(f"ingesting into {db_label(self.s.db_path)} with {self.n} workers")
        if self.stopping_seen and not self.told_stopping and (self.told_ready or not self.procs):
            # After READY (a fast worker may start draining before a slow one is ready).
            self.told_stopping = True
            sdnotify.stopping("draining: " + status_line(sum(self.stored.values()), None))
        now = time.monotonic()
        if self.told_ready and self.watchdog.due() and len(self.beats) == self.n and all(
                now - t <= defaults.HEALTH_STALE_S for t in self.beats.values()):
            self.watchdog.beat()
        if self.told_ready and not self.told_stopping and now >= self._next_status \
                and os.environ.get(sdnotify.ENV_SOCKET):
            self._next_status = now + 5.0
            sdnotify.status(status_line(sum(self.stored.values()), self._backlog())
                            + f" ({self.n} workers)")

    def _backlog(self) -> int | None:
        """For STATUS= only: None when Redis cannot be asked right now."""
        import redis

        from kernelsight.ingest.progress import backlog
        from kernelsight.streams import connect

        r = connect(self.s.redis_url, 2)
        try:
            return backlog(r)
        except redis.RedisError:
            return None
        finally:
            r.close()


def _result(rx) -> tuple | None:
    """What a finished worker sent last: ("ok", stats), ("error", exc), or None if it died
    first (progress messages still in the pipe are skipped)."""
    try:
        while rx.poll():
            msg = rx.recv()
            if msg[0] in ("ok", "error"):
                return msg
        return None
    except (EOFError, OSError):
        return None
    finally:
        rx.close()


def _add(total: IngestStats, st: IngestStats) -> None:
    for f in fields(IngestStats):
        a, b = getattr(total, f.name), getattr(st, f.name)
        if isinstance(a, Counter):
            a.update(b)
        else:
            setattr(total, f.name, a + b)
