/* Page-fault tracer: latency, type and access of user-address page faults, without kprobes.
 *
 * Entry: the raw tracepoints page_fault_user / page_fault_kernel (x86 exceptions:*; a raw
 * tracepoint skips building the trace record a regular one fills first: an empty program
 * costs ~0.65 of an empty regular one here) fire at exception entry with the address, regs and
 * error_code; we keep {ts, address, error_code, tgid} per thread, in task-local storage (freed
 * with the task; ~160 ns per fault cheaper than a hash keyed by tid), or with -DKS_START_LRU
 * (kernels without task storage in tracing programs) an LRU hash.
 * Completion: the kernel emits the PAGE_FAULTS_MAJ or PAGE_FAULTS_MIN software perf event at
 * the end of handle_mm_fault (mm_account_fault), only for a successful, non-retried fault that
 * came from an exception (regs != NULL). A BPF program on each of those two events (every CPU,
 * sample_period=1) closes the fault (provided the entry's address is the perf sample's
 * address): it is counted, and a timed fault's latency = now - entry ts of the same thread.
 * Timed: every major fault, and the minor faults that drew a token at entry (the events).
 *
 * Per fault that is: one clock read at entry (~25 ns here), a second one only for timed
 * faults, two task storage lookups, one per-CPU hash lookup, plain adds on per-CPU data (no
 * atomics). The tgid comes from the task storage (set once per task), so pid/tgid is only
 * asked for events. (Until 2026-12-01 every minor fault was timed, for an exact minor mean;
 * that second clock read was a third of the cost above empty programs.)
 *
 * Outputs:
 *   totals    - per CPU, cumulative {count, latency sum, sampled events, per-epoch max} per
 *               (tgid, type). count: every fault. Latency sum and max: every major fault;
 *               for minor faults, those that became events (sampled), so the minor mean is
 *               latency sum / sampled. Never reset by user space: each interval is the
 *               difference of two reads of the sum over CPUs. The max is kept per epoch (two
 *               slots, epoch parity): user space bumps `epoch` and then reads the slot of the
 *               finished epoch (max over CPUs), so it never writes this map.
 *   events    - ring buffer: every major fault, minor faults through a per-CPU token bucket
 *               drawn at entry (so the sample does not depend on the faults' latency).
 *               The reader is woken every KS_WAKEUP_EVERY events per CPU only (it drains on a
 *               0.5 s timer too): a wakeup per event costs the reader far more than the event.
 *   cpu_state - per CPU: the token bucket and the counters of what could not be recorded
 *               (drops[DROP_*]).
 *
 * Compile-time settings (cflags): KS_MAP_ENTRIES, KS_RINGBUF_PAGES, KS_MINOR_RATE (minor
 * events per second, all CPUs) and KS_NCPU (the per-CPU buckets share KS_MINOR_RATE).
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include <linux/sched.h>
#include "ks_pagefaults.h" /* DROP_* slots */
#include "ks_self.h" /* ks_is_self(): KernelSight's own processes are not traced */
#include "ks_ringbuf.h" /* ks_rb_flags(): wake the reader every KS_WAKEUP_EVERY events */
#include "ks_epochmax.h" /* the `epoch` map, KS_EPOCH_MAX(): per-interval maxima */

#ifndef KS_MAP_ENTRIES
#define KS_MAP_ENTRIES 65536
#endif
#ifndef KS_RINGBUF_PAGES
#define KS_RINGBUF_PAGES 256
#endif
#ifndef KS_MINOR_RATE
#define KS_MINOR_RATE 2000
#endif
#ifndef KS_NCPU
#define KS_NCPU 1
#endif


#define ACCESS_READ 0
#define ACCESS_WRITE 1
#define ACCESS_EXEC 2

/* x86 page-fault error code bits (arch/x86/include/asm/trap_pf.h) */
#define X86_PF_WRITE (1 << 1)
#define X86_PF_INSTR (1 << 4)

struct start_t {
    u64 ts; /* 0: no fault in flight (consumed by its completion) */
    u64 addr;
    u64 error_code;
    u32 tgid; /* set once per task: a task's tgid never changes */
    u32 sampled; /* drew a minor-sample token at entry: time it if it is minor */
};

struct tkey {
    u32 tgid;
    u32 major;
};

struct tval {
    u64 count;
    u64 lat_sum;
    u64 sampled;
    u64 max0;   /* max latency in the last even epoch */
    u64 max1;   /* ... odd epoch */
    u64 epoch0; /* the epoch max0 belongs to */
    u64 epoch1;
    char comm[TASK_COMM_LEN]; /* comm when the key was created */
};

struct event_t {
    u64 ts;
    u64 latency_ns;
    u64 addr;
    u32 pid;
    u32 tid;
    u32 cpu;
    u8 major;
    u8 access;
    u8 user_mode;
    u8 pad;
    char comm[TASK_COMM_LEN];
};

