"""`kernelsight compose-stress`: the stress test's driver inside `docker compose` (the `stress`
service). The collectors, tracers, ingester and reporter run in their own containers, so this
job cannot signal them; it steers them through Redis:

1. wait until every collector has reported its start (started, or failed: the verdict names it)
2. run the stress workloads for TEST_DURATION seconds, printing a progress line
3. ``request_stop``: every collector flushes, publishes its final accounting and says stopped
4. ``wait_drained``: the ingester has stored everything
5. enqueue ``kernelsight.report.report_job`` on the rq queue "kernelsight" (the `reporter`
   service runs `kernelsight report-worker`: JSON, report-only jobs), wait for it, print
   its table and exit with its exit code (0 only for SUCCESS)

A step that times out prints one line saying which and exits 3 (Redis unreachable: 3 too).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from kernelsight import collectors
from kernelsight.config import redact
from kernelsight.safetext import printable, printable_block

QUEUE = "kernelsight"
REPORT_JOB = "kernelsight.report.report_job"
EXIT_TIMEOUT = 3


class StepFailed(Exception):
    """One line for the user; the job exits non-zero."""


def _say(msg: str) -> None:
    """One line; details from Redis (collector failures) are shown escaped."""
    click.echo(f"compose-stress: {printable(msg, 2000)}", err=False)
    sys.stdout.flush()


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; StepFailed after ``timeout``."""
    end = time.monotonic() + timeout
    last_err = ""
    while True:
        try:
            res = check()
            if res:
                return res
        except Exception as e:  # noqa: BLE001 - e.g. Redis not up yet: keep waiting
            last_err = f" (last error: {e.__class__.__name__}: {e})"
        if time.monotonic() >= end:
            raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}{last_err}")
        time.sleep(every)


def wait_redis(url: str, timeout: float) -> None:
    from kernelsight.streams import connect

    _wait(f"Redis at {redact(url)}", lambda: connect(url, 2).ping(), timeout)


def wait_started(url: str, names: list[str], timeout: float) -> dict[str, dict]:
    """Every collector's status is started or failed. A collector still 'stopped' from an
    earlier run is not started: the message says to restart its container."""
    from kernelsight.runner import wait_states

    st = wait_states(url, names, {"started", "failed"}, timeout)
    late = {n: s.get("state", "unknown") for n, s in st.items()
            if s.get("state") not in ("started", "failed")}
    if late:
        hint = ""
        if "stopped" in late.values():
            hint = ("; a previous run stopped them: docker compose restart collector tracer "
                    "(or docker compose down first)")
        raise StepFailed(f"timed out after {timeout:.0f}s waiting for collectors to start: "
                         + ", ".join(f"{n} is {s}" for n, s in late.items()) + hint)
    return st


def wait_worker(url: str, timeout: float) -> None:
    from rq import Worker

    from kernelsight.streams import connect

    def has_worker() -> bool:
        return any(QUEUE in w.queue_names() for w in Worker.all(connection=connect(url)))

    _wait(f"an rq worker on queue {QUEUE!r} (the reporter service)", has_worker, timeout)


def run_report(url: str, db_path: str, duration_s: float, expected: list[str],
               timeout: float) -> dict:
    from rq.job import JobStatus

    from kernelsight.rqjobs import queue

    q = queue(url)  # JSON serializer and the report-only job class, as the worker expects
    job = q.enqueue(REPORT_JOB, db_path, duration_s, expected, job_timeout=int(timeout),
                    result_ttl=3600, failure_ttl=3600, description="KernelSight stress report")
    _say(f"report job {job.id} enqueued on {QUEUE!r}; waiting for the reporter")

    def done() -> str | None:
        status = job.get_status(refresh=True)
        return status if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED,
                                    JobStatus.CANCELED) else None

    status = _wait(f"the report job {job.id} (status {job.get_status()})", done, timeout, 0.3)
    if status != JobStatus.FINISHED:
        res = job.latest_result()
        exc = (res.exc_string or "").strip().splitlines() if res else []
        raise StepFailed(f"the report job {status}: {exc[-1] if exc else 'no details'}")
    out = job.return_value()
    if not isinstance(out, dict) or "text" not in out or "exit_code" not in out:
        raise StepFailed(f"the report job returned {type(out).__name__}, not the report dict")
    return out


