/* Log-linear latency histogram buckets, shared by the io and sched tracers.
 *
 * 32 linear sub-buckets per power of two: a bucket is at most 1/32 of its value wide, so a
 * percentile read from the bucket midpoint is within ~1.6% of the exact value (plain log2
 * buckets can be off by 50%). Values are nanoseconds, clamped below 2^41 (~37 minutes).
 * services/kernelsight/histogram.py holds the inverse; keep the two in step.
 */
#ifndef KS_HIST_H
#define KS_HIST_H

#define KS_HIST_SUB_BITS 5
#define KS_HIST_SUB (1 << KS_HIST_SUB_BITS)
#define KS_HIST_MAX_BITS 41
#define KS_HIST_BUCKETS ((KS_HIST_MAX_BITS - KS_HIST_SUB_BITS + 1) * KS_HIST_SUB)

static __always_inline u32 ks_log2_u64(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8)  { v >>= 8;  r += 8; }
    if (v >> 4)  { v >>= 4;  r += 4; }
    if (v >> 2)  { v >>= 2;  r += 2; }
    if (v >> 1)  { r += 1; }
    return r;
}

static __always_inline u32 ks_hist_bucket(u64 v)
{
    if (v >= (1ULL << KS_HIST_MAX_BITS))
        v = (1ULL << KS_HIST_MAX_BITS) - 1;
    if (v < KS_HIST_SUB)
        return (u32)v;
    u32 e = ks_log2_u64(v);
    u32 m = (u32)(v >> (e - KS_HIST_SUB_BITS)) & (KS_HIST_SUB - 1);
    return (e - KS_HIST_SUB_BITS + 1) * KS_HIST_SUB + m;
}

#endif
