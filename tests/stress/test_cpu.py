from kernelsight.stress.workloads import cpu


def test_cpu_python_loops_count_bogo_ops(run_workload) -> None:
    res = run_workload("cpu", use_stress_ng=False)
    assert res["engine"] == "python" and res["workers"] == cpu.CPU_WORKERS
    assert res["bogo_ops"] > 0
