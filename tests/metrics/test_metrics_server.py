"""/metrics scraped over real HTTP from a real `kernelsight ingest` / `kernelsight run`,
parsed with prometheus_client's parser, checked against the database, linted by promtool."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from kernelsight import defaults, schema
from kernelsight.db import engine_for
from kernelsight.exceptions import ConfigError
from kernelsight.ingest import backlog
from kernelsight.loadgen import make_event
from kernelsight.metrics import parse_addr, resolve_addr
from kernelsight.metrics.names import SPECS
from kernelsight.redis_server import free_port
from kernelsight.streams import Publisher, connect

H = "testhost"  # the settings fixture's host

REPO = Path(__file__).resolve().parents[2]


def scrape(port: int, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


def samples(body: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            v = pred()
        except OSError as e:  # a scrape that timed out on a loaded machine: ask again
            last, v = e, None
        if v:
            return v
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}" + (
        f" (last error: {last})" if last else ""))


def promtool() -> str:
    exe = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    if not os.access(exe, os.X_OK):
        pytest.fail("promtool missing: run scripts/setup.sh (it installs it into .venv/bin)")
    return exe


def test_addr_parsing() -> None:
    assert parse_addr("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_addr("[::1]:9") == ("::1", 9)
    assert parse_addr("off") is None and parse_addr("") is None
    for bad in ("9477", "host:", "h:70000", ":1"):
        with pytest.raises(ConfigError, match="is not HOST:PORT"):
            parse_addr(bad)
    assert resolve_addr(None, {}) == "127.0.0.1:9477"
    assert resolve_addr(None, {"KS_METRICS_ADDR": ""}) == "off"
    assert resolve_addr("0.0.0.0:1", {"KS_METRICS_ADDR": "off"}) == "0.0.0.0:1"


@pytest.fixture
def ingest_proc(settings):
    """A real `kernelsight ingest` serving /metrics on a free port."""
    port = free_port()
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest", "--db",
                          settings.db_path, "--metrics-addr", f"127.0.0.1:{port}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: _up(port) or p.poll() is not None, 30, "the metrics port")
    assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
    yield p, port
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0


def _up(port: int) -> bool:
    try:
        scrape(port, 1)
        return True
    except OSError:
        return False


def test_ingest_metrics_match_the_database(settings, ingest_proc, tmp_path) -> None:
    _p, port = ingest_proc
    et = schema.BY_NAME["syscall_events"]
    pub = Publisher(settings, "syscalls")
    pub.publish(et.name, [make_event(et, random.Random(i), "testhost", time.time_ns())
                          for i in range(3000)])
    pub.lost(et.name, "ringbuf_full", 17)  # counted at the source as produced + dropped
    pub.close()
    r = connect(settings.redis_url)
    eng = engine_for(settings.db_path, readonly=True)

    def count() -> int:
        with eng.connect() as c:
            return c.execute(text("SELECT COUNT(*) FROM syscall_events")).scalar_one()

    wait_for(lambda: count() == 3000, 60, "the ingester to store all 3000 events")
    wait_for(lambda: backlog(r) == 0, 30, "the backlog to be empty")
    stored = count()
    with eng.connect() as c:
        newest = c.execute(text("SELECT MAX(timestamp) FROM syscall_events")).scalar_one()
    assert stored == 3000

    def settled():  # the ingester records its counters every INGEST_ACCOUNTING_INTERVAL_S
        s = samples(scrape(port))
        key = ("kernelsight_ingest_events_stored_total", (("event_type", "syscall_events"),))
        return s if s.get(key) == stored else None

    s = wait_for(settled, defaults.INGEST_ACCOUNTING_INTERVAL_S + 10,
                 "stored_total to reach the table's row count")
    body = scrape(port)
    lbl = (("collector", "syscalls"), ("event_type", "syscall_events"))
    assert s[("kernelsight_events_produced_total", lbl)] == 3017
    assert s[("kernelsight_events_dropped_total", (*lbl, ("reason", "ringbuf_full")))] == 17
    assert s[("kernelsight_ingest_duplicates_total", (("event_type", "syscall_events"),))] == 0
    assert s[("kernelsight_stream_backlog_entries",
              (("stream", schema.stream_key(H, "syscall_events")),))] == 0
    assert s[("kernelsight_stream_length_entries",
              (("stream", schema.stream_key(H, "syscall_events")),))] == r.xlen(
        schema.stream_key(H, "syscall_events"))
    assert s[("kernelsight_collector_last_sample_timestamp_seconds",
              (("collector", "syscalls"),))] == pytest.approx(newest / 1e9)
    hb = s[("kernelsight_component_last_heartbeat_timestamp_seconds",
            (("component", "ingest"),))]
    assert abs(hb - time.time()) < 10
    assert s[("kernelsight_build_info", (("version", version("kernelsight")),))] == 1
    assert s[("kernelsight_ingest_batch_duration_seconds_count", ())] >= 1
    assert s[("kernelsight_ingest_batch_duration_seconds_sum", ())] > 0
    size = s[("kernelsight_database_size_bytes", ())]
    assert size >= Path(settings.db_path).stat().st_size > 0
    assert s[("kernelsight_exporter_scrape_success", (("source", "database"),))] == 1
    assert s[("kernelsight_exporter_scrape_success", (("source", "redis"),))] == 1
    # Every exported family is in the names table (STYLE.md §2), and nothing else is.
    fams = {f.name for f in text_string_to_metric_families(body)}
    assert fams <= {n.removesuffix("_total") for n in SPECS}, fams - set(SPECS)
    (tmp_path / "metrics.txt").write_text(body)
    lint = subprocess.run([promtool(), "check", "metrics"], input=body.encode(),
                          capture_output=True, check=False)
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()


def test_scrape_never_takes_the_write_lock(settings, ingest_proc) -> None:
    """With the ingest WriteLock held (as a long transaction would), a scrape still answers."""
    _p, port = ingest_proc
    wait_for(lambda: Path(settings.db_path + "-ingest.lock").exists(), 10, "the lock file")
    fd = os.open(settings.db_path + "-ingest.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t0 = time.monotonic()
        s = samples(scrape(port, timeout=5))
        assert time.monotonic() - t0 < 2.0
        assert s[("kernelsight_exporter_scrape_success", (("source", "database"),))] == 1
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_metrics_port_in_use_is_one_clear_line(settings) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "kernelsight", "ingest", "--db",
                            settings.db_path, "--metrics-addr", f"127.0.0.1:{port}"],
                           env={**os.environ, "KS_REDIS_URL": settings.redis_url},
                           capture_output=True, timeout=60, check=False)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_run_serves_metrics_from_its_ingester(settings, tmp_path) -> None:
    """`kernelsight run --metrics-addr`: the scraper's series appear with live values."""
    port = free_port()
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "run", "--duration", "60",
                          "--collectors", "scraper", "--db", settings.db_path,
                          "--metrics-addr", f"127.0.0.1:{port}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def scraper_seen():
            if not _up(port):
                return None
            s = samples(scrape(port))
            # Produced comes from the accounting snapshots the ingester has stored, about a
            # second behind its own stored counter: wait for both.
            ok = s.get(("kernelsight_collector_up", (("collector", "scraper"),))) == 1 and \
                s.get(("kernelsight_ingest_events_stored_total",
                       (("event_type", "memory_metrics"),)), 0) >= 2 and \
                s.get(("kernelsight_events_produced_total",
                       (("collector", "scraper"), ("event_type", "memory_metrics"))), 0) >= 2
            return s if ok else None

        s = wait_for(scraper_seen, 45, "scraper series in /metrics")
        ts = s[("kernelsight_collector_last_sample_timestamp_seconds",
                (("collector", "scraper"),))]
        # At most one --interval (run's default, 10 s) plus the producer's linger old, and a
        # few seconds for the ingester and this scrape.
        assert abs(ts - time.time()) < (defaults.SERVICE_INTERVAL_S
                                        + defaults.PUBLISH_LINGER_S + 5)
        assert s[("kernelsight_events_produced_total",
                  (("collector", "scraper"), ("event_type", "memory_metrics")))] >= 2
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 0, p.stderr.read().decode()[-3000:] if p.stderr else ""
    eng = engine_for(settings.db_path, readonly=True)
    with eng.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM memory_metrics")).scalar_one() >= 2


