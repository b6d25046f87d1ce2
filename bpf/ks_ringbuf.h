/* Ring-buffer wakeups, shared by the tracers that emit events (syscalls, pagefaults).
 *
 * By default the kernel wakes the reader for every event submitted while the reader is caught
 * up: on a quiet host that is one wakeup of a Python thread per event (the syscall tracer's
 * ~20 wakeups a second were most of its idle CPU). Here an event wakes the reader only every
 * KS_WAKEUP_EVERY events per CPU; otherwise the reader drains on its own timer (the collectors
 * poll with a 500 ms timeout). A burst still wakes it long before the ring fills (64 events
 * are a few KiB of a ring of MiBs). Cost: an add on a per-CPU counter the caller already holds.
 * (bpf_ringbuf_query() would let the ring's fill level decide, but BCC passes no map pointer
 * to a raw helper.)
 */
#ifndef KS_RINGBUF_H
#define KS_RINGBUF_H

#ifndef KS_WAKEUP_EVERY
#define KS_WAKEUP_EVERY 64
#endif

/* The flags for ringbuf_submit(); `submitted` is this CPU's count of submitted events. */
static __always_inline u64 ks_rb_flags(u64 *submitted)
{
    return (++*submitted % KS_WAKEUP_EVERY) ? BPF_RB_NO_WAKEUP : 0;
}

#endif