/* Everything per CPU the completion touches, in one cache line: the token bucket for minor
 * events and the drop counters. */
struct cpu_t {
    u64 last_ns;
    u64 credit; /* one event costs KS_NCPU * 1e9; refilled at KS_MINOR_RATE per ns */
    u64 submitted; /* events this CPU put in the ring buffer */
    u64 drops[DROP_SLOTS];
};

#ifdef KS_START_LRU
/* LRU: an entry whose fault never completes (SIGSEGV, GUP, fatal signal) cannot leak. */
BPF_TABLE("lru_hash", u32, struct start_t, start, KS_MAP_ENTRIES);
#else
/* One slot per task, freed when the task exits: nothing to leak, no capacity to exhaust. */
BPF_TASK_STORAGE(start, struct start_t);
#endif
/* Per CPU: every update is a plain add on this CPU's copy (no atomics, no cache line shared
 * between CPUs; ~8 ns per fault less than a shared hash with atomic adds); user space sums
 * the copies (and takes the max of the maxes). Not preallocated: a preallocated per-CPU
 * hash would take KS_MAP_ENTRIES x ncpu values up front (600 MiB on 128 CPUs); this one
 * holds ncpu values per live (tgid, type) only, and lookups cost the same. */
#ifdef KS_TOTALS_PREALLOC /* kernels before 6.1: perf_event programs need preallocated maps */
BPF_F_TABLE("percpu_hash", struct tkey, struct tval, totals, KS_MAP_ENTRIES, 0);
#else
BPF_F_TABLE("percpu_hash", struct tkey, struct tval, totals, KS_MAP_ENTRIES, BPF_F_NO_PREALLOC);
#endif
BPF_PERCPU_ARRAY(cpu_state, struct cpu_t, 1);
BPF_RINGBUF_OUTPUT(events, KS_RINGBUF_PAGES);

/* The minor-fault sample is drawn at entry, from the clock read there anyway, before the
 * fault's own latency is known: which faults are sampled does not depend on how long they
 * take (drawn at completion instead, a fault that slept, and was overtaken by later faults,
 * would come back to an empty bucket: the slow ones would be under-sampled). A per-CPU token
 * bucket: this CPU's share of KS_MINOR_RATE per second, a burst of 0.1 s of it. */
static __always_inline int minor_token(struct cpu_t *b, u64 now)
{
    if (KS_MINOR_RATE == 0)
        return 0;
    const u64 cost = (u64)KS_NCPU * 1000000000ULL;
    u64 cap = (u64)KS_MINOR_RATE * 100000000ULL; /* 0.1 s of this CPU's share */
    if (cap < cost)
        cap = cost;
    u64 elapsed = 0;
    if (now > b->last_ns) { /* entry programs of one CPU run in time order; be safe anyway */
        elapsed = now - b->last_ns;
        b->last_ns = now;
    }
    if (elapsed > 1000000000ULL)
        elapsed = 1000000000ULL;
    u64 credit = b->credit + elapsed * (u64)KS_MINOR_RATE;
    if (credit > cap)
        credit = cap;
    if (credit < cost) {
        b->credit = credit;
        return 0;
    }
    b->credit = credit - cost;
    return 1;
}

/* A token for this fault, unless it is one of KernelSight's own processes (then the token
 * goes back: our own faults are never recorded). */
static __always_inline u32 entry_token(u32 tgid, u64 now)
{
    u32 z = 0;
    struct cpu_t *c = cpu_state.lookup(&z);
    if (!c || !minor_token(c, now))
        return 0;
    if (ks_is_self(tgid)) {
        c->credit += (u64)KS_NCPU * 1000000000ULL;
        return 0;
    }
    return 1;
}

static __always_inline void on_entry(u64 address, u64 error_code)
{
    if ((s64)address < 0) /* a kernel address: no mm fault follows */
        return;
#ifdef KS_START_LRU
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct start_t s = {};
    s.ts = bpf_ktime_get_ns();
    s.addr = address;
    s.error_code = error_code;
    s.tgid = id >> 32;
    s.sampled = entry_token(s.tgid, s.ts);
    start.update(&tid, &s);
#else
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct start_t *s = start.task_storage_get(t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!s)
        return;
    u64 now = bpf_ktime_get_ns();
    s->ts = now;
    s->addr = address;
    s->error_code = error_code;
    if (!s->tgid) /* new storage: once per task, not per fault */
        s->tgid = bpf_get_current_pid_tgid() >> 32;
    s->sampled = entry_token(s->tgid, now);
#endif
}

/* Raw tracepoints: TP_PROTO(unsigned long address, struct pt_regs *regs,
 * unsigned long error_code) (arch/x86/include/asm/trace/exceptions.h). A raw tracepoint hands
 * the program the arguments as they are; a regular one first builds a trace record. */
