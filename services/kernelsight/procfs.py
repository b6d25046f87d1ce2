"""Pure parsers for /proc files: text in, raw kernel values out. No I/O here, so each is
tested against fixture files copied verbatim from real machines."""

from __future__ import annotations

import re

# /proc/meminfo key -> our column (values stay in kB, as the kernel prints them).
MEMINFO_FIELDS = {
    "MemTotal": "mem_total_kb", "MemFree": "mem_free_kb", "MemAvailable": "mem_available_kb",
    "Buffers": "buffers_kb", "Cached": "cached_kb", "SwapTotal": "swap_total_kb",
    "SwapFree": "swap_free_kb", "Active": "active_kb", "Inactive": "inactive_kb",
    "Dirty": "dirty_kb", "Writeback": "writeback_kb",
}

# include/net/tcp_states.h
TCP_STATES = {
    1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2",
    6: "time_wait", 7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing",
}

DISKSTATS_FIELDS = ("read_ios", "read_merges", "read_sectors", "read_ticks", "write_ios",
                    "write_merges", "write_sectors", "write_ticks", "in_flight", "io_ticks",
                    "time_in_queue")

NETDEV_RX = {0: "rx_bytes", 1: "rx_packets", 2: "rx_errors", 3: "rx_drops"}
NETDEV_TX = {8: "tx_bytes", 9: "tx_packets", 10: "tx_errors", 11: "tx_drops"}


class ParseError(ValueError):
    pass


def parse_meminfo(text: str) -> dict[str, int]:
    """Our eleven memory columns. A key the kernel does not print (MemAvailable before 3.14)
    is 0, not invented from other fields."""
    out = dict.fromkeys(MEMINFO_FIELDS.values(), 0)
    seen = 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        col = MEMINFO_FIELDS.get(key)
        if col:
            out[col] = int(rest.split()[0])
            seen += 1
    if not seen:
        raise ParseError("meminfo: no known fields")
    return out


def parse_loadavg(text: str) -> dict[str, float | int]:
    """``0.20 0.18 0.12 1/80 11206``: three loads, running/total scheduling entities, last pid."""
    parts = text.split()
    if len(parts) < 5 or "/" not in parts[3]:
        raise ParseError(f"loadavg: unexpected format {text[:60]!r}")
    running, total = parts[3].split("/")
    return {"load_1min": float(parts[0]), "load_5min": float(parts[1]),
            "load_15min": float(parts[2]), "running_processes": int(running),
            "total_processes": int(total), "last_pid": int(parts[4])}


def parse_diskstats(text: str, ignore: str | None = None) -> list[dict[str, int | str]]:
    """One dict per device with the first eleven stat fields (Documentation/admin-guide/
    iostats.rst); later fields (discard, flush) are newer kernels' additions we do not store."""
    rx = re.compile(ignore) if ignore else None
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 14:
            continue
        name = parts[2]
        if rx and rx.search(name):
            continue
        row: dict[str, int | str] = {"device_name": name}
        row.update(zip(DISKSTATS_FIELDS, map(int, parts[3:14]), strict=True))
        out.append(row)
    return out


def parse_net_dev(text: str) -> list[dict[str, int | str]]:
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        vals = rest.split()
        if len(vals) < 16:
            raise ParseError(f"net/dev: short line for {name.strip()}")
        row: dict[str, int | str] = {"interface_name": name.strip()}
        for i, col in (NETDEV_RX | NETDEV_TX).items():
            row[col] = int(vals[i])
        out.append(row)
    return out


def count_tcp_states(*texts: str) -> dict[str, int]:
    """Count sockets by state over /proc/net/tcp and /proc/net/tcp6 (the ``st`` column, hex)."""
    out = dict.fromkeys(TCP_STATES.values(), 0)
    for text in texts:
        lines = text.splitlines()
        if not lines:
            continue
        header = lines[0].split()
        try:
            st = header.index("st")
        except ValueError:
            raise ParseError("net/tcp: no 'st' column in header") from None
        for line in lines[1:]:
            parts = line.split()
            if len(parts) <= st:
                continue
            name = TCP_STATES.get(int(parts[st], 16))
            if name:
                out[name] += 1
    return out


def is_proc_mount(mountinfo: str, path: str) -> bool:
    """Whether ``path`` is a mount point of a procfs in /proc/self/mountinfo's text (field 5
    the mount point, the file system type after the " - " separator)."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        parts = left.split()
        if sep and len(parts) >= 5 and right.split()[:1] == ["proc"]:
            point = parts[4].replace("\\040", " ")
            if point == path:
                return True
    return False


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp as {"Tcp": {"RetransSegs": n, ...}, ...}: header and value lines pair up
    by protocol, and fields are read by name, never by position (kernels add fields)."""
    out: dict[str, dict[str, int]] = {}
    pending: dict[str, list[str]] = {}
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        vals = rest.split()
        if proto in pending:
            names = pending.pop(proto)
            if len(names) != len(vals):
                raise ParseError(f"snmp: {proto} header/value length mismatch")
            out[proto] = {n: int(v) for n, v in zip(names, vals, strict=True)}
        else:
            pending[proto] = vals
    return out


