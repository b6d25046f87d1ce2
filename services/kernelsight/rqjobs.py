"""The report as an rq job, with the doors rq leaves open closed.

Anyone holding the Redis password can write a job hash. A stock `rq worker` unpickles its data,
imports and calls the function it names, imports and calls its success/failure/stopped
callbacks (the failure callback even when the function is refused), sends its webhooks and
follows its dependencies and repeats. Ours validates the whole hash before rq acts on any of
it: only ``kernelsight.report.report_job`` with JSON arguments of the expected names and types,
a database inside the data directory, and no field beyond those a plain enqueue writes.
Anything else is marked failed ("refused: ...") without running anything, and the worker goes
on. The job class also never resolves a callback or sends a webhook, whatever the hash says.

A PostgreSQL database is reported on only when it is the worker's own (``--db`` /
KS_DB_URL / KS_DB_PATH of the worker): a job names it by URL, with or without the password
(better without: the job hash is readable by whoever reads Redis), and the worker connects with
its own URL. A job can thus never make the worker connect to another server."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import click
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import decode_redis_hash
from rq.worker import WorkerStatus

from kernelsight import collectors, defaults
from kernelsight.config import db_label
from kernelsight.exceptions import ConfigError
from kernelsight.sqlcompat import same_database
from kernelsight.streams import ping
from kernelsight.window import parse_selection

QUEUE = "kernelsight"
REPORT_FUNC = "kernelsight.report.report_job"
ALLOWED = frozenset({REPORT_FUNC})
PARAMS = ("db_path", "duration_s", "expected", "run", "since", "until")
MAX_DURATION_S = 7 * 86400
MAX_TIMEOUT_S = 86400
# The fields rq 3.0 writes for a plain enqueue, and what each may hold. Callbacks, webhooks,
# dependencies, retries, repeats, rate limits, meta and any field a later rq adds are refused.
EMPTY = frozenset({"success_callback_name", "failure_callback_name", "stopped_callback_name",
                   "group_id", "worker_name", "started_at", "ended_at", "last_heartbeat"})
INTS = frozenset({"result_ttl", "failure_ttl", "ttl", "timeout"})
FREE = frozenset({"data", "created_at", "enqueued_at", "description", "origin", "status",
                  "enqueue_at_front"})


class Refused(Exception):
    """The job is not the report job with acceptable arguments; the message says why."""


def data_dir() -> Path:
    """Where job databases may live: KS_DATA_DIR, else the directory of KS_DB_PATH (the
    compose services set /data/stress_test.db), else that of the default database."""
    d = os.environ.get("KS_DATA_DIR") or str(Path(
        os.environ.get("KS_DB_PATH") or defaults.DB_PATH).parent)
    return Path(d).resolve()


def worker_db_url() -> str | None:
    """The PostgreSQL database this worker may report on (KS_DB_URL, else a URL in
    KS_DB_PATH), or None."""
    for var in ("KS_DB_URL", "KS_DB_PATH"):
        v = os.environ.get(var)
        if v and "://" in v:
            return v
    return None


def confined(db_path: object, root: Path | None = None) -> str:
    """The job's database as a real path inside the data directory (or, a URL, the worker's
    own database URL), or Refused. Relative paths are taken from the data directory; ``..`` is
    refused outright, and a symlink that leads out is refused because the resolved path is
    checked."""
    root = root or data_dir()
    if not isinstance(db_path, str) or not db_path or len(db_path) > 4096 or "\0" in db_path:
        raise Refused("db_path must be a non-empty string")
    if "://" in db_path:
        own = worker_db_url()
        if own is None or not same_database(db_path, own):
            raise Refused(f"database {db_label(db_path)!r} is not this worker's database "
                          "(start the worker with --db URL / KS_DB_URL to report on it)")
        return own
    if ".." in Path(db_path).parts:
        raise Refused(f"db_path {db_path!r} contains '..'; give a path inside the data "
                      f"directory {root}")
    real = (root / db_path).resolve()
    if not real.is_relative_to(root):
        raise Refused(f"db_path {db_path!r} is outside the data directory {root} "
                      "(set KS_DATA_DIR on the worker to change it)")
    if not real.is_file():
        raise Refused(f"db_path {db_path!r} is not a file in the data directory {root}")
    return str(real)


def check_arguments(func_name: object, instance: object, args: object,
                    kwargs: object) -> dict[str, Any]:
    """The call the job asks for, as keyword arguments for report_job, or Refused."""
    if func_name not in ALLOWED:
        raise Refused(f"job function {func_name!r} is not allowed here (only {REPORT_FUNC})")
    if instance is not None:
        raise Refused("a job instance is not allowed")
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise Refused("job arguments must be a JSON list and object")
    if len(args) > len(PARAMS):
        raise Refused(f"report_job takes at most {len(PARAMS)} arguments, got {len(args)}")
    call = dict(zip(PARAMS, args, strict=False))
    for k, v in kwargs.items():
        if k not in PARAMS or k in call:
            raise Refused(f"unexpected or repeated argument {str(k)[:64]!r}")
        call[k] = v
    if "db_path" not in call:
        raise Refused("db_path is missing")
    call["db_path"] = confined(call["db_path"])
    d = call.get("duration_s")
    if d is not None and (isinstance(d, bool) or not isinstance(d, int | float)
                          or not math.isfinite(d) or not 0 < d <= MAX_DURATION_S):
        raise Refused(f"duration_s must be a number of seconds in (0, {MAX_DURATION_S}]")
    e = call.get("expected")
    if e is not None and (not isinstance(e, list) or len(e) > len(collectors.ALL)
                          or any(x not in collectors.ALL for x in e)):
        raise Refused(f"expected must be a list of collector names from {collectors.ALL}")
    # runs helper: the window, as the --run/--since/--until flags take it (strings).
    for k in ("run", "since", "until"):
        v = call.get(k)
        if v is not None and (not isinstance(v, str) or len(v) > 64):
            raise Refused(f"{k} must be a string of at most 64 characters")
    try:
        parse_selection(call.get("run"), call.get("since"), call.get("until"))
    except ConfigError as e:
        raise Refused(str(e)) from None
    return call


def check_hash(raw: dict[str, bytes]) -> None:
    """Every field of the stored job hash is one a plain enqueue writes, with a sane value."""
    extra = sorted(k for k in raw if k not in EMPTY | INTS | FREE)
    if extra:
        raise Refused("job fields not allowed here: " + ", ".join(x[:40] for x in extra[:8]))
    for k in EMPTY:
        if raw.get(k):
            raise Refused(f"job field {k} must be empty (callbacks, groups and reruns are "
                          "not allowed here)")
    for k in INTS:
        v = raw.get(k)
        if v and not (v.lstrip(b"-").isdigit() and -1 <= int(v) <= MAX_TIMEOUT_S):
            raise Refused(f"job field {k} must be an integer of seconds")
    if raw.get("status") not in (None, b"queued"):
        raise Refused("job is not in the queued state")
    if raw.get("origin") not in (None, QUEUE.encode()):
        raise Refused(f"job does not come from the {QUEUE!r} queue")
    if raw.get("enqueue_at_front") not in (None, b"0", b"1"):
        raise Refused("job field enqueue_at_front must be 0 or 1")


class ReportOnlyJob(Job):
    """A job that keeps the hash it was built from, never imports a callback, never sends a
    webhook, and calls nothing but the report function."""

    refusal: str | None = None

    def restore(self, raw_data: Any) -> Any:
        raw = decode_redis_hash(raw_data)
        self._raw_hash = raw
        self.refusal = None
        try:
            check_hash(raw)
        except Refused as e:
            self.refusal = str(e)
        try:
            return super().restore(raw_data)
        except Exception as e:  # noqa: BLE001 - a malformed hash must not stop the worker
            self.refusal = self.refusal or f"unreadable job hash ({e.__class__.__name__})"
            return None
        finally:
            self.webhooks = []
            self._dependency_ids = []

    @property
    def func(self):  # type: ignore[override]
        if self.func_name not in ALLOWED:
            raise PermissionError(f"job function {self.func_name!r} is not allowed here")
        from kernelsight.report import report_job

        return report_job

    @property
    def success_callback(self) -> None:  # type: ignore[override]
        return None

    @property
    def failure_callback(self) -> None:  # type: ignore[override]
        return None

    @property
    def stopped_callback(self) -> None:  # type: ignore[override]
        return None

    def send_webhooks(self, *_a: Any, **_kw: Any) -> None:
        return None


def refusal(job: Job) -> str | None:
    """Why ``job`` must not run, or None."""
    why = getattr(job, "refusal", None)
    if why:
        return why
    if not isinstance(job, ReportOnlyJob):
        return "not a report job"
    try:
        call = check_arguments(job.func_name, job.instance, job.args, job.kwargs)
    except Refused as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - DeserializationError (pickle, bad JSON...)
        return f"job data is not the JSON this worker reads ({e.__class__.__name__})"
    job.args, job.kwargs = (), call  # run with the checked, resolved values
    return None


class ReportWorker(Worker):
    """Validates each job before rq prepares, performs or finalises it."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        why = refusal(job)
        if why is None:
            super().execute_job(job, queue)
            return
        self.log.warning("Worker %s: job %s refused: %s", self.name, job.id, why)
        execution = self.prepare_execution(job)
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.execute()
        job.ended_at = job.started_at = None
        self.handle_job_failure(job, queue, exc_string=f"refused: {why}", execution=execution)
        self.set_state(WorkerStatus.IDLE)


