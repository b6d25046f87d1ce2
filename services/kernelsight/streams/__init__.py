"""Redis stream transport: names, encoding, and the producer side (Publisher).

Each event is one stream entry with a single field ``d`` holding the event as JSON (orjson),
so ``redis-cli XRANGE 'kernelsight:{myhost}:events:syscall_events' - + COUNT 5`` is readable.
Every key of a host carries the host as a hash tag (schema.host_key), so on a Redis Cluster a
host's streams, markers and probes share one slot; producers register their host (and the
streams they write) so that ingesters find them without SCAN.

The Publisher never blocks a collector on Redis: events go to a bounded in-memory buffer which
is flushed in pipelined transactions. While Redis is unreachable, or a stream holds more than
``stream_maxlen`` unread entries, the buffer holds them and retries with backoff; what does not
fit is dropped and counted by reason. Counters (produced, dropped by reason) are published as
cumulative snapshots on the accounting stream, so the report can prove conservation.

Modules: client (connections, entry encoding), registry (hosts and their streams), chunk (the
atomic chunk script), publisher (Publisher, drop reasons).
"""

from kernelsight.streams.chunk import CHUNK_MAX
from kernelsight.streams.client import (
    FIELD,
    HEALTH_KEY,
    connect,
    decode,
    encode,
    is_cluster,
    mget,
    node_client,
    payload_of_fields,
    ping,
    refresh,
)
from kernelsight.streams.publisher import (
    CONFIRM_INTERVAL_S,
    HEARTBEAT_INTERVAL_S,
    R_BUFFER_FULL,
    R_LOST_IN_REDIS,
    R_NO_ID_LEFT,
    R_UNFLUSHED,
    Publisher,
)
from kernelsight.streams.registry import (
    STREAMS_PART,
    all_streams,
    host_stream_names,
    known_hosts,
    register,
)

__all__ = [
    "CHUNK_MAX", "CONFIRM_INTERVAL_S", "FIELD", "HEALTH_KEY", "HEARTBEAT_INTERVAL_S",
    "R_BUFFER_FULL", "R_LOST_IN_REDIS", "R_NO_ID_LEFT", "R_UNFLUSHED", "STREAMS_PART",
    "Publisher", "all_streams", "connect", "decode", "encode", "host_stream_names",
    "is_cluster", "known_hosts", "mget", "node_client", "payload_of_fields", "ping", "refresh",
    "register",
]
