MiB = 1 << 20


def test_mem_touches_pages_and_takes_minor_faults(run_workload) -> None:
    res = run_workload("mem", mem_mib=64)
    assert res["allocated_bytes"] == 64 * MiB
    assert res["bytes_touched"] > 0 and res["pages_touched"] > 0
    assert res["minor_faults"] >= res["pages_touched"] > 0
    assert res["max_rss_bytes"] > 0