RAW_TRACEPOINT_PROBE(page_fault_user)
{
    on_entry(ctx->args[0], ctx->args[2]);
    return 0;
}

/* Faults on user addresses taken in kernel mode (copy_to_user & co.): getrusage counts them. */
RAW_TRACEPOINT_PROBE(page_fault_kernel)
{
    on_entry(ctx->args[0], ctx->args[2]);
    return 0;
}

static __always_inline struct tval *totals_entry(u32 tgid, u32 major)
{
    struct tkey k = {};
    k.tgid = tgid;
    k.major = major;
    struct tval *v = totals.lookup(&k);
    if (v)
        return v;
    struct tval init = {};
    bpf_get_current_comm(&init.comm, sizeof(init.comm));
    totals.insert(&k, &init); /* BPF_NOEXIST: loses harmlessly to a concurrent insert */
    return totals.lookup(&k);
}

/* A timed fault's latency into its totals entry: sum and the max of the current epoch. */
static __always_inline void add_latency(struct tval *v, u64 lat)
{
    v->lat_sum += lat;
    KS_EPOCH_MAX(v, lat);
}

static __always_inline int on_done(struct bpf_perf_event_data *ctx, u32 major)
{
    u64 addr = ctx->addr;
    u64 entry_ts = 0;
    u32 sampled = 0;
    u32 tgid = 0;
    u8 access = ACCESS_READ;
    u32 z = 0;
    struct cpu_t *c = cpu_state.lookup(&z);
    if (!c) /* cannot happen: a one-slot array */
        return 0;

#ifdef KS_START_LRU
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    tgid = id >> 32;
    struct start_t *s = start.lookup(&tid);
#else
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct start_t *s = start.task_storage_get(t, 0, 0);
#endif
    if (s && s->ts && s->addr == addr) {
        entry_ts = s->ts;
        sampled = s->sampled;
        if (s->error_code & X86_PF_INSTR)
            access = ACCESS_EXEC;
        else if (s->error_code & X86_PF_WRITE)
            access = ACCESS_WRITE;
    }
    if (s) { /* consumed: a later completion cannot pair with this entry */
#ifdef KS_START_LRU
        start.delete(&tid);
#else
        tgid = s->tgid;
        s->ts = 0;
#endif
    }
    if (!tgid) /* no entry seen for this task yet */
        tgid = bpf_get_current_pid_tgid() >> 32;
    if (ks_is_self(tgid))
        return 0;
    if (!entry_ts) {
        /* No entry: a fault in flight when we started (its entry fired before we
         * attached). Its latency is unknown, so it is neither in the totals nor an event:
         * counted as a drop. */
        c->drops[DROP_NO_ENTRY]++;
        return 0;
    }

    struct tval *v = totals_entry(tgid, major);
    if (v)
        v->count++; /* every fault, exactly */
    else
        c->drops[DROP_MAP_FULL]++;

    /* Only timed faults read the clock a second time: every major fault, and the minor faults
     * that drew a token at entry (the events). The other minor faults are only counted: that
     * read was a third of this tracer's cost above empty programs. (A major fault that drew a
     * token uses it up: majors are rare.) */
    if (!major && !sampled) {
        c->drops[DROP_MINOR_SAMPLED]++;
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    u64 lat = now > entry_ts ? now - entry_ts : 0;
    if (major && v) /* every major fault's latency, event or not */
        add_latency(v, lat);

    struct event_t *ev = events.ringbuf_reserve(sizeof(struct event_t));
    if (!ev) {
        c->drops[DROP_RINGBUF_FULL]++;
        return 0;
    }
    u64 pid_tgid = bpf_get_current_pid_tgid();
    ev->ts = now;
    ev->latency_ns = lat;
    ev->addr = addr;
    ev->pid = pid_tgid >> 32;
    ev->tid = pid_tgid;
    ev->cpu = bpf_get_smp_processor_id();
    ev->major = major;
    ev->access = access;
    /* the perf sample's regs are the faulting context's: user mode iff CPL 3 */
    /* 8-byte read: kernels >= 6.9 declare cs as a u16 in a union, and the verifier rejects
     * 2-byte context reads; the low bits are the privilege level either way. */
    ev->user_mode = (*(u64 *)&ctx->regs.cs & 3) == 3;
    ev->pad = 0;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    events.ringbuf_submit(ev, ks_rb_flags(&c->submitted));
    if (v) {
        /* A minor fault's latency is in the totals exactly when it is an event: its
         * latency_sum_ns / sampled_events is the mean of the events stored. */
        if (!major)
            add_latency(v, lat);
        v->sampled++;
    }
    return 0;
}

int on_major(struct bpf_perf_event_data *ctx)
{
    return on_done(ctx, 1);
}

int on_minor(struct bpf_perf_event_data *ctx)
{
    return on_done(ctx, 0);
}
