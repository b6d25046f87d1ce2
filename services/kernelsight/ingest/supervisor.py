"""Several ingest worker processes sharing the consumer group, and the single-process entry
point (run_ingest) that chooses between one Ingester and a Supervisor."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections import Counter
from dataclasses import fields, replace
from multiprocessing.connection import wait as wait_any

from kernelsight.config import Settings
from kernelsight.db import open_db
from kernelsight.exceptions import DatabaseError, KernelSightError
from kernelsight.ingest.worker import Ingester, install_signal_handlers
from kernelsight.ingest.writer import IngestStats

log = logging.getLogger(__name__)


def worker_count(n: int) -> int:
    """0 means one worker per CPU, at most two: SQLite takes one writer at a time, and two
    workers already keep it busy (one writes while the other reads and validates)."""
    return n if n > 0 else max(1, min(2, os.cpu_count() or 1))


def run_ingest(s: Settings, workers: int = 0, drain: bool = False,
               idle_exit_s: float | None = None) -> IngestStats:
    """The ingester as one process (workers=1) or as N worker processes sharing the group.

    Workers are named ``<consumer>``, ``<consumer>-w2``...; the same names on a restart pick
    up each one's pending entries. SIGTERM/SIGINT to this process reach every worker (drain,
    then exit; a second signal stops at once). A worker that fails with an expected error
    stops the others and its error is raised here; one killed by a signal is restarted."""
    workers = worker_count(workers)
    if workers == 1:
        ing = Ingester(s)
        install_signal_handlers(ing)
        if drain:
            ing.request_stop(drain=True)
        return ing.run(idle_exit_s)
    open_db(s.db_path).dispose()  # schema once, and a bad path fails here, not in N workers
    return Supervisor(s, workers, drain, idle_exit_s).run()


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

    def __init__(self, s: Settings, n: int, drain: bool, idle_exit_s: float | None) -> None:
        self.s = s
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
                by_sentinel = {p.sentinel: i for i, (p, _) in self.procs.items()}
                for sentinel in wait_any(list(by_sentinel)):
                    i = by_sentinel[sentinel]
                    p, rx = self.procs.pop(i)
                    p.join()
                    msg = _result(rx)
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
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            for p, _ in self.procs.values():  # only after a bug here: don't leave orphans
                p.kill()
                p.join()
        if error is not None:
            raise error
        return total


def _result(rx) -> tuple | None:
    """What a finished worker sent: ("ok", stats), ("error", exc), or None if it died first."""
    try:
        return rx.recv() if rx.poll() else None
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