def tcp_retransmits(snmp: dict[str, dict[str, int]]) -> dict[str, int]:
    tcp = snmp.get("Tcp")
    if not tcp or "RetransSegs" not in tcp or "OutSegs" not in tcp:
        raise ParseError("snmp: no Tcp RetransSegs/OutSegs")
    return {"retrans_segs": tcp["RetransSegs"], "out_segs": tcp["OutSegs"]}


# /proc/pressure/<resource> (Documentation/accounting/psi.rst): the share of wall time in
# which some (or all: "full") non-idle tasks stalled on the resource, as 10/60/300 s moving
# averages in percent, and the cumulative stall time in microseconds.
PSI_RESOURCES = ("cpu", "memory", "io")
PSI_AVGS = ("avg10", "avg60", "avg300")


def _psi_cols(kind: str) -> list[str]:
    return [f"{kind}_{a}_pct" for a in PSI_AVGS] + [f"{kind}_total_us"]


PSI_COLUMNS = tuple(_psi_cols("some") + _psi_cols("full"))


def parse_pressure(text: str, resource: str) -> dict[str, float | int | str]:
    """One ``pressure_stats`` row from ``/proc/pressure/<resource>``.

    ``full`` is optional for cpu only: kernels before 5.13 print no cpu "full" line, and
    newer ones print it as all zero at the system level (the psi.rst "full" of CPU is defined
    for cgroups only), so an absent line is stored as the zeros the kernel means. memory and
    io have had both lines since PSI appeared (4.20): a missing one is a ParseError."""
    out: dict[str, float | int | str] = {"resource": resource}
    seen = set()
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        if kind not in ("some", "full"):  # a line a later kernel may add: not ours
            continue
        fields = dict(p.partition("=")[::2] for p in parts[1:])
        try:
            for a in PSI_AVGS:
                out[f"{kind}_{a}_pct"] = float(fields[a])
            out[f"{kind}_total_us"] = int(fields["total"])
        except KeyError as e:
            raise ParseError(f"pressure/{resource}: {kind} line lacks {e.args[0]}") from None
        except ValueError:
            raise ParseError(f"pressure/{resource}: bad number in {line[:60]!r}") from None
        seen.add(kind)
    if "some" not in seen:
        raise ParseError(f"pressure/{resource}: no 'some' line")
    if "full" not in seen:
        if resource != "cpu":
            raise ParseError(f"pressure/{resource}: no 'full' line")
        out.update({c: 0.0 if c.endswith("_pct") else 0 for c in _psi_cols("full")})
    return out


# /proc/vmstat name -> our column. Cumulative counts since boot (events, or pages for
# pgscan/pgsteal/pswp), stored as read: consumers take differences (as for block_stats).
VMSTAT_FIELDS = {
    "pgfault": "pgfault_total", "pgmajfault": "pgmajfault_total",
    "pgscan_kswapd": "pgscan_kswapd_total", "pgscan_direct": "pgscan_direct_total",
    "pgsteal_kswapd": "pgsteal_kswapd_total", "pgsteal_direct": "pgsteal_direct_total",
    "oom_kill": "oom_kill_total", "pswpin": "pswpin_total", "pswpout": "pswpout_total",
    "workingset_refault_anon": "workingset_refault_anon_total",
    "workingset_refault_file": "workingset_refault_file_total",
    "compact_stall": "compact_stall_total",
}
# Summed: allocstall_{dma,dma32,normal,movable,device} (per zone since 4.8; one counter before).
VMSTAT_ALLOCSTALL = "allocstall_total"
# A file without these is not /proc/vmstat; the others are 0 when a kernel lacks them (oom_kill
# appeared in 4.13, workingset_refault_anon in 5.9), as meminfo's missing keys are.
VMSTAT_REQUIRED = ("pgfault", "pgmajfault")
VMSTAT_COLUMNS = (*VMSTAT_FIELDS.values(), VMSTAT_ALLOCSTALL)


def parse_vmstat(text: str) -> dict[str, int]:
    """The ``vmstat_stats`` row: our counters read by name, never by position."""
    out = dict.fromkeys(VMSTAT_COLUMNS, 0)
    seen = set()
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ParseError(f"vmstat: unexpected line {line[:60]!r}")
        name, val = parts
        col = VMSTAT_FIELDS.get(name)
        is_stall = name.startswith("allocstall")
        if not col and not is_stall:
            continue
        try:
            v = int(val)
        except ValueError:
            raise ParseError(f"vmstat: {name} is not a number: {val[:30]!r}") from None
        if col:
            out[col] = v
        else:
            out[VMSTAT_ALLOCSTALL] += v
        seen.add(name)
    missing = [n for n in VMSTAT_REQUIRED if n not in seen]
    if missing:
        raise ParseError(f"vmstat: no {', '.join(missing)}")
    return out
