/* KernelSight scheduler tracer: per-process context switches (voluntary / involuntary, as the
 * kernel counts nvcsw / nivcsw), wakeups, CPU time and run-queue latency.
 *
 * Two programs in one file; collectors/sched.py picks one.
 *
 * KS_RAW (the default; needs /sys/kernel/btf/vmlinux and kernel >= 5.18's sched_switch
 * prev_state argument): raw tracepoints, no argument copy. The kernel already counts what we
 * want per task: nvcsw, nivcsw, se.sum_exec_runtime, sched_info.run_delay (sum of run-queue
 * waits) and sched_info.pcount (switch-ins). They are read from current at their BTF offsets
 * (-DKS_OFF_*; plain loads through bpf_get_current_task_btf()), and what they gained since
 * the thread's last switch-out (kept in task-local storage `tstate`, freed by the kernel with
 * the task) is charged to `procs` and, one run-queue wait per switch-in, to `runq_hist`.
 *   raw sched_switch (prev is current)     charge prev; nothing is done for next.
 *   raw sched_wakeup, sched_wakeup_new     the wakee's tgid (one probe read) gets a wakeup.
 *   a CPU_CLOCK perf event every TICK_NS    charges the running thread the same way, so a task
 *                                           that never switches out reports CPU time.
 *
 * Otherwise: regular tracepoints (BCC reads their field layout from tracefs, so the headers it
 * compiles against may be another kernel's; no task_struct field is read):
 *   sched:sched_switch     prev is current, so bpf_get_current_pid_tgid() is prev's tgid.
 *   sched:sched_wakeup, sched:sched_wakeup_new   the wakee's tid only (current is the waker).
 *   sched:sched_process_exit                     current is the exiting thread.
 *   the CPU_CLOCK tick                           as above.
 * What happens to a thread (tid) is kept in `threads` until the thread is current again
 * (switch-out, tick, exit): only then is its tgid known, and it is charged to `procs` and
 * `runq_hist`.
 *
 * `procs` (per tgid) and `runq_hist` (per tgid and bucket) are cumulative; user space never
 * resets them: an interval is the difference of two reads, so nothing is lost in between.
 *
 * cflags (set by collectors/sched.py): -I<bpf dir> -DMAP_ENTRIES=..., then either -DKS_RAW=1
 *   -DKS_OFF_<FIELD>=<offset in task_struct>..., or -DKS_PREEMPTED=... -DKS_DEAD=... (from the
 *   tracepoint's print fmt: TASK_REPORT_MAX, and X|Z).
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#include "ks_hist.h"
#include "ks_sched.h" /* CNT_* counter slots */
#include "ks_self.h" /* ks_is_self(): KernelSight's own processes are not traced */

#ifndef MAP_ENTRIES
#define MAP_ENTRIES 65536
#endif
#ifndef KS_PREEMPTED
#define KS_PREEMPTED 0x100 /* TASK_REPORT_MAX since 4.14: "R+" */
#endif
#ifndef KS_DEAD
#define KS_DEAD 0x30 /* EXIT_DEAD "X" | EXIT_ZOMBIE "Z": the last switch of a thread */
#endif

#define E_EXIST 17 /* an insert that lost a race to another CPU is not a full map */

struct thread_t {
    u64 queued;  /* when it became runnable (wakeup or preemption); 0 = not queued */
    u64 oncpu;   /* when it was last switched in (or charged by a tick); 0 = not on cpu */
    u64 delay;   /* run-queue delay measured at the last switch-in, not yet charged */
    u32 delayed; /* 1 when `delay` holds a value */
    u32 wakeups; /* wakeups not yet charged (atomic: wakers run on other CPUs) */
};

struct proc_t {
    char comm[16];
    u64 nvcsw;     /* switch-outs while blocking (kernel's nvcsw) */
    u64 nivcsw;    /* switch-outs while runnable: preempted or yielded (kernel's nivcsw) */
    u64 wakeups;
    u64 cpu_ns;
};

struct hkey_t {
    u32 tgid;
    u32 bucket;
};

BPF_HASH(procs, u32, struct proc_t, MAP_ENTRIES);
BPF_HASH(runq_hist, struct hkey_t, u64, MAP_ENTRIES);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);

static __always_inline void count(int idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        (*c)++;
}

static __always_inline struct proc_t *get_proc(u32 tgid, u32 tid)
{
    struct proc_t *p = procs.lookup(&tgid);
    if (p) {
#ifndef KS_RAW /* the raw program copies the name with two loads instead */
        if (tid == tgid) /* the process is named after its main thread */
            bpf_get_current_comm(&p->comm, sizeof(p->comm));
#endif
        return p;
    }
    struct proc_t zero = {};
    bpf_get_current_comm(&zero.comm, sizeof(zero.comm));
    procs.insert(&tgid, &zero);
    p = procs.lookup(&tgid);
    if (!p)
        count(CNT_MAP_FULL);
    return p;
}

