/* Slots of the per-CPU `counters` array of syscalls.bpf.c. The only definition: the Python
 * side (collectors/syscalls.py) reads these numbers from this file (bpfsupport.header_slots).
 * Keep each on one line: #define NAME integer. */
#ifndef KS_SYSCALLS_H
#define KS_SYSCALLS_H

#define CNT_RINGBUF_FULL 0   /* a slow syscall's event did not fit in the ring buffer */
#define CNT_START_MAP_FULL 1 /* a syscall not timed: the start hash (tids > slots) was full */
#define CNT_UNTIMED 2        /* returned without its entry seen, >= threshold after attach */
#define CNT_UNTIMED_MAYBE 3  /* returned without its entry seen, sooner: maybe under it */
#define CNT_SUBMITTED 4     /* events put in the ring buffer (ks_ringbuf.h; not a loss) */
#define CNT_MAX 5

#endif
