"""A temporary PostgreSQL server for tests, `make fleet` and `make bench`: a fresh cluster
from Debian's `initdb`, on loopback, password (SCRAM) authentication, removed at the end.

PostgreSQL refuses to run as root, so the cluster belongs to the ``postgres`` system user
(created by Debian's package); its directory is 0700 and ours to delete. The port is chosen
free and then bound by the server: a local process could take it first, but it would not know
the generated password, and we check the server answers with that password."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from kernelsight.exceptions import DatabaseError
from kernelsight.redis_server import free_port

USER = "ks"
DATABASE = "kernelsight"


def pg_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian keeps them versioned)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: int(Path(p).parent.parent.name))
    if dirs:
        return Path(dirs[-1]).parent
    exe = shutil.which("initdb")
    if exe:
        return Path(exe).resolve().parent
    raise DatabaseError("PostgreSQL is not installed; run `apt-get install postgresql` "
                        "(make setup does)")


class TemporaryPostgres:
    """``with TemporaryPostgres() as pg: pg.url`` -> a SQLAlchemy URL (psycopg 3)."""

    def __init__(self, port: int | None = None, os_user: str = "postgres") -> None:
        self.bindir = pg_bindir()
        self.password = secrets.token_urlsafe(18)
        self.port = port or free_port()
        self.os_user = os_user
        self.dir = Path(tempfile.mkdtemp(prefix="ks-pg-"))
        self.data = self.dir / "data"
        self.proc_started = False

    @property
    def url(self) -> str:
        return (f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/"
                f"{DATABASE}")

    @property
    def dsn(self) -> str:
        """The same server as a libpq connection string (psql, psycopg.connect)."""
        return (f"host=127.0.0.1 port={self.port} user={USER} password={self.password} "
                f"dbname={DATABASE}")

    def _as_user(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", self.os_user, "--", *argv]
        return subprocess.run(argv, check=False, capture_output=True,  # type: ignore[call-overload]
                              text=True, **kw)

    def start(self) -> TemporaryPostgres:
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(self.os_user)
            except KeyError:
                raise DatabaseError(f"no {self.os_user!r} user to run PostgreSQL as; install "
                                    "Debian's postgresql package") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        os.chmod(pwfile, 0o600)
        r = self._as_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
                           "-A", "scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                           "--no-sync"])
        pwfile.unlink()
        if r.returncode != 0:
            raise DatabaseError(f"initdb failed: {r.stderr.strip().splitlines()[-1:]}")
        # Throughput over durability for a throwaway cluster; the server itself is stock.
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=100")
        r = self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                           str(self.dir / "server.log"), "-o", opts, "-w", "-t", "30",
                           "start"])
        if r.returncode != 0:
            log = (self.dir / "server.log")
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise DatabaseError(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {tail}")
        self.proc_started = True
        self._psql(f"CREATE DATABASE {DATABASE}", db="postgres")
        return self

    def _psql(self, sql: str, db: str = DATABASE) -> str:
        env = dict(os.environ, PGPASSWORD=self.password)
        r = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", USER, "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                           check=False, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise DatabaseError(f"psql: {r.stderr.strip()}")
        return r.stdout

    def reset(self) -> None:
        """An empty database again (a test's fresh start), the server kept running."""
        self._psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", db="postgres")
        self._psql(f"CREATE DATABASE {DATABASE}", db="postgres")

    def stop(self) -> None:
        if self.proc_started:
            self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                           "-w", "-t", "30", "stop"])
            self.proc_started = False

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        # wait for the postmaster to be gone before removing its directory
        pidfile = self.data / "postmaster.pid"
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:  # noqa: PYI034
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
