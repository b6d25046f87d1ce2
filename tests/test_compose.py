"""The containerised pipeline end to end: docker/setup-docker.sh, `docker compose build`, then
the stress job through `docker compose up --exit-code-from stress`, as the README runs it.

Checks the verdict (exit 0, all ten event types), the database on the host, that no container
is privileged and only the tracer adds a capability, and that `docker compose down -v` leaves
nothing of the project behind. Uses its own compose project and data directory, so it never
touches a user's stack or data/stress_test.db. Runs as root (CI and `make test` do).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kernelsight import schema

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
PROJECT = "kernelsight-test"
DURATION = int(os.environ.get("KS_COMPOSE_TEST_DURATION", "20"))
LABEL = f"label=com.docker.compose.project={PROJECT}"


@dataclass
class Run:
    rc: int
    out: str
    data: Path
    timings: dict[str, float]
    running_after: list[str]


def sh(args: list[str], timeout: float, env: dict[str, str] | None = None,
       check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}"
                    f"\n--- stderr\n{p.stderr[-4000:]}")
    return p


def compose(*args: str) -> list[str]:
    return ["docker", "compose", "-p", PROJECT, *args]


def leftovers() -> dict[str, list[str]]:
    out = {}
    for kind, cmd in (("containers", ["docker", "ps", "-a", "-q", "--filter", LABEL]),
                      ("networks", ["docker", "network", "ls", "-q", "--filter", LABEL]),
                      ("volumes", ["docker", "volume", "ls", "-q", "--filter", LABEL])):
        out[kind] = sh(cmd, 60).stdout.split()
    return out


def logs_tail(env: dict[str, str]) -> str:
    p = sh(compose("logs", "--no-color", "--tail", "40"), 120, env, check=False)
    return p.stdout[-8000:] + p.stderr[-2000:]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if os.geteuid() != 0:
        pytest.fail("the compose test runs as root (CI and `make test` do)")
    data = tmp_path_factory.mktemp("compose-data")
    env = dict(os.environ, TEST_DURATION=str(DURATION), KS_DATA_DIR=str(data),
               COMPOSE_PROGRESS="plain")
    env.pop("KS_REDIS_URL", None)
    timings: dict[str, float] = {}

    t = time.monotonic()
    sh(["bash", "docker/setup-docker.sh"], 900)
    timings["setup-docker"] = time.monotonic() - t
    sh(compose("down", "-v", "--remove-orphans"), 300)  # a previous run's leftovers

    t = time.monotonic()
    sh(compose("build"), 1200, env)
    timings["build"] = time.monotonic() - t

    t = time.monotonic()
    try:
        p = subprocess.run(compose("up", "--exit-code-from", "stress", "--attach", "stress"),
                           cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=DURATION + 900, check=False)
        out = p.stdout + p.stderr
        rc = p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        rc = -1
        out += "\n[timed out]\n" + logs_tail(env)
    timings["up"] = time.monotonic() - t
    running = sh(["docker", "ps", "-q", "--filter", LABEL, "--filter", "status=running"],
                 60).stdout.split()
    print("compose timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    if rc != 0:
        out += "\n--- service logs\n" + logs_tail(env)
    try:
        yield Run(rc, out, data, timings, running)
    finally:
        sh(compose("down", "-v", "--remove-orphans"), 300, check=False)
        shutil.rmtree(data, ignore_errors=True)


def test_stress_verdict_success(run: Run) -> None:
    assert run.rc == 0, f"docker compose up exited {run.rc}:\n{run.out[-12000:]}"
    assert "Captured: 10/10" in run.out, run.out[-12000:]


def test_up_stops_every_container_when_stress_ends(run: Run) -> None:
    assert run.running_after == [], f"still running after `up` returned: {run.running_after}"


def test_every_event_table_filled_on_the_host(run: Run) -> None:
    db = run.data / "stress_test.db"
    assert db.exists(), f"no {db}; compose output:\n{run.out[-6000:]}"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts = {e.name: con.execute(f"SELECT COUNT(*) FROM {e.name}").fetchone()[0]
                  for e in schema.CORE_EVENT_TYPES}
    finally:
        con.close()
    assert len(counts) == 10
    empty = [n for n, c in counts.items() if c == 0]
    assert not empty, f"empty tables {empty}; counts {counts}"


def test_no_privileged_container_and_only_tracer_adds_caps(run: Run) -> None:
    ids = sh(["docker", "ps", "-a", "-q", "--filter", LABEL], 60).stdout.split()
    assert ids, "no containers of the project exist after the run"
    info = json.loads(sh(["docker", "inspect", *ids], 60).stdout)
    seen = {}
    for c in info:
        svc = c["Config"]["Labels"]["com.docker.compose.service"]
        hc = c["HostConfig"]
        seen[svc] = hc
        assert hc["Privileged"] is False, f"{svc} is privileged"
        if svc == "tracer":
            assert hc["CapAdd"] == ["SYS_ADMIN"] or hc["CapAdd"] == ["CAP_SYS_ADMIN"], \
                hc["CapAdd"]
            assert hc["PidMode"] == "host"
        else:
            assert not hc["CapAdd"], f"{svc} adds capabilities {hc['CapAdd']}"
            assert [c.upper() for c in hc["CapDrop"] or []] in (["ALL"], ["CAP_ALL"]), \
                f"{svc} does not drop every capability: {hc['CapDrop']}"
            assert hc["ReadonlyRootfs"] is True, f"{svc} has a writable root fs"
        assert not hc.get("PortBindings"), f"{svc} publishes ports {hc['PortBindings']}"
    assert set(seen) == {"redis", "collector", "tracer", "ingest", "reporter", "stress"}, seen
    assert seen["collector"]["NetworkMode"] == "host"


def test_down_leaves_nothing(run: Run) -> None:
    sh(compose("down", "-v", "--remove-orphans"), 300)
    left = leftovers()
    assert left == {"containers": [], "networks": [], "volumes": []}, left
