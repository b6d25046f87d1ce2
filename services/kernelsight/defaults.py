"""Default values for every setting, in one place (flags and KS_* variables override them)."""

REDIS_URL = ""  # empty: `run` starts a private redis-server; other commands need one
DB_PATH = "data/kernelsight.db"
PROCFS = "/proc"
SYSFS = "/sys"
INTERVAL_S = 1.0

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
BUFFER_MAX = 100_000  # events held in memory while Redis is unreachable or a stream is full
STREAM_MAXLEN = 1_000_000  # producers hold back (and count) above this many unread entries
STREAM_RETAIN = 10_000  # the ingester trims acknowledged entries beyond this many
ACCOUNTING_INTERVAL_S = 1.0
HEALTH_TTL_S = 15

# Tracers.
SYSCALL_MIN_LATENCY_MS = 10.0
RINGBUF_PAGES = 256
PAGEFAULT_MINOR_RATE = 2000  # minor-fault events stored per second (totals stay exact)
MAP_ENTRIES = 65536

# Block devices ignored by the scraper, as node_exporter's diskstats collector does.
IGNORED_DEVICES = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"
