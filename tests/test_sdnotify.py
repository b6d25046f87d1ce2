"""sd_notify against a real AF_UNIX datagram socket: the protocol itself, then real
`kernelsight run` / `kernelsight ingest` processes speaking it as systemd would see them."""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from kernelsight import schema, sdnotify
from kernelsight.loadgen import make_event
from kernelsight.runner import STATUS_KEY
from kernelsight.streams import Publisher


class Listener:
    """What systemd does: bind a datagram socket and read one message per datagram."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path if not path.startswith("@") else "\0" + path[1:])
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []

    def read(self, timeout: float, until: str | None = None) -> list[tuple[float, str]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))
            if until and until in data.decode().split("\n"):
                break
        return self.got

    def lines(self) -> list[str]:
        return [m.split("\n")[0] for _, m in self.got]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = str(tmp_path / "n.sock")
    assert len(path) < 100, path  # sun_path limit
    lst = Listener(path)
    yield lst
    lst.close()


def test_notify_path_socket(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.path}
    assert sdnotify.notify("READY=1\nSTATUS=up", env)
    assert listener.read(2, until="READY=1")[0][1] == "READY=1\nSTATUS=up"


def test_notify_abstract_socket() -> None:
    name = f"@ks-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener(name)
    try:
        assert sdnotify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": name})
        assert lst.read(2, until="WATCHDOG=1")[0][1] == "WATCHDOG=1"
    finally:
        lst.close()


def test_notify_unset_is_a_noop() -> None:
    assert sdnotify.notify("READY=1", {}) is False


def test_notify_failure_is_only_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kernelsight.sdnotify"):
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "cannot send 'READY=1'" in caplog.text


def test_watchdog_interval_from_env() -> None:
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval_s({}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    # systemd addressed another process (WATCHDOG_PID): not ours to ping.
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1000000",
                                         "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1000000",
                                         "WATCHDOG_PID": str(os.getpid())}) == 0.5


def _env(listener: Listener, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, NOTIFY_SOCKET=listener.path, KS_REDIS_URL=redis_url,
               PYTHONUNBUFFERED="1", **extra)
    env.pop("WATCHDOG_PID", None)
    return env


def test_run_ready_watchdog_stopping(listener: Listener, tmp_path: Path, redis_url: str) -> None:
    """READY once ingest and the collector run, WATCHDOG every WATCHDOG_USEC/2, STOPPING on
    SIGTERM, and nothing from the children (they do not inherit NOTIFY_SOCKET)."""
    env = _env(listener, redis_url, WATCHDOG_USEC="1000000")  # ping every 0.5 s
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "run", "--duration", "120",
                          "--collectors", "scraper", "--db", str(tmp_path / "ks.db"),
                          "--log-dir", str(tmp_path / "logs")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        listener.read(60, until="READY=1")
        assert listener.lines() == ["READY=1"], (listener.got, p.poll())
        r = redis.Redis.from_url(redis_url)
        assert orjson.loads(r.get(STATUS_KEY.format(name="scraper")))["state"] == "started"
        assert r.get("kernelsight:health:ingest"), "READY before the ingester was up"
        t_ready = listener.got[0][0]
        listener.read(4.2)
        pings = [t for t, m in listener.got if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # Half of WATCHDOG_USEC: the median gap tells 0.5 s from 1 s even on a loaded machine.
        assert 5 <= len(pings) <= 10, listener.got
        assert 0.4 <= statistics.median(gaps) <= 0.8 and min(gaps) >= 0.35, gaps
        assert pings[0] - t_ready < 1.0
        p.send_signal(signal.SIGTERM)
        listener.read(30, until="STOPPING=1")
        assert listener.lines()[-1] == "STOPPING=1", listener.got
        out = p.communicate(timeout=120)[0].decode()
        assert p.returncode == 0, out
        assert "drained" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert set(listener.lines()) <= {"READY=1", "WATCHDOG=1", "STOPPING=1"}, listener.got
    assert listener.lines().count("READY=1") == 1


def test_run_stops_pinging_when_a_collector_dies(listener: Listener, tmp_path: Path,
                                                 redis_url: str) -> None:
    """A collector that dies makes the stack unhealthy: no more WATCHDOG=1 (systemd then
    restarts the service) and a STATUS saying why."""
    env = _env(listener, redis_url, WATCHDOG_USEC="1000000")
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "run", "--duration", "120",
                          "--collectors", "scraper", "--db", str(tmp_path / "ks.db")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listener.read(60, until="READY=1")
        assert "READY=1" in listener.lines(), listener.got
        listener.read(1.5)
        assert "WATCHDOG=1" in listener.lines()
        pid = orjson.loads(redis.Redis.from_url(redis_url).get(
            STATUS_KEY.format(name="scraper")))["pid"]
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        listener.read(3.0)
        late = [t for t, m in listener.got if m == "WATCHDOG=1" and t > t_kill + 0.8]
        assert not late, listener.got
        assert any(m.startswith("STATUS=unhealthy: scraper exited") for _, m in listener.got), \
            listener.got
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(120)


def _publish(settings, n: int) -> None:
    et = schema.BY_NAME["syscall_events"]
    pub = Publisher(settings, "syscalls")
    pub.publish(et.name, [make_event(et, random.Random(i), "testhost", time.time_ns())
                          for i in range(n)])
    pub.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_ingest_drain_ready_then_stopping(listener: Listener, settings, redis_url: str,
                                          workers: int) -> None:
    """`ingest --drain`: READY=1 (after its setup), then STOPPING=1 as the drain starts, then
    exit 0 with everything stored. With --workers 2 only the supervisor (the main PID) speaks,
    and READY comes once both workers have reported."""
    _publish(settings, 5000)
    env = _env(listener, redis_url, WATCHDOG_USEC="1000000")
    p = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--drain", "--db",
                        settings.db_path, "--workers", str(workers)], env=env,
                       capture_output=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    listener.read(0.5)
    lines = listener.lines()
    assert lines[0] == "READY=1", listener.got
    assert lines.count("READY=1") == 1
    assert "STOPPING=1" in lines and lines.index("STOPPING=1") > 0, listener.got
    assert f"with {workers} workers" in listener.got[0][1] if workers > 1 else True
    assert "ingest: stored 5000" in p.stderr.decode()


@pytest.mark.parametrize("workers", [1, 2])
def test_ingest_watchdog_cadence(listener: Listener, settings, redis_url: str,
                                 workers: int) -> None:
    """WATCHDOG_USEC=4 s: a ping every 2 s (half of it) from the main PID, then STOPPING=1 on
    SIGTERM and a clean exit."""
    env = _env(listener, redis_url, WATCHDOG_USEC="4000000")
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest", "--db",
                          settings.db_path, "--workers", str(workers)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listener.read(30, until="READY=1")
        assert "READY=1" in listener.lines(), listener.got
        _publish(settings, 2000)
        listener.read(8.0)
        pings = [t for t, m in listener.got if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 3 <= len(pings) <= 6, listener.got
        assert 1.8 <= statistics.median(gaps) <= 3.0 and min(gaps) >= 1.5, gaps
        assert any(re.fullmatch(r"STATUS=stored \d+ events, backlog \d+( \(2 workers\))?", m)
                   for _, m in listener.got), listener.got
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, p.stderr.read().decode()[-3000:] if p.stderr else ""
        listener.read(0.3)
        assert "STOPPING=1" in listener.lines(), listener.got
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
