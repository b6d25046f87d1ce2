/* Block I/O latency tracer: per-device read/write counts, bytes and latency histograms.
 *
 * Latency = device time (issue to completion), not queueing in the block layer: the same
 * quantity as biolatency's default mode. Two programs in one file; collectors/io.py picks one.
 *
 * KS_RAW (the default; needs /sys/kernel/btf/vmlinux and the 5.11+ one-argument
 * block_rq_issue): raw tracepoints block_rq_issue(struct request *) and
 * block_rq_complete(struct request *, blk_status_t, unsigned int nr_bytes). A request is
 * keyed by its address, as biolatency does; its op, size and disk are read from struct
 * request (cmd_flags, __data_len, q->disk->major/first_minor) at offsets taken from the
 * running kernel's BTF (-DKS_OFF_*; BCC's headers may be another kernel's). The kernel guards
 * a raw-tracepoint program only against itself, so a completion in interrupt context while
 * another tracer's program runs on that CPU is not skipped (a regular tracepoint's is).
 * A request completed in parts is counted at its first part, like the fallback; its entry
 * stays (F_COUNTED) until the last part, so later parts are neither counted nor "unmatched".
 * An issue that finds its request's entry still open (not requeued: block_rq_requeue marks
 * that) means the completion never reached this program: counted, DROP_UNSEEN. On 6.18 under
 * load that happened for ~1 in 2,000-5,000 completions, with no recursion miss counted.
 *
 * Otherwise (no BTF, older kernel, raw program fails to load): regular tracepoints
 * block:block_rq_issue/block_rq_complete, whose field layout BCC reads from tracefs; a request
 * is keyed by (dev, sector).
 *
 * Only data reads and writes count. rwbs is "[F]<op>[F][A][S][M]...": an optional leading 'F'
 * is a preflush, then the op: 'R' read, 'W' write, 'D' discard ("DE" secure erase), 'F' flush,
 * 'N' anything else (write zeroes, zone ops); the raw program reads the same op from
 * cmd_flags (REQ_OP_READ / REQ_OP_WRITE, -DKS_OP_*). Flushes, discards, others and zero-length
 * requests are skipped, so they never count as writes.
 *
 * Outputs, all cumulative (user space diffs two reads; it never writes them):
 *   stats  - per (dev, op): count, bytes, and the max latency per epoch (two parity slots;
 *            user space bumps `epoch`, then reads the slot of the finished epoch)
 *   hist   - per (dev, op, bucket): count, log-linear buckets of ks_hist.h
 *   drops  - per-CPU counters (DROP_*): map full; completions with no issue seen (issued
 *            before the tracer started); completions never seen (raw program)
 */
#include <uapi/linux/ptrace.h>
#include "ks_hist.h"
#include "ks_io.h" /* DROP_* slots */
#include "ks_self.h" /* ks_is_self(): KernelSight's own processes are not traced */
#include "ks_epochmax.h" /* the `epoch` map, KS_EPOCH_MAX(): per-interval maxima */

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
    u16 op;
    u16 flags; /* raw program: F_COUNTED, F_REQUEUED */
};

#define F_COUNTED 1  /* completed in part and counted; later parts only close it */
#define F_REQUEUED 2 /* handed back to the queue (block_rq_requeue): issued again later */

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
#ifdef KS_RAW
BPF_TABLE("lru_hash", u64, struct start_val, start, KS_MAP_ENTRIES); /* struct request * */
#else
BPF_TABLE("lru_hash", struct start_key, struct start_val, start, KS_MAP_ENTRIES);
#endif
BPF_HASH(stats, struct dkey, struct dval, 4096);
BPF_HASH(hist, struct hkey, u64, KS_MAP_ENTRIES);
BPF_PERCPU_ARRAY(drops, u64, DROP_SLOTS);

static __always_inline void count_drop(u32 slot)
{
    u64 *v = drops.lookup(&slot);
    if (v)
        (*v)++;
}

/* One completed request: its latency into the (dev, op) histogram, count, bytes and max. */
static __always_inline void account(u32 dev, u32 op, u64 bytes, u64 lat)
{
    struct dkey dk = {};
    dk.dev = dev;
    dk.op = op;
    struct dval *d = stats.lookup(&dk);
    if (!d) {
        struct dval zero = {};
        stats.insert(&dk, &zero);
        d = stats.lookup(&dk);
        if (!d) {
            count_drop(DROP_MAP_FULL);
            return;
        }
    }
    struct hkey hk = {};
    hk.dev = dev;
    hk.op = op;
    hk.bucket = ks_hist_bucket(lat);
    u64 *h = hist.lookup(&hk);
    if (!h) {
        u64 zero = 0;
        hist.insert(&hk, &zero);
        h = hist.lookup(&hk);
        if (!h) {
            count_drop(DROP_MAP_FULL);
            return;
        }
    }
    __sync_fetch_and_add(h, 1);
    __sync_fetch_and_add(&d->count, 1);
    __sync_fetch_and_add(&d->bytes, bytes);
    KS_EPOCH_MAX(d, lat);
}

