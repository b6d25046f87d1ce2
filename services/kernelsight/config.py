"""One settings object for every command. Each field has a flag and a KS_* variable (the
flag wins); validation gives one clear line per mistake."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

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
    ingest_linger_ms: int = defaults.INGEST_LINGER_MS  # after a small batch
    consumer: str = defaults.CONSUMER
    ingest_workers: int = defaults.INGEST_WORKERS
    buffer_max: int = defaults.BUFFER_MAX
    buffer_max_bytes: int = defaults.BUFFER_MAX_BYTES
    stream_maxlen: int = defaults.STREAM_MAXLEN
    stream_retain: int = defaults.STREAM_RETAIN
    min_latency_ms: float = defaults.SYSCALL_MIN_LATENCY_MS
    ringbuf_pages: int = defaults.RINGBUF_PAGES
    map_entries: int = defaults.MAP_ENTRIES
    minor_fault_rate: int = defaults.PAGEFAULT_MINOR_RATE
    publish_linger_s: float = defaults.PUBLISH_LINGER_S  # collectors: rows wait for more
    record_waits: bool = False  # syscalls: one syscall_events row per slow wait (not summaries)
    ignored_devices: str = defaults.IGNORED_DEVICES
    retention: str = defaults.RETENTION
    retention_size: str = defaults.RETENTION_SIZE
    rollup_retention: str = defaults.ROLLUP_RETENTION
    metrics_addr: str = ""  # HOST:PORT or 'off'; '' = not given (metrics.resolve_addr decides)
    bpf_dir: str = ""  # where bpf/*.bpf.c live; empty: the repository's bpf/ directory

    def with_(self, **kw: object) -> Settings:
        clean = {k: v for k, v in kw.items() if v is not None}
        return replace(self, **clean).validated()

    def validated(self) -> Settings:
        if self.redis_url:
            check_redis_url(self.redis_url)
        if is_db_url(self.db_path):
            check_db_url(self.db_path)
        from kernelsight.schema import host_problem

        if (why := host_problem(self.host)) is not None:
            raise ConfigError(f"--host: {why}; it names the host's Redis keys, use a plain name")
        for name in ("interval",):
            v = getattr(self, name)
            if not (0 < v <= 3600):
                raise ConfigError(f"--{name} must be between 0 and 3600 seconds, got {v}")
        for name in ("batch_size", "batch_ms", "buffer_max", "buffer_max_bytes", "stream_maxlen",
                     "ringbuf_pages", "map_entries"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise ConfigError("--ringbuf-pages must be a power of two (e.g. 64, 256, 1024)")
        if not 0 <= self.ingest_workers <= 64:
            raise ConfigError("--workers must be between 0 (one per CPU, at most 2) and 64")
        if self.min_latency_ms < 0:
            raise ConfigError("--min-latency-ms must be >= 0")
        if not 0 <= self.ingest_linger_ms <= defaults.INGEST_LINGER_MAX_MS:
            raise ConfigError("--ingest-linger-ms must be between 0 and "
                              f"{defaults.INGEST_LINGER_MAX_MS}, got {self.ingest_linger_ms}")
        if not 0 <= self.publish_linger_s <= 60:
            raise ConfigError("--publish-linger must be between 0 and 60 seconds, got "
                              f"{self.publish_linger_s}")
        if parse_duration(self.rollup_retention, "--rollup-retention") < parse_duration(
                self.retention, "--retention"):
            raise ConfigError(f"--rollup-retention {self.rollup_retention} is shorter than "
                              f"--retention {self.retention}; rollups must outlive raw rows")
        if self.retention_size:
            parse_size(self.retention_size, "--retention-size")
        if not Path(self.procfs).is_dir() or not Path(self.procfs, "meminfo").exists():
            raise ConfigError(
                f"--procfs {self.procfs}: not a procfs mount (no meminfo there); "
                "point it at /proc or the host's /proc mounted in the container")
        return self

    @property
    def retention_s(self) -> float:
        return parse_duration(self.retention, "--retention")

    @property
    def rollup_retention_s(self) -> float:
        return parse_duration(self.rollup_retention, "--rollup-retention")

    @property
    def retention_size_bytes(self) -> int | None:
        return parse_size(self.retention_size, "--retention-size") if self.retention_size \
            else None

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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
RETENTION_MIN_S = 60.0  # below one minute no minute could be rolled up before it ages out
SIZE_MIN_BYTES = 1 << 20


def parse_duration(value: str, flag: str = "--retention") -> float:
    """``30m``, ``12h``, ``7d``, ``2w`` (or ``90s``) in seconds; one-line ConfigError else."""
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{flag} {value!r} is not a duration; use a number and a unit "
                          "s, m, h, d or w, e.g. 30m, 12h, 7d")
    secs = float(m.group(1)) * _DURATION_S[m.group(2)]
    if secs < RETENTION_MIN_S:
        raise ConfigError(f"{flag} {value} is shorter than one minute (rows are rolled up per "
                          "minute before they age out); use at least 1m")
    return secs


def parse_size(value: str, flag: str = "--retention-size") -> int:
    """``64MiB``, ``2GiB``, ``500MB`` or a byte count; one-line ConfigError else."""
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{flag} {value!r} is not a size; use a number and a unit such as "
                          "512MiB, 2GiB or 10GB")
    n = int(float(m.group(1)) * _SIZE_UNIT[(m.group(2) or "b").lower()])
    if n < SIZE_MIN_BYTES:
        raise ConfigError(f"{flag} {value} is below 1MiB; a SQLite database with its schema "
                          "alone needs more, use e.g. 64MiB")
    return n


CLUSTER_SCHEME = "redis+cluster"


def cluster_nodes(url: str) -> tuple[str | None, list[tuple[str, int]]]:
    """``redis+cluster://[:PASSWORD@]host:port[,host:port...]`` -> (password, seed nodes).
    Raises ValueError for anything else."""
    rest = url.split("://", 1)[1]
    userinfo, at, hosts = rest.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if at else None
    hosts = hosts.split("/", 1)[0].split("?", 1)[0]
    nodes = []
    for part in hosts.split(","):
        h, colon, port = part.strip().rpartition(":")
        if not colon or not h or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad cluster node {part!r}")
        nodes.append((h.strip("[]"), int(port)))
    return password or None, nodes


def check_redis_url(url: str) -> str:
    if url.startswith(CLUSTER_SCHEME + "://"):
        try:
            cluster_nodes(url)
            return url
        except ValueError:
            raise ConfigError(
                f"redis URL {redact(url)!r} is not valid; a cluster is "
                "redis+cluster://[:password@]host:port[,host:port...]") from None
    try:
        p = urlparse(url)
        ok = p.scheme in ("redis", "rediss", "unix") and (p.scheme == "unix" or bool(p.hostname))
        if ok and p.scheme != "unix":
            _ = p.port  # raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"redis URL {redact(url)!r} is not valid; use redis://[:password@]host:port/0 (or "
            "redis+cluster://[:password@]host:port[,host:port...] for a cluster)")
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


# `--db` takes a SQLite path or a SQLAlchemy URL. PostgreSQL through psycopg 3 is the one
# server supported; `postgresql://` and `postgres://` mean the same driver.
DB_URL_SCHEMES = {"postgresql+psycopg": "postgresql+psycopg", "postgresql": "postgresql+psycopg",
                  "postgres": "postgresql+psycopg"}
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_db_url(target: str | Path) -> bool:
    """A `--db` value that is a URL (``scheme://...``) rather than a SQLite file path."""
    return isinstance(target, str) and bool(_URL_LIKE.match(target))


def is_postgres(target: str | Path) -> bool:
    return is_db_url(target) and str(target).split("://", 1)[0].lower() in DB_URL_SCHEMES


def check_db_url(url: str) -> str:
    """The URL in SQLAlchemy's ``postgresql+psycopg`` form, or one line saying what is wrong
    (the password never shown). Reaching the server is checked when the database is opened."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    scheme = url.split("://", 1)[0].lower()
    example = "postgresql+psycopg://USER[:PASSWORD]@HOST:PORT/DBNAME (or a SQLite file path)"
    if scheme == "sqlite":
        raise ConfigError(f"--db {redact(url)}: give a SQLite database as a plain file path, "
                          "not a sqlite:// URL")
    if scheme not in DB_URL_SCHEMES:
        raise ConfigError(f"--db {redact(url)}: unsupported database URL scheme {scheme!r}; "
                          f"use {example}")
    try:
        u = make_url(url)
        _ = u.port
    except (ArgumentError, ValueError):
        raise ConfigError(f"--db {redact(url)} is not a valid database URL; use "
                          f"{example}") from None
    if not u.database:
        raise ConfigError(f"--db {redact(url)} names no database; use {example}")
    if not u.host and "host" not in u.query:
        raise ConfigError(f"--db {redact(url)} names no host; use {example}")
    return u.set(drivername=DB_URL_SCHEMES[scheme]).render_as_string(hide_password=False)


def db_label(target: str | Path) -> str:
    """How a `--db` value is shown in logs, messages and status lines: a path as it is, a URL
    without its password."""
    return redact(str(target)) if is_db_url(target) else str(target)


def check_db_path(path: str) -> Path | str:
    """A database path we can create and write (or a valid database URL), or one line saying
    why not."""
    if is_db_url(path):
        return check_db_url(path)
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
