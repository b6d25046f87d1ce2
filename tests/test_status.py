"""`kernelsight status` against a real running pipeline (ingester + scraper processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kernelsight.redis_server import free_port

from conftest import running_pipeline


def status(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelsight", "status", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def test_status_of_a_running_pipeline(settings, tmp_path: Path) -> None:
    with running_pipeline(settings, ["scraper"], tmp_path / "logs") as stack:
        args = ("--db", settings.db_path, "--redis-url", settings.redis_url)
        deadline = time.monotonic() + 30
        while True:  # the ingester's first heartbeat follows its first batch (the
            # scraper's first rows linger up to defaults.PUBLISH_LINGER_S before they go)
            p = status(*args, "--json", "--expect", "ingest,scraper")
            stored = p.returncode == 0 and "memory_metrics" in json.loads(p.stdout).get(
                "retention", {}).get("oldest_row_age_s", {})  # the first rows are in too
            if stored or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert p.returncode == 0, p.stdout + p.stderr
        st = json.loads(p.stdout)
        assert st["healthy"] is True
        assert st["components"]["ingest"]["healthy"] is True
        assert st["components"]["scraper"]["state"] == "started"
        assert 0 <= st["components"]["scraper"]["heartbeat_age_s"] < 10
        mem_stream = "kernelsight:{testhost}:events:memory_metrics"
        mem = next(s for s in st["streams"] if s["stream"] == mem_stream)
        assert mem["backlog"] == mem["lag"] + mem["pending"] >= 0
        assert 0 < st["database"]["size_bytes"] <= Path(settings.db_path).stat().st_size
        assert "password" not in p.stdout and settings.redis_url not in p.stdout
        assert 0 <= st["retention"]["oldest_row_age_s"]["memory_metrics"] < 60
        assert st["retention"]["deleted_rows"] == {}

        text_out = status(*args)
        assert text_out.returncode == 0, text_out.stdout
        assert "kernelsight:{testhost}:events:memory_metrics" in text_out.stdout
        assert text_out.stdout.rstrip().endswith("healthy")

        # A component that should run but has never reported: unhealthy, exit 1.
        p = status(*args, "--expect", "ingest,scraper,syscalls")
        assert p.returncode == 1, p.stdout
        assert "UNHEALTHY: syscalls: no heartbeat" in p.stdout

        # The scraper dies without a word: its heartbeat goes stale, status says so.
        os.kill(stack.procs["scraper"].popen.pid, signal.SIGKILL)
        stack.procs["scraper"].popen.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            p = status(*args, "--json")
            if p.returncode == 1:
                break
            time.sleep(1)
        assert p.returncode == 1, p.stdout
        st = json.loads(p.stdout)
        assert st["components"]["scraper"]["healthy"] is False
        assert any(x.startswith("scraper: ") for x in st["problems"]), st["problems"]
        assert st["components"]["ingest"]["healthy"] is True


def test_status_without_redis_is_one_clear_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    p = status("--db", str(tmp_path / "none.db"), "--redis-url", url)
    assert p.returncode == 3, p.stderr
    assert "cannot reach Redis at" in p.stderr and "Traceback" not in p.stderr
