/* KernelSight syscall latency tracer: every syscall slower than MIN_LATENCY_NS.
 *
 * Hooks raw tracepoints sys_enter (args[0] = struct pt_regs *, args[1] = syscall id) and
 * sys_exit (args[0] = struct pt_regs *, args[1] = return value). Raw tracepoints skip the
 * perf-buffer argument copy regular tracepoints do, so they are the cheapest hook here.
 *
 * Per-thread start state lives in a BPF_ARRAY indexed by tid (a lookup the verifier inlines:
 * no call, no hashing, no locking); tids >= TID_SLOTS fall back to a bounded hash, through a
 * separate call site so that the array's lookup stays inlined. Only syscalls that cross the
 * threshold touch the ring buffer.
 *
 * The clock is the expensive part (bpf_ktime_get_ns ~30 ns in this VM, more than everything
 * else together), so sys_exit first compares jiffies (a plain load): a syscall that did not
 * cross enough timer ticks is provably faster than the threshold and returns without reading
 * the clock. SKIP_JIFFIES is the largest tick count that is safe: user space sets it to
 * floor(MIN_LATENCY_NS / TICK_NS) - 2 (one tick for the rounding of jiffies, one for jiffies
 * lagging the clock), or -1 to always read the clock (unknown HZ, tiny thresholds).
 * The fast path is then: sys_enter = pid/tgid, an inlined array slot, jiffies, the clock;
 * sys_exit = pid/tgid, the slot, jiffies. On x86_64 the first argument is read from pt_regs
 * at sys_exit, on the slow path only (see ARG0_AT_ENTER). No task_struct field is read (the
 * headers BCC compiles against may be another kernel's); pt_regs is only read on x86_64/arm64,
 * whose layout is ABI.
 *
 * KernelSight's own processes (ks_self.h) are skipped at sys_enter, so they are never timed;
 * their exits take the no-entry path below, which returns for them before anything else.
 *
 * A sys_exit whose sys_enter was not seen is counted (CNT_UNTIMED*): a syscall that was in
 * flight when tracing started, so its latency is unknown. A new task's first "return" (the
 * child side of clone/fork) has no entry by nature and is not counted.
 *
 * cflags (set by collectors/syscalls.py):
 *   -DMIN_LATENCY_NS=...  -DTID_SLOTS=...  -DHASH_ENTRIES=...  -DRINGBUF_PAGES=...
 *   -DSKIP_JIFFIES=...    -DKS_SELF_SLOTS=...
 *   -DFILTER_TGID=N       only this process (`kernelsight trace --pid`); 0: everyone
 *   -DFILTER_COMM_LO/HI   only tasks whose 16-byte comm is these two words (`--comm`)
 *   -DCOUNT_MODE=1        no events: per-syscall count and latency sum in `counts`
 *                         (`kernelsight trace syscalls --count`, like bcc's syscount -L)
 */
#include <uapi/linux/ptrace.h>
#include <asm/unistd.h>

#ifndef MIN_LATENCY_NS
#define MIN_LATENCY_NS 10000000ULL
#endif
#ifndef FILTER_TGID
#define FILTER_TGID 0
#endif
#ifndef FILTER_COMM_LO
#define FILTER_COMM_LO 0
#endif
#ifndef FILTER_COMM_HI
#define FILTER_COMM_HI 0
#endif
#define FILTERED (FILTER_TGID || FILTER_COMM_LO)
#ifndef COUNT_MODE
#define COUNT_MODE 0
#endif
#define COUNT_NRS 1024
#ifndef TID_SLOTS
#define TID_SLOTS 32768
#endif
#ifndef HASH_ENTRIES
#define HASH_ENTRIES 65536
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif
#ifndef SKIP_JIFFIES
#define SKIP_JIFFIES -1
#endif

/* Drop/loss counters (CNT_*), per CPU so the hot path never contends. */
#include "ks_syscalls.h"
/* KernelSight's own processes: ks_is_self(tgid). */
#include "ks_self.h"
#include "ks_ringbuf.h" /* ks_rb_flags(): wake the reader every KS_WAKEUP_EVERY events */

