"""What every BCC tracer needs from the host: tracefs, kernel headers (with a fallback when the
running kernel has none), compiling ``bpf/<name>.bpf.c``, and draining a ring buffer with its
losses counted. Each problem becomes one CollectorError line that says what to do."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kernelsight.config import Settings
from kernelsight.exceptions import CollectorError

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS = Path("/sys/kernel/debug")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "powerpc64le", "s390x": "s390x"}


def _mounted(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == str(path) for line in f)
    except OSError:
        return False


def tracefs_missing() -> list[tuple[Path, str]]:
    """(mount point, fstype) that ensure_tracefs() would mount; changes nothing."""
    return [(path, fstype) for path, fstype in ((TRACEFS, "tracefs"), (DEBUGFS, "debugfs"))
            if not (_mounted(path) or (path == TRACEFS and (path / "events").is_dir()))]


def ensure_tracefs() -> list[str]:
    """Mount tracefs (and debugfs, whose tracing/ dir older tools use) when missing.
    Returns what was done; raises CollectorError when it is missing and cannot be mounted."""
    done = []
    for path, fstype in tracefs_missing():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        r = subprocess.run(["mount", "-t", fstype, fstype, str(path)],
                           capture_output=True, text=True, check=False)
        if r.returncode == 0:
            done.append(f"mounted {fstype} at {path}")
        elif path == TRACEFS:
            raise CollectorError(
                f"tracefs is not mounted at {path} and mounting it failed "
                f"({r.stderr.strip() or r.returncode}); run as root: "
                f"mount -t tracefs tracefs {path} (in a container: mount the host's {path})")
    return done


@dataclass
class Headers:
    path: Path
    fallback: bool
    note: str


def _debian_fallback() -> tuple[Path, Path] | None:
    arch = DEB_ARCH.get(platform.machine(), platform.machine())
    root = Path(os.environ.get("KS_HEADERS_ROOT", "/usr/src"))
    cands = sorted(root.glob(f"linux-headers-*-{arch}"), key=lambda p: _vkey(p.name),
                   reverse=True)
    for build in cands:
        common = build.with_name(build.name[: -len(arch)] + "common")
        if (build / ".config").exists() and common.is_dir():
            return build, common
    return None


def _vkey(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def headers_missing() -> tuple[Path, Path, Path, Path] | None:
    """When the running kernel has no headers: (build link, its target, source link, its
    target) that ensure_headers() would create; None when headers are in place or no fallback
    exists (ensure_headers() then says what to install). Changes nothing."""
    mod = Path("/lib/modules") / platform.release()
    if (mod / "build").is_dir() and (mod / "build" / "include").exists():
        return None
    fb = _debian_fallback()
    return (mod / "build", fb[0], mod / "source", fb[1]) if fb else None


def ensure_headers() -> Headers:
    """Kernel headers for BCC: the running kernel's own, or else Debian's linux-headers for
    another version linked in as /lib/modules/$(uname -r)/{build,source}. Tracepoint programs
    do not depend on the kernel's struct layouts (BCC reads their argument formats from tracefs
    at run time), so a different version is fine for them."""
    rel = platform.release()
    mod = Path("/lib/modules") / rel
    build = mod / "build"
    if build.is_dir() and (build / "include").exists():
        real = build.resolve()
        fb = rel not in real.name
        return Headers(real, fb, f"{real}" + (" (fallback, another kernel version)" if fb else ""))
    fb = _debian_fallback()
    if not fb:
        raise CollectorError(
            f"no kernel headers for {rel} and no fallback in /usr/src; install them: "
            "apt-get install linux-headers-$(uname -r) || apt-get install linux-headers-"
            f"{DEB_ARCH.get(platform.machine(), platform.machine())}")
    b, common = fb
    try:
        mod.mkdir(parents=True, exist_ok=True)
        for link, target in ((build, b), (mod / "source", common)):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    except OSError as e:
        raise CollectorError(
            f"kernel {rel} has no headers and {mod} is not writable ({e.strerror}) to link the "
            f"fallback {b.name}; run once as root: mkdir -p {mod} && ln -sfn {b} {build} && "
            f"ln -sfn {common} {mod / 'source'}") from None
    return Headers(b, True, f"{b} (fallback linked in {mod}; kernel {rel} ships none)")


# Headers that declare maps and use them: BCC rewrites map calls (m.lookup()) in the main
# file only, so their #include line is replaced by their text before compiling.
INLINE_HEADERS = ("ks_self.h", "ks_epochmax.h")


def bpf_source(settings: Settings, name: str) -> str:
    path = settings.bpf_path / f"{name}.bpf.c"
    try:
        text = path.read_text()
        for h in INLINE_HEADERS:
            inc = f'#include "{h}"'
            if inc in text:
                text = text.replace(inc, (settings.bpf_path / h).read_text(), 1)
        return text
    except OSError as e:
        raise CollectorError(f"{name}: cannot read {e.filename}: {e.strerror}; set KS_BPF_DIR") \
            from None


_DEFINE = re.compile(r"#\s*define\s+(\w+)\s+\(?\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*\)?"
                     r"\s*(?:/\*.*\*/)?\s*(?://.*)?")


def header_slots(settings: Settings, name: str, names: tuple[str, ...]) -> dict[str, int]:
    """The integer ``#define``s ``names`` of ``bpf/ks_<name>.h``: numbers both the BPF program
    and user space use (counter slots), so they are written down once, in the header the C
    includes (the libbpf-tools <tool>.h pattern). One CollectorError line when one is missing."""
    path = settings.bpf_path / f"ks_{name}.h"
    try:
        text = path.read_text()
    except OSError as e:
        raise CollectorError(f"{name}: cannot read {path}: {e.strerror}; set KS_BPF_DIR") from None
    found = {}
    for line in text.splitlines():
        m = _DEFINE.fullmatch(line.strip())
        if m:
            found[m.group(1)] = int(m.group(2), 0)
    missing = [n for n in names if n not in found]
    if missing:
        raise CollectorError(f"{name}: {path} does not define {', '.join(missing)} as an "
                             "integer; its BPF program and this KernelSight do not match "
                             "(reinstall, or set KS_BPF_DIR to this version's bpf/)")
    return {n: found[n] for n in names}


def load(settings: Settings, name: str, cflags: list[str] | None = None):
    """Compile ``bpf/<name>.bpf.c`` with BCC. Returns the ``bcc.BPF`` object."""
    if os.geteuid() != 0:
        raise CollectorError(f"{name}: eBPF tracers need root (CAP_SYS_ADMIN or CAP_BPF+"
                             "CAP_PERFMON); run with sudo")
    ensure_tracefs()
    ensure_headers()
    try:
        from bcc import BPF
    except ImportError:
        raise CollectorError(
            f"{name}: the bcc Python module is missing; apt-get install python3-bpfcc and use "
            "a virtualenv made with --system-site-packages") from None
    text = bpf_source(settings, name)
    try:
        return BPF(text=text.encode(), cflags=cflags or [])
    except Exception as e:  # noqa: BLE001 - bcc raises bare Exception on compile/load failure
        raise CollectorError(f"{name}: BPF program failed to compile/load: {e}; run "
                             "`kernelsight doctor` for the kernel's capabilities") from None


def attach_error(name: str, what: str, e: Exception) -> CollectorError:
    return CollectorError(f"{name}: cannot attach {what}: {e}; run `kernelsight doctor`")


def read_percpu_sum(table, key: int = 0) -> int:
    """Sum a BPF_PERCPU_ARRAY u64 slot over CPUs (drop counters)."""
    vals = table[ctypes.c_int(key)]
    return int(sum(v for v in vals))


def as_int(v) -> int:  # type: ignore[no-untyped-def]
    """A u32/u64 key or value as int (read_hash's arrays give ints, key-by-key reads ctypes)."""
    return v if isinstance(v, int) else int(v.value)


_ENOTSUPP = 524  # the kernel's own "operation not supported" (not in Python's errno)


class _BatchBuf:
    """Key and value arrays kept for one map between reads (see read_hash)."""

    def __init__(self, table, n: int) -> None:  # type: ignore[no-untyped-def]
        self.n = n
        self.keys = (table.Key * n)()
        self.values = (table.Leaf * n)()


def read_hash(table) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Every (key, value) of a BPF hash map, by BPF_MAP_LOOKUP_BATCH (kernel 5.6+) into
    arrays kept with the map and grown when it fills them, else key by key.

    BCC's items_lookup_batch() allocates (and zeroes) arrays for max_entries at every call:
    4 MiB for a 65,536-entry map, a few entries used, at every interval of every tracer.
    Structure values are views into the kept arrays: valid until the next read of that map."""
    from bcc import lib  # a tracer has BCC; nothing else imports this

    buf = getattr(table, "_ks_batch", None)
    if buf is False:
        return list(table.items())  # this kernel has no batch operations (seen once)
    cap = int(table.max_entries)
    n = buf.n if buf else min(256, cap)
    while True:
        if buf is None or buf.n < n:
            buf = _BatchBuf(table, n)
            table._ks_batch = buf
        token, cnt, total = ctypes.c_uint32(0), ctypes.c_uint32(0), 0
        ksz, vsz = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        done = False
        while total < buf.n:
            cnt.value = buf.n - total
            res = lib.bpf_lookup_batch(table.map_fd, ctypes.byref(token) if total else None,
                                       ctypes.byref(token), ctypes.byref(buf.keys, ksz * total),
                                       ctypes.byref(buf.values, vsz * total), ctypes.byref(cnt))
            err = ctypes.get_errno()
            total += cnt.value
            if res != 0:
                if err == errno.ENOENT:
                    done = True  # the whole map was read
                    break
                if err == errno.ENOSPC:
                    break  # the next bucket does not fit in what is left: grow
                if total == 0 and err in (errno.EINVAL, _ENOTSUPP, errno.EOPNOTSUPP):
                    table._ks_batch = False  # no batch operations on this kernel
                    return list(table.items())
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            if cnt.value == 0:
                done = True  # no progress (a concurrent update): what was read is current
                break
        if done or buf.n >= cap:
            return [(buf.keys[i], buf.values[i]) for i in range(total)]
        n = min(cap, buf.n * 4)  # full: a larger buffer, then the whole map again


# bpf(BPF_OBJ_GET_INFO_BY_FD) for struct bpf_prog_info.recursion_misses (uapi, append-only).
_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
_BPF_OBJ_GET_INFO_BY_FD = 15
_PROG_INFO_LEN = 232
_RECURSION_MISSES_OFF = 208
_LIBC = ctypes.CDLL(None, use_errno=True)


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


def prog_recursion_misses(fd: int) -> int:
    """How many times the kernel skipped this BPF program because another BPF program was
    running on the CPU (trace_call_bpf's bpf_prog_active check; kernel >= 6.7 counts them).
    0 when the kernel cannot say."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return 0
    buf = (ctypes.c_uint8 * _PROG_INFO_LEN)()
    attr = _InfoAttr(fd, _PROG_INFO_LEN, ctypes.addressof(buf))
    if _LIBC.syscall(nr, _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        return 0
    if attr.info_len < _RECURSION_MISSES_OFF + 8:
        return 0
    return int.from_bytes(bytes(buf[_RECURSION_MISSES_OFF:_RECURSION_MISSES_OFF + 8]), "little")
