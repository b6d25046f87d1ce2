/* Slots of the per-CPU `drops` array of io.bpf.c. The only definition: the Python side
 * (collectors/io.py) reads these numbers from this file (bpfsupport.header_slots).
 * Keep each on one line: #define NAME integer. */
#ifndef KS_IO_H
#define KS_IO_H

#define DROP_MAP_FULL 0  /* a completion not counted: stats/hist map full */
#define DROP_UNMATCHED 1 /* a completion with no issue seen (issued before we started) */
#define DROP_UNSEEN 2 /* an issue found its request still open: that completion never ran */
#define DROP_SLOTS 3

#endif
