"""Parsers against /proc files copied verbatim from real machines (tests/fixtures/proc)."""

from __future__ import annotations

import pytest

from kernelsight import defaults, procfs

from conftest import FIXTURES

FC = FIXTURES / "proc" / "firecracker-6.18"
BUSY = FIXTURES / "proc" / "busy-6.18"


def read(p):
    return p.read_text()


def test_meminfo_values_are_raw_kb():
    m = procfs.parse_meminfo(read(FC / "meminfo"))
    assert m == {
        "mem_total_kb": 24684092, "mem_free_kb": 24476916, "mem_available_kb": 24418132,
        "buffers_kb": 980, "cached_kb": 37812, "swap_total_kb": 0, "swap_free_kb": 0,
        "active_kb": 14648, "inactive_kb": 18552, "dirty_kb": 80, "writeback_kb": 0,
    }


def test_meminfo_missing_key_is_zero_not_invented():
    text = "\n".join(ln for ln in read(FC / "meminfo").splitlines()
                     if not ln.startswith("MemAvailable"))
    assert procfs.parse_meminfo(text)["mem_available_kb"] == 0
    with pytest.raises(procfs.ParseError):
        procfs.parse_meminfo("garbage\n")


def test_loadavg():
    assert procfs.parse_loadavg(read(FC / "loadavg")) == {
        "load_1min": 0.04, "load_5min": 0.14, "load_15min": 0.08,
        "running_processes": 1, "total_processes": 79, "last_pid": 3206}
    with pytest.raises(procfs.ParseError):
        procfs.parse_loadavg("0.1 0.2")


def test_diskstats_ignores_like_node_exporter():
    rows = procfs.parse_diskstats(read(FC / "diskstats"), defaults.IGNORED_DEVICES)
    assert [r["device_name"] for r in rows] == ["vda"]
    assert rows[0] == {
        "device_name": "vda", "read_ios": 31721, "read_merges": 7659, "read_sectors": 2076090,
        "read_ticks": 11307, "write_ios": 19694, "write_merges": 14079,
        "write_sectors": 1577096, "write_ticks": 11280, "in_flight": 0, "io_ticks": 5864,
        "time_in_queue": 23017}
    assert len(procfs.parse_diskstats(read(FC / "diskstats"))) == 10  # no filter: all devices


def test_net_dev():
    rows = {r["interface_name"]: r for r in procfs.parse_net_dev(read(FC / "net/dev"))}
    assert sorted(rows) == ["eth0", "ifb0", "ifb1", "lo"]
    assert rows["eth0"] == {"interface_name": "eth0", "rx_bytes": 120630240, "rx_packets": 2556,
                            "rx_errors": 0, "rx_drops": 0, "tx_bytes": 150627,
                            "tx_packets": 1761, "tx_errors": 0, "tx_drops": 0}
    assert rows["lo"]["rx_bytes"] == rows["lo"]["tx_bytes"] == 3193


def test_tcp_states_ipv4_and_ipv6():
    st = procfs.count_tcp_states(read(BUSY / "net/tcp"), read(BUSY / "net/tcp6"))
    assert st == {"established": 6, "syn_sent": 0, "syn_recv": 0, "fin_wait1": 0,
                  "fin_wait2": 1, "time_wait": 0, "close": 0, "close_wait": 1,
                  "last_ack": 0, "listen": 3, "closing": 0}
    st4 = procfs.count_tcp_states(read(FC / "net/tcp"), "")
    assert st4["listen"] == 1 and sum(st4.values()) == 1


def test_snmp_by_name_never_by_position():
    snmp = procfs.parse_snmp(read(BUSY / "net/snmp"))
    assert procfs.tcp_retransmits(snmp) == {"retrans_segs": 0, "out_segs": 1766}
    assert snmp["Ip"]["OutTransmits"] == 1790  # a field newer kernels append
    # A kernel that orders or extends the fields differently must still parse right.
    lines = read(BUSY / "net/snmp").splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("Tcp:"))
    names, vals = lines[i].split()[1:], lines[i + 1].split()[1:]
    pairs = list(zip(names, vals, strict=True))[::-1] + [("NewField", "42")]
    pairs = [(n, "77" if n == "RetransSegs" else v) for n, v in pairs]
    lines[i] = "Tcp: " + " ".join(n for n, _ in pairs)
    lines[i + 1] = "Tcp: " + " ".join(v for _, v in pairs)
    snmp2 = procfs.parse_snmp("\n".join(lines))
    assert procfs.tcp_retransmits(snmp2) == {"retrans_segs": 77, "out_segs": 1766}
    with pytest.raises(procfs.ParseError):
        procfs.parse_snmp("Tcp: A B\nTcp: 1\n")
