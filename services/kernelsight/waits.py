"""Wait versus work: one classification of syscalls, used by the report, query and analysis.

A slow ``futex``, ``wait4`` or ``epoll_wait`` is a process waiting for something else (a lock
holder, a child, an event): idle by design, nothing an SRE can act on. A slow ``fsync``,
``openat`` or ``read`` of a file is *service time*: the kernel (or the disk under it) doing
work the process asked for. Reads and writes depend on what the descriptor is: a read on a
pipe, socket or terminal waits for a peer; a read of a regular file or block device is service.

Pure and dependency-free (no kernelsight imports): the syscall tracer can use it too.
When the descriptor's kind is unknown (today's ``syscall_events`` store only ``arg0``, the fd
number), a read on fd 0 counts as a wait (standard input is a terminal or a pipe in practice)
and any other read/write as service.
"""

from __future__ import annotations

WAIT = "wait"
SERVICE = "service"
CLASSES = (WAIT, SERVICE)

# What a file descriptor refers to, where a tracer knows it.
FD_FILE, FD_BLOCK, FD_PIPE, FD_SOCKET, FD_TTY, FD_EVENT = (
    "file", "block", "pipe", "socket", "tty", "event")
FD_WAIT_KINDS = frozenset({FD_PIPE, FD_SOCKET, FD_TTY, FD_EVENT})

# Always waits, whatever the descriptor: the process sleeps until something else happens.
WAIT_NAMES = frozenset({
    "futex", "futex_waitv", "wait4", "waitid", "waitpid",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6",
    "_newselect", "nanosleep", "clock_nanosleep", "pause", "rt_sigsuspend", "sigsuspend",
    "rt_sigtimedwait", "accept", "accept4", "connect", "recvfrom", "recvmsg", "recvmmsg",
    "msgrcv", "semop", "semtimedop", "mq_timedreceive", "io_getevents", "io_pgetevents",
    "flock", "sched_yield",
})

# Descriptor I/O: a wait on pipes, sockets, terminals and event fds; service on files.
FD_IO_NAMES = frozenset({
    "read", "readv", "pread64", "preadv", "preadv2",
    "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "sendto", "sendmsg", "sendmmsg", "splice", "tee",
})
_READS = frozenset({"read", "readv"})  # reads through the file position (stdin heuristic)
_NET_NAMES = frozenset({"sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg", "recvmmsg",
                        "accept", "accept4", "connect"})

# Families: the analysis groups slow syscalls by what the kernel was doing.
FAMILIES: dict[str, frozenset[str]] = {
    "read": frozenset({"read", "readv", "pread64", "preadv", "preadv2", "getdents64",
                       "sendfile", "copy_file_range"}),
    "write": frozenset({"write", "writev", "pwrite64", "pwritev", "pwritev2", "fallocate",
                        "ftruncate", "truncate"}),
    "sync": frozenset({"fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "msync"}),
    "open": frozenset({"open", "openat", "openat2", "creat", "close", "stat", "fstat", "lstat",
                       "newfstatat", "statx", "access", "faccessat", "faccessat2", "unlink",
                       "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
                       "rmdir"}),
    "memory": frozenset({"mmap", "munmap", "mprotect", "madvise", "brk", "mremap", "mlock",
                         "munlock", "mlockall", "execve", "execveat"}),
    "net": _NET_NAMES,
    "process": frozenset({"clone", "clone3", "fork", "vfork", "exit_group", "kill"}),
}
_FAMILY_OF = {n: f for f, names in FAMILIES.items() for n in names}


def classify(name: str, fd_kind: str | None = None, fd: int | None = None) -> str:
    """``WAIT`` or ``SERVICE`` for one syscall; ``fd_kind`` when the tracer knows it."""
    if name in WAIT_NAMES:
        return WAIT
    if name in FD_IO_NAMES:
        if fd_kind is not None:
            return WAIT if fd_kind in FD_WAIT_KINDS else SERVICE
        if name in _NET_NAMES:  # sendto/sendmsg: a socket by definition
            return WAIT
        if name in _READS and fd == 0:
            return WAIT
        return SERVICE
    return SERVICE


def family(name: str) -> str:
    """The family a syscall belongs to (``other`` when unlisted; ``wait`` for waits)."""
    if name in WAIT_NAMES and name not in _NET_NAMES:
        return "wait"
    return _FAMILY_OF.get(name, "other")


def _quoted(names: frozenset[str]) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names))  # constants of this module only


def service_sql(name_col: str = "syscall_name", fd_col: str = "arg0") -> str:
    """A SQL condition true for service-time rows: :func:`classify` without fd kinds, for
    ``syscall_events`` (``WHERE`` it, so the database filters before ``LIMIT``)."""
    net = _quoted(frozenset(_NET_NAMES & FD_IO_NAMES))
    return (f"({name_col} NOT IN ({_quoted(WAIT_NAMES)}) AND {name_col} NOT IN ({net}) "
            f"AND NOT ({name_col} IN ({_quoted(_READS)}) AND {fd_col} = 0))")
