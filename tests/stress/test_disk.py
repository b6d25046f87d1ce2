MiB = 1 << 20


def test_disk_writes_a_file_and_syncs_it(run_workload) -> None:
    res = run_workload("disk", disk_mib=8)
    assert res["file_bytes"] == 8 * MiB
    assert res["bytes_written"] > 0 and res["fsyncs"] > 0 and res["files_written"] > 0
