/* Slots of cpu_t.drops (the per-CPU `cpu_state` array) of pagefaults.bpf.c. The only
 * definition: the Python side (collectors/pagefaults.py) reads these numbers from this file
 * (bpfsupport.header_slots). Keep each on one line: #define NAME integer. */
#ifndef KS_PAGEFAULTS_H
#define KS_PAGEFAULTS_H

#define DROP_RINGBUF_FULL 0
#define DROP_MINOR_SAMPLED 1
#define DROP_MAP_FULL 2
#define DROP_NO_ENTRY 3 /* completion without a matching entry (began before we started) */
#define DROP_SLOTS 4

#endif
