def test_slow_makes_every_kind_of_slow_syscall(run_workload) -> None:
    res = run_workload("slow")
    kinds = ("sleep", "poll", "select", "epoll", "futex", "pipe_read")
    assert all(res[k] > 0 for k in kinds), res
    assert res["slow_calls"] == sum(res[k] for k in kinds)
