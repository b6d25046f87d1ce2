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


LOADED = FIXTURES / "proc" / "loaded-6.18"  # copied while the machine ran a soak (load ~6)


def test_pressure_columns_are_the_schema_columns():
    from kernelsight import schema

    for res in procfs.PSI_RESOURCES:
        row = procfs.parse_pressure(read(LOADED / "pressure" / res), res)
        assert tuple(row) == schema.BY_NAME["pressure_stats"].column_names


def test_pressure_values_are_the_kernels():
    io = procfs.parse_pressure(read(LOADED / "pressure/io"), "io")
    assert io == {"resource": "io", "some_avg10_pct": 0.82, "some_avg60_pct": 1.62,
                  "some_avg300_pct": 2.56, "some_total_us": 651043644,
                  "full_avg10_pct": 0.02, "full_avg60_pct": 0.59, "full_avg300_pct": 0.73,
                  "full_total_us": 62960341}
    cpu = procfs.parse_pressure(read(LOADED / "pressure/cpu"), "cpu")
    assert (cpu["some_avg10_pct"], cpu["some_total_us"]) == (96.5, 6735265814)
    assert cpu["full_total_us"] == 0 and cpu["full_avg10_pct"] == 0.0  # printed as zero
    mem = procfs.parse_pressure(read(LOADED / "pressure/memory"), "memory")
    assert mem["some_total_us"] == mem["full_total_us"] == 0


def test_pressure_cpu_without_full_line():
    # Kernels before 5.13 print only the "some" line for cpu.
    text = "\n".join(ln for ln in read(LOADED / "pressure/cpu").splitlines()
                     if not ln.startswith("full"))
    assert "full" not in text
    row = procfs.parse_pressure(text, "cpu")
    assert row["some_total_us"] == 6735265814
    assert {k: v for k, v in row.items() if k.startswith("full")} == {
        "full_avg10_pct": 0.0, "full_avg60_pct": 0.0, "full_avg300_pct": 0.0,
        "full_total_us": 0}
    # memory and io have always had both lines: a missing one is an error, not a zero.
    io = "\n".join(ln for ln in read(LOADED / "pressure/io").splitlines()
                   if not ln.startswith("full"))
    with pytest.raises(procfs.ParseError, match="no 'full' line"):
        procfs.parse_pressure(io, "io")


@pytest.mark.parametrize("text, msg", [
    ("", "no 'some' line"),
    ("garbage\n", "no 'some' line"),
    ("some avg10=0.00 avg60=0.00 total=5\n", "lacks avg300"),
    ("some avg10=x avg60=0.00 avg300=0.00 total=5\n", "bad number"),
    ("some avg10=0.00 avg60=0.00 avg300=0.00 total=1.5\n", "bad number"),
])
def test_pressure_malformed_is_a_parse_error(text, msg):
    with pytest.raises(procfs.ParseError, match=msg):
        procfs.parse_pressure(text, "memory")


def test_vmstat_by_name():
    from kernelsight import schema

    v = procfs.parse_vmstat(read(LOADED / "vmstat"))
    assert tuple(v) == schema.BY_NAME["vmstat_stats"].column_names
    assert v == {
        "pgfault_total": 394462949, "pgmajfault_total": 210853, "pgscan_kswapd_total": 0,
        "pgscan_direct_total": 0, "pgsteal_kswapd_total": 0, "pgsteal_direct_total": 0,
        "oom_kill_total": 0, "pswpin_total": 0, "pswpout_total": 0,
        "workingset_refault_anon_total": 0, "workingset_refault_file_total": 354042,
        "compact_stall_total": 0, "allocstall_total": 0}
    # Order does not matter, allocstall_* are summed, a counter this kernel lacks is 0.
    lines = [ln for ln in read(LOADED / "vmstat").splitlines() if not ln.startswith("oom_kill")]
    lines = [("allocstall_normal 7" if ln.startswith("allocstall_normal") else
              "allocstall_movable 5" if ln.startswith("allocstall_movable") else ln)
             for ln in lines[::-1]]
    v2 = procfs.parse_vmstat("\n".join(lines))
    assert v2["allocstall_total"] == 12 and v2["oom_kill_total"] == 0
    assert v2["pgmajfault_total"] == 210853


@pytest.mark.parametrize("text, msg", [
    ("", "no pgfault, pgmajfault"),
    ("nr_free_pages 5\n", "no pgfault"),
    ("pgfault 1\npgmajfault\n", "unexpected line"),
    ("pgfault 1\npgmajfault 1x\n", "not a number"),
])
def test_vmstat_malformed_is_a_parse_error(text, msg):
    with pytest.raises(procfs.ParseError, match=msg):
        procfs.parse_vmstat(text)
