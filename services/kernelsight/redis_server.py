"""A private redis-server for native runs: a unix socket in a private directory, a generated
password, no persistence. Started and stopped by us, by PID.

No TCP port: a port chosen free and released can be taken by any local process before
redis-server binds it, and whoever accepts the first connection receives the AUTH password.
The socket lives in a directory only we can enter (0700, ours, checked at every start), so no
other user can listen on its path or connect to it; a stale socket there is removed before
redis-server binds, and readiness means the server answers on that socket."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from kernelsight import defaults
from kernelsight.exceptions import ConfigError, RedisUnavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    SOCKET = "redis.sock"

    def __init__(self, password: str | None = None, persist_dir: str | None = None,
                 socket_dir: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if not exe:
            raise RedisUnavailable(
                "redis-server not found; install it (apt-get install redis-server) or set "
                "KS_REDIS_URL to an existing Redis")
        self.exe = exe
        self.password = password or secrets.token_urlsafe(18)
        self.dir = persist_dir or tempfile.mkdtemp(prefix="ks-redis-")
        # mkdtemp makes the directory 0700; a given one is checked at start
        self.socket_dir = socket_dir or (self.dir if not persist_dir
                                         else tempfile.mkdtemp(prefix="ks-redis-sock-"))
        self.proc: subprocess.Popen | None = None
        self.maxmemory = os.environ.get("KS_REDIS_MAXMEMORY") or defaults.REDIS_MAXMEMORY
        if not re.fullmatch(r"[0-9]+(?:[kmg]b?|b)?", self.maxmemory, re.IGNORECASE):
            raise ConfigError(f"KS_REDIS_MAXMEMORY={self.maxmemory[:40]!r}: want a size such "
                              "as 512mb or 2gb")

    @property
    def socket_path(self) -> str:
        return str(Path(self.socket_dir, self.SOCKET))

    @property
    def url(self) -> str:
        return f"unix://:{self.password}@{self.socket_path}?db=0"

    def _check_private(self) -> None:
        """The socket directory is ours and closed to everyone else, or RedisUnavailable."""
        try:
            st = os.lstat(self.socket_dir)
        except OSError as e:
            raise RedisUnavailable(f"socket directory {self.socket_dir}: {e.strerror}") from None
        if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & 0o077):
            raise RedisUnavailable(
                f"socket directory {self.socket_dir} must be a directory owned by uid "
                f"{os.geteuid()} with mode 0700 (it is {stat.filemode(st.st_mode)}, uid "
                f"{st.st_uid}); another user could listen on the socket path")

    def start(self, persistent: bool = False) -> PrivateRedis:
        # The password goes through stdin (a config file read from "-"), not argv, so it is
        # not visible in ps output.
        self._check_private()
        sock = Path(self.socket_path)
        if sock.exists() or sock.is_symlink():
            sock.unlink()  # stale, from a killed server: our own directory
        conf = ["port 0", f"unixsocket {sock}", "unixsocketperm 700", "protected-mode yes",
                f"dir {self.dir}", "daemonize no", f"requirepass {self.password}",
                "save ''" if not persistent else "save 1 1",
                f"appendonly {'yes' if persistent else 'no'}", "appendfsync always",
                "loglevel warning", "logfile ''", f"hz {defaults.REDIS_HZ}",
                # Bounded memory: at the cap writes are refused (never evicted), and producers
                # hold back (Publisher back-pressure) until the ingester frees memory.
                f"maxmemory {self.maxmemory}", "maxmemory-policy noeviction"]
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
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(0.5)
                    s.connect(str(sock))
                    s.sendall(b"PING\r\n")  # no password: a real server says NOAUTH
                    if s.recv(64).startswith(b"-NOAUTH"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RedisUnavailable(f"redis-server did not listen on {sock} within 10s")

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
        for d in {self.dir, self.socket_dir}:
            if d.startswith(tempfile.gettempdir()):
                shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
