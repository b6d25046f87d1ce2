"""Several collectors in one process: `kernelsight host --collectors scraper,syscalls,...`.

Why: each BCC tracer process pays for its own copy of BCC and LLVM (``import bcc`` ~70 MB,
the first compiled program ~60 MB more; measured in the README's "Memory" section), so four
tracers in four processes cost ~800 MB of RSS. Here every collector runs in its own thread
of one process: one BCC runtime, the compilers' heap released once every program is loaded
(``malloc_trim``), and one process instead of five.

What stays per collector: its Publisher (instance, accounting snapshots, heartbeat key), its
status key (`kernelsight:status:<name>`), its loop and its exit (a collector that fails to
start or raises in ``poll()`` is recorded as failed while the others go on), exactly as with
`kernelsight collect` / `kernelsight trace NAME`. What is shared: the process (a crash of
native code, e.g. inside BCC, stops every hosted collector; `run` then reports each as
exited) and the watch of the stop key (one GET a second for all of them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import fields
from typing import Any

import click

from kernelsight import collectors
from kernelsight.config import Settings, env_name
from kernelsight.exceptions import ConfigError

log = logging.getLogger(__name__)

TRIM_EVERY_S = 60.0  # return freed heap to the kernel this often (after bursts of events)


def _flag(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw[:40]!r}: want true or false")


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    """Settings from the KS_* variables `run` gives its children (every field, as str)."""
    env = os.environ if environ is None else environ
    kw: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(env_name(f.name))
        if raw is None:
            continue
        kind = type(getattr(Settings, f.name, "")) if f.name != "host" else str
        if kind is bool:  # "False" is a non-empty string: parse it (KS_RECORD_WAITS)
            kw[f.name] = _flag(env_name(f.name), raw)
            continue
        try:
            kw[f.name] = kind(raw) if kind in (int, float) else raw
        except ValueError:
            raise ConfigError(f"{env_name(f.name)}={raw[:40]!r}: want a number") from None
    return Settings().with_(**kw)


def release_heap() -> bool:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``): BCC's clang
    and LLVM leave ~80 MB of freed heap behind them after compiling. False if unavailable."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


MADV_DONTNEED = 4
COMPILER_LIBS = ("libLLVM", "libclang")


def release_compiler_pages(maps: str = "/proc/self/maps") -> int:
    """Drop the resident pages of LLVM's and clang's code (~85 MB of RSS after BCC's
    compiles, not touched again until the next compile) from this process.

    Only their executable, never-written mappings (``r-xp``): madvise(MADV_DONTNEED) unmaps
    those pages, which stay in the page cache and fault back in from the file if a compile
    runs again. Writable or read-only data mappings are left alone (the loader wrote their
    relocations: dropping those would lose them). MADV_PAGEOUT would be gentler but skips
    every page another process maps too (another bcc tool, another checkout's stack).
    Returns the bytes of address range released (0 where unsupported)."""
    name = ctypes.util.find_library("c")
    if not name:
        return 0
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        with open(maps) as f:
            lines = f.readlines()
    except OSError:
        return 0
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    done = 0
    for line in lines:
        parts = line.split(maxsplit=5)
        if (len(parts) < 6 or parts[1] != "r-xp"
                or not any(lib in parts[5] for lib in COMPILER_LIBS)):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if libc.madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            done += hi - lo
    return done


def run_hosted(names: list[str], settings: Settings, duration: float | None = None,
               stop: threading.Event | None = None) -> int:
    """Run ``names`` in one process until SIGTERM/SIGINT, the stop key, ``stop`` or
    ``duration``. Starts are serialised (BCC compiles one program at a time); once every
    collector has started or failed, the compilers' heap is released. Returns 0 if every
    collector ended cleanly, else the first non-zero exit code."""
    from kernelsight.runner import STOP_KEY, _stop_requested, run_collector
    from kernelsight.streams import connect

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    lock = threading.Lock()
    codes: dict[str, int] = {}
    starting = {n: threading.Event() for n in names}

    def one(name: str) -> None:
        try:
            codes[name] = run_collector(name, settings, duration, stop, start_lock=lock,
                                        watch_stop_key=False,
                                        on_started=starting[name].set)
        except Exception:  # a bug in one collector must not stop the rest
            log.exception("%s: collector thread failed", name)
            codes[name] = 1
        finally:
            starting[name].set()

    threads = [threading.Thread(target=one, args=(n,), name=f"collector-{n}", daemon=True)
               for n in names]
    for t in threads:
        t.start()
    for n in names:  # every start done (or failed): the compilers are finished
        while not starting[n].wait(0.5) and not stop.is_set():
            pass
    trimmed = release_heap()
    paged = release_compiler_pages()
    log.info("hosting %s in pid %d%s%s", ", ".join(names), os.getpid(),
             "; freed heap returned to the kernel" if trimmed else "",
             f"; compiler pages released ({paged >> 20} MiB of mappings)" if paged else "")
    ctl = connect(settings.redis_url, 1)
    started_ns = time.time_ns()
    next_trim = time.monotonic() + TRIM_EVERY_S
    while any(t.is_alive() for t in threads):
        if stop.wait(1.0):
            break
        if _stop_requested(ctl, started_ns):
            log.info("stop requested through %s", STOP_KEY)
            stop.set()
        if time.monotonic() >= next_trim:
            next_trim = time.monotonic() + TRIM_EVERY_S
            release_heap()
    stop.set()
    for t in threads:
        t.join()
    ctl.close()
    bad = [codes.get(n, 1) for n in names if codes.get(n, 1)]
    return bad[0] if bad else 0


@click.command("host", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--collectors", "collector_list", required=True, envvar="KS_COLLECTORS",
              show_envvar=True, help="Comma list of scraper, syscalls, pagefaults, io, sched "
              "or 'all'.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds [default: run until SIGTERM].")
def command(collector_list: str, duration: float | None) -> None:
    """Run several collectors in one process (what `run` starts): one BCC runtime for every
    tracer. Settings come from the KS_* variables (the same as `collect` and `trace`).

    \b
    Examples:
      sudo KS_REDIS_URL=redis://:pw@127.0.0.1:6379/0 kernelsight host --collectors all
      sudo KS_REDIS_URL=... KS_INTERVAL=5 kernelsight host --collectors scraper,sched
    """
    s = settings_from_env()
    if not s.redis_url:
        raise ConfigError("kernelsight host needs Redis: set KS_REDIS_URL "
                          "(e.g. redis://:PASSWORD@127.0.0.1:6379/0)")
    names = collectors.parse_list(collector_list)
    from kernelsight import selfpids

    selfpids.mark(s.redis_url, s.host, "host")  # ours: no tracer records this process
    sys.exit(run_hosted(names, s, duration))
