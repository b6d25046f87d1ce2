"""Running things: one collector in this process (`collect`, `trace NAME`), or the whole
native stack (`run`, `stress`): a private Redis, the ingester and each collector as its own
process, so one failing collector never stops the others."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from kernelsight import collectors, defaults, schema, sdnotify
from kernelsight.config import Settings, db_label, env_name, redact
from kernelsight.exceptions import CollectorError, KernelSightError
from kernelsight.redis_server import PrivateRedis
from kernelsight.runs import RunRecorder
from kernelsight.streams import HEALTH_KEY, Publisher, connect, mget, ping

log = logging.getLogger(__name__)

STATUS_KEY = "kernelsight:status:{name}"
# Setting this key asks every collector watching this Redis to finish (flush, publish its final
# accounting, exit 0). It is how the compose stress job stops collectors it cannot signal.
STOP_KEY = "kernelsight:control:stop"
ACCOUNTING = "accounting"  # backlog_by_stream's key for the accounting streams


def _set_status(settings: Settings, name: str, state: str, detail: str = "") -> None:
    try:
        connect(settings.redis_url, 2).set(
            STATUS_KEY.format(name=name),
            orjson.dumps({"state": state, "detail": detail, "pid": os.getpid()}), ex=3600)
    except redis.RedisError:
        pass  # Redis down at start is allowed; the status still reaches the log


EXIT_CRASHED = 1  # a collector that raised in poll(): a bug, recorded as failed


def run_collector(name: str, settings: Settings, duration: float | None = None,
                  stop: threading.Event | None = None,
                  cls: type[collectors.Collector] | None = None,
                  start_lock: threading.Lock | None = None, watch_stop_key: bool = True,
                  on_started: Callable[[], None] | None = None) -> int:
    """Run one collector until SIGTERM/SIGINT, ``stop`` or ``duration``; returns the exit code.

    Redis may be down: the publisher buffers (bounded) and reconnects by itself. A collector
    that raises in ``poll()`` is recorded as FAILED (accounting and status key) with the
    exception, not as stopped: the report's "all collectors started" must not pass over it.
    ``cls`` replaces the registry's class (tests). ``start_lock`` serialises ``start()``
    between collectors hosted in one process (collectors/host.py): BCC compiles there; the
    host watches the stop key for all of them (``watch_stop_key=False``) and is told when
    this one has started (``on_started``)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    pub = Publisher(settings, name, linger_s=settings.publish_linger_s)
    try:
        col = (cls or collectors.get(name))(settings, pub)
        col.stopping = stop  # its Ticker's waits end as soon as we are told to stop
        with start_lock or contextlib.nullcontext():
            col.start()
    except (CollectorError, KernelSightError) as e:
        log.error("%s", e)
        pub.status(schema.FAILED, str(e))
        _set_status(settings, name, "failed", str(e))
        pub.close(deadline_s=2)
        print(f"kernelsight: {name}: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e, KernelSightError) else 5
    pub.status(schema.STARTED)
    _set_status(settings, name, "started")
    log.info("%s started (pid %d)", name, os.getpid())
    if on_started:
        on_started()
    end = time.monotonic() + duration if duration else None
    ctl = connect(settings.redis_url, 1)
    started_ns = time.time_ns()
    next_ctl = 0.0
    crash = ""
    try:
        while not stop.is_set() and (end is None or time.monotonic() < end):
            try:
                col.poll()
            except Exception as e:
                log.exception("%s crashed in poll()", name)
                crash = f"crashed in poll(): {e.__class__.__name__}: {e}"
                pub.status(schema.FAILED, crash)
                break
            pub.flush()
            if watch_stop_key and time.monotonic() >= next_ctl:
                next_ctl = time.monotonic() + 0.5
                if _stop_requested(ctl, started_ns):
                    log.info("%s: stop requested through %s", name, STOP_KEY)
                    break
    finally:
        try:
            col.stop()
        except Exception as e:
            log.exception("%s: stop() failed", name)
            crash = crash or f"crashed in stop(): {e.__class__.__name__}: {e}"
            pub.status(schema.FAILED, crash)
        finally:
            pub.flush()
            pub.close()
            _set_status(settings, name, "failed" if crash else "stopped", crash)
    log.info("%s %s: %s", name, "FAILED" if crash else "stopped",
             {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in pub.counters.items()})
    if crash:
        print(f"kernelsight: {name}: {crash}", file=sys.stderr)
        return EXIT_CRASHED
    return 0


def _stop_requested(r: redis.Redis, started_ns: int) -> bool:
    """A stop request newer than our start (an old key must not stop a new run)."""
    try:
        raw = r.get(STOP_KEY)
    except redis.RedisError:
        return False
    return bool(raw) and int(raw) >= started_ns


def request_stop(redis_url: str) -> None:
    connect(redis_url).set(STOP_KEY, str(time.time_ns()), ex=3600)


def collector_states(redis_url: str, names: list[str]) -> dict[str, dict]:
    r = connect(redis_url)
    raw = mget(r, [STATUS_KEY.format(name=n) for n in names])
    return {n: _status(v) for n, v in zip(names, raw, strict=True)}


def _status(raw: bytes | None) -> dict:
    """A collector's status as written to Redis; anything unreadable is state "unknown"
    (a Redis client can write any value there)."""
    if not raw:
        return {"state": "unknown"}
    try:
        st = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"state": "unknown", "detail": "unreadable status in Redis"}
    if not isinstance(st, dict) or not isinstance(st.get("state"), str):
        return {"state": "unknown", "detail": "unreadable status in Redis"}
    st["detail"] = str(st.get("detail", ""))
    return st