struct start_t {
    u64 ts;   /* bpf_ktime_get_ns() at sys_enter; 0 = no syscall in flight */
    s64 arg0; /* first argument register, bit-for-bit */
    u32 jif;  /* low 32 bits of jiffies at sys_enter (differences wrap correctly) */
    s32 nr;   /* syscall id */
};

/* The one definition of an event; user space parses it with b["events"].event(data). */
struct event_t {
    u64 ts_ns;      /* CLOCK_MONOTONIC ns at sys_exit */
    u64 latency_ns;
    s64 ret;
    s64 arg0;       /* the unsigned register reinterpreted as int64 */
    s64 nr;
    u32 tgid;
    u32 tid;
    u32 uid;
    u32 cpu;
    char comm[16];
};

BPF_ARRAY(start_slots, struct start_t, TID_SLOTS);
BPF_HASH(start_hash, u32, struct start_t, HASH_ENTRIES);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_ARRAY(attach_ns, u64, 1); /* bpf_ktime_get_ns() once attached (user space sets it) */
#if COUNT_MODE
struct count_t {
    u64 count;
    u64 latency_ns;
};
BPF_PERCPU_ARRAY(counts, struct count_t, COUNT_NRS);
#endif

static __always_inline void count(int idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        (*c)++;
}

/* x86_64: the first-argument register (rdi) is read at sys_exit, on the slow path only: a
 * syscall reads its arguments from pt_regs and never writes rdi, except those that load a new
 * register set (execve/execveat zero it, rt_sigreturn restores it), whose arg0 is read here at
 * sys_enter. Elsewhere (arm64: x0 is the return value by sys_exit) always at sys_enter. */
#if defined(__x86_64__)
#define ARG0_AT_ENTER(nr) ((nr) == __NR_execve || (nr) == __NR_execveat || \
                           (nr) == __NR_rt_sigreturn)
#else
#define ARG0_AT_ENTER(nr) 1
#endif

RAW_TRACEPOINT_PROBE(sys_enter)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    if (ks_is_self(id >> 32))
        return 0;
#if FILTER_TGID
    if ((id >> 32) != FILTER_TGID)
        return 0;
#endif
#if FILTER_COMM_LO
    u64 comm[2] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    if (comm[0] != FILTER_COMM_LO || comm[1] != FILTER_COMM_HI)
        return 0;
#endif
    s32 nr = (s32)ctx->args[1];
    /* exit() and exit_group() never return: a start kept for them would only go stale. */
    if (nr == __NR_exit || nr == __NR_exit_group)
        return 0;
    struct start_t *s;
    if (tid < TID_SLOTS) {
        s = start_slots.lookup(&tid); /* an array: the verifier inlines this lookup */
        if (!s)
            return 0;
    } else {
        struct start_t zero = {};
        s = start_hash.lookup_or_try_init(&tid, &zero);
        if (!s) {
            count(CNT_START_MAP_FULL);
            return 0;
        }
    }
    s->nr = nr;
    if (ARG0_AT_ENTER(nr)) {
        struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
        bpf_probe_read_kernel(&s->arg0, sizeof(s->arg0), &PT_REGS_PARM1(regs));
    }
#if SKIP_JIFFIES >= 0
    s->jif = (u32)bpf_jiffies64();
#endif
    s->ts = bpf_ktime_get_ns();
    return 0;
}

