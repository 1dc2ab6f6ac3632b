/* cf_stage_ring — SSD-tier cells through a bounded ring of staging buffers into a sink.
 *
 * Used by both load paths: the GPU one (cf_gpu_ring_sink: H2D copies out of pinned staging)
 * and the CPU executor's SSD source (cf_cellsrc_store: a synchronous sink scattering into the
 * engine's blocks), so it lives in lib/store. Cells are read with the store's io_uring reader (O_DIRECT,
 * every cell's checksum verified) into a ring of n_slots staging buffers and handed, in request
 * order, to a sink that consumes them, possibly asynchronously. While the sink consumes cell i
 * (for the GPU: the H2D copy out of pinned staging), the reads of cells i+1 .. i+n_slots-1 are
 * in flight, so disk and copy overlap and memory stays at n_slots * slot_bytes.
 *
 * Cell i always uses slot (ring counter + i) % n_slots, so a slot is reused only after the cell
 * n_slots before it was delivered AND the sink said it is done with that slot.
 *
 * Per-cell outcome: a cell whose read fails (CF_ECORRUPT: checksum mismatch, the store drops the
 * chunk; CF_ENOTFOUND: not stored, evicted or dropped by an earlier corrupt cell; CF_EIO) is not
 * delivered: the sink's `failed` callback gets it and status[i] records it; the run goes on with
 * the next cell. Every cell is delivered or failed exactly once, in order.
 *
 * The sink:
 *   deliver(ud, i, cell, slot, buf, bytes, n_tokens): start consuming cell i's bytes in `buf`
 *     (slot `slot`). Returns 0, or a negative CF_E* code that stops the run (returned by it);
 *     a failed deliver may have started consuming: the slot is reused after slot_done only.
 *   failed(ud, i, cell, status): cell i was not delivered (may be NULL).
 *   slot_done(ud, slot, wait): 1 when what the last deliver into `slot` started no longer reads
 *     the buffer (wait = 1: block until then), 0 when it still does (only when wait = 0), or a
 *     negative CF_E* code. NULL: deliver consumes synchronously (a memcpy sink).
 *   issue(ud, i, cell, wait) (may be NULL): called in order right before cell i's read is
 *     submitted (the CPU executor checks cancellation and takes the cell's bytes from its rate
 *     limiter here, so reads enter the disk at the link's pace). 0: read it; CF_EAGAIN (only
 *     when wait = 0, i.e. earlier cells are still outstanding): not yet, the ring hands over
 *     those first and asks again (so a cell that arrived is never held back by the link's wait
 *     for the next); another negative CF_E* code: the cell is not read and reaches `failed`
 *     with that status in its turn. wait = 1 when nothing is outstanding: it may block.
 *
 * Threads: a ring and its reader belong to one thread at a time.
 */
#ifndef CF_STAGE_RING_H
#define CF_STAGE_RING_H

#include <stddef.h>
#include <stdint.h>

#include "store/cf_store.h"

typedef struct {
  cf_store_key_t key;  /* chunk */
  uint32_t layer;      /* layer of the cell */
  int32_t tok0;        /* where the sink puts it: first logical token of the chunk */
  uint64_t tag;        /* caller's cookie */
} cf_ring_cell_t;

typedef struct {
  int (*deliver)(void *ud, size_t i, const cf_ring_cell_t *c, int slot, const void *buf,
                 size_t bytes, uint32_t n_tokens);
  void (*failed)(void *ud, size_t i, const cf_ring_cell_t *c, int status);
  int (*slot_done)(void *ud, int slot, int wait);
  void *ud;
  int (*issue)(void *ud, size_t i, const cf_ring_cell_t *c, int wait); /* last: positional
                                                                           inits stay valid */
} cf_ring_sink_t;

enum { CF__RING_FREE = 0, CF__RING_READING, CF__RING_READY, CF__RING_CONSUMING };

typedef struct {
  cf_store_t *st;
  cf_store_reader_t *rd;
  int n_slots;
  size_t slot_bytes;           /* >= the store's cell stride, a multiple of 4096 */
  uint8_t *mem;                /* n_slots * slot_bytes, 4096-aligned */
  int own_mem;
  uint64_t next;               /* slot counter carried across runs */
  uint8_t state[64];           /* CF__RING_* per slot */
  int skip[64];                /* per slot: the sink's issue() refused the cell (its status) */
  cf_store_read_t req[64];
  uint64_t delivered, failed;  /* totals, for statistics */
} cf_ring_t;

#define CF_RING_MAX_SLOTS 64

/* Open a ring of n_slots (2..64) buffers of one cell stride each over `st`. `mem` (may be NULL:
 * the ring allocates with aligned_alloc) must hold n_slots * cf_ring_slot_bytes(st) bytes,
 * 4096-aligned (e.g. cf_gpu_pinned_alloc'd memory for the GPU sink); it stays the caller's.
 * Errors: CF_EINVAL (n_slots, misaligned mem), CF_ENOMEM, and the reader's errors. */
int cf_ring_init(cf_ring_t *r, cf_store_t *st, int n_slots, void *mem);
/* Bytes of one slot for store `st` (its cell stride: a full cell rounded up to 4096). */
size_t cf_ring_slot_bytes(const cf_store_t *st);
/* Drain (cf_ring_drain) and release. Safe on a zeroed struct. */
void cf_ring_close(cf_ring_t *r);

/* Read cells[0..n) and deliver them in order. status (may be NULL) gets each cell's outcome
 * (0 delivered, or its CF_E* code). Returns 0 when every cell was delivered or failed (look at
 * status), or the first error of the sink (deliver/slot_done) or CF_EINVAL; reads in flight
 * are always completed before it returns, so the buffers are never written behind the caller.
 * The sink may still be consuming the last cells: cf_ring_drain waits for it. *n_ok (may be
 * NULL) gets the number delivered. */
int cf_ring_run(cf_ring_t *r, const cf_ring_cell_t *cells, size_t n, const cf_ring_sink_t *sink,
                int *status, size_t *n_ok);
/* Wait until the sink is done with every slot. Returns 0 or the sink's error. */
int cf_ring_drain(cf_ring_t *r, const cf_ring_sink_t *sink);

#endif
