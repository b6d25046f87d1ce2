"""`kernelsight stress`: load the machine so every collector has something to see.

Seven workload categories run concurrently for a fixed time and stop by themselves, one
worker process each (workloads/<name>.py, looked up through registry.py):

    cpu   4 busy workers (stress-ng --cpu 4 when installed, else 4 forked Python loops)
    mem   an anonymous mapping (default 1 GiB) touched page by page, then re-touched chunk by
          chunk after MADV_DONTNEED so minor page faults keep coming while RSS stays put
    io    small writes each followed by fdatasync/fsync, plus fsync'd file creations
    disk  large sequential file writes (fsync'd), read back after dropping the page cache,
          once buffered and once with O_DIRECT, so reads really hit the block device
    fs    create/stat/read/unlink batches of small files; bounded os.walk over /usr
    net   an http.server and a raw TCP listener on 127.0.0.1 with client loops (loopback only)
    slow  syscalls that block 10-30 ms by design (nanosleep, poll, select, epoll_wait, futex,
          pipe read) so a syscall-latency tracer with a 10 ms threshold sees many rows

driver.py starts, stops and reaps the workers (worker.py, run as
``python -m kernelsight.stress.worker``); checks.py validates options; command.py is the CLI.
This module only re-exports.
"""

from kernelsight.stress.checks import check_duration, check_mem_mib, parse_only
from kernelsight.stress.command import command, format_summary
from kernelsight.stress.driver import run_stress
from kernelsight.stress.registry import ALIASES, CATEGORIES

__all__ = ["ALIASES", "CATEGORIES", "check_duration", "check_mem_mib", "command",
           "format_summary", "parse_only", "run_stress"]