static __always_inline void hist_add(u32 tgid, u64 delay, u64 n)
{
    struct hkey_t k = {.tgid = tgid, .bucket = ks_hist_bucket(delay)};
    u64 *v = runq_hist.lookup(&k);
    if (!v) {
        u64 zero = 0;
        runq_hist.insert(&k, &zero);
        v = runq_hist.lookup(&k);
        if (!v) {
            count(CNT_MAP_FULL);
            return;
        }
    }
    __sync_fetch_and_add(v, n);
}


#ifdef KS_RAW
/* ---- raw tracepoints + the kernel's own per-task counters (the default) -------------- */

/* A field of current, at its vmlinux BTF offset: bpf_get_current_task_btf() is a trusted
 * BTF pointer, so this is one checked load, no helper call. */
#define CUR(t, off, type) (*(type *)((char *)(t) + (off)))

struct tstate_t {   /* a thread's kernel counters as last charged to its process */
    u64 nvcsw;
    u64 nivcsw;
    u64 cpu_ns;     /* se.sum_exec_runtime */
    u64 run_delay;  /* sched_info.run_delay: sum of its run-queue waits */
    u64 pcount;     /* sched_info.pcount: times it was switched in */
};

BPF_TASK_STORAGE(tstate, struct tstate_t);
BPF_ARRAY(start_ns, u64, 1); /* when the tracer attached (user space sets it) */

/* The thread is current: charge what its kernel counters gained since last time. */
static __always_inline void charge_current(struct task_struct *t, u64 id, int runnable)
{
    u32 tid = (u32)id, tgid = id >> 32;
    u64 nv = CUR(t, KS_OFF_NVCSW, unsigned long);
    u64 niv = CUR(t, KS_OFF_NIVCSW, unsigned long);
    u64 cpu = CUR(t, KS_OFF_RUNTIME, u64);
    u64 pc = CUR(t, KS_OFF_PCOUNT, unsigned long);
    u64 rd = CUR(t, KS_OFF_RUN_DELAY, unsigned long long);

    struct tstate_t *s = tstate.task_storage_get(t, 0, 0);
    if (!s) {
        s = tstate.task_storage_get(t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
        if (!s) {
            count(CNT_MAP_FULL);
            return;
        }
        int k = 0;
        u64 *start = start_ns.lookup(&k);
        /* A thread forked since the tracer attached has counted everything from zero;
         * an older one is counted from now (this switch-out by prev_state). */
        if (!start || !*start || CUR(t, KS_OFF_START_TIME, u64) < *start) {
            s->nvcsw = nv;
            s->nivcsw = niv;
            if (runnable == 1)
                s->nivcsw--;
            else if (runnable == 0)
                s->nvcsw--;
            s->cpu_ns = cpu;
            s->run_delay = rd;
            s->pcount = pc;
        }
    }
    struct proc_t *p = get_proc(tgid, tid);
    if (!p)
        return; /* counted; the counters stay pending in s */
    if (tid == tgid) { /* the process is named after its main thread */
        u64 *comm = (u64 *)p->comm;
        comm[0] = CUR(t, KS_OFF_COMM, u64);
        comm[1] = CUR(t, KS_OFF_COMM + 8, u64);
    }
    if (nv != s->nvcsw)
        __sync_fetch_and_add(&p->nvcsw, nv - s->nvcsw);
    if (niv != s->nivcsw)
        __sync_fetch_and_add(&p->nivcsw, niv - s->nivcsw);
    if (cpu > s->cpu_ns)
        __sync_fetch_and_add(&p->cpu_ns, cpu - s->cpu_ns);
    u64 n = pc - s->pcount;
    if (n) { /* n > 1 only after a switch-out this tracer did not see */
        u64 d = rd - s->run_delay;
        hist_add(tgid, n == 1 ? d : d / n, n);
    }
    s->nvcsw = nv;
    s->nivcsw = niv;
    s->cpu_ns = cpu;
    s->run_delay = rd;
    s->pcount = pc;
}

/* TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
 *          unsigned int prev_state): prev is current. */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id == 0 || ks_is_self(id >> 32)) /* each CPU's idle task; ours */
        return 0;
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    int runnable = ctx->args[0] || (u32)ctx->args[3] == 0; /* TASK_RUNNING */
    charge_current(t, id, runnable);
    return 0;
}

/* TP_PROTO(struct task_struct *p): p is the wakee, current the waker. */
static __always_inline int on_wakeup(struct task_struct *task)
{
    u32 tgid = 0;
    bpf_probe_read_kernel(&tgid, sizeof(tgid), (char *)task + KS_OFF_TGID);
    if (tgid == 0 || ks_is_self(tgid))
        return 0;
    struct proc_t *p = procs.lookup(&tgid);
    if (!p) {
        struct proc_t zero = {};
        bpf_probe_read_kernel(&zero.comm, sizeof(zero.comm), (char *)task + KS_OFF_COMM);
        procs.insert(&tgid, &zero);
        p = procs.lookup(&tgid);
        if (!p) {
            count(CNT_MAP_FULL);
            return 0;
        }
    }
    __sync_fetch_and_add(&p->wakeups, 1);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_wakeup)
{
    return on_wakeup((struct task_struct *)ctx->args[0]);
}

RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
    return on_wakeup((struct task_struct *)ctx->args[0]);
}

/* CPU_CLOCK tick: charge the running thread's CPU time (as of the last scheduler tick). */
int on_tick(struct bpf_perf_event_data *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id == 0 || ks_is_self(id >> 32))
        return 0;
    charge_current((struct task_struct *)bpf_get_current_task_btf(), id, -1);
    return 0;
}

#else
BPF_HASH(threads, u32, struct thread_t, MAP_ENTRIES);

/* Charge what a thread (now current) has accumulated to its process. */
static __always_inline void charge(struct thread_t *t, struct proc_t *p, u32 tgid, u64 now)
{
    if (t->oncpu && now > t->oncpu)
        __sync_fetch_and_add(&p->cpu_ns, now - t->oncpu);
    u32 w = t->wakeups;
    if (w) {
        __sync_fetch_and_add(&t->wakeups, -w);
        __sync_fetch_and_add(&p->wakeups, w);
    }
    if (t->delayed) {
        t->delayed = 0;
        hist_add(tgid, t->delay, 1);
    }
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    u32 prev = (u32)id;
    u32 next = args->next_pid;
    long state = args->prev_state;

    if (prev != 0 && !ks_is_self(id >> 32)) { /* pid 0: each CPU's idle task; ours */
        u32 tgid = id >> 32;
        /* The kernel counts nvcsw when a task that is not preempted switches out in a
         * sleeping state; a preemption (TASK_REPORT_MAX) or a runnable task (0, e.g.
         * sched_yield) counts nivcsw. */
        bool runnable = (state & KS_PREEMPTED) || state == 0;
        struct proc_t *p = get_proc(tgid, prev);
        struct thread_t *t = threads.lookup(&prev);
        if (p) {
            if (runnable)
                __sync_fetch_and_add(&p->nivcsw, 1);
            else
                __sync_fetch_and_add(&p->nvcsw, 1);
            if (t)
                charge(t, p, tgid, now);
        }
        if (t) {
            if (state & KS_DEAD) {
                threads.delete(&prev); /* its last switch: never runs again */
            } else {
                t->oncpu = 0;
                t->queued = runnable ? now : 0;
            }
        } else if (runnable) {
            struct thread_t fresh = {.queued = now};
            int err = threads.insert(&prev, &fresh);
            if (err && err != -E_EXIST)
                count(CNT_MAP_FULL);
        }
    }

    if (next != 0) {
        struct thread_t *t = threads.lookup(&next);
        if (!t) {
            struct thread_t fresh = {.oncpu = now};
            int err = threads.insert(&next, &fresh);
            if (err && err != -E_EXIST)
                count(CNT_MAP_FULL);
            return 0;
        }
        if (t->queued && now > t->queued) {
            t->delay = now - t->queued;
            t->delayed = 1;
        }
        t->queued = 0;
        t->oncpu = now;
    }
    return 0;
}

static __always_inline int on_wakeup(u32 tid)
{
    if (tid == 0)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct thread_t *t = threads.lookup(&tid);
    if (!t) {
        struct thread_t fresh = {.queued = now, .wakeups = 1};
        if (threads.insert(&tid, &fresh) == 0)
            return 0;
        t = threads.lookup(&tid); /* a racing wakeup inserted it */
        if (!t) {
            count(CNT_MAP_FULL);
            return 0;
        }
    }
    t->queued = now;
    __sync_fetch_and_add(&t->wakeups, 1);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    return on_wakeup(args->pid);
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    return on_wakeup(args->pid);
}

/* The thread is current and about to die: charge what it has and free its entry. Its final
 * switch-out (state X or Z) is still counted above and deletes anything made since. */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct thread_t *t = threads.lookup(&tid);
    if (!t)
        return 0;
    if (ks_is_self(id >> 32)) {
        threads.delete(&tid);
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    struct proc_t *p = get_proc(id >> 32, tid);
    if (p)
        charge(t, p, id >> 32, now);
    threads.delete(&tid);
    return 0;
}

/* CPU_CLOCK tick: charge the running thread's CPU time (and anything pending) so far. */
int on_tick(struct bpf_perf_event_data *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    if (tid == 0 || ks_is_self(id >> 32))
        return 0;
    struct thread_t *t = threads.lookup(&tid);
    if (!t || !t->oncpu)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct proc_t *p = get_proc(id >> 32, tid);
    if (!p)
        return 0;
    charge(t, p, id >> 32, now);
    t->oncpu = now;
    return 0;
}

#endif /* KS_RAW */
