/* Block I/O latency tracer: per-device read/write counts, bytes and latency histograms.
 *
 * block:block_rq_issue stores {issue ts, op, bytes} keyed by (dev, sector), as biolatency's
 * tracepoint mode does; block:block_rq_complete closes the request. Latency = device time
 * (issue to completion), not queueing in the block layer.
 *
 * Only data reads and writes count. rwbs is "[F]<op>[F][A][S][M]...": an optional leading 'F'
 * is a preflush, then the op: 'R' read, 'W' write, 'D' discard ("DE" secure erase), 'F' flush,
 * 'N' anything else (write zeroes, zone ops). Flushes, discards, others and zero-length
 * requests are skipped, so they never count as writes.
 *
 * Outputs, all cumulative (user space diffs two reads; it never writes them):
 *   stats  - per (dev, op): count, bytes, and the max latency per epoch (two parity slots;
 *            user space bumps `epoch`, then reads the slot of the finished epoch)
 *   hist   - per (dev, op, bucket): count, log-linear buckets of ks_hist.h
 *   drops  - per-CPU counters (DROP_*)
 */
#include <uapi/linux/ptrace.h>
#include "ks_hist.h"
#include "ks_io.h" /* DROP_* slots */
#include "ks_self.h" /* ks_is_self(): KernelSight's own processes are not traced */

#ifndef KS_MAP_ENTRIES
#define KS_MAP_ENTRIES 65536
#endif

#define OP_READ 0
#define OP_WRITE 1
#define OP_SELF 2 /* issued by KernelSight itself: closed silently, never counted */


struct start_key {
    u32 dev;
    u32 pad;
    u64 sector;
};

struct start_val {
    u64 ts;
    u32 bytes;
    u32 op;
};

struct dkey {
    u32 dev;
    u32 op;
};

struct dval {
    u64 count;
    u64 bytes;
    u64 max0;
    u64 max1;
    u64 epoch0;
    u64 epoch1;
};

struct hkey {
    u32 dev;
    u32 op;
    u32 bucket;
    u32 pad;
};

/* LRU: a request that never completes (device reset, lost interrupt) cannot leak an entry. */
BPF_TABLE("lru_hash", struct start_key, struct start_val, start, KS_MAP_ENTRIES);
BPF_HASH(stats, struct dkey, struct dval, 4096);
BPF_HASH(hist, struct hkey, u64, KS_MAP_ENTRIES);
BPF_ARRAY(epoch, u64, 1);
BPF_PERCPU_ARRAY(drops, u64, DROP_SLOTS);

static __always_inline void count_drop(u32 slot)
{
    u64 *v = drops.lookup(&slot);
    if (v)
        (*v)++;
}

/* OP_READ, OP_WRITE, or -1 for everything that is not a data read or write. */
static __always_inline int classify(const char *rwbs)
{
    char c = rwbs[0];
    if (c == 'F')
        c = rwbs[1];
    if (c == 'R')
        return OP_READ;
    if (c == 'W')
        return OP_WRITE;
    return -1;
}

TRACEPOINT_PROBE(block, block_rq_issue)
{
    int op = classify(args->rwbs);
    if (op < 0 || args->bytes == 0)
        return 0;
    struct start_key k = {};
    k.dev = args->dev;
    k.sector = args->sector;
    struct start_val v = {};
    v.ts = bpf_ktime_get_ns();
    v.bytes = args->bytes;
    v.op = ks_is_self(bpf_get_current_pid_tgid() >> 32) ? OP_SELF : op;
    start.update(&k, &v);
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete)
{
    u64 now = bpf_ktime_get_ns();
    if (classify(args->rwbs) < 0)
        return 0;
    struct start_key k = {};
    k.dev = args->dev;
    k.sector = args->sector;
    struct start_val *s = start.lookup(&k);
    if (!s) {
        if (args->nr_sector)
            count_drop(DROP_UNMATCHED);
        return 0;
    }
    u64 lat = now > s->ts ? now - s->ts : 0;
    u32 op = s->op;
    if (op == OP_SELF) {
        start.delete(&k);
        return 0;
    }
    u64 bytes = s->bytes;
    start.delete(&k);

    struct dkey dk = {};
    dk.dev = args->dev;
    dk.op = op;
    struct dval *d = stats.lookup(&dk);
    if (!d) {
        struct dval zero = {};
        stats.insert(&dk, &zero);
        d = stats.lookup(&dk);
        if (!d) {
            count_drop(DROP_MAP_FULL);
            return 0;
        }
    }
    struct hkey hk = {};
    hk.dev = args->dev;
    hk.op = op;
    hk.bucket = ks_hist_bucket(lat);
    u64 *h = hist.lookup(&hk);
    if (!h) {
        u64 zero = 0;
        hist.insert(&hk, &zero);
        h = hist.lookup(&hk);
        if (!h) {
            count_drop(DROP_MAP_FULL);
            return 0;
        }
    }
    __sync_fetch_and_add(h, 1);
    __sync_fetch_and_add(&d->count, 1);
    __sync_fetch_and_add(&d->bytes, bytes);

    u32 z = 0;
    u64 *ep = epoch.lookup(&z);
    u64 e = ep ? *ep : 0;
    if (e & 1) {
        if (d->epoch1 != e) {
            d->epoch1 = e;
            d->max1 = lat;
        } else if (lat > d->max1) {
            d->max1 = lat;
        }
    } else {
        if (d->epoch0 != e) {
            d->epoch0 = e;
            d->max0 = lat;
        } else if (lat > d->max0) {
            d->max0 = lat;
        }
    }
    return 0;
}
