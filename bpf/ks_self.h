/* KernelSight's own processes, which no tracer records (issue 16 item 1: its collectors,
 * ingester, private Redis and `kernelsight run` would otherwise record their own waiting,
 * ingest those rows and wait again).
 *
 * User space (services/kernelsight/selfpids.py) fills the maps with the tgids of every
 * registered KernelSight process and keeps them current (restarts, exits). The check is one
 * array lookup that the verifier inlines (no call, no hashing) for tgids below KS_SELF_SLOTS,
 * and a small hash for the rare larger ones. Include once per program file; each tracer has
 * its own copy of the maps (BCC maps belong to one BPF object).
 *
 * cflag: -DKS_SELF_SLOTS=<pid_max, capped> (set by selfpids.cflags()).
 */
#ifndef KS_SELF_H
#define KS_SELF_H

#ifndef KS_SELF_SLOTS
#define KS_SELF_SLOTS 32768
#endif

BPF_ARRAY(ks_self, u8, KS_SELF_SLOTS);
BPF_HASH(ks_self_big, u32, u8, 1024);

/* True when tgid is one of KernelSight's own processes. */
static __always_inline int ks_is_self(u32 tgid)
{
    if (tgid < KS_SELF_SLOTS) {
        u8 *v = ks_self.lookup(&tgid);
        return v && *v;
    }
    return ks_self_big.lookup(&tgid) != 0;
}

#endif
