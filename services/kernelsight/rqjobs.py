"""The report as an rq job, with the doors rq leaves open closed.

A plain `rq worker` unpickles job data and will import and call any function a Redis client
names, so anyone holding the Redis password could run code in the reporter. Ours uses JSON
(no pickle) and a job class that refuses every function but the report."""

from __future__ import annotations

import sys

import click
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from kernelsight.streams import ping

QUEUE = "kernelsight"
ALLOWED = frozenset({"kernelsight.report.report_job"})


class ReportOnlyJob(Job):
    @property
    def func(self):  # type: ignore[override]
        if self.func_name not in ALLOWED:
            raise PermissionError(f"job function {self.func_name!r} is not allowed here")
        return super().func


def queue(redis_url: str) -> Queue:
    return Queue(QUEUE, connection=ping(redis_url), serializer=JSONSerializer,
                 job_class=ReportOnlyJob)


@click.command("report-worker", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", envvar="KS_REDIS_URL", show_envvar=True, required=True)
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def command(redis_url: str, burst: bool) -> None:
    """Run an rq worker that executes report jobs only (JSON, no pickle).

    \b
    Examples:
      kernelsight report-worker --redis-url redis://:pw@redis:6379/0
    """
    q = queue(redis_url)
    w = Worker([q], connection=q.connection, serializer=JSONSerializer,
               job_class=ReportOnlyJob)
    w.work(burst=burst, with_scheduler=False)
    sys.exit(0)
