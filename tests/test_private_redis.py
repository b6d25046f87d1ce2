"""The private redis-server gives its password to nobody else: a local process that grabs the
port, or listens on the socket path, before redis-server is up must never receive it."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest
import redis

from kernelsight.exceptions import RedisUnavailable
from kernelsight.redis_server import PrivateRedis, free_port


class Catcher:
    """A hostile listener (TCP port or unix socket path) that records all it receives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.got = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with c:
                c.settimeout(1)
                try:
                    while data := c.recv(4096):
                        self.got += data
                        c.sendall(b"+OK\r\n")  # pretend: "ready", "authenticated"
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def use(url: str) -> None:
    """What every KernelSight process does with the URL: connect, AUTH, PING."""
    r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError:
        pass
    finally:
        r.close()


def test_listener_on_the_port_never_gets_the_password():
    rs = PrivateRedis()
    port = getattr(rs, "port", None) or free_port()  # the port a TCP server would have used
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    hostile = Catcher(s)
    try:
        try:
            rs.start()
            use(rs.url)
        except RedisUnavailable:
            pass
    finally:
        rs.cleanup()
        hostile.close()
    assert rs.password.encode() not in hostile.got, "a listener on the port got the password"
    assert rs.url.startswith("unix://")


def test_server_listens_only_on_a_private_socket():
    with PrivateRedis() as rs:
        d = os.lstat(Path(rs.url.split("@", 1)[1].split("?")[0]).parent)
        assert stat.S_ISDIR(d.st_mode) and d.st_uid == os.geteuid()
        assert stat.S_IMODE(d.st_mode) == 0o700
        r = redis.Redis.from_url(rs.url)
        assert r.ping()
        assert r.config_get("port") == {"port": "0"}  # no TCP listener at all
        r.close()


def test_precreated_socket_path_never_gets_the_password(tmp_path):
    """A stale or planted listener on the socket path in our private directory is replaced
    before redis-server binds; the readiness check and every client talk to the real server."""
    d = tmp_path / "sock"
    d.mkdir(mode=0o700)
    rs = PrivateRedis(socket_dir=str(d))
    s = socket.socket(socket.AF_UNIX)
    s.bind(rs.socket_path)
    hostile = Catcher(s)
    try:
        rs.start()
        r = redis.Redis.from_url(rs.url)
        assert r.ping() and r.config_get("port") == {"port": "0"}
        r.close()
    finally:
        rs.cleanup()
        hostile.close()
    assert hostile.got == b""


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o1777])
def test_socket_dir_open_to_others_is_refused(tmp_path, mode):
    d = tmp_path / "sock"
    d.mkdir()
    d.chmod(mode)
    rs = PrivateRedis(socket_dir=str(d))
    s = socket.socket(socket.AF_UNIX)
    s.bind(rs.socket_path)  # another user could have planted this
    hostile = Catcher(s)
    try:
        with pytest.raises(RedisUnavailable, match="mode 0700"):
            rs.start()
    finally:
        rs.cleanup()
        hostile.close()
    assert hostile.got == b""