#ifdef KS_RAW
/* ---- raw tracepoints, struct request read at its BTF offsets (the default) ------------- */

/* A field of a kernel struct at its BTF offset (raw tracepoint arguments are untyped). */
#define KS_READ(dst, base, off) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (const char *)(base) + (off))

/* OP_READ, OP_WRITE, or -1 for everything that is not a data read or write. */
static __always_inline int rq_op(const void *rq)
{
    u32 flags = 0;
    KS_READ(flags, rq, KS_OFF_RQ_CMD_FLAGS);
    u32 op = flags & KS_REQ_OP_MASK;
    if (op == KS_OP_READ)
        return OP_READ;
    if (op == KS_OP_WRITE)
        return OP_WRITE;
    return -1;
}

/* The request's whole disk as the block tracepoints report it: disk_devt(rq->q->disk). */
static __always_inline u32 rq_dev(const void *rq)
{
    const void *q = NULL, *disk = NULL;
    int major = 0, minor = 0;
    KS_READ(q, rq, KS_OFF_RQ_Q);
    if (!q)
        return 0;
    KS_READ(disk, q, KS_OFF_Q_DISK);
    if (!disk)
        return 0;
    KS_READ(major, disk, KS_OFF_DISK_MAJOR);
    KS_READ(minor, disk, KS_OFF_DISK_FIRST_MINOR);
    return ((u32)major << 20) | (u32)minor;
}

/* TP_PROTO(struct request *rq) */
RAW_TRACEPOINT_PROBE(block_rq_issue)
{
    const void *rq = (const void *)ctx->args[0];
    int op = rq_op(rq);
    if (op < 0)
        return 0;
    u32 len = 0;
    KS_READ(len, rq, KS_OFF_RQ_DATA_LEN);
    if (len == 0)
        return 0;
    u64 k = (u64)rq;
    struct start_val v = {};
    struct start_val *old = start.lookup(&k);
    if (old) {
        if (old->flags & F_COUNTED) /* requeued after a counted part: count it once */
            v.flags = F_COUNTED;
        else if (!(old->flags & F_REQUEUED))
            count_drop(DROP_UNSEEN); /* its last completion never reached us */
    }
    v.ts = bpf_ktime_get_ns();
    v.bytes = len;
    v.op = ks_is_self(bpf_get_current_pid_tgid() >> 32) ? OP_SELF : op;
    start.update(&k, &v);
    return 0;
}

/* TP_PROTO(struct request *rq): handed back to the queue; its next issue is not a new
 * request (and not a sign of a lost completion). */
RAW_TRACEPOINT_PROBE(block_rq_requeue)
{
    u64 k = ctx->args[0];
    struct start_val *s = start.lookup(&k);
    if (s)
        s->flags |= F_REQUEUED;
    return 0;
}

/* TP_PROTO(struct request *rq, blk_status_t error, unsigned int nr_bytes): fired before the
 * request's remaining size (__data_len) is reduced by nr_bytes. */
RAW_TRACEPOINT_PROBE(block_rq_complete)
{
    u64 now = bpf_ktime_get_ns();
    const void *rq = (const void *)ctx->args[0];
    u32 nr_bytes = (u32)ctx->args[2];
    u32 left = 0;
    KS_READ(left, rq, KS_OFF_RQ_DATA_LEN);
    int last = nr_bytes >= left; /* no part of this request follows */
    u64 k = (u64)rq;
    struct start_val *s = start.lookup(&k);
    if (!s) {
        /* one count per data request issued before we started (at its last part) */
        if (last && left && rq_op(rq) >= 0)
            count_drop(DROP_UNMATCHED);
        return 0;
    }
    u64 ts = s->ts;
    u32 op = s->op;
    u64 bytes = s->bytes;
    u32 counted = s->flags & F_COUNTED;
    if (last)
        start.delete(&k);
    else
        s->flags |= F_COUNTED; /* counted now; its later parts only find the entry */
    if (counted || op == OP_SELF)
        return 0;
    account(rq_dev(rq), op, bytes, now > ts ? now - ts : 0);
    return 0;
}

#else
/* ---- regular tracepoints (fallback) ---------------------------------------------------- */

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
    account(args->dev, op, bytes, lat);
    return 0;
}

#endif /* KS_RAW */