def wait_states(redis_url: str, names: list[str], states: set[str], timeout: float) -> dict:
    """Wait until every named collector's status is in ``states``; returns the last states."""
    end = time.monotonic() + timeout
    while True:
        st = collector_states(redis_url, names)
        if all(s["state"] in states for s in st.values()) or time.monotonic() >= end:
            return st
        time.sleep(0.2)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path | None
    state: str = "starting"
    detail: str = ""


@dataclass
class Stack:
    """The native pipeline as child processes. Used by `run` and `stress`."""

    settings: Settings
    log_dir: Path | None = None
    redis: PrivateRedis | None = None
    ingest: Proc | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    # Several collectors in one process (collectors/host.py) rather than one process each.
    one_process: bool = defaults.ONE_PROCESS

    def start_redis(self) -> str:
        if self.settings.redis_url:
            ping(self.settings.redis_url)
            return self.settings.redis_url
        self.redis = PrivateRedis().start()
        self.settings = self.settings.with_(redis_url=self.redis.url)
        if self.redis.proc:
            self.register_self(self.redis.proc.pid)
        return self.redis.url

    def register_self(self, pid: int | None = None, tree: bool = False) -> None:
        """This process (or ``pid`` and its descendants) is KernelSight's own: no tracer
        records it (selfpids.py)."""
        from kernelsight import selfpids

        if pid is None:
            selfpids.register_url(self.settings.redis_url, self.settings.host, role="run")
        else:
            selfpids.register_url(self.settings.redis_url, self.settings.host, pid, tree=tree)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in (sdnotify.ENV_SOCKET, sdnotify.ENV_WATCHDOG_USEC, sdnotify.ENV_WATCHDOG_PID):
            env.pop(k, None)  # only this process speaks to systemd (NotifyAccess=main)
        for k, v in vars(self.settings).items():
            env[env_name(k)] = str(v)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, args: list[str]) -> Proc:
        log_path = None
        # Without a log directory the children write to our stderr (the terminal, or the
        # journal under systemd): an ingester that exits must say why somewhere.
        out: int | object = 2  # our fd 2 (sys.stderr may be a pytest/StringIO stand-in)
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        p = subprocess.Popen([sys.executable, "-m", "kernelsight", *args], env=self._env(),
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if log_path:
            out.close()  # type: ignore[attr-defined]
        self.register_self(p.pid, tree=True)
        return Proc(name, p, log_path)

    def start_ingest(self) -> Proc:
        self.ingest = self._spawn("ingest", ["ingest"])
        return self.ingest

    def start_collectors(self, names: list[str], timeout: float = 60.0,
                         on_status: Callable[[Proc], None] | None = None) -> dict[str, Proc]:
        """Start each collector and wait until each says started or failed (or exits)."""
        r = connect(self.settings.redis_url)
        for n in names:
            r.delete(STATUS_KEY.format(name=n))
        if self.one_process and len(names) > 1:
            # One process for all (collectors/host.py): one BCC runtime instead of one per
            # tracer. Each name keeps its own Proc (same process) and status key. Their
            # programs compile one after the other, so allow more time.
            shared = self._spawn("collectors", ["host", "--collectors", ",".join(names)])
            for n in names:
                self.procs[n] = Proc(n, shared.popen, shared.log_path)
            timeout *= max(2, len(set(names) & set(collectors.TRACERS)))
        else:
            for n in names:
                args = ["collect"] if n == collectors.SCRAPER else ["trace", n]
                self.procs[n] = self._spawn(n, args)
        deadline = time.monotonic() + timeout
        waiting = set(names)
        while waiting and time.monotonic() < deadline:
            for n in sorted(waiting):
                p = self.procs[n]
                raw = r.get(STATUS_KEY.format(name=n))
                if raw:
                    st = orjson.loads(raw)
                    p.state, p.detail = st["state"], st.get("detail", "")
                elif p.popen.poll() is not None:
                    p.state, p.detail = "failed", f"exited with code {p.popen.returncode}" + (
                        f"; see {p.log_path}" if p.log_path else "")
                if p.state != "starting":
                    waiting.discard(n)
                    if on_status:
                        on_status(p)
            time.sleep(0.1)
        for n in waiting:
            p = self.procs[n]
            p.state, p.detail = "failed", f"did not report started within {timeout:.0f}s"
            if on_status:
                on_status(p)
        return self.procs

    def wait_ingest_ready(self, since_ns: int, timeout: float = 60.0) -> bool:
        """True once the ingester has written a heartbeat newer than ``since_ns`` (it does
        so after checking Redis, creating the groups and re-reading its pending entries)."""
        r = connect(self.settings.redis_url, 2)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                if self.ingest is None or self.ingest.popen.poll() is not None:
                    return False
                raw = r.get(HEALTH_KEY.format(source="ingest"))
                if raw and orjson.loads(raw)["timestamp"] >= since_ns:
                    return True
                time.sleep(0.1)
            return False
        finally:
            r.close()

    def problem(self) -> str | None:
        """Why the stack is unhealthy right now, or None: for the systemd watchdog."""
        if self.ingest is None or self.ingest.popen.poll() is not None:
            return "ingest is not running"
        for p in self.procs.values():
            if p.state == "started" and p.popen.poll() is not None:
                return f"{p.name} exited with code {p.popen.returncode}"
        r = connect(self.settings.redis_url, 2)
        try:
            raw = r.get(HEALTH_KEY.format(source="ingest"))
        except redis.RedisError as e:
            return f"redis unreachable: {e}"
        finally:
            r.close()
        if not raw:
            return "no ingest heartbeat"
        age = time.time() - orjson.loads(raw)["timestamp"] / 1e9
        return f"ingest heartbeat {age:.0f}s old" if age > defaults.HEALTH_STALE_S else None

    def stop_collectors(self, timeout: float = 20.0) -> None:
        if len({p.popen.pid for p in self.procs.values()}) < len(self.procs):
            # Hosted in one process: every collector's last interval, BPF detach and final
            # flush share that process's CPU (seconds each on a loaded host).
            timeout = max(timeout, 60.0)
        for p in self.procs.values():
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        _wait_all([p.popen for p in self.procs.values()], timeout)

    def drain_ingest(self, timeout: float = 120.0) -> int:
        """SIGTERM makes the ingester drain every stream, then exit."""
        if not self.ingest:
            return 0
        if self.ingest.popen.poll() is None:
            self.ingest.popen.send_signal(signal.SIGTERM)
        _wait_all([self.ingest.popen], timeout)
        return self.ingest.popen.returncode

    def close(self) -> None:
        procs = [p.popen for p in self.procs.values()]
        if self.ingest:
            procs.append(self.ingest.popen)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        _wait_all(procs, 10)
        if self.redis:
            self.redis.cleanup()
            self.redis = None


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not exit in time; killing it", p.pid)
            p.kill()
            p.wait()


class IngestSupervisor:
    """Keeps the ingester of a `run` alive: one that exits while we are not stopping (a crash,
    a kill) is restarted after a growing pause, at most ``max_restarts`` times. The private
    Redis holding the unstored entries stays up meanwhile; the new ingester picks up the
    group's pending entries, so nothing is lost or stored twice."""

    def __init__(self, stack: Stack, echo: Callable[[str], None],
                 max_restarts: int = defaults.INGEST_RESTARTS_MAX,
                 backoff_s: float = defaults.INGEST_RESTART_BACKOFF_S) -> None:
        self.stack = stack
        self.echo = echo
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.restarts = 0
        self._restart_at: float | None = None

    @property
    def gave_up(self) -> bool:
        return self.restarts >= self.max_restarts and self._restart_at is None and not \
            self.alive

    @property
    def alive(self) -> bool:
        return bool(self.stack.ingest) and self.stack.ingest.popen.poll() is None  # type: ignore

    def check(self) -> None:
        """Call often: notices an exit, schedules and performs the restart."""
        ing = self.stack.ingest
        if ing is None or ing.popen.poll() is None:
            return
        now = time.monotonic()
        if self._restart_at is None:
            if self.restarts >= self.max_restarts:
                return
            pause = min(self.backoff_s * 2 ** self.restarts, 30.0)
            self._restart_at = now + pause
            where = f"; see {ing.log_path}" if ing.log_path else ""
            self.echo(f"ingest exited with code {ing.popen.returncode}{where}; restarting in "
                      f"{pause:.1f}s ({self.restarts + 1}/{self.max_restarts})")
            log.warning("ingest pid %d exited with %s; restart %d/%d in %.1fs", ing.popen.pid,
                        ing.popen.returncode, self.restarts + 1, self.max_restarts, pause)
        elif now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            new = self.stack.start_ingest()
            self.echo(f"ingest: restarted, pid {new.popen.pid}")

    def ensure_running(self, timeout: float) -> bool:
        """For the drain: wait out a scheduled restart (or give up after ``timeout``)."""
        end = time.monotonic() + timeout
        while not self.alive and time.monotonic() < end:
            if self._restart_at is None and self.restarts >= self.max_restarts:
                return False
            self.check()
            time.sleep(0.1)
        return self.alive


def backlog_by_stream(r: redis.Redis, host: str | None = None) -> dict[str, int]:
    """Entries the KernelSight streams still hold that the ingest group has not stored
    (undelivered + unacknowledged; a stream the group never read counts whole), per event
    table (accounting under its own key), summed over every registered host (and ``host``)."""
    from kernelsight.ingest.validate import stream_table
    from kernelsight.streams import all_streams

    out: dict[str, int] = {}
    for et_stream in all_streams(r, [host] if host else []):
        n = int(r.xlen(et_stream))
        if not n:
            continue
        try:
            groups = r.xinfo_groups(et_stream)
        except redis.ResponseError:
            groups = []
        g = next((g for g in groups if g["name"] in (schema.INGEST_GROUP,
                                                      schema.INGEST_GROUP.encode())), None)
        if g is None:
            left = n
        else:
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            left = len(r.xrange(et_stream, "(" + last, "+")) + int(g["pending"])
        if left:
            parts = schema.split_key(et_stream)
            key = ACCOUNTING if parts and parts[1] == schema.ACCOUNTING_PART else stream_table(
                et_stream)
            out[key] = out.get(key, 0) + left
    return out


def record_loss(settings: Settings, left: dict[str, int], reason: str) -> bool:
    """Entries that could not be stored (the ingester gave up; Redis is about to go): counted
    as dropped with ``reason`` straight into the database's accounting, since the pipeline
    that would carry the count is the part that failed. False if even that failed."""
    from sqlalchemy import insert

    from kernelsight.clock import now_ns
    from kernelsight.db import open_db

    rows = [{"timestamp": now_ns(), "host": settings.host, "source": "runner",
             "instance": f"runner@{settings.host}:{os.getpid()}", "event_type": et,
             "metric": schema.DROPPED, "reason": reason, "value": n, "detail": None,
             "stream_id": None} for et, n in left.items() if et != ACCOUNTING]
    if not rows:
        return True
    try:
        eng = open_db(settings.db_path)
        with eng.begin() as c:
            c.execute(insert(schema.pipeline_accounting), rows)
        eng.dispose()
        return True
    except Exception as e:  # noqa: BLE001 - the message below is all we can still do
        log.error("could not record the loss in %s: %s", db_label(settings.db_path), e)
        return False


R_UNSTORED = "unstored_at_exit"


def run(settings: Settings, duration: float | None, names: list[str],
        log_dir: Path | None = None, echo: Callable[[str], None] = print,
        kind: str = "run", ingest_restarts: int = defaults.INGEST_RESTARTS_MAX,
        one_process: bool = defaults.ONE_PROCESS) -> int:
    """`kernelsight run`: collectors + ingester until SIGTERM/SIGINT (or ``duration`` s), then
    drain and exit. The run is recorded (runs table) with its start, end and outcome."""
    stack = Stack(settings, log_dir, one_process=one_process)
    rec: RunRecorder | None = None
    stopping = threading.Event()
    old = {s: signal.signal(s, lambda *_: stopping.set()) for s in
           (signal.SIGINT, signal.SIGTERM)}
    start_ns = time.time_ns()
    try:
        url = stack.start_redis()
        stack.register_self()  # the `kernelsight run` parent: not traced either
        echo(f"redis: {redact(url)}" + (" (private)" if stack.redis else ""))
        ing = stack.start_ingest()
        echo(f"ingest: pid {ing.popen.pid} -> {db_label(settings.db_path)}")
        sup = IngestSupervisor(stack, echo, max_restarts=ingest_restarts)
        rec = RunRecorder(stack.settings, kind).begin()
        echo(f"run: {rec.run_id}")

        def show(p: Proc) -> None:
            mark = "started" if p.state == "started" else f"FAILED: {p.detail}"
            echo(f"{p.name}: pid {p.popen.pid} {mark}")

        stack.start_collectors(names, on_status=show)
        end = time.monotonic() + duration if duration else None
        echo("collecting " + (f"for {duration:g}s" if duration else
                              "until SIGTERM/SIGINT (Ctrl-C)"))
        if stack.wait_ingest_ready(start_ns):
            started = [p.name for p in stack.procs.values() if p.state == "started"]
            sdnotify.ready(f"collecting ({', '.join(started) or 'no collector started'}) "
                           f"into {db_label(settings.db_path)}")
        watchdog = sdnotify.Watchdog()
        unhealthy = ""
        while (end is None or time.monotonic() < end) and not stopping.is_set():
            sup.check()
            if sup.gave_up:
                echo(f"ingest exited and was restarted {sup.restarts} of "
                     f"{sup.max_restarts} times; stopping the run")
                break
            if watchdog.due():
                # No ping while something is wrong: systemd then restarts the service.
                why = stack.problem()
                if why is None:
                    watchdog.beat()
                elif why != unhealthy:
                    log.error("unhealthy, not pinging the watchdog: %s", why)
                    sdnotify.status(f"unhealthy: {why}")
                unhealthy = why or ""
            stopping.wait(0.5)  # a signal sets it: no busy loop, and no wait on a stop
        # A signal during the drain cuts the wait short; what is unstored is then counted.
        hurry = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: hurry.set())
        sdnotify.stopping("draining: stopping collectors, then storing what Redis holds")
        stack.stop_collectors()
        rec.end()
        return _drain(stack, sup, rec, echo, hurry)
    finally:
        try:
            if rec is not None:
                rec.close()
            stack.close()
        finally:  # only now: a signal in the middle of the cleanup must not kill us
            for s, h in old.items():
                signal.signal(s, h)


