"""Crafted rq jobs against a real `kernelsight report-worker --burst`: anyone holding the Redis
password can write a job hash, so the worker must run nothing but the report (no callbacks,
webhooks, dependencies, pickle, foreign functions or odd arguments) and keep working."""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.webhook import Webhook

from kernelsight.db import open_db
from kernelsight.rqjobs import ReportOnlyJob

REPORT = "kernelsight.report.report_job"
EVIL_MODULE = '''
import os
from pathlib import Path


def pwn(*args, **kwargs):
    """A callable an attacker names in a job: proof that it ran is a file."""
    Path(os.environ["KS_PWN_DIR"], "pwned-" + str(os.getpid())).touch()
    return {"text": "", "exit_code": 0, "json": {}}
'''


class Listener:
    """An HTTP server on 127.0.0.1 that records every request it receives."""

    def __init__(self) -> None:
        hits = self.hits = []

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(("GET", self.path))
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:
                hits.append(("POST", self.path))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.srv = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    """An importable module with a callable that leaves a file when called."""
    mod = tmp_path / "evilmod"
    mod.mkdir()
    (mod / "ks_evil.py").write_text(EVIL_MODULE)
    (tmp_path / "pwn").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def run_worker(url: str, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "evilmod"), KS_PWN_DIR=str(tmp_path / "pwn"),
               KS_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run([sys.executable, "-m", "kernelsight", "report-worker", "--burst",
                           "--redis-url", url], check=False, capture_output=True, text=True,
                          env=env, timeout=timeout)


def plain_queue(url: str) -> Queue:
    """A stock rq queue, as an attacker would use (JSON so that the worker can read it)."""
    return Queue("kernelsight", connection=redis.Redis.from_url(url), serializer=JSONSerializer)


def crafted(q: Queue, db: str, hook: str) -> dict[str, Job]:
    """One job per door; every one of them must be refused."""
    c = q.connection
    jobs = {
        "success callback": q.enqueue(REPORT, db, 60.0, ["scraper"],
                                      on_success=Callback("ks_evil.pwn")),
        "failure callback on a foreign function": q.enqueue(
            "os.getcwd", on_failure=Callback("ks_evil.pwn")),
        "failure callback on the report": q.enqueue(REPORT, db, "not a number", ["scraper"],
                                                    on_failure=Callback("ks_evil.pwn")),
        "stopped callback": q.enqueue(REPORT, db, 60.0, ["scraper"],
                                      on_stopped=Callback("ks_evil.pwn")),
        "print callback": q.enqueue("os.getcwd", on_failure=Callback("builtins.print")),
        "webhooks": q.enqueue(REPORT, db, 60.0, ["scraper"], webhooks=[
            Webhook(hook, job_status=JobStatus.FINISHED),
            Webhook(hook, job_status=JobStatus.FAILED, method="GET")]),
        "foreign function": q.enqueue("ks_evil.pwn"),
        "extra kwargs": q.enqueue(REPORT, db_path=db, evil=1),
        "wrong argument type": q.enqueue(REPORT, {"db": db}),
        "unknown expected collector": q.enqueue(REPORT, db, 60.0, ["../../x"]),
        "too many arguments": q.enqueue(REPORT, db, 60.0, ["scraper"], 4),
    }
    dep = q.enqueue(REPORT, db, 60.0, ["scraper"])
    c.hset(dep.key, mapping={"dependency_id": "nope", "dependency_ids": '["nope"]'})
    jobs["dependencies"] = dep
    rep = q.enqueue(REPORT, db, 60.0, ["scraper"])
    c.hset(rep.key, mapping={"repeats_left": "5", "repeat_intervals": "[0]"})
    jobs["repeats"] = rep
    unk = q.enqueue(REPORT, db, 60.0, ["scraper"])
    c.hset(unk.key, "future_rq_field", "x")
    jobs["unknown hash field"] = unk

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {Path(db).parent.parent}/pwn/pickle",))

    pk = q.enqueue(REPORT, db, 60.0, ["scraper"])
    c.hset(pk.key, "data", pickle.dumps((REPORT, None, [Evil()], {})))
    jobs["pickle data"] = pk
    bad = q.enqueue(REPORT, db, 60.0, ["scraper"])
    c.hset(bad.key, "timeout", "not-a-number")
    jobs["unparseable hash"] = bad
    return jobs


def test_crafted_jobs_are_refused_and_run_nothing(redis_url, tmp_path, evil):
    db = str(tmp_path / "data" / "ks.db")
    open_db(db).dispose()
    hook = Listener()
    try:
        q = plain_queue(redis_url)
        jobs = crafted(q, db, hook.url)
        good = q.enqueue(REPORT, db, 60.0, ["scraper"])  # after them all: the worker goes on
        res = run_worker(redis_url, tmp_path)
    finally:
        hook.close()
    assert list((tmp_path / "pwn").iterdir()) == [], "a named callable ran in the worker"
    assert hook.hits == [], f"the worker sent webhooks: {hook.hits}"
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "<Job " not in res.stdout + res.stderr, "builtins.print was called as a callback"
    wrong = {}
    for name, job in jobs.items():
        j = ReportOnlyJob.fetch(job.id, connection=q.connection, serializer=JSONSerializer)
        status = j.get_status()
        r = j.latest_result()
        exc = (r.exc_string or "") if r else ""
        if status != JobStatus.FAILED or "refused" not in exc:
            wrong[name] = (status, exc.strip().splitlines()[-1:] if exc else "no result")
    assert not wrong, wrong
    g = Job.fetch(good.id, connection=q.connection, serializer=JSONSerializer)
    assert g.get_status() == JobStatus.FINISHED, res.stderr[-3000:]
    assert "Captured: 0/10" in g.return_value()["text"]


@pytest.mark.parametrize("db_path", ["/etc/passwd", "../outside.db", "{data}/../outside.db",
                                     "{data}/link.db", "/proc/self/environ", "{tmp}/outside.db"])
def test_job_database_confined_to_data_dir(redis_url, tmp_path, evil, db_path):
    outside = tmp_path / "outside.db"
    open_db(outside).dispose()
    (tmp_path / "data" / "link.db").symlink_to(outside)
    q = plain_queue(redis_url)
    job = q.enqueue(REPORT, db_path.format(tmp=tmp_path, data=tmp_path / "data"), 60.0, ["scraper"])
    before = outside.read_bytes()
    res = run_worker(redis_url, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    j = Job.fetch(job.id, connection=q.connection, serializer=JSONSerializer)
    r = j.latest_result()
    assert j.get_status() == JobStatus.FAILED
    assert r is not None and "refused" in (r.exc_string or "") and "data directory" in (
        r.exc_string or "")
    assert outside.read_bytes() == before


def test_job_on_foreign_file_in_data_dir_changes_nothing(redis_url, tmp_path, evil):
    """The report job opens its database read-only: a foreign SQLite file in the data
    directory stays byte-identical and the job fails with one clear line."""
    foreign = tmp_path / "data" / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE accounts(owner TEXT)")
    con.execute("INSERT INTO accounts VALUES ('alice')")
    con.commit()
    con.close()
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in (tmp_path / "data").iterdir()}
    q = plain_queue(redis_url)
    job = q.enqueue(REPORT, str(foreign), 60.0, ["scraper"])
    res = run_worker(redis_url, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (tmp_path / "data").iterdir()}
    assert after == before
    j = ReportOnlyJob.fetch(job.id, connection=q.connection, serializer=JSONSerializer)
    r = j.latest_result()
    assert j.get_status() == JobStatus.FAILED and r is not None
    assert "not a KernelSight database" in (r.exc_string or "")
