"""Opening a KernelSight database: path checks, SQLite pragmas, schema creation and version."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from kernelsight import faultlatency, schema
from kernelsight.config import check_db_path, is_db_url
from kernelsight.exceptions import DatabaseError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 1000


def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # WAL lets readers (the reporter, a user's sqlite3 shell) run while we write. NORMAL is
    # durable against a crash of any process; only a power loss can cost the last commit.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def engine_for(path: str | Path, readonly: bool = False,
               checkpoint_thread: bool = False) -> Engine:
    if readonly:
        url = f"sqlite:///file:{Path(path).resolve()}?mode=ro&uri=true"
    else:
        url = f"sqlite:///{path}"
    eng = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(eng, "connect", _pragmas)
    if checkpoint_thread:
        event.listen(eng, "connect", Checkpointer.writer_pragmas)
    return eng


def _wal_mode(path: Path) -> bool:
    """The file header says WAL (bytes 18-19 are 2): readers then need the -shm/-wal files."""
    with open(path, "rb") as f:
        head = f.read(20)
    return head[:16] == b"SQLite format 3\0" and head[18:20] == b"\x02\x02"


def is_postgres(eng: Engine) -> bool:
    return eng.dialect.name == "postgresql"


def open_readonly(path: str | Path) -> Engine:
    """A read-only engine on an existing KernelSight database, or one DatabaseError.

    ``path`` may be a PostgreSQL URL: its sessions then run with
    ``default_transaction_read_only=on`` (storage/postgres.py).

    Readers (report, query, the rq job) never write: SQLite's ``mode=ro``, no journal-mode
    change, no schema creation. A WAL database whose writer has exited cleanly has no -wal file
    and so nothing outside the main file: it is opened ``immutable=1``, which needs neither a
    writable directory (the reporter's read-only mount) nor leaves -wal/-shm files behind. If a
    writer starts while such a read runs, the reader may see a torn state (an error or odd
    figures, never a change to the file)."""
    if is_db_url(path):
        from kernelsight.storage import postgres
        return postgres.open_readonly(str(path))
    p = Path(path)
    if not p.exists():
        raise DatabaseError(f"no database at {path}; run `kernelsight run` or `make stress` first")
    if not p.is_file():
        raise DatabaseError(f"{path} is not a file; give the path of a KernelSight database")
    real = p.resolve()
    try:
        wal = _wal_mode(real)
    except OSError as e:
        raise DatabaseError(f"cannot read {path}: {e.strerror}") from None
    immutable = wal and not Path(f"{real}-wal").exists()
    uri = f"file:{quote(str(real))}?mode=ro{'&immutable=1' if immutable else ''}"

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                              check_same_thread=False)
        con.execute("PRAGMA query_only=1")
        return con

    eng = create_engine("sqlite://", creator=connect, poolclass=NullPool)
    try:
        with eng.connect() as conn:
            names = {r[0] for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_meta" not in names:
                raise DatabaseError(f"{path} is not a KernelSight database (no schema_meta "
                                    "table); give the --db of a KernelSight run")
            row = conn.execute(select(schema.schema_meta.c.value).where(
                schema.schema_meta.c.key == "version")).scalar()
            if row is not None and _upgradable(str(row)):
                raise DatabaseError(
                    f"{path} has KernelSight schema version {row}, this version reads "
                    f"{schema.SCHEMA_VERSION}; a writer of this version (`kernelsight run` or "
                    "`kernelsight ingest` with this --db) upgrades it in place")
            if row is None or str(row) != str(schema.SCHEMA_VERSION):
                raise DatabaseError(
                    f"{path} has KernelSight schema version {row}, this version needs "
                    f"{schema.SCHEMA_VERSION}; report on it with the version that wrote it")
            missing = [t for t in schema.TABLES if t not in names]
            if missing:
                raise DatabaseError(f"{path} lacks the tables {', '.join(missing)}; it is not "
                                    "a complete KernelSight database")
    except DatabaseError:
        eng.dispose()
        raise
    except (OperationalError, sqlite3.Error, SADatabaseError) as e:
        eng.dispose()
        msg = getattr(e, "orig", None) or e
        raise DatabaseError(f"cannot read database {path}: {msg}") from None
    return eng


def open_db(path: str | Path, create: bool = True, checkpoint_thread: bool = False) -> Engine:
    """The engine for ``path`` with the schema in place, or one clear DatabaseError.
    ``checkpoint_thread``: the caller runs a Checkpointer, so commits never checkpoint.
    ``path`` may be a PostgreSQL URL (storage/postgres.py; no checkpointer there)."""
    path = str(path)
    if is_db_url(path):
        from kernelsight.storage import postgres
        return postgres.open_db(path, create=create)
    if create:
        check_db_path(path)
    elif not Path(path).is_file():
        raise DatabaseError(f"no database at {path}; run `kernelsight run` or `make stress` first")
    eng = engine_for(path, checkpoint_thread=checkpoint_thread)
    # One process at a time creates or upgrades the schema: pysqlite runs DDL outside a
    # transaction, so two ingesters starting together on a new file both saw "no table" and
    # one failed on "table ... already exists" (4 processes at once: 3 failures in 40).
    with schema_lock(path):
        if Path(path).is_file() and Path(path).stat().st_size:
            _rebuild_if_needed(path)
        try:
            _create_schema(eng, path)
        except OperationalError as e:
            raise DatabaseError(f"cannot open database {path}: {e.orig}") from None
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"{path} is not a usable SQLite database: {e}") from None
    return eng


@contextlib.contextmanager
def schema_lock(path: str) -> Iterator[None]:
    """flock(2) on the database's directory while the schema is checked and created. The
    directory, not a file beside the database: no file is left behind, and not the database
    file itself: closing another descriptor of it would drop this process's SQLite locks
    (POSIX lock semantics). Other databases in the same directory wait a moment too."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY
                     | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _rebuild_if_needed(path: str) -> None:
    """A file whose version's upgrade path rebuilds tables (4 -> 5) is rebuilt first, in one
    transaction of its own (storage/upgrade.py); additive steps then follow below."""
    try:
        con = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM schema_meta WHERE key = 'version'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return  # not ours or no schema yet: _create_schema says what is wrong
    if row is None or not _upgradable(str(row[0])) or not _rebuild_on_path(str(row[0])):
        return
    from kernelsight.storage.upgrade import rebuild_event_tables
    try:
        rebuild_event_tables(path)
    except (sqlite3.Error, RuntimeError) as e:
        raise DatabaseError(f"cannot upgrade {path} to schema version "
                            f"{schema.SCHEMA_VERSION} (left unchanged): {e}") from None


def _rebuild_on_path(version: str) -> bool:
    v = int(version)
    while v != schema.SCHEMA_VERSION:
        if v in schema.REBUILD_UPGRADES:
            return True
        v = schema.ADDITIVE_UPGRADES[v]
    return False


def _create_schema(eng: Engine, path: str) -> None:
    with eng.begin() as conn:
        # Before the first table exists (later it is a no-op): retention's deletes leave free
        # pages that `PRAGMA incremental_vacuum` can then give back, so the file can shrink.
        conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
        if mode != "wal":
            raise DatabaseError(f"{path}: cannot switch SQLite to WAL mode (got {mode})")
        schema.metadata.create_all(conn)
        row = conn.execute(select(schema.schema_meta.c.value).where(
            schema.schema_meta.c.key == "version")).scalar()
        if row is None:
            conn.execute(schema.schema_meta.insert().values(
                key="version", value=str(schema.SCHEMA_VERSION)))
        elif _upgradable(str(row)):
            # create_all above added the tables this version has and the file lacked (the
            # additive steps, schema.ADDITIVE_UPGRADES); _rebuild_if_needed already rebuilt
            # the event tables (schema.REBUILD_UPGRADES).
            conn.execute(schema.schema_meta.update().where(
                schema.schema_meta.c.key == "version").values(value=str(schema.SCHEMA_VERSION)))
            log.warning("%s: upgraded KernelSight schema version %s -> %s",
                        path, row, schema.SCHEMA_VERSION)
        elif int(row) != schema.SCHEMA_VERSION:
            raise DatabaseError(
                f"{path} has KernelSight schema version {row}, this version needs "
                f"{schema.SCHEMA_VERSION}; use a new --db path")
        faultlatency.mark(conn, schema.schema_meta, row is None,
                          schema.TABLES["page_fault_totals"])


def _upgradable(version: str) -> bool:
    """True when a database of ``version`` is upgraded in place to this version (tables
    added, event tables rebuilt)."""
    try:
        v = int(version)
    except ValueError:
        return False
    steps = {**schema.ADDITIVE_UPGRADES, **schema.REBUILD_UPGRADES}
    while v in steps:
        v = steps[v]
    return v == schema.SCHEMA_VERSION and int(version) != schema.SCHEMA_VERSION


def table_counts(eng: Engine) -> dict[str, int]:
    with eng.connect() as conn:
        return {name: conn.execute(text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one()
                for name in schema.TABLES}


class Checkpointer:
    """Copies the WAL into the database from a thread of its own.

    SQLite's automatic checkpoint runs inside whichever commit crosses 1000 WAL pages, so the
    ingester would stop to write pages back and fsync (about a sixth of its time under load).
    Here the writer turns that off and this thread runs PASSIVE checkpoints, which never block
    the writer; the step runs in SQLite's C code without the GIL, so on another core.

    A PASSIVE checkpoint never catches up with a writer that keeps committing, and the WAL is
    only rewound once it has been copied completely: so once it holds RESTART_FRAMES, a
    RESTART checkpoint copies the few frames left (the writer waits that long) and lets the
    next transaction start the WAL from the beginning; the writer's journal_size_limit then
    truncates the file. A reader holding an old snapshot (a long `sqlite3` session) can still
    keep the WAL from being rewound, as with SQLite's own checkpoints."""

    RESTART_FRAMES = 8192  # 32 MiB of 4 KiB pages
    WAL_LIMIT_BYTES = 64 << 20

    def __init__(self, path: str | Path, interval_s: float = 0.5) -> None:
        self.path = str(path)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self.errors = 0
        self.restarts = 0

    @staticmethod
    def writer_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        """For the writer's connections: leave checkpoints to this thread, truncate the WAL
        when it is rewound, and give the indexes' B-tree pages room in the page cache (16 MiB;
        the default 2 MiB makes the latency index, filled at random positions, re-read pages
        on every batch)."""
        dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
        dbapi_conn.execute(f"PRAGMA journal_size_limit={Checkpointer.WAL_LIMIT_BYTES}")
        dbapi_conn.execute("PRAGMA cache_size=-16384")

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def _run(self) -> None:
        # A short busy timeout: a RESTART that has to wait for a reader gives up and is tried
        # again later rather than holding the writer up.
        con = sqlite3.connect(self.path, timeout=0.25, check_same_thread=False)
        try:
            while not self._stop.wait(self.interval_s):
                frames = self.checkpoint(con, "PASSIVE")
                if frames >= self.RESTART_FRAMES and self.checkpoint(con, "RESTART") >= 0:
                    self.restarts += 1
            self.checkpoint(con, "TRUNCATE")  # at stop: leave a self-contained database file
        finally:
            con.close()

    def checkpoint(self, con: sqlite3.Connection, mode: str) -> int:
        """Frames in the WAL, or -1 when the checkpoint could not complete (busy)."""
        try:
            busy, log_frames, _done = con.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            return -1 if busy and mode != "PASSIVE" else int(log_frames)
        except sqlite3.Error as e:  # busy or disk full: the WAL keeps the data, retry later
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("WAL checkpoint of %s failed (%s); will retry", self.path, e)
            return -1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
