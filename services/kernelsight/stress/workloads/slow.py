"""slow: syscalls that block 10-30 ms by design (nanosleep, poll, select, epoll_wait, futex,
pipe read) so a syscall-latency tracer with a 10 ms threshold sees many rows."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable

from kernelsight.stress.context import Ctx

NAME = "slow"


def run(ctx: Ctx) -> None:
    """Syscalls that take 10-30 ms on purpose, one thread per kind, so a latency tracer has a
    steady stream of rows of known syscalls: clock_nanosleep, poll, pselect6, epoll_wait,
    futex (a lock acquire that times out) and read (a pipe that a partner fills after 15 ms).
    """
    r, w = os.pipe()
    idle_r, idle_w = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    ep = select.epoll()
    ep.register(idle_r, select.EPOLLIN)
    held = threading.Lock()
    held.acquire()
    counts: dict[str, int] = {k: 0 for k in ("sleep", "poll", "select", "epoll", "futex",
                                            "pipe_read")}

    def loop(kind: str, op: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            while ctx.running():
                op()
                counts[kind] += 1
        return run

    def poll_once() -> None:
        p = select.poll()
        p.register(idle_r, select.POLLIN)
        p.poll(25)

    def writer() -> None:
        try:
            while ctx.running():
                time.sleep(0.015)
                os.write(w, b"x")
        finally:
            os.close(w)  # EOF ends the reader

    def reader() -> None:
        while os.read(r, 1):
            counts["pipe_read"] += 1

    threads = [
        threading.Thread(target=loop("sleep", lambda: time.sleep(0.02)), daemon=True),
        threading.Thread(target=loop("poll", poll_once), daemon=True),
        threading.Thread(target=loop("select", lambda: select.select([udp], [], [], 0.03)),
                         daemon=True),
        threading.Thread(target=loop("epoll", lambda: ep.poll(0.02)), daemon=True),
        threading.Thread(target=loop("futex", lambda: held.acquire(timeout=0.025)),
                         daemon=True),
        threading.Thread(target=writer, daemon=True),
        threading.Thread(target=reader, daemon=True),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        ep.close()
        udp.close()
        for fd in (r, idle_r, idle_w):
            os.close(fd)
        ctx.res.update(counts, slow_calls=sum(counts.values()))
