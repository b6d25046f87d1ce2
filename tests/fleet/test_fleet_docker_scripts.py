"""The fleet variant's container scripts outside Docker, against real servers on this
machine: docker/ks-env builds the cluster and PostgreSQL URLs and starts cluster nodes,
docker/ks-cluster-init makes six of them one cluster (and is idempotent), docker/ks-postgres
creates a password-protected PostgreSQL that accepts the URL ks-env builds."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from kernelsight.redis_cluster import cluster_port
from kernelsight.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
PRINT_ENV = [sys.executable, "-c", "import os; print(os.environ['KS_REDIS_URL']); "
             "print(os.environ.get('KS_DB_PATH', ''))"]


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KS_", "REDIS"))}
    env.update(KS_SECRETS_DIR=str(tmp / "secrets"), TMPDIR=str(tmp),
               KS_REDIS_PASSWORD_FILE=str(tmp / "given"), KS_HOSTNAME_FILE=str(tmp / "none"))
    env.update(extra)
    return env


def test_ks_env_builds_the_cluster_and_postgresql_urls(tmp_path: Path) -> None:
    (tmp_path / "given").write_text("p@ss:w/rd\n")
    pg = tmp_path / "pg"
    pg.mkdir()
    (pg / "password").write_text("0123abcd\n")
    env = env_for(tmp_path, KS_REDIS_CLUSTER_NODES="redis-1:6379,redis-2:6379",
                  KS_PG_HOST="postgres", KS_PG_SECRETS=str(pg))
    p = subprocess.run([str(DOCKER / "ks-env"), *PRINT_ENV], env=env, capture_output=True,
                       text=True, timeout=30, check=True)
    url, db = p.stdout.split()
    assert url == "redis+cluster://:p%40ss%3Aw%2Frd@redis-1:6379,redis-2:6379"
    assert db == "postgresql+psycopg://ks:0123abcd@postgres:5432/kernelsight"
    # an explicit KS_DB_PATH wins; no postgres password file is one line
    env["KS_DB_PATH"] = "/data/ks.db"
    p = subprocess.run([str(DOCKER / "ks-env"), *PRINT_ENV], env=env, capture_output=True,
                       text=True, timeout=30, check=True)
    assert p.stdout.split()[1] == "/data/ks.db"
    del env["KS_DB_PATH"]
    (pg / "password").unlink()
    p = subprocess.run([str(DOCKER / "ks-env"), *PRINT_ENV], env=env, capture_output=True,
                       text=True, timeout=30, check=False)
    assert p.returncode == 1 and p.stderr.strip().startswith(
        "ks-env: cannot read the PostgreSQL password"), p.stderr


@pytest.fixture
def six_nodes(tmp_path: Path) -> Iterator[tuple[list[int], dict[str, str]]]:
    """Six cluster-enabled redis-servers started through ks-env, sharing one password."""
    taken: set[int] = set()
    ports = [cluster_port(taken) for _ in range(6)]
    procs = []
    try:
        for i, port in enumerate(ports):
            d = tmp_path / f"n{i}"
            d.mkdir()
            env = env_for(tmp_path, TMPDIR=str(d), KS_REDIS_CLUSTER_ANNOUNCE="127.0.0.1",
                          KS_REDIS_PASSWORD_CREATE="1" if i == 0 else "0")
            procs.append(subprocess.Popen(
                [str(DOCKER / "ks-env"), "redis-server", "--port", str(port), "--bind",
                 "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no",
                 "--cluster-node-timeout", "2000"], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
            if i == 0:  # the others wait for the password it generates
                end = time.monotonic() + 20
                while not (tmp_path / "secrets" / "redis_password").exists():
                    assert time.monotonic() < end, "no generated password"
                    time.sleep(0.05)
        pw = (tmp_path / "secrets" / "redis_password").read_text().strip()
        env = env_for(tmp_path, REDISCLI_AUTH=pw, KS_CLUSTER_INIT_TIMEOUT="90",
                      KS_REDIS_CLUSTER_NODES=",".join(f"127.0.0.1:{p}" for p in ports))
        yield ports, env
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def test_cluster_init_forms_one_cluster_and_is_idempotent(six_nodes) -> None:
    ports, env = six_nodes
    for _ in range(2):  # the second run finds the cluster made and only waits for it
        p = subprocess.run([str(DOCKER / "ks-cluster-init")], env=env, capture_output=True,
                           text=True, timeout=200, check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "every replica linked" in p.stdout
    assert p.stdout.count("created a cluster") == 0  # second run: nothing created
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", ports[0])],
                      password=env["REDISCLI_AUTH"])
    try:
        nodes = redis.Redis(port=ports[0], password=env["REDISCLI_AUTH"]).execute_command(
            "CLUSTER", "NODES").decode()
        roles = [ln.split()[2] for ln in nodes.splitlines()]
        assert sum("master" in r for r in roles) == 3, nodes
        assert sum("slave" in r for r in roles) == 3, nodes
        for h in ("fleet-a", "fleet-b", "fleet-c"):
            rc.xadd(f"kernelsight:{{{h}}}:events:memory_metrics", {"d": b"{}"})
        # nodes announce the name they were given (KS_REDIS_CLUSTER_ANNOUNCE)
        shards = redis.Redis(port=ports[0], password=env["REDISCLI_AUTH"]).execute_command(
            "CLUSTER", "SHARDS")
        assert b"127.0.0.1" in repr(shards).encode()
    finally:
        rc.close()


def test_ks_postgres_creates_a_password_protected_database() -> None:
    if os.geteuid() != 0:
        pytest.fail("runs as root (ks-postgres runs as the postgres user, as in the image)")
    import psycopg

    pw_ent = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="ks-pgtest-"))  # pytest's tmp is 0700 root's
    (root / "secrets").mkdir(parents=True)
    for d in (root, root / "secrets"):
        os.chown(d, pw_ent.pw_uid, pw_ent.pw_gid)
    port = free_port()
    env = {"PATH": os.environ["PATH"], "KS_PG_DATA": str(root / "data"),
           "KS_PG_SECRETS": str(root / "secrets"), "KS_PG_PORT": str(port),
           "KS_PG_LISTEN": "127.0.0.1", "HOME": "/tmp"}
    p = subprocess.Popen(["runuser", "-u", "postgres", "--", str(DOCKER / "ks-postgres")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while subprocess.run(["runuser", "-u", "postgres", "--", str(DOCKER / "ks-postgres"),
                              "ready"], env=env, check=False).returncode != 0:
            assert p.poll() is None, p.stdout.read().decode() if p.stdout else ""
            assert time.monotonic() < end, "ks-postgres not ready within 60 s"
            time.sleep(0.5)
        pwfile = root / "secrets" / "password"
        assert oct(pwfile.stat().st_mode)[-3:] == "444"
        pw = pwfile.read_text().strip()
        assert len(pw) == 48
        with psycopg.connect(host="127.0.0.1", port=port, user="ks", password=pw,
                             dbname="kernelsight") as con:
            assert con.execute("SELECT current_database()").fetchone() == ("kernelsight",)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"), \
                psycopg.connect(host="127.0.0.1", port=port, user="ks", password="wrong",
                                dbname="kernelsight"):
            pass
    finally:
        p.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(30)
        if p.poll() is None:
            p.kill()
            p.wait()
        shutil.rmtree(root, ignore_errors=True)
