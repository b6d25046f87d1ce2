"""One settings object for every command. Each field has a flag and a KS_* variable (the
flag wins); validation gives one clear line per mistake."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlparse

from kernelsight import defaults
from kernelsight.exceptions import ConfigError


@dataclass(frozen=True)
class Settings:
    redis_url: str = defaults.REDIS_URL
    db_path: str = defaults.DB_PATH
    procfs: str = defaults.PROCFS
    sysfs: str = defaults.SYSFS
    host: str = field(default_factory=socket.gethostname)
    interval: float = defaults.INTERVAL_S
    batch_size: int = defaults.BATCH_SIZE
    batch_ms: int = defaults.BATCH_MS
    consumer: str = defaults.CONSUMER
    ingest_workers: int = defaults.INGEST_WORKERS
    buffer_max: int = defaults.BUFFER_MAX
    stream_maxlen: int = defaults.STREAM_MAXLEN
    stream_retain: int = defaults.STREAM_RETAIN
    min_latency_ms: float = defaults.SYSCALL_MIN_LATENCY_MS
    ringbuf_pages: int = defaults.RINGBUF_PAGES
    map_entries: int = defaults.MAP_ENTRIES
    minor_fault_rate: int = defaults.PAGEFAULT_MINOR_RATE
    ignored_devices: str = defaults.IGNORED_DEVICES
    bpf_dir: str = ""  # where bpf/*.bpf.c live; empty: the repository's bpf/ directory

    def with_(self, **kw: object) -> Settings:
        clean = {k: v for k, v in kw.items() if v is not None}
        return replace(self, **clean).validated()

    def validated(self) -> Settings:
        if self.redis_url:
            check_redis_url(self.redis_url)
        for name in ("interval",):
            v = getattr(self, name)
            if not (0 < v <= 3600):
                raise ConfigError(f"--{name} must be between 0 and 3600 seconds, got {v}")
        for name in ("batch_size", "batch_ms", "buffer_max", "stream_maxlen", "ringbuf_pages",
                     "map_entries"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise ConfigError("--ringbuf-pages must be a power of two (e.g. 64, 256, 1024)")
        if not 0 <= self.ingest_workers <= 64:
            raise ConfigError("--workers must be between 0 (one per CPU, at most 2) and 64")
        if self.min_latency_ms < 0:
            raise ConfigError("--min-latency-ms must be >= 0")
        if not Path(self.procfs).is_dir() or not Path(self.procfs, "meminfo").exists():
            raise ConfigError(
                f"--procfs {self.procfs}: not a procfs mount (no meminfo there); "
                "point it at /proc or the host's /proc mounted in the container")
        return self

    @property
    def bpf_path(self) -> Path:
        if self.bpf_dir:
            return Path(self.bpf_dir)
        env = os.environ.get("KS_BPF_DIR")
        if env:
            return Path(env)
        return Path(__file__).resolve().parents[2] / "bpf"


ENV_PREFIX = "KS_"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def check_redis_url(url: str) -> str:
    try:
        p = urlparse(url)
        ok = p.scheme in ("redis", "rediss", "unix") and (p.scheme == "unix" or bool(p.hostname))
        if ok and p.scheme != "unix":
            _ = p.port  # raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"redis URL {redact(url)!r} is not valid; use redis://[:password@]host:port/0")
    return url


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?(.*)$", re.S)
_SECRET_PARAM = re.compile(r"([?&;](?:password|pass|pwd|auth|requirepass)=)[^&;#]*", re.I)


def redact(url: str) -> str:
    """The URL without its password, for logs and errors: the userinfo's password (everything
    between the first ':' and the last '@' before the path, so an unencoded '@', '/' or '#'
    in it is masked too) and any password=/auth= query parameter. Works on strings that are
    not valid URLs, since it is used in the message saying so."""
    m = _SCHEME.match(url)
    scheme, rest = (m.group(1) or "", m.group(2)) if m else ("", url)
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        if ":" in userinfo:  # user:password
            rest = userinfo.split(":", 1)[0] + ":***" + rest[at:]
        elif "/" in userinfo or "?" in userinfo:  # '@' inside the path or query: mask all
            rest = "***" + rest[at:]
    return scheme + _SECRET_PARAM.sub(r"\1***", rest)


def check_db_path(path: str) -> Path:
    """A database path we can create and write, or one line saying why not."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise ConfigError(f"--db {path} is a directory; give a file path such as {path}/ks.db")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the directory for --db {path}: {e.strerror}") from None
    try:
        if p.exists():
            with open(p, "r+b"):
                pass
        else:  # root passes os.access() checks even on read-only mounts: really try (a name
            # of our own: another process may be creating the database itself right now)
            probe = parent / f".{p.name}.probe-{os.getpid()}"
            with open(probe, "xb"):
                pass
            probe.unlink()
    except OSError as e:
        raise ConfigError(f"--db {path} is not writable ({e.strerror}); choose a writable path "
                          "or fix permissions") from None
    return p
