"""TCP sockets by state through netlink sock_diag (what `ss -s` uses), for the scraper.

Why not /proc/net/tcp and tcp6: the kernel formats one text line per socket, and each read()
call restarts its walk of the whole established hash (Python's read of the file makes two),
about 1.2 ms per file per scrape on this 2-vCPU VM with two sockets open: most of the
scraper's CPU. One SOCK_DIAG_BY_FAMILY dump per family returns fixed-size binary records
instead: 0.4 ms for both families. Same sockets, same states (the reader's network namespace
in both cases, as /proc/net is /proc/self/net).

The message parsing is a pure function (:func:`count_states`), tested on bytes; the dump
itself needs only an unprivileged AF_NETLINK socket. Where that is refused (seccomp, a kernel
without CONFIG_INET_DIAG) :class:`Unavailable` is raised and the scraper reads /proc.
"""

from __future__ import annotations

import errno
import socket
import struct

from kernelsight.procfs import TCP_STATES

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then the 48-byte sockid
_REQ = struct.Struct("=BBBBI48x")
ALL_STATES = 0xFFFFFFFF  # every TCPF_* bit (request sockets show as SYN_RECV, as in /proc)
_STATE_OFFSET = _NLMSGHDR.size + 1  # struct inet_diag_msg: idiag_family, idiag_state, ...


class Unavailable(OSError):
    """sock_diag cannot be used here; read /proc/net/tcp instead."""


def count_states(buf: bytes, counts: dict[int, int]) -> bool:
    """Add the states of the inet_diag_msg records in one netlink reply ``buf`` to
    ``counts``; True once the dump's NLMSG_DONE is in it."""
    off = 0
    n = len(buf)
    while off + _NLMSGHDR.size <= n:
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size or off + length > n:
            raise ValueError(f"sock_diag: truncated netlink message ({length} bytes at {off})")
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", buf, off + _NLMSGHDR.size)
            raise Unavailable(-err, f"sock_diag: {errno.errorcode.get(-err, -err)}")
        if kind == SOCK_DIAG_BY_FAMILY:
            st = buf[off + _STATE_OFFSET]
            counts[st] = counts.get(st, 0) + 1
        off += (length + 3) & ~3
    return False


def _dump(family: int, counts: dict[int, int]) -> None:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except OSError as e:
        raise Unavailable(e.errno, f"sock_diag: netlink socket refused: {e.strerror}") from e
    try:
        req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, ALL_STATES)
        s.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY,
                              NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        while not count_states(s.recv(65536), counts):
            pass
    except Unavailable:
        raise
    except OSError as e:
        raise Unavailable(e.errno, f"sock_diag: {e.strerror}") from e
    finally:
        s.close()


def tcp_states(ipv6: bool = True) -> dict[str, int]:
    """IPv4 and IPv6 TCP sockets by state, named as in the tcp_stats table."""
    counts: dict[int, int] = {}
    _dump(socket.AF_INET, counts)
    if ipv6 and socket.has_ipv6:
        try:
            _dump(socket.AF_INET6, counts)
        except Unavailable as e:
            if e.errno not in (errno.EAFNOSUPPORT, errno.ENOENT):  # no IPv6: none to count
                raise
    out = dict.fromkeys(TCP_STATES.values(), 0)
    for st, n in counts.items():
        name = TCP_STATES.get(st)
        if name:
            out[name] += n
    return out
