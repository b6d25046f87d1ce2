"""All four tracers together through the real pipeline: their BPF C compiles and attaches on
this kernel, and every row they emit matches the schema (the ingester stores all of them: no
dead letters, produced = stored + counted drops)."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from kernelsight import collectors, schema
from kernelsight.db import open_db
from kernelsight.report import build

from conftest import need_root, running_pipeline


def workload() -> None:
    """A little of everything: slow syscalls, faults, disk writes with fsync, switches."""
    for _ in range(5):
        time.sleep(0.03)
    m = mmap.mmap(-1, 16 << 20)
    for i in range(0, 16 << 20, 4096):
        m[i] = 1
    m.close()
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as f:
        for _ in range(20):
            f.write(os.urandom(1 << 16))
            f.flush()
            os.fsync(f.fileno())
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_all_tracers_emit_schema_rows(settings, tmp_path: Path):
    need_root()
    s = settings.with_(interval=0.5)
    with running_pipeline(s, list(collectors.TRACERS), tmp_path / "logs"):
        workload()
        time.sleep(1.2)
    eng = open_db(s.db_path, create=False)
    with eng.connect() as c:
        dead = c.execute(text("SELECT event_type, reason FROM dead_letters")).all()
        counts = {t: c.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                  for t in schema.TABLES}
    rep = build(eng, s.db_path, None, list(collectors.TRACERS))
    assert dead == [], dead
    # The workload's slow syscalls are sleeps: waits, summarised by default (its fsyncs are
    # usually under the slow threshold), so they land in syscall_wait_summaries.
    for t in ("syscall_wait_summaries", "page_fault_events", "page_fault_totals",
              "io_latency_stats", "sched_events"):
        assert counts[t] > 0, (t, counts)
    for t in schema.TABLES:
        assert rep.balance(t) == 0, (t, rep.produced.get(t), counts[t], rep.dropped.get(t))
    assert sorted(rep.started) == sorted(collectors.TRACERS) and not rep.failed


def test_doctor_all_green():
    need_root()
    p = subprocess.run([sys.executable, "-m", "kernelsight", "doctor"], capture_output=True,
                       text=True, timeout=180, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in collectors.TRACERS:
        line = next(ln for ln in p.stdout.splitlines() if f"tracer {name}" in ln)
        assert "✓" in line and "attach" in line, line
    assert "kernel headers" in p.stdout


def test_read_hash_reads_every_entry_into_kept_arrays():
    """bpfsupport.read_hash (the sched tracer's per-interval map reads) on a real BPF hash
    map: every entry with its value, as key-by-key iteration gives them; the arrays grow when
    the map outgrows them and are kept for the next read."""
    need_root()
    from bcc import BPF

    from kernelsight.bpfsupport import read_hash

    b = BPF(text=b"""
    struct val_t { u64 a; u32 b; char comm[16]; };
    BPF_HASH(h, u32, struct val_t, 8192);
    BPF_PERCPU_HASH(pc, u32, struct val_t, 1024);
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }
    """)
    try:
        h = b[b"h"]
        assert read_hash(h) == []
        for k in range(3000):
            v = h.Leaf(k * 7, k % 13, b"p%d" % k)
            h[h.Key(k)] = v
        def key(k):  # an int from the batch arrays, a c_uint from items()
            return k if isinstance(k, int) else k.value

        got = {key(k): (int(v.a), int(v.b), bytes(v.comm)) for k, v in read_hash(h)}
        want = {key(k): (int(v.a), int(v.b), bytes(v.comm)) for k, v in h.items()}
        assert len(got) == 3000 and got == want
        assert got[2999] == (2999 * 7, 2999 % 13, b"p2999")
        kept = h._ks_batch
        assert 3000 <= kept.n <= 8192
        for k in range(0, 3000, 2):
            del h[h.Key(k)]
        got = {key(k) for k, _ in read_hash(h)}
        assert got == set(range(1, 3000, 2))
        assert h._ks_batch is kept  # no new arrays for a smaller map
        # A per-CPU hash (the page-fault totals): one value per possible CPU.
        pc = b[b"pc"]
        ncpu = len(pc.Leaf())
        for k in range(600):
            pc[pc.Key(k)] = pc.Leaf(*[pc.sLeaf(k + c, c, b"c%d" % c) for c in range(ncpu)])
        got = {key(k): [(int(x.a), int(x.b), bytes(x.comm)) for x in v]
               for k, v in read_hash(pc)}
        assert got == {k: [(k + c, c, b"c%d" % c) for c in range(ncpu)] for k in range(600)}
    finally:
        b.cleanup()