def _drain(stack: Stack, sup: IngestSupervisor, rec: RunRecorder,
           echo: Callable[[str], None], hurry: threading.Event) -> int:
    """Store everything up to the run's end, record the outcome, stop the ingester (which
    drains the rest). With our private Redis, entries that could not be stored are counted as
    loss before it goes; a shared Redis (KS_REDIS_URL) keeps them for the next ingester."""
    from kernelsight.runs import wait_drained_until
    from kernelsight.window import ns_to_id

    r = connect(stack.settings.redis_url)
    upto = ns_to_id(rec.end_ns or time.time_ns())
    drained = False
    deadline = time.monotonic() + defaults.RUN_DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and not hurry.is_set() and sup.ensure_running(60):
        if wait_drained_until(stack.settings.redis_url, upto, 2):
            drained = True
            break
        sup.check()
    if hurry.is_set() and not drained:
        echo("signal during the drain: not waiting any longer")
    rec.verdict("drained" if drained else "unstored-entries")
    rc = stack.drain_ingest() if sup.alive else (stack.ingest.popen.returncode
                                                 if stack.ingest else 1)
    left = backlog_by_stream(r, stack.settings.host)
    r.close()
    if left and not stack.redis:
        echo(f"{sum(left.values()):,} entries are still in the shared Redis, unstored ("
             + ", ".join(f"{k} {v:,}" for k, v in sorted(left.items()))
             + "): the next `kernelsight ingest` on it stores them")
        return 1
    if left:
        total = sum(left.values())
        recorded = record_loss(stack.settings, left, R_UNSTORED)
        echo(f"LOSS: {total:,} entries could not be stored ("
             + ", ".join(f"{k} {v:,}" for k, v in sorted(left.items())) + ")"
             + ("; counted as dropped, reason " + R_UNSTORED if recorded else
                "; could NOT be recorded in the database"))
        return 1
    echo(f"drained; ingest exit code {rc}" + (f" (restarted {sup.restarts}x)"
                                              if sup.restarts else ""))
    return 0 if rc == 0 else 1