/* The slow path of sys_exit: s is this thread's start, which is cleared here. */
static __always_inline int exit_slow(struct bpf_raw_tracepoint_args *ctx, struct start_t *s,
                                     u64 id, bool hashed)
{
    u32 tid = (u32)id;
#if SKIP_JIFFIES >= 0
    if ((u32)bpf_jiffies64() - s->jif <= (u32)SKIP_JIFFIES) {
        s->ts = 0;
        if (hashed)
            start_hash.delete(&tid);
        return 0;
    }
#endif
    u64 now = bpf_ktime_get_ns();
    u64 start = s->ts;
    u64 delta = now - start;
    s->ts = 0;
    if (delta < MIN_LATENCY_NS) {
        if (hashed)
            start_hash.delete(&tid);
        return 0;
    }
#if COUNT_MODE
    u32 cnr = (u32)s->nr;
    if (hashed)
        start_hash.delete(&tid);
    if (cnr < COUNT_NRS) {
        struct count_t *c = counts.lookup(&cnr);
        if (c) {
            c->count++;
            c->latency_ns += delta;
        }
    }
    return 0;
#endif
    /* registered as ours while this syscall was in flight */
    if (ks_is_self(id >> 32)) {
        if (hashed)
            start_hash.delete(&tid);
        return 0;
    }
    s64 nr = s->nr;
    s64 arg0 = s->arg0;
    if (hashed)
        start_hash.delete(&tid);

    /* A start can be stale: a thread that execve()d from a non-leader thread took the leader's
     * tid and never returned on its own; a new thread reusing that tid first "returns" from
     * clone. Only pair an exit with an enter of the same syscall (orig_ax / syscallno is the
     * number being exited). Done here, on the slow path only. */
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    s64 exit_nr = -1;
#if defined(__x86_64__)
    /* di and orig_ax are adjacent in x86_64's pt_regs (ABI): one read for both */
    struct {
        u64 di;
        u64 orig_ax;
    } r = {};
    bpf_probe_read_kernel(&r, sizeof(r), &regs->di);
    exit_nr = r.orig_ax;
    if (!ARG0_AT_ENTER(nr))
        arg0 = r.di;
#elif defined(__aarch64__)
    int nr32 = -1;
    bpf_probe_read_kernel(&nr32, sizeof(nr32), &regs->syscallno);
    exit_nr = nr32;
#else
    exit_nr = nr;
#endif
    if (exit_nr != nr)
        return 0;

    struct event_t *e = events.ringbuf_reserve(sizeof(struct event_t));
    if (!e) {
        count(CNT_RINGBUF_FULL);
        return 0;
    }
    e->ts_ns = now;
    e->latency_ns = delta;
    e->ret = (s64)ctx->args[1];
    e->arg0 = arg0;
    e->nr = nr;
    e->tgid = id >> 32;
    e->tid = tid;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->cpu = bpf_get_smp_processor_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    int sub = CNT_SUBMITTED;
    u64 *n = counters.lookup(&sub);
    events.ringbuf_submit(e, n ? ks_rb_flags(n) : 0);
    return 0;
}

/* A sys_exit without a recorded sys_enter (array path; off under a --pid/--comm filter, where
 * every other task's exits come here). */
static __always_inline int exit_no_entry(struct bpf_raw_tracepoint_args *ctx, u64 id)
{
    if (ks_is_self(id >> 32))
        return 0;
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    s64 nr = -1;
#if defined(__x86_64__)
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
#elif defined(__aarch64__)
    int nr32 = -1;
    bpf_probe_read_kernel(&nr32, sizeof(nr32), &regs->syscallno);
    nr = nr32;
#endif
    /* a new task's first return: the child side of clone/fork never entered */
    if ((s64)ctx->args[1] == 0) {
#ifdef __NR_fork
        if (nr == __NR_fork)
            return 0;
#endif
#ifdef __NR_vfork
        if (nr == __NR_vfork)
            return 0;
#endif
        if (nr == __NR_clone || nr == __NR_clone3)
            return 0;
    }
    int k = 0;
    u64 *t0 = attach_ns.lookup(&k);
    u64 now = bpf_ktime_get_ns();
    /* in flight since before the attach: certainly slow once MIN_LATENCY_NS have passed */
    if (t0 && *t0 && now - *t0 >= MIN_LATENCY_NS)
        count(CNT_UNTIMED);
    else
        count(CNT_UNTIMED_MAYBE);
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct start_t *s;
    /* Two separate lookups on purpose: one call site for both maps would make the verifier
     * keep a real (retpolined, indirect) map lookup call instead of inlining the array's. */
    if (tid < TID_SLOTS) {
        s = start_slots.lookup(&tid);
        if (!s)
            return 0;
        if (!s->ts) {
#if FILTERED
            return 0;
#else
            return exit_no_entry(ctx, id);
#endif
        }
#if SKIP_JIFFIES >= 0
        /* the fast path: no timer tick since sys_enter proves the syscall was fast */
        if ((u32)bpf_jiffies64() - s->jif <= (u32)SKIP_JIFFIES) {
            s->ts = 0;
            return 0;
        }
#endif
        return exit_slow(ctx, s, id, false);
    }
    s = start_hash.lookup(&tid);
    if (!s || !s->ts)
        return 0;
    return exit_slow(ctx, s, id, true);
}
