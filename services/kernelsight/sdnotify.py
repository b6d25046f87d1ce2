"""The sd_notify protocol: tell systemd (Type=notify) that we are ready, alive or stopping.

One datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or '@name'
for the abstract namespace). Without the variable this does nothing, so the same code runs
under systemd, in a terminal and in a container. A failed send is only logged: the pipeline
must never stop because its supervisor's socket went away (gunicorn/systemd.py's shape).
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


def _address(value: str) -> str | bytes:
    # '@' marks an abstract socket: its name starts with a NUL byte on the wire.
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1", or several "K=V" lines); True if it was sent."""
    addr = (os.environ if env is None else env).get(ENV_SOCKET)
    if not addr:
        return False
    # Created before the try (gunicorn's `finally` closed a socket that was never made).
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError as e:
        log.warning("sd_notify: cannot create a socket: %s", e)
        return False
    try:
        sock.connect(_address(addr))
        sock.sendall(state.encode())
        return True
    except OSError as e:
        log.warning("sd_notify: cannot send %r to %s: %s", state.split("\n")[0], addr, e)
        return False
    finally:
        sock.close()


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC (sd_watchdog_enabled(3)'s advice),
    or None when systemd asked for no watchdog, or asked it of another process."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get(ENV_WATCHDOG_USEC, "0"))
    except ValueError:
        return None
    pid = env.get(ENV_WATCHDOG_PID)
    if usec <= 0 or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return usec / 2e6


class Watchdog:
    """Paces WATCHDOG=1 at the interval systemd asked for: the loop asks ``due()`` as often
    as it likes (beside its heartbeat), checks its health only then, and calls ``beat()``."""

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = watchdog_interval_s() if interval_s is None else interval_s
        self._next = 0.0
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return bool(self.interval_s) and bool(os.environ.get(ENV_SOCKET))

    def due(self) -> bool:
        return self.enabled and time.monotonic() >= self._next

    def beat(self) -> None:
        if self.enabled:
            self._next = time.monotonic() + self.interval_s  # type: ignore[operator]
            if watchdog():
                self.sent += 1

    def tick(self) -> None:
        """beat() if due: for loops whose being alive is the health check."""
        if self.due():
            self.beat()
