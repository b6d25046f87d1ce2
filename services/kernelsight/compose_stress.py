"""`kernelsight compose-stress`: the stress test's driver inside `docker compose` (the `stress`
service), against the stack that is already running: collectors, tracers and the ingester
keep collecting before, during and after it (continuous collection); this job only records its
own run and judges that run. It steers nothing but its own workloads:

1. wait until every collector has reported its start (started, or failed: the verdict names it)
   and an rq worker (the `reporter` service) is there
2. record the run's start (a `runs` row, kind ``compose-stress``, through the pipeline)
3. run the stress workloads for TEST_DURATION seconds, printing a progress line
4. record the run's end; wait until every running collector has flushed past it (its
   heartbeat, written after each complete flush, is newer than the end) and until the
   ingester has stored every entry up to the end (``drained_until``; later entries keep
   flowing)
5. enqueue ``kernelsight.report.report_job`` for this run (``--run <id>``) on the rq queue
   "kernelsight" (JSON, report-only jobs), wait for it, print its table, record the verdict
   and exit with its exit code (0 only for SUCCESS)

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
FLUSH_MARGIN_NS = 1_000_000_000  # a heartbeat this much after the end: its flush began after it


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


def run_report(url: str, db_path: str, duration_s: float | None, expected: list[str],
               timeout: float, run: str | None = None) -> dict:
    from rq.job import JobStatus

    from kernelsight.rqjobs import queue

    q = queue(url)  # JSON serializer and the report-only job class, as the worker expects
    # Job arguments are JSON-safe strings/numbers: report_job(db_path, duration_s, expected,
    # run, since, until).
    job = q.enqueue(REPORT_JOB, db_path, duration_s, expected, run, job_timeout=int(timeout),
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


def wait_flushed(url: str, names: list[str], after_ns: int, timeout: float) -> list[str]:
    """Wait until each collector's heartbeat is newer than ``after_ns``: a Publisher writes it
    only after a flush that emptied its buffer, so everything it produced before then is in
    Redis. Returns the collectors that did not (they may have died: the report shows them)."""
    import orjson

    from kernelsight.streams import HEALTH_KEY, connect

    r = connect(url)
    end = time.monotonic() + timeout
    late = list(names)
    while late and time.monotonic() < end:
        raw = r.mget([HEALTH_KEY.format(source=n) for n in late])
        late = [n for n, v in zip(late, raw, strict=True)
                if not v or orjson.loads(v).get("timestamp", 0) <= after_ns]
        if late:
            time.sleep(0.25)
    r.close()
    return late


def compose_stress(url: str, db_path: str, duration: float, names: list[str],
                   workdir: str | None, mem_mib: int, start_timeout: float,
                   stop_timeout: float, drain_timeout: float, report_timeout: float) -> int:
    from kernelsight.config import Settings
    from kernelsight.runs import RunRecorder, wait_drained_until
    from kernelsight.stress import run_stress
    from kernelsight.window import ns_to_id

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

    rec = RunRecorder(Settings(redis_url=url, db_path=db_path), "compose-stress").begin()
    try:
        _say(f"run {rec.run_id}: running the stress workloads for {duration:g}s")
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
        end_ns = rec.end()

        _say("waiting for the collectors to flush past the run's end (they keep running)")
        late = wait_flushed(url, running, end_ns + FLUSH_MARGIN_NS, stop_timeout)
        if late:
            _say(f"  no complete flush from {', '.join(late)} within {stop_timeout:.0f}s; "
                 "the report shows what was stored")
        _say("waiting for the ingester to store everything up to the run's end")
        if not wait_drained_until(url, ns_to_id(end_ns), drain_timeout):
            raise StepFailed(f"timed out after {drain_timeout:.0f}s waiting for the ingester "
                             "to store the run (is the ingest service running?)")

        out = run_report(url, db_path, None, names, report_timeout, run=rec.run_id)
        click.echo(printable_block(str(out["text"]).rstrip("\n")))  # the result is in Redis
        sys.stdout.flush()
        verdict = str(out.get("json", {}).get("verdict", "")) or (
            "SUCCESS" if int(out["exit_code"]) == 0 else "FAIL")
        rec.verdict(verdict)
        # The verdict row goes through the pipeline like any event: wait until it is stored,
        # so `kernelsight report --run` / `query --runs` show it the moment this job exits.
        if not wait_drained_until(url, rec.last_id, drain_timeout):
            _say(f"  the ingester did not store the verdict row within {drain_timeout:.0f}s; "
                 "`kernelsight query --runs` shows the run without it until it does")
        _say(f"run {rec.run_id}: {verdict} (kernelsight report --run {rec.run_id})")
        return int(out["exit_code"])
    finally:
        rec.close()


@click.command("compose-stress", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--duration", type=click.FloatRange(min=1, max=86400), default=60.0,
              envvar="TEST_DURATION", show_envvar=True, show_default=True,
              help="Seconds of stress workloads.")
@click.option("--redis-url", envvar="KS_REDIS_URL", required=True, show_envvar=True,
              help="The compose stack's Redis.")
@click.option("--db", "--db-path", "db_path", envvar=["KS_DB_PATH", "KS_DB_URL"], show_envvar=True,
              default="/data/kernelsight.db", show_default=True,
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
              envvar="KS_STOP_TIMEOUT",
              help="Seconds to wait for the collectors to flush past the run's end.")
@click.option("--drain-timeout", type=float, default=180.0, show_default=True,
              envvar="KS_DRAIN_TIMEOUT", help="Seconds to wait for the ingester to drain.")
@click.option("--report-timeout", type=float, default=300.0, show_default=True,
              envvar="KS_REPORT_TIMEOUT", help="Seconds to wait for the report job.")
def command(duration: float, redis_url: str, db_path: str, collector_list: str,
            workdir: str | None, mem_mib: int, start_timeout: float, stop_timeout: float,
            drain_timeout: float, report_timeout: float) -> None:
    """Stress test inside docker compose (the `stress` service) against the running stack:
    record a run, run the workloads, wait until the run is stored (collection goes on), then
    print the rq reporter's verdict for this run only.

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
