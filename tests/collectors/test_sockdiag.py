"""TCP states through netlink sock_diag: the parser on crafted replies, the mount check on
verbatim mountinfo lines, and on real loopback sockets of known states the same counts as
/proc/net/tcp and tcp6 (the source it replaces), with the sockets we made in them."""

from __future__ import annotations

import errno
import socket
import struct
import time

import pytest

from kernelsight import procfs, sockdiag

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334460k,nr_inodes=3083615,mode=755
612 580 0:21 / /host/proc ro,relatime master:1 - proc proc rw
613 580 0:21 / /my\\040proc rw,relatime - proc proc rw
614 580 8:1 /tmp/fixture /fixture/proc rw,relatime - ext4 /dev/vda1 rw
"""


def test_proc_mounts_are_recognised_and_fixtures_are_not() -> None:
    assert procfs.is_proc_mount(MOUNTINFO, "/proc")
    assert procfs.is_proc_mount(MOUNTINFO, "/host/proc")  # compose: the host's, read-only
    assert procfs.is_proc_mount(MOUNTINFO, "/my proc")
    assert not procfs.is_proc_mount(MOUNTINFO, "/fixture/proc")
    assert not procfs.is_proc_mount(MOUNTINFO, "/sys")
    assert not procfs.is_proc_mount("", "/proc")


def _msg(kind: int, payload: bytes) -> bytes:
    n = 16 + len(payload)
    return struct.pack("=IHHII", n, kind, 2, 1, 0) + payload + b"\0" * (-n % 4)


def _sock(state: int) -> bytes:  # struct inet_diag_msg: family, state, timer, retrans, ...
    return _msg(sockdiag.SOCK_DIAG_BY_FAMILY, bytes([socket.AF_INET, state, 0, 0]) + bytes(68))


def test_parser_counts_states_until_done_and_reports_errors() -> None:
    counts: dict[int, int] = {}
    assert not sockdiag.count_states(_sock(1) + _sock(1) + _sock(10), counts)
    assert sockdiag.count_states(_sock(6) + _msg(sockdiag.NLMSG_DONE, bytes(4)), counts)
    assert counts == {1: 2, 10: 1, 6: 1}
    err = _msg(sockdiag.NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + bytes(16))
    with pytest.raises(sockdiag.Unavailable, match="EPERM"):
        sockdiag.count_states(err, {})
    with pytest.raises(ValueError, match="truncated"):
        sockdiag.count_states(_sock(1)[:30], {})


def _proc_counts() -> dict[str, int]:
    def read(p: str) -> str:
        try:
            with open(p) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    return procfs.count_tcp_states(read("/proc/net/tcp"), read("/proc/net/tcp6"))


def test_same_counts_as_proc_net_tcp_on_real_sockets() -> None:
    """3 listeners, 4 established pairs (8 sockets), 2 TIME_WAIT and an IPv6 listener on
    loopback; other processes' sockets may come and go meanwhile, so the two sources are
    compared at the same moment, a few times until they agree."""
    before = sockdiag.tcp_states()
    made: list[socket.socket] = []
    listeners = []
    for _ in range(3):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        listeners.append(srv)
    made += listeners
    if socket.has_ipv6:
        v6 = socket.socket(socket.AF_INET6)
        try:
            v6.bind(("::1", 0))
            v6.listen(1)
            made.append(v6)
        except OSError:
            v6.close()
    for i in range(6):
        c = socket.create_connection(listeners[0].getsockname())
        a, _ = listeners[0].accept()
        if i < 2:  # the side that closes first goes to TIME_WAIT
            c.close()
            a.close()
        else:
            made += [c, a]
    try:
        time.sleep(0.1)
        for _ in range(20):
            ours, theirs = sockdiag.tcp_states(), _proc_counts()
            if ours == theirs:
                break
            time.sleep(0.05)
        assert ours == theirs
        assert ours["listen"] >= before["listen"] + 3 + (len(made) - 3 - 8)
        assert ours["established"] >= 8
        assert ours["time_wait"] >= 2
    finally:
        for s in made:
            s.close()
