"""What a workload runs with (its deadline, work directory, parameters and counters), and the
small helpers workloads share. Runs inside a worker process."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20


@dataclass
class Ctx:
    """What a workload needs: where to write, when to stop, and where to count."""

    deadline: float  # time.monotonic() value; CLOCK_MONOTONIC is system-wide on Linux
    workdir: Path
    parent: int
    params: dict[str, Any]
    res: dict[str, Any] = field(default_factory=dict)
    stopping: bool = False  # set by the SIGTERM handler (a plain flag: no locks in handlers)
    _next_parent_check: float = 0.0

    def running(self) -> bool:
        """False once stopped, past the deadline, or orphaned (the driver died)."""
        if self.stopping:
            return False
        now = time.monotonic()
        if now >= self.deadline:
            return False
        if now >= self._next_parent_check:
            self._next_parent_check = now + 0.5
            if os.getppid() != self.parent:
                self.stopping = True
                return False
        return True

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def nap(self, seconds: float) -> None:
        """Sleep, but never past the deadline (a stop request waits at most ``seconds``)."""
        time.sleep(max(0.0, min(seconds, self.remaining())))


def add(res: dict[str, Any], key: str, n: float = 1) -> None:
    res[key] = res.get(key, 0) + n


def merge(into: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    for p in parts:
        for k, v in p.items():
            if k.startswith("max_"):
                into[k] = max(into.get(k, 0), v)
            else:
                add(into, k, v)


def alive(pid: int) -> bool:
    """True while our child ``pid`` has not exited (does not reap it)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False
