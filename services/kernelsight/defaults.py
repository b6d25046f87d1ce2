"""Default values for every setting, in one place (flags and KS_* variables override them)."""

REDIS_URL = ""  # empty: `run` starts a private redis-server; other commands need one
DB_PATH = "data/kernelsight.db"
PROCFS = "/proc"
SYSFS = "/sys"
INTERVAL_S = 1.0
# `kernelsight run` (the continuous service, systemd) samples every 10 s unless --interval or
# KS_INTERVAL says otherwise: at 1 s an idle host's database grew ~25 MB/h (scraper rows,
# per-interval summaries and their accounting), at 10 s a tenth of that. Peers' defaults:
# PCP pmlogger 60 s, a Prometheus scrape of node_exporter typically 15 s, Netdata 1 s.
# One-shot runs (stresstest, collect, trace) keep INTERVAL_S.
SERVICE_INTERVAL_S = 10.0

# Ingest batching: whichever bound is hit first.
BATCH_SIZE = 1000
BATCH_MS = 200
CONSUMER = "ingest-1"
# One ingest process by default: it reaches ~115k events/s here and uses the least CPU per
# event; a second worker adds ~9% throughput for ~13% more CPU (0 = one per CPU, at most 2).
INGEST_WORKERS = 1
RECLAIM_IDLE_MS = 30_000
LOCK_RETRIES = 50  # x LOCK_RETRY_S before a locked database is an error
LOCK_RETRY_S = 0.2

# Producer side.
REDIS_MAXMEMORY = "1gb"  # the private redis-server's cap (noeviction); KS_REDIS_MAXMEMORY
BUFFER_MAX_BYTES = 256 * 1024 * 1024  # and at most this many payload bytes
BUFFER_MAX = 100_000  # events held in memory while Redis is unreachable or a stream is full
STREAM_MAXLEN = 1_000_000  # producers hold back (and count) above this many unread entries
STREAM_RETAIN = 10_000  # the ingester trims acknowledged entries beyond this many
# Producers' cumulative accounting snapshots, at most this often (or once per --interval when
# that is longer) and at every stop: windowed reports (--since/--until) split a run at these
# positions, so this is their precision.
ACCOUNTING_INTERVAL_S = 1.0
# The ingester's own counters (stored/duplicates per type, for /metrics and `status` only; the
# report counts rows): at most this often and at every stop. At 1 s they were half of all
# accounting rows, ~9 MB/h on an idle host.
INGEST_ACCOUNTING_INTERVAL_S = 10.0
HEALTH_TTL_S = 15
HEALTH_STALE_S = 10.0  # a heartbeat older than this is unhealthy (`status`, the watchdog)
# Idle work (README "Idle cost"): heartbeats every HEARTBEAT_S (ingester and collectors; a
# third of HEALTH_STALE_S, so one late beat is never "stale"); an ingester with nothing to
# read blocks IDLE_BLOCK_MS per read and trims the streams every TRIM_IDLE_S only; the
# private redis-server runs its timers REDIS_HZ times a second (Redis's default is 10; it
# also bounds how late a blocking read's timeout fires: 1/REDIS_HZ s).
HEARTBEAT_S = 3.0
# Producers send a few buffered rows once the oldest has waited this long (or at once when a
# chunk is full, and always when stopping): batches for Redis and for the ingester's commits.
PUBLISH_LINGER_S = 1.0
# The ingester, after a small batch (under INGEST_LINGER_ROWS entries), reads again only once
# INGEST_LINGER_MS have passed since its last read: on a quiet host the producers' chunks,
# each on its own schedule, arrive a few a second and go in one batch and one commit. A batch
# at or above the bound (load) is followed by the next read at once, as before.
INGEST_LINGER_MS = 1000
INGEST_LINGER_ROWS = 256
# The ingester beats (heartbeat, watchdog) between reads: a linger must leave a beat well
# inside HEALTH_STALE_S.
INGEST_LINGER_MAX_MS = 5000
IDLE_BLOCK_MS = 500  # at most this late for the watchdog ping (its cadence is half WatchdogSec)
TRIM_IDLE_S = 30.0
REDIS_HZ = 2
# Prometheus /metrics of `run` and `ingest`: loopback only unless asked ('off' disables).
METRICS_ADDR = "127.0.0.1:9477"

# Retention and rollups (the maintenance thread of the ingest process).
RETENTION = "7d"  # raw rows (and dead letters, old accounting snapshots) older than this go
RETENTION_SIZE = ""  # empty: no size cap; e.g. "2GiB" deletes the oldest raw rows above it
ROLLUP_RETENTION = "90d"  # per-minute rollups (<table>_1m) are kept this long
MAINTENANCE_INTERVAL_S = 10.0  # rollups + time retention at least this often
SIZE_CHECK_INTERVAL_S = 1.0  # raw time retention and the size cap are enforced this often
ROLLUP_GRACE_S = 15.0  # a minute is rolled up once data 15 s past its end has been stored
PRUNE_CHUNK_ROWS = 2000  # rows per delete transaction (the ingest write lock is held this long)
PRUNE_YIELD = 0.25  # after each chunk, leave the lock free for this x the time it was held
SIZE_LOW_WATER = 0.95  # above the cap, delete down to this fraction of it

# `run` hosts several collectors in one process (one BCC runtime): ~150 MB instead of ~200 MB
# per tracer process (README, "Memory"). KS_ONE_PROCESS=0 / --process-per-collector.
ONE_PROCESS = True

# Tracers.
SYSCALL_MIN_LATENCY_MS = 10.0
RINGBUF_PAGES = 256
# Minor-fault events stored per second, whole host (majors: all). page_fault_totals counts
# every fault per process; these are the minor faults whose latency is measured (since
# 2026-12-01 the totals' minor latency is theirs, faultlatency.py): at 2000/s an idle host
# stored ~166 a second (~70 MB/h) and a busy one 2000 (~850 MB/h, and ~10% of a core of
# Python work).
PAGEFAULT_MINOR_RATE = 10
MAP_ENTRIES = 65536

# Block devices ignored by the scraper, as node_exporter's diskstats collector does.
IGNORED_DEVICES = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"

# `kernelsight run` supervising its ingester: restarts after an unexpected exit, with a pause
# that doubles each time (capped at 30 s).
INGEST_RESTARTS_MAX = 5
INGEST_RESTART_BACKOFF_S = 1.0
RUN_DRAIN_TIMEOUT_S = 600.0  # at the end of a run: what is still unstored after this is loss
