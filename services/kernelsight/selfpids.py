"""KernelSight's own processes, which no tracer records (issue 16 item 1).

Without this, the collectors' and ingester's waits, the private Redis's epoll_wait and their
page faults and context switches are recorded, ingested, and cause more of themselves.

Who is ours: each KernelSight process registers in the Redis hash ``kernelsight:self:<host>``
(pid -> its start time, pid namespace and whether its descendants are ours too). `kernelsight
run` registers itself, the private redis-server and every child it starts or restarts (the
ingester with its workers as a tree); each collector registers itself when it starts. A
tracer also always ignores its own process, with or without Redis.

How it is applied: every tracer loads ``bpf/ks_self.h`` (a tgid array the verifier inlines)
and runs a :class:`SelfFilter`; one thread per process (shared by the tracers it hosts) every
``SYNC_S`` reads the hash, checks each
entry against /proc (same start time, so a recycled pid is never filtered; a container's pid
numbers are translated through /proc/PID/status's NSpid within the entry's pid namespace, never
taken for host pids) and updates the BPF map with
only the differences. Dead entries are removed from the hash. A restarted process is filtered
within ``SYNC_S`` of its registration (``kernelsight run`` registers a child right after
starting it, before its first import).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os
import threading
from typing import Any, ClassVar

import orjson
import redis

log = logging.getLogger(__name__)

KEY = "kernelsight:{{{host}}}:self"  # schema.host_key(host, "self"): in the host's slot
SYNC_S = 2.0  # how often a tracer re-reads the registry (a restarted process waits this long)
TTL_S = 7 * 86400  # the hash expires if nothing registers for a week


def proc_start(pid: int, procfs: str = "/proc") -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22) or None."""
    try:
        with open(f"{procfs}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:  # comm may hold spaces and parentheses: fields start after the last ')'
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def pid_namespace(pid: int | str = "self", procfs: str = "/proc") -> int:
    try:
        return os.stat(f"{procfs}/{pid}/ns/pid").st_ino
    except OSError:
        return 0


def register(r: redis.Redis, host: str, pid: int | None = None, tree: bool = False,
             role: str = "") -> bool:
    """Record ``pid`` (default: this process) as KernelSight's own; ``tree``: its
    descendants too. Never raises: a tracer that misses it only records a little more."""
    pid = pid or os.getpid()
    start = proc_start(pid)
    if start is None:
        return False
    entry = {"start": start, "ns": pid_namespace(), "tree": tree, "role": role}
    try:
        key = KEY.format(host=host)
        r.hset(key, str(pid), orjson.dumps(entry))
        r.expire(key, TTL_S)
        return True
    except redis.RedisError as e:  # the command itself reports an unreachable Redis
        log.debug("could not register pid %d as KernelSight's own: %s", pid, e)
        return False


_MARK: dict[str, bool] = {"self": False}


def mark(redis_url: str, host: str, role: str = "", tree: bool = False) -> None:
    """This process is a KernelSight command (`trace`, `collect`, `ingest`): register it, and
    have this process's own tracers skip it too. Collectors created inside other programs
    (tests) are not marked: their host process is traced like any other."""
    _MARK["self"] = True
    register_url(redis_url, host, tree=tree, role=role)


def marked() -> bool:
    return _MARK["self"]


def unmark() -> None:
    """For tests that mark their own process."""
    _MARK["self"] = False


def register_url(redis_url: str, host: str, pid: int | None = None, tree: bool = False,
                 role: str = "") -> bool:
    """:func:`register` through a short-lived connection (no-op without a Redis URL)."""
    if not redis_url:
        return False
    from kernelsight.streams import connect

    try:
        r = connect(redis_url, 2)  # a cluster client connects here: no node, no client
    except redis.RedisError as e:
        log.debug("could not register pid %s as KernelSight's own: %s", pid, e)
        return False
    try:
        return register(r, host, pid, tree, role)
    finally:
        r.close()


def descendants(pid: int, procfs: str = "/proc", limit: int = 4096) -> set[int]:
    """Every live descendant of ``pid`` (/proc/PID/task/TID/children, all threads)."""
    out: set[int] = set()
    todo = [pid]
    while todo and len(out) < limit:
        p = todo.pop()
        try:
            tids = os.listdir(f"{procfs}/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"{procfs}/{p}/task/{tid}/children", "rb") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


PROC_PID_INIT_INO = 0xEFFFFFFC  # the kernel's initial pid namespace's inode number (fixed)


def ns_pid_index(namespaces: set[int], procfs: str = "/proc") -> dict[tuple[int, int], int]:
    """(pid namespace inode, pid inside it) -> pid here, for the processes of those
    namespaces that this procfs shows (a container's processes, seen from the host's pid
    namespace: the last NSpid field of /proc/PID/status is the innermost pid)."""
    out: dict[tuple[int, int], int] = {}
    try:
        names = os.listdir(procfs)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        ino = pid_namespace(name, procfs)
        if ino not in namespaces:
            continue
        try:
            with open(f"{procfs}/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"NSpid:"):
                        out[(ino, int(line.split()[-1]))] = int(name)
                        break
        except (OSError, ValueError):
            continue
    return out


def registered(r: redis.Redis, host: str, procfs: str = "/proc",
               prune: bool = True) -> set[int]:
    """The pids (host pid namespace = ours) that are KernelSight's own right now: every
    live registered entry and the descendants of tree entries, including entries registered
    from another pid namespace that this procfs shows. Dead entries are pruned."""
    key = KEY.format(host=host)
    raw = r.hgetall(key)
    ns = pid_namespace()
    out: set[int] = set()
    dead: list[bytes] = []
    foreign: list[tuple[bytes, int, int, int, bool]] = []
    for k, v in raw.items():
        try:
            pid = int(k)
            e = orjson.loads(v)
            start, ens, tree = int(e["start"]), int(e["ns"]), bool(e.get("tree"))
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            dead.append(k)
            continue
        if ens != ns:
            foreign.append((k, pid, ens, start, tree))
            continue
        if proc_start(pid, procfs) != start:
            dead.append(k)  # exited (or the pid was recycled)
            continue
        out.add(pid)
        if tree:
            out |= descendants(pid, procfs)
    if foreign:
        # Another pid namespace's numbers (a container's KernelSight processes): mapped to
        # ours through /proc, when this procfs shows that namespace (compose's tracer runs
        # with `pid: host`). The start time (clock ticks since boot) is the same in both.
        index = ns_pid_index({f[2] for f in foreign}, procfs)
        seen_ns = {ino for ino, _ in index}
        for k, nspid, ens, start, tree in foreign:
            here = index.get((ens, nspid))
            if here is not None and proc_start(here, procfs) == start:
                out.add(here)
                if tree:
                    out |= descendants(here, procfs)
            elif ens in seen_ns or ns == PROC_PID_INIT_INO:
                # That namespace is visible and the process is not in it, or we see every
                # namespace and it is gone (a removed container): dead.
                dead.append(k)
    if dead and prune:
        with contextlib.suppress(redis.RedisError):
            r.hdel(key, *dead)
    return out


class SelfFilter:
    """Keeps a loaded tracer's ``ks_self`` maps equal to KernelSight's own processes.

    The tracers hosted in one process (`kernelsight host`) share one watcher thread
    (:class:`_Watcher`): the registry is read and /proc walked once per ``SYNC_S`` for all
    of them, not once per tracer."""

    def __init__(self, bpf: Any, redis_url: str, host: str, procfs: str = "/proc",
                 interval_s: float = SYNC_S, own: bool = True) -> None:
        """``own``: this process is ours too (always, with or without Redis)."""
        self.bpf = bpf
        self.redis_url = redis_url
        self.host = host
        self.procfs = procfs
        self.interval_s = interval_s
        self.own = own
        self.pids: set[int] = set()
        self.syncs = 0
        self._arr = bpf[b"ks_self"]
        self._big = bpf[b"ks_self_big"]
        self._slots = int(self._arr.max_entries)
        self._watcher: _Watcher | None = None

    def start(self) -> SelfFilter:
        """Apply this process at once, the registry now, then every ``interval_s``."""
        self._watcher = _Watcher.join(self)
        return self

    def apply(self, registered_pids: set[int]) -> None:
        """Make the maps hold ``registered_pids`` (and this process if ``own``)."""
        want = registered_pids | ({os.getpid()} if self.own else set())
        for pid in want - self.pids:
            self._set(pid, 1)
        for pid in self.pids - want:
            self._set(pid, 0)
        self.pids = want
        self.syncs += 1

    def _set(self, pid: int, on: int) -> None:
        try:
            if pid < self._slots:
                self._arr[pid] = ct.c_uint8(on)
            elif on:
                self._big[ct.c_uint32(pid)] = ct.c_uint8(1)
            else:
                with contextlib.suppress(KeyError):
                    del self._big[ct.c_uint32(pid)]
        except Exception as e:  # noqa: BLE001 - a full hash: that pid is traced, say so
            log.warning("self filter: pid %d not %s: %s", pid, "added" if on else "removed", e)

    def stop(self) -> None:
        """Before the BPF object is cleaned up (the watcher writes into its maps)."""
        if self._watcher is not None:
            self._watcher.leave(self)
            self._watcher = None


class _Watcher:
    """One thread per (Redis URL, host, procfs, interval) in a process: reads the registry
    and applies it to every SelfFilter that joined."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _all: ClassVar[dict[tuple[str, str, str, float], _Watcher]] = {}

    def __init__(self, key: tuple[str, str, str, float]) -> None:
        self.key = key
        self.redis_url, self.host, self.procfs, self.interval_s = key
        self.filters: list[SelfFilter] = []
        self.last: set[int] = set()
        self._stop = threading.Event()
        self._apply_lock = threading.Lock()  # a filter never sees two syncs at once
        self._r: redis.Redis | None = None
        self._thread = threading.Thread(target=self._run, name="ks-self-filter", daemon=True)

    @classmethod
    def join(cls, f: SelfFilter) -> _Watcher:
        key = (f.redis_url, f.host, f.procfs, f.interval_s)
        with cls._lock:  # joins and leaves one at a time: none joins a watcher that stops
            w = cls._all.get(key)
            if w is None:
                w = cls._all[key] = _Watcher(key)
                w.last = w._registered()
                w._thread.start()
            with w._apply_lock:
                f.apply(w.last)  # filtered before the caller's first event
                w.filters.append(f)
        return w

    def leave(self, f: SelfFilter) -> None:
        with _Watcher._lock:
            with self._apply_lock:
                if f in self.filters:
                    self.filters.remove(f)
                if self.filters:
                    return
            if _Watcher._all.get(self.key) is self:
                del _Watcher._all[self.key]
            self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        if self._r is not None:
            self._r.close()

    def _registered(self) -> set[int]:
        if not self.redis_url:
            return set()
        try:
            if self._r is None:
                from kernelsight.streams import connect

                self._r = connect(self.redis_url, 2)
            return registered(self._r, self.host, self.procfs)
        except redis.RedisError as e:  # keep what we have; Redis may come back
            log.debug("self filter: registry unreadable: %s", e)
            return set(self.last)

    def sync(self) -> None:
        pids = self._registered()
        with self._apply_lock:
            self.last = pids
            for f in list(self.filters):
                f.apply(pids)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception:  # the filter must not kill the tracer
                log.exception("self filter: sync failed")
