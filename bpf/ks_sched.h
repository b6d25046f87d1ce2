/* Slots of the per-CPU `counters` array of sched.bpf.c. The only definition: the Python side
 * (collectors/sched.py) reads these numbers from this file (bpfsupport.header_slots).
 * Keep each on one line: #define NAME integer. */
#ifndef KS_SCHED_H
#define KS_SCHED_H

#define CNT_MAP_FULL 0 /* something not recorded: the procs or histogram map was full */
#define CNT_MAX 1

#endif
