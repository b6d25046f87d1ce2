"""The report as a real rq job on a real worker; the worker refuses any other function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from kernelsight.compose_stress import StepFailed, run_report
from kernelsight.db import open_db
from kernelsight.rqjobs import queue


def worker(url: str, data_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kernelsight", "report-worker", "--burst",
                             "--redis-url", url, "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_report_job_runs_on_worker(settings, tmp_path):
    open_db(settings.db_path).dispose()
    q = queue(settings.redis_url)
    job = q.enqueue("kernelsight.report.report_job", settings.db_path, 60.0, ["scraper"])
    w = worker(settings.redis_url, tmp_path)
    w.wait(60)
    job = Job.fetch(job.id, connection=q.connection, serializer=JSONSerializer)
    res = job.return_value()
    assert res["exit_code"] == 1 and "Captured: 0/10" in res["text"]
    assert "\x1b[" not in res["text"]  # plain text, no colour codes


def test_worker_refuses_other_functions(settings, tmp_path):
    marker = tmp_path / "pwned"
    q = queue(settings.redis_url)
    job = q.enqueue("os.system", f"touch {marker}")
    worker(settings.redis_url, tmp_path).wait(60)
    job = Job.fetch(job.id, connection=q.connection, serializer=JSONSerializer)
    assert job.get_status() == "failed"
    assert not marker.exists()


def test_report_wait_times_out_clearly(settings):
    open_db(settings.db_path).dispose()
    with pytest.raises(StepFailed, match="report job"):
        run_report(settings.redis_url, settings.db_path, 60.0, ["scraper"], timeout=1)
