"""The stress driver with real processes: every workload does real work, everything stops on
time or on a signal, and nothing (process, file, listening port) is left behind."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kernelsight.exceptions import ConfigError
from kernelsight.stress import CATEGORIES, check_duration, parse_only, run_stress

MiB = 1 << 20
FAST = ["--mem-mib", "128", "--disk-mib", "32"]


def _kids() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


def _listeners(pids: set[int]) -> set[tuple[str, int, int]]:
    """LISTEN sockets owned by ``pids`` (other suites may open ports meanwhile: ignore them)."""
    return {(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (is_running compares create times, so PID reuse cannot fool it)."""
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _start_cli(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kernelsight", "stress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)


def _wait_for_workers(pid: int, n: int, timeout: float = 15) -> list[psutil.Process]:
    """Descendants once ``n`` workers run and the network worker listens (fully started)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kids = _descendants(pid)
        workers = [k for k in kids if k.ppid() == pid]
        if len(workers) >= n and _listeners({k.pid for k in workers}):
            time.sleep(0.5)  # let stress-ng fork its workers too
            return _descendants(pid)
        time.sleep(0.1)
    pytest.fail(f"stress workers did not start within {timeout}s")


def test_all_workloads_do_real_work_and_leave_nothing(tmp_path: Path) -> None:
    before_kids = _kids()
    base = tmp_path / "base" / "nested"  # does not exist yet: created and removed by the run
    seen: set[psutil.Process] = set()
    listening: set[tuple[str, int, int]] = set()
    ticks: list[float] = []
    calls: list[tuple[float, float]] = []  # (entered, left): our own work is not the driver's

    def on_tick(elapsed: float) -> None:
        entered = time.monotonic()
        ticks.append(elapsed)
        kids = _kids() - before_kids
        seen.update(kids)
        if not listening and elapsed >= 2:
            listening.update(_listeners({k.pid for k in kids}))
        calls.append((entered, time.monotonic()))

    t0 = time.monotonic()
    s = run_stress(5, workdir=str(base), on_tick=on_tick, mem_mib=256, disk_mib=64)
    took = time.monotonic() - t0

    assert set(s) == {*CATEGORIES, "stress_ng"}
    errors = {c: r["error"] for c, r in s.items() if isinstance(r, dict) and "error" in r}
    assert not errors
    assert s["cpu"]["workers"] == 4 and s["cpu"]["bogo_ops"] > 0
    assert s["stress_ng"] == (s["cpu"]["engine"] == "stress-ng")
    assert s["mem"]["bytes_touched"] >= 256 * MiB and s["mem"]["minor_faults"] > 0
    assert s["io"]["writes"] > 0 and s["io"]["fsyncs"] > 0 and s["io"]["fdatasyncs"] > 0
    assert s["io"]["bytes_written"] > 0
    assert s["disk"]["bytes_written"] > 0 and s["disk"]["fsyncs"] > 0
    assert s["disk"]["bytes_read"] + s["disk"]["bytes_read_direct"] > 0
    assert s["disk"]["cache_drops"] > 0
    assert s["fs"]["files_created"] > 0 and s["fs"]["files_deleted"] == s["fs"]["files_created"]
    assert s["fs"]["files_read"] > 0 and s["fs"]["walk_entries"] > 0
    assert s["net"]["http_requests"] > 0 and s["net"]["http_errors"] == 0
    assert s["net"]["tcp_connections"] > 0 and s["net"]["http_bytes"] > 0
    assert s["slow"]["slow_calls"] > 0
    assert all(s["slow"][k] > 0 for k in ("sleep", "poll", "select", "epoll", "futex",
                                          "pipe_read"))

    # Stopped by themselves, on time; progress ticks about every 0.5 s.
    assert took < 5 + 6, took
    assert len(ticks) >= 8 and ticks[-1] == pytest.approx(5, abs=0.01)
    assert all(b[0] - a[1] < 1.0 for a, b in itertools.pairwise(calls))

    # Nothing left behind.
    assert len(seen) >= len(CATEGORIES)  # the check below had something to check
    assert listening, "the network worker should have been listening during the run"
    assert _kids() - before_kids == set()
    assert _gone(list(seen)) == []
    assert _listeners({p.pid for p in seen} | {os.getpid()}) == set()
    assert not (tmp_path / "base").exists()


def test_python_cpu_workers_without_stress_ng(tmp_path: Path) -> None:
    before = _kids()
    s = run_stress(1.5, workdir=str(tmp_path), only=["cpu"], use_stress_ng=False)
    assert s["stress_ng"] is False
    assert s["cpu"]["engine"] == "python" and s["cpu"]["workers"] == 4
    assert s["cpu"]["bogo_ops"] > 0 and "error" not in s["cpu"]
    assert _kids() - before == set()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_everything_quickly(tmp_path: Path) -> None:
    p = _start_cli(["--duration", "60", "--workdir", str(tmp_path / "w"), "--json", *FAST],
                   tmp_path)
    try:
        procs = _wait_for_workers(p.pid, len(CATEGORIES))
        pids = {q.pid for q in procs}
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=15)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert took < 6, took
    assert p.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err and b"stopped early by SIGTERM" in err
    summary = json.loads(out)
    assert set(CATEGORIES) <= set(summary)
    assert summary["net"]["http_requests"] > 0
    assert _gone(procs) == []
    assert _listeners(pids) == set()
    assert not (tmp_path / "w").exists()


def test_workers_stop_by_themselves_if_the_driver_is_killed(tmp_path: Path) -> None:
    """Even SIGKILL of the driver (no cleanup possible) leaves no runaway load: each worker
    notices it was orphaned and ends within a second or two."""
    p = _start_cli(["--duration", "60", "--workdir", str(tmp_path), "--only", "cpu,net,io"],
                   tmp_path)
    try:
        procs = _wait_for_workers(p.pid, 3)
    finally:
        p.kill()
        p.communicate()
    end = time.monotonic() + 8
    while _gone(procs) and time.monotonic() < end:
        time.sleep(0.1)
    assert _gone(procs) == []


@pytest.mark.parametrize("args, message", [
    (["--duration", "0"], "--duration must be between 1 and 86400 seconds, got 0"),
    ([], "--duration (or KS_DURATION) is required"),
    (["--duration", "5", "--only", "cpu,gpu"], "unknown category gpu"),
])
def test_bad_options_print_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KS_")}
    r = subprocess.run([sys.executable, "-m", "kernelsight", "stress", *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30, env=env, check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("kernelsight: error: ") and message in lines[0]
    assert r.stdout == ""


def test_validation_helpers() -> None:
    assert check_duration("2.5") == 2.5
    for bad in (0, 0.5, 86401, float("nan"), "x", None):
        with pytest.raises(ConfigError):
            check_duration(bad)  # type: ignore[arg-type]
    assert parse_only(None) == list(CATEGORIES) == parse_only("all")
    assert parse_only("net, memory,cpu") == ["cpu", "mem", "net"]
    with pytest.raises(ConfigError):
        parse_only("cpu,nope")
    with pytest.raises(ConfigError, match="between 1 and 86400"):
        run_stress(0)
    with pytest.raises(ConfigError, match="--mem-mib"):
        run_stress(1, mem_mib=100_000_000)
