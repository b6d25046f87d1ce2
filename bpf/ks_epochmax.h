/* A per-interval maximum in a map that user space only reads (io, pagefaults).
 *
 * Sums are cumulative and user space takes differences of two reads, but a maximum cannot be
 * differenced. So each map value keeps two slots, one per epoch parity: {max0, epoch0} for even
 * epochs, {max1, epoch1} for odd ones. User space bumps `epoch` at each interval and then reads
 * the slot of the epoch that just finished (collectors/cumulative.py: max_for_epoch); a program
 * raises the slot of the current epoch, taking it over first when it still holds an older
 * epoch's maximum. Nobody resets anything, so no update is lost to a reset racing it.
 *
 * Include once per program file: it defines that file's `epoch` map.
 */
#ifndef KS_EPOCHMAX_H
#define KS_EPOCHMAX_H

BPF_ARRAY(epoch, u64, 1);

static __always_inline u64 ks_epoch(void)
{
    u32 z = 0;
    u64 *ep = epoch.lookup(&z);
    return ep ? *ep : 0;
}

/* Raise the current epoch's maximum of `v` (any struct with max0, max1, epoch0, epoch1) to
 * `val`. A macro: the structs differ per tracer. */
#define KS_EPOCH_MAX(v, val)                                                                    \
    do {                                                                                        \
        u64 ks_e_ = ks_epoch();                                                                 \
        u64 ks_v_ = (val);                                                                      \
        u64 *ks_ep_ = (ks_e_ & 1) ? &(v)->epoch1 : &(v)->epoch0;                                \
        u64 *ks_mx_ = (ks_e_ & 1) ? &(v)->max1 : &(v)->max0;                                    \
        if (*ks_ep_ != ks_e_) {                                                                 \
            *ks_ep_ = ks_e_;                                                                    \
            *ks_mx_ = ks_v_;                                                                    \
        } else if (ks_v_ > *ks_mx_) {                                                           \
            *ks_mx_ = ks_v_;                                                                    \
        }                                                                                       \
    } while (0)

#endif