def test_retention_deletes_and_limits_are_exported(settings) -> None:
    """Rows older than --retention are deleted by the ingester's maintenance; /metrics shows
    them as retention deletes (not drops) with the limit, and they match the database."""
    port = free_port()
    et = schema.BY_NAME["syscall_events"]
    old = time.time_ns() - 600 * 10**9  # ten minutes ago: beyond a 1 minute retention
    pub = Publisher(settings, "syscalls")
    pub.publish(et.name, [make_event(et, random.Random(i), "testhost", old + i)
                          for i in range(1500)])
    # One fresh row: rollups (written before raw rows go) close a minute only once newer
    # data has been stored, so without it the old minute would wait.
    pub.publish(et.name, [make_event(et, random.Random(0), "testhost", time.time_ns())])
    pub.close()
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest", "--db",
                          settings.db_path, "--retention", "1m", "--retention-size", "64MiB",
                          "--metrics-addr", f"127.0.0.1:{port}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        key = ("kernelsight_retention_deleted_rows_total",
               (("reason", "time"), ("table", "syscall_events")))

        def deleted():
            if not _up(port):
                return None
            s = samples(scrape(port))
            return s if s.get(key) == 1500 else None

        s = wait_for(deleted, 90, "1500 retention deletes in /metrics")
        assert s[("kernelsight_retention_limit_seconds", ())] == 60
        assert s[("kernelsight_retention_limit_bytes", ())] == 64 * 2**20
        assert ("kernelsight_events_dropped_total",
                (("collector", "syscalls"), ("event_type", "syscall_events"),
                 ("reason", "time"))) not in s  # retention is not loss
        eng = engine_for(settings.db_path, readonly=True)
        with eng.connect() as c:
            assert c.execute(text("SELECT COUNT(*) FROM syscall_events")).scalar_one() == 1
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, p.stderr.read().decode()[-3000:] if p.stderr else ""


