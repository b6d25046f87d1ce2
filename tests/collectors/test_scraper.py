"""The scraper over a procfs root made of verbatim fixtures, publishing into the private
Redis: PSI and vmstat rows, a kernel without /proc/pressure, and malformed files, each
counted in the publisher's accounting (produced = published + dropped)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kernelsight import schema
from kernelsight.collectors.scraper import Scraper
from kernelsight.streams import FIELD, Publisher, decode

from conftest import FIXTURES

H = "testhost"  # the settings fixture's host

FC = FIXTURES / "proc" / "firecracker-6.18"  # copied before PSI/vmstat were scraped
LOADED = FIXTURES / "proc" / "loaded-6.18"


def make_root(tmp_path: Path, psi: bool = True) -> Path:
    root = tmp_path / "proc"
    shutil.copytree(FC, root)
    shutil.copy(LOADED / "vmstat", root / "vmstat")
    if psi:
        shutil.copytree(LOADED / "pressure", root / "pressure")
    return root


def scrape(settings, root: Path, times: int = 1) -> tuple[Publisher, dict[str, list[dict]]]:
    pub = Publisher(settings.with_(procfs=str(root)), "scraper")
    sc = Scraper(settings.with_(procfs=str(root)), pub)
    sc.start()
    for _ in range(times):
        sc.scrape_once()
    pub.close()
    out = {}
    for et in ("pressure_stats", "vmstat_stats", "memory_metrics"):
        out[et] = [decode(f[FIELD]) for _, f in pub._r.xrange(schema.BY_NAME[et].stream_for(H))]
    return pub, out


def counted(pub: Publisher, et: str, metric: str, reason: str = "") -> int:
    return pub.counters.get((et, metric, reason), 0)


def test_pressure_and_vmstat_rows(settings, tmp_path):
    pub, got = scrape(settings, make_root(tmp_path), times=2)
    psi = got["pressure_stats"]
    assert sorted(r["resource"] for r in psi) == ["cpu", "cpu", "io", "io", "memory", "memory"]
    io = next(r for r in psi if r["resource"] == "io")
    assert io["full_total_us"] == 62960341 and io["some_avg10_pct"] == 0.82
    assert set(io) == {"timestamp", "host", *schema.BY_NAME["pressure_stats"].column_names}
    [v1, v2] = got["vmstat_stats"]
    assert v1["pgmajfault_total"] == 210853 and v1["pgfault_total"] == 394462949
    assert v2["timestamp"] > v1["timestamp"] and v2["host"] == "testhost"
    assert counted(pub, "pressure_stats", schema.PRODUCED) == 6
    assert counted(pub, "vmstat_stats", schema.PRODUCED) == 2
    assert not any(m == schema.DROPPED for (_, m, _) in pub.counters)


def test_no_psi_is_counted_once_and_the_rest_goes_on(settings, tmp_path, caplog):
    pub, got = scrape(settings, make_root(tmp_path, psi=False), times=3)
    assert got["pressure_stats"] == []
    assert counted(pub, "pressure_stats", schema.DROPPED, "psi_unavailable") == 1
    assert counted(pub, "pressure_stats", schema.PRODUCED) == 1  # produced = dropped: balanced
    assert len(got["vmstat_stats"]) == len(got["memory_metrics"]) == 3
    assert sum("does not exist" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("victim, text", [
    ("pressure/memory", "some avg10=0.00 avg60=oops avg300=0.00 total=0\nfull\n"),
    ("pressure/memory", ""),
    ("vmstat", "pgfault 12\n"),
])
def test_malformed_file_is_a_counted_parse_error(settings, tmp_path, victim, text):
    root = make_root(tmp_path)
    (root / victim).write_text(text)
    pub, got = scrape(settings, root, times=2)
    et = "vmstat_stats" if victim == "vmstat" else "pressure_stats"
    assert counted(pub, et, schema.DROPPED, "parse_error") == 2
    if et == "pressure_stats":  # the other resources are still stored
        assert sorted(r["resource"] for r in got[et]) == ["cpu", "cpu", "io", "io"]
        assert counted(pub, et, schema.PRODUCED) == 6  # 4 published + 2 counted drops
    else:
        assert got[et] == [] and counted(pub, et, schema.PRODUCED) == 2
    assert len(got["memory_metrics"]) == 2


def test_unreadable_pressure_file_is_a_read_error(settings, tmp_path):
    root = make_root(tmp_path)
    (root / "pressure/io").unlink()
    pub, got = scrape(settings, root)
    assert counted(pub, "pressure_stats", schema.DROPPED, "read_error") == 1
    assert sorted(r["resource"] for r in got["pressure_stats"]) == ["cpu", "memory"]
