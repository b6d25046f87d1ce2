def test_net_serves_http_and_tcp_on_loopback(run_workload) -> None:
    res = run_workload("net")
    assert res["http_requests"] > 0 and res["http_bytes"] > 0 and res["http_errors"] == 0
    assert res["server_requests"] > 0
    assert res["tcp_connections"] > 0 and res["tcp_bytes"] > 0
