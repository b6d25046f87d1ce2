"""The compose fleet variant (compose.fleet.yaml) on the real Docker engine: images built
offline, a 6-node Redis Cluster formed by its init job, PostgreSQL from Debian's package, 3
simulated hosts and 2 ingesters; rows of every host land in PostgreSQL, none twice. Own compose
project and image tags, so it never touches a user's stack (or the compose.yaml test's)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
PROJECT = "kernelsight-fleet-test"
HOSTS = ("fleet-a", "fleet-b", "fleet-c")


def sh(args: list[str], env: dict[str, str], timeout: float,
       check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if check and p.returncode != 0:
        logs = subprocess.run(compose("logs", "--no-color", "--tail", "30"), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        pytest.fail(f"{' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n"
                    f"{p.stderr[-3000:]}\n--- logs\n{logs.stdout[-8000:]}")
    return p


def compose(*args: str) -> list[str]:
    return ["docker", "compose", "-f", "compose.fleet.yaml", "-p", PROJECT, *args]


def psql(env: dict[str, str], sql: str, check: bool = True) -> list[list[str]] | None:
    """SQL inside the postgres container, with its generated password (never on argv).
    ``check=False``: None when psql fails (the schema not created yet, while waiting)."""
    p = sh(compose("exec", "-T", "postgres", "sh", "-c",
                   'PGPASSWORD=$(cat /run/ks-pg/password) psql -h 127.0.0.1 -U ks -d '
                   'kernelsight -v ON_ERROR_STOP=1 -AtF "|" -c "$0"', sql), env, 60, check)
    if p.returncode != 0:
        return None
    return [ln.split("|") for ln in p.stdout.strip().splitlines() if ln]


@pytest.fixture(scope="module")
def fleet_env() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.fail("the compose test runs as root (CI and `make test` do)")
    env = dict(os.environ, COMPOSE_PROGRESS="plain", KS_IMAGE="kernelsight-fleet-test:latest",
               KS_PG_IMAGE="kernelsight-fleet-test-pg:latest")
    for k in ("KS_REDIS_URL", "KS_DB_PATH", "KS_DB_URL", "REDIS_PASSWORD"):
        env.pop(k, None)
    sh(["bash", "docker/setup-docker.sh"], env, 900)
    sh(compose("down", "-v", "--remove-orphans"), env, 300)
    sh(compose("build"), env, 1500)
    try:
        sh(compose("up", "-d", "--wait"), env, 600)
        yield env
    finally:
        sh(compose("down", "-v", "--remove-orphans"), env, 300, check=False)


def test_rows_of_every_host_land_in_postgresql_once(fleet_env: dict[str, str]) -> None:
    env = fleet_env
    # the cluster really is one: 3 masters with one linked replica each
    p = sh(compose("exec", "-T", "redis-1", "redis-cli", "cluster", "info"), env, 60)
    assert "cluster_state:ok" in p.stdout and "cluster_size:3" in p.stdout, p.stdout
    deadline = time.monotonic() + 180
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        # the first ingester creates the schema: until then the table does not exist (CI:
        # `relation "memory_metrics" does not exist` ended this wait at once)
        rows = psql(env, "SELECT host, COUNT(*) FROM memory_metrics GROUP BY host",
                    check=False) or []
        counts = {h: int(n) for h, n in rows}
        if all(counts.get(h, 0) >= 5 for h in HOSTS):
            break
        time.sleep(3)
    assert all(counts.get(h, 0) >= 5 for h in HOSTS), f"memory_metrics rows by host: {counts}"
    # each host's streams are in one slot; every stored entry once per (host, stream_id)
    for table in ("memory_metrics", "load_metrics", "network_interface_stats"):
        dup = psql(env, f"SELECT COUNT(*) FROM (SELECT host, stream_id FROM {table} GROUP BY "
                        "host, stream_id HAVING COUNT(*) > 1) d")
        assert dup == [["0"]], (table, dup)
    # both ingesters consume (each is a live consumer of the shared groups)
    logs = sh(compose("logs", "--no-color", "ingest-1", "ingest-2"), env, 60).stdout
    assert "Traceback" not in logs, logs[-4000:]
    # The producers' own accounting reaches PostgreSQL for every host.
    prod = {h: int(n) for h, n in psql(env, "SELECT host, SUM(v) FROM (SELECT host, instance, "
                                            "MAX(value) AS v FROM pipeline_accounting WHERE "
                                            "metric = 'produced' GROUP BY host, instance, "
                                            "event_type) t GROUP BY host")}
    assert all(prod.get(h, 0) > 0 for h in HOSTS), prod
