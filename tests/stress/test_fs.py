def test_fs_creates_reads_and_deletes_files(run_workload) -> None:
    res = run_workload("fs")
    assert res["files_created"] > 0 and res["files_deleted"] == res["files_created"]
    assert res["files_stat"] > 0 and res["files_read"] > 0 and res["bytes_read"] > 0
    assert res["dirs_created"] > 0 and res["walk_entries"] > 0