def test_two_workers_histogram_and_counts(settings) -> None:
    """--workers 2: the supervisor serves the histogram its workers report over their pipes,
    and stored_total sums both workers' accounting."""
    port = free_port()
    env = {**os.environ, "KS_REDIS_URL": settings.redis_url, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "kernelsight", "ingest", "--workers", "2",
                          "--batch-size", "200", "--db", settings.db_path,
                          "--metrics-addr", f"127.0.0.1:{port}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _up(port) or p.poll() is not None, 30, "the metrics port")
        et = schema.BY_NAME["syscall_events"]
        pub = Publisher(settings, "syscalls")
        pub.publish(et.name, [make_event(et, random.Random(i), "testhost", time.time_ns())
                              for i in range(4000)])
        pub.close()
        key = ("kernelsight_ingest_events_stored_total", (("event_type", "syscall_events"),))

        def done():
            s = samples(scrape(port))
            return s if s.get(key) == 4000 and s.get(
                ("kernelsight_ingest_batch_duration_seconds_count", ()), 0) >= 20 else None

        s = wait_for(done, 60, "4000 stored and >= 20 batches (4000 / 200) in /metrics")
        assert s[("kernelsight_ingest_batch_duration_seconds_sum", ())] > 0
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, p.stderr.read().decode()[-3000:] if p.stderr else ""
