"""A private redis-server for native runs: loopback only, random port, generated password,
no persistence. Started and stopped by us, by PID."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from kernelsight.exceptions import RedisUnavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self, port: int | None = None, password: str | None = None,
                 persist_dir: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if not exe:
            raise RedisUnavailable(
                "redis-server not found; install it (apt-get install redis-server) or set "
                "KS_REDIS_URL to an existing Redis")
        self.exe = exe
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(18)
        self.dir = persist_dir or tempfile.mkdtemp(prefix="ks-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, persistent: bool = False) -> PrivateRedis:
        # The password goes through stdin (a config file read from "-"), not argv, so it is
        # not visible in ps output.
        conf = [f"port {self.port}", "bind 127.0.0.1", "protected-mode yes",
                f"dir {self.dir}", "daemonize no", f"requirepass {self.password}",
                "save ''" if not persistent else "save 1 1",
                f"appendonly {'yes' if persistent else 'no'}", "appendfsync always",
                "loglevel warning", "logfile ''"]
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.exe, "-"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert self.proc.stdin
        self.proc.stdin.write(("\n".join(conf) + "\n").encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisUnavailable(
                    f"redis-server exited at start (code {self.proc.returncode})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RedisUnavailable(f"redis-server did not listen on port {self.port} within 10s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.dir.startswith(tempfile.gettempdir()):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