def compose_stress(url: str, db_path: str, duration: float, names: list[str],
                   workdir: str | None, mem_mib: int, start_timeout: float,
                   stop_timeout: float, drain_timeout: float, report_timeout: float) -> int:
    from kernelsight.ingest import wait_drained
    from kernelsight.runner import request_stop, wait_states
    from kernelsight.stress import run_stress

    _say(f"redis {redact(url)}, database {db_path}, {duration:g}s of stress")
    wait_redis(url, start_timeout)

    _say(f"waiting for collectors to start: {', '.join(names)}")
    st = wait_started(url, names, start_timeout)
    for n in names:
        s = st[n]
        mark = "started" if s["state"] == "started" else f"FAILED: {s.get('detail', '')}"
        _say(f"  {n}: {mark}")
    running = [n for n in names if st[n]["state"] == "started"]
    if not running:
        _say("no collector started; the report will say why")
    wait_worker(url, start_timeout)

    _say(f"running the stress workloads for {duration:g}s")
    last = [0.0]
    t0 = time.monotonic()

    def tick(elapsed: float) -> None:
        shown = min(elapsed, duration)
        if shown - last[0] >= 10 or (shown >= duration > last[0]):
            last[0] = shown
            _say(f"  progress: {shown:.0f}/{duration:g}s")

    summary = run_stress(duration, workdir=workdir, on_tick=tick, mem_mib=mem_mib)
    ran = time.monotonic() - t0
    _say(f"workloads done in {ran:.1f}s: " + "; ".join(
        f"{k}: " + ", ".join(f"{kk}={vv}" for kk, vv in v.items())
        for k, v in (summary or {}).items() if isinstance(v, dict)))

    _say("stopping collectors (flush + final accounting)")
    request_stop(url)
    st = wait_states(url, running, {"stopped", "failed"}, stop_timeout)
    late = [n for n in running if st[n].get("state") not in ("stopped", "failed")]
    if late:
        raise StepFailed(f"timed out after {stop_timeout:.0f}s waiting for "
                         f"{', '.join(late)} to stop")

    _say("waiting for the ingester to store every event")
    if not wait_drained(url, drain_timeout):
        raise StepFailed(f"timed out after {drain_timeout:.0f}s waiting for the ingester to "
                         "drain the streams (is the ingest service running?)")

    out = run_report(url, db_path, float(duration), names, report_timeout)
    click.echo(printable_block(str(out["text"]).rstrip("\n")))  # the result is in Redis
    sys.stdout.flush()
    return int(out["exit_code"])


@click.command("compose-stress", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--duration", type=click.FloatRange(min=1, max=86400), default=60.0,
              envvar="TEST_DURATION", show_envvar=True, show_default=True,
              help="Seconds of stress workloads.")
@click.option("--redis-url", envvar="KS_REDIS_URL", required=True, show_envvar=True,
              help="The compose stack's Redis.")
@click.option("--db", "--db-path", "db_path", envvar="KS_DB_PATH", show_envvar=True,
              default="/data/stress_test.db", show_default=True,
              help="The database as the reporter sees it.")
@click.option("--collectors", "collector_list", envvar="KS_COLLECTORS", show_envvar=True,
              default="all", show_default=True,
              help=f"Comma list of {', '.join(collectors.ALL)} or 'all'.")
@click.option("--workdir", envvar="KS_STRESS_WORKDIR", show_envvar=True, default=None,
              help="Where the disk workloads write (on a real block device, not tmpfs).")
@click.option("--mem-mib", type=click.IntRange(16, 1 << 20), default=1024, show_default=True,
              envvar="KS_STRESS_MEM_MIB", show_envvar=True,
              help="MiB the memory workload allocates and keeps touching.")
@click.option("--start-timeout", type=float, default=180.0, show_default=True,
              envvar="KS_START_TIMEOUT", help="Seconds to wait for collectors to start.")
@click.option("--stop-timeout", type=float, default=60.0, show_default=True,
              envvar="KS_STOP_TIMEOUT", help="Seconds to wait for collectors to stop.")
@click.option("--drain-timeout", type=float, default=180.0, show_default=True,
              envvar="KS_DRAIN_TIMEOUT", help="Seconds to wait for the ingester to drain.")
@click.option("--report-timeout", type=float, default=300.0, show_default=True,
              envvar="KS_REPORT_TIMEOUT", help="Seconds to wait for the report job.")
def command(duration: float, redis_url: str, db_path: str, collector_list: str,
            workdir: str | None, mem_mib: int, start_timeout: float, stop_timeout: float,
            drain_timeout: float, report_timeout: float) -> None:
    """Stress test inside docker compose (the `stress` service): wait for the collectors,
    run the workloads, stop and drain through Redis, then print the rq reporter's verdict.

    Exit code 0 only for SUCCESS; 3 if a step timed out.

    \b
    Examples:
      TEST_DURATION=60 docker compose up --build --exit-code-from stress --attach stress
      docker compose run --rm -e TEST_DURATION=20 stress
    """
    from kernelsight.config import check_redis_url

    check_redis_url(redis_url)
    names = collectors.parse_list(collector_list)
    if workdir:
        os.makedirs(workdir, exist_ok=True)
    try:
        rc = compose_stress(redis_url, db_path, duration, names, workdir, mem_mib,
                            start_timeout, stop_timeout, drain_timeout, report_timeout)
    except StepFailed as e:
        click.echo(f"compose-stress: error: {printable(e, 2000)}", err=True)
        sys.exit(EXIT_TIMEOUT)
    sys.exit(rc)


if __name__ == "__main__":  # `python -m kernelsight.compose_stress` before it is registered
    command()