def queue(redis_url: str) -> Queue:
    return Queue(QUEUE, connection=ping(redis_url), serializer=JSONSerializer,
                 job_class=ReportOnlyJob)


@click.command("report-worker", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", envvar="KS_REDIS_URL", show_envvar=True, required=True)
@click.option("--data-dir", envvar="KS_DATA_DIR", show_envvar=True, default=None,
              help="Job databases must lie in this directory [default: the directory of "
                   f"KS_DB_PATH, else of {defaults.DB_PATH}].")
@click.option("--db", "db_url", envvar="KS_DB_URL", show_envvar=True, default=None,
              help="A PostgreSQL database (postgresql+psycopg://USER:PASSWORD@HOST/DB) that "
                   "jobs may name (by URL, password left out) [default: KS_DB_PATH if it is "
                   "a URL; else none: SQLite files in the data directory only].")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def command(redis_url: str, data_dir: str | None, db_url: str | None, burst: bool) -> None:
    """Run an rq worker that executes report jobs only (JSON, no pickle).

    Every job is checked before rq acts on it: only kernelsight.report.report_job with JSON
    arguments, a database inside the data directory (opened read-only), and no callbacks,
    webhooks, dependencies, retries or repeats. Other jobs fail as "refused".

    \b
    Examples:
      KS_REDIS_URL=redis://:PASSWORD@redis:6379/0 kernelsight report-worker
      kernelsight report-worker --data-dir /data --burst
      KS_DB_URL=postgresql+psycopg://ks:PW@db/kernelsight kernelsight report-worker
    """
    if data_dir:
        os.environ["KS_DATA_DIR"] = data_dir  # read again in the work horse
    if db_url:
        if "://" not in db_url:
            raise ConfigError(f"--db {db_url}: give a PostgreSQL URL; SQLite files are "
                              "named by the jobs (inside --data-dir)")
        os.environ["KS_DB_URL"] = db_url
    q = queue(redis_url)
    w = ReportWorker([q], connection=q.connection, serializer=JSONSerializer,
                     job_class=ReportOnlyJob, log_job_description=False)
    w.work(burst=burst, with_scheduler=False)
    sys.exit(0)
