def test_io_writes_and_syncs(run_workload) -> None:
    res = run_workload("io")
    assert res["writes"] > 0 and res["bytes_written"] > 0
    assert res["fsyncs"] > 0 and res["fdatasyncs"] > 0
