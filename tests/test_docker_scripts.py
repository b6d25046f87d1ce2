"""docker/ks-env outside Docker: the container entry point against a real redis-server and a
real redis-cli on this machine. The password comes from a file, reaches redis.conf escaped (a
hostile one can add no config line), reaches redis-cli through REDISCLI_AUTH only, and a
password in the environment or one Redis cannot take is refused with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[1]
KS_ENV = REPO / "docker" / "ks-env"
HOSTILE = 'pa"ss\\word\nrequirepass ""\nrename-command CONFIG ""\n\x01 \u00e9'


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_PASSWORD", "REDISCLI_AUTH", "KS_REDIS_URL",
                        "KS_REDIS_PASSWORD_IN_ENV")}
    env.update(KS_SECRETS_DIR=str(tmp / "secrets"), TMPDIR=str(tmp),
               KS_REDIS_PASSWORD_FILE=str(tmp / "given"), KS_REDIS_SOCKET=str(tmp / "redis.sock"),
               KS_HOSTNAME_FILE=str(tmp / "hostname"))
    env.update(extra)
    return env


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> str:
        """Start redis-server through ks-env; return its unix socket path."""
        p = subprocess.Popen([str(KS_ENV), "redis-server", "--port", "0", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        sock = Path(env["KS_REDIS_SOCKET"])
        end = time.monotonic() + 20
        while not sock.exists():
            if p.poll() is not None:
                pytest.fail(f"redis-server exited {p.returncode}: {p.stdout.read().decode()}")
            if time.monotonic() > end:
                pytest.fail("redis-server did not create its socket within 20 s")
            time.sleep(0.05)
        return str(sock)

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_hostile_password_file_is_one_exact_password(tmp_path: Path, start_redis) -> None:
    (tmp_path / "given").write_bytes(HOSTILE.encode() + b"\n")  # one trailing newline ignored
    sock = start_redis(base_env(tmp_path))
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(unix_socket_path=sock, password=HOSTILE[:-1]).ping()
    r = redis.Redis(unix_socket_path=sock, password=HOSTILE, decode_responses=True)
    # No line was added to redis.conf: CONFIG exists and requirepass is the whole value.
    assert r.config_get("requirepass") == {"requirepass": HOSTILE}
    conf = (tmp_path / "redis.conf").read_text()
    assert conf.count("\n") == 1 and oct((tmp_path / "redis.conf").stat().st_mode)[-3:] == "600"


def test_redis_cli_gets_the_password_only_through_rediscli_auth(tmp_path: Path,
                                                                start_redis) -> None:
    (tmp_path / "given").write_text(HOSTILE)
    env = base_env(tmp_path)
    start_redis(env)
    # `ks-env redis-cli ...` is what the image's redis-cli shim runs.
    p = subprocess.run([str(KS_ENV), "redis-cli", "-s", env["KS_REDIS_SOCKET"], "PING"],
                       env=env, capture_output=True, text=True, timeout=30, check=False)
    assert p.stdout.strip() == "PONG", p.stdout + p.stderr
    # What it execs: argv without the password, REDISCLI_AUTH with it.
    probe = tmp_path / "probe"
    probe.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$0.argv"\n'
                     'printf "%s" "$REDISCLI_AUTH" > "$0.auth"\n')
    probe.chmod(0o755)
    link = tmp_path / "redis-cli"
    link.symlink_to(probe)
    subprocess.run([str(KS_ENV), str(link), "XLEN", "x"], env=env, check=True, timeout=30)
    assert (tmp_path / "redis-cli.argv").read_text() == "XLEN\0x\0"
    assert (tmp_path / "redis-cli.auth").read_text() == HOSTILE


def test_generated_password_when_no_file_is_given(tmp_path: Path, start_redis) -> None:
    sock = start_redis(base_env(tmp_path))
    gen = tmp_path / "secrets" / "redis_password"
    pw = gen.read_text().strip()
    assert len(pw) == 48 and oct(gen.stat().st_mode)[-3:] == "444"
    assert redis.Redis(unix_socket_path=sock, password=pw).ping()


@pytest.mark.parametrize(("setup", "expect"), [
    ("env", "REDIS_PASSWORD is set in the shell or .env"),
    ("nul", "contains a NUL byte"),
    ("space", "starts or ends with whitespace"),
    ("unreadable", "cannot read the Redis password file"),
])
def test_bad_password_source_is_refused_with_one_line(tmp_path: Path, setup: str,
                                                      expect: str) -> None:
    env = base_env(tmp_path)
    given = tmp_path / "given"
    if setup == "env":
        env["KS_REDIS_PASSWORD_IN_ENV"] = "yes"
    elif setup == "nul":
        given.write_bytes(b"ab\0cd")
    elif setup == "space":
        given.write_text(" abc\n")
    else:
        given.mkdir()  # reading a directory fails like an unreadable file does
    p = subprocess.run([str(KS_ENV), "redis-server", "--port", "0"], env=env,
                       capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ks-env: ") and expect in lines[0], lines
    assert not (tmp_path / "redis.conf").exists()


# -- docker/ks-healthcheck: its own RESP client against a real Redis ------------------------

def load_healthcheck():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("ks_healthcheck",
                                                  str(REPO / "docker" / "ks-healthcheck"))
    spec = importlib.util.spec_from_loader("ks_healthcheck", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_healthcheck_key_names_are_kernelsights() -> None:
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    from kernelsight import collectors, schema
    from kernelsight.compose_stress import QUEUE
    from kernelsight.runner import STATUS_KEY
    from kernelsight.streams import HEALTH_KEY

    hc = load_healthcheck()
    assert (hc.HEALTH_KEY, hc.STATUS_KEY, hc.ACCOUNTING_STREAM.format(host="h1"),
            hc.INGEST_GROUP) == (HEALTH_KEY, STATUS_KEY, schema.accounting_stream("h1"),
                                 schema.INGEST_GROUP)
    assert hc.RQ_QUEUE_WORKERS == WORKERS_BY_QUEUE_KEY % QUEUE
    assert tuple(collectors.ALL) == hc.COLLECTORS


def healthcheck(url: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "KS_REDIS_URL"}
    env["KS_REDIS_URL"] = url
    p = subprocess.run([str(REPO / "docker" / "ks-healthcheck"), *args], env=env,
                       capture_output=True, text=True, timeout=30, check=False)
    assert p.stderr == "" and len(p.stdout.splitlines()) == 1, p.stdout + p.stderr
    return p.returncode, p.stdout.strip()


def test_healthcheck_against_real_redis(redis_url: str, rclient: redis.Redis) -> None:
    import orjson

    from kernelsight import schema
    from kernelsight.runner import STATUS_KEY
    from kernelsight.streams import HEALTH_KEY

    now = time.time_ns()
    assert healthcheck(redis_url, "redis") == (0, "redis: PONG")
    assert "//:" in redis_url
    rc, out = healthcheck(redis_url.replace("//:", "//:x", 1), "redis")  # wrong password
    assert rc == 1 and out.startswith("unhealthy: Redis: WRONGPASS"), out
    assert healthcheck(redis_url, "syscalls") == (1, "unhealthy: syscalls: has not reported yet")
    rclient.set(STATUS_KEY.format(name="syscalls"), orjson.dumps({"state": "started"}))
    rclient.set(HEALTH_KEY.format(source="syscalls"), orjson.dumps({"timestamp": now}))
    assert healthcheck(redis_url, "syscalls")[0] == 0
    rclient.set(HEALTH_KEY.format(source="syscalls"),
                orjson.dumps({"timestamp": time.time_ns() - 100 * 10**9}))
    rc, out = healthcheck(redis_url, "syscalls")
    assert rc == 1 and "last heartbeat 100s ago" in out, out
    rclient.set(STATUS_KEY.format(name="io"), orjson.dumps({"state": "failed", "detail": "x"}))
    assert healthcheck(redis_url, "io")[0] == 1  # none healthy
    rclient.set(HEALTH_KEY.format(source="syscalls"), orjson.dumps({"timestamp": now}))
    assert healthcheck(redis_url, "syscalls", "io")[0] == 0  # a failed one counts as reported

    assert healthcheck(redis_url, "ingest")[0] == 1  # no group yet
    acc = schema.accounting_stream(os.environ.get("KS_HOST") or socket.gethostname())
    rclient.xgroup_create(acc, schema.INGEST_GROUP, id="0", mkstream=True)
    rclient.xadd(acc, {"d": "{}"})
    rclient.xreadgroup(schema.INGEST_GROUP, "c1", {acc: ">"}, count=1)
    rc, out = healthcheck(redis_url, "ingest")
    assert rc == 0 and "consumer read" in out, out

    assert healthcheck(redis_url, "rq")[0] == 1
    rclient.sadd("rq:workers:kernelsight", "rq:worker:gone")  # a worker killed -9: key expired
    assert healthcheck(redis_url, "rq")[0] == 1
    rclient.sadd("rq:workers:kernelsight", "rq:worker:w1")
    rclient.hset("rq:worker:w1", "queues", "kernelsight")
    assert healthcheck(redis_url, "rq") == (0, "rq workers on kernelsight: 1")
