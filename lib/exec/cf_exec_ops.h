/* cf_exec_ops — the data movement behind lib/exec's scheduler.
 *
 * cf_exec.c is ONE scheduler (cell state machine, plan following, load-failure fallback,
 * cancellation, stats). Everything that touches KV bytes, hidden states or readiness goes
 * through this table, so the same scheduler drives the CPU data path (cf_exec_cpu.c: fp32
 * staging, cf_kvmap scatter/gather into shared-memory blocks, futex counters) and the GPU one
 * (cf_exec_gpu.c: bf16 device staging, cf_gpu_load, cf_backend_cuda_forward_dev, paged
 * kernels, cf_gpu_ready gates).
 *
 * Contract every implementation keeps:
 *   - Each data op is SYNCHRONOUS from the calling thread's point of view: when it returns 0
 *     its effect is complete and visible to the other ops (a GPU implementation waits for its
 *     stream/event before returning). The scheduler marks a cell present right after.
 *   - Threads: load() runs on loader threads (one loader state `ls` per thread, never shared);
 *     gather/forward/write on the compute thread; begin/publish/finish under the scheduler's
 *     lock from any thread (they must not block long). req_stage/req_hidden run with the lock
 *     held, on the compute thread or at request init; a loader only stages into layer l after
 *     the scheduler saw req_stage(l) succeed.
 *   - "staging" of layer l = the request's contiguous K/V rows [0, T) of that layer that the
 *     compute attends over and writes; "hidden" = the two hidden-state buffers (layer parity).
 *   - Errors are CF_E* codes with cf_seterr detail. A failed load() is treated like a failed
 *     cell read: the cell is recomputed instead.
 */
#ifndef CF_EXEC_OPS_H
#define CF_EXEC_OPS_H

#include <stddef.h>

struct cf_exec_req_s;

typedef struct cf_exec_ops_s {
  const char *name;
  /* Checks beyond the scheduler's (which engine buffer kind the request carries). Optional. */
  int (*validate)(void *dev, const struct cf_exec_req_s *r);
  /* Per request state (*rs), freed with req_free (also after a failed init). Allocates the
   * request's fixed buffers only; staging and hidden states come with req_stage/req_hidden. */
  int (*req_init)(void *dev, struct cf_exec_req_s *r, void **rs);
  void (*req_free)(void *rs);
  int (*req_stage)(void *rs, int l);  /* layer l's K/V staging exists (idempotent) */
  int (*req_hidden)(void *rs);        /* hidden states exist (idempotent) */
  /* The memory-budget mode (cf_exec_set_pool; all four or none). Buffers come from the pool
   * (r->pool_, also for the request state) and hold only the rows the scheduler asks for:
   * staging of layer l holds rows [0, rows) (grown, keeping its rows, when asked for more),
   * hidden states rows [0, rows). CF_EAGAIN (no error detail) when the pool has no room now:
   * the scheduler waits or picks other work. req_unstage gives layer l's staging back (the
   * data path may keep one block as the request's spare, reused by its next req_stage_rows);
   * req_release gives back every working buffer (hidden, staging, spare); the request state
   * itself goes with req_free. */
  int (*req_stage_rows)(void *rs, int l, int rows);
  int (*req_hidden_rows)(void *rs, int rows);
  void (*req_unstage)(void *rs, int l);
  void (*req_release)(void *rs);
  /* Per loader thread state; host_alloc'd buffers receive cells read by sources
   * (4096-aligned: O_DIRECT reads go straight into them; pinned on the GPU). */
  int (*loader_init)(void *dev, int index, void **ls);
  void (*loader_free)(void *ls);
  void *(*host_alloc)(void *dev, size_t bytes);
  void (*host_free)(void *dev, void *p, size_t bytes);
  /* Cell of tokens [t0, t1) at layer l (K rows at k, V rows at v, the store's dtype) into the
   * engine's blocks, bit for bit — only its rows >= r->present_tokens (the engine's own rows
   * below are never written) —; and all its rows into layer l's staging when `stage`. */
  int (*load)(void *ls, void *rs, int l, int t0, int t1, const void *k, const void *v, int stage);
  /* Engine rows [t0, t1) of layer l (present, no longer written) into the staging. */
  int (*gather)(void *rs, int l, int t0, int t1);
  /* Forward of tokens [t0, t1) at layer l over staging rows [0, t0): writes staging rows
   * [t0, t1) and the next layer's hidden states (layer 0 reads the request's tokens). */
  int (*forward)(void *rs, int l, int t0, int t1);
  /* Staging rows [t0, t1) of layer l (computed) into the engine's blocks (the scheduler never
   * asks for rows below r->present_tokens). */
  int (*write)(void *rs, int l, int t0, int t1);
  /* Readiness: a restore starts; layers [0, n) are in the engine; it ended (err 0 or CF_E*). */
  void (*begin)(void *rs);
  void (*publish)(void *rs, int n_layers_ready);
  void (*finish)(void *rs, int err);
  /* 1: load() takes cells from any host memory, so a source may stream them out of its own
   * buffers (read_stream: the SSD tier's ring, several reads in flight). 0 (the GPU path, whose
   * H2D copies want host_alloc'd pinned buffers): cells are read one by one into those. */
  int load_any_host;
} cf_exec_ops_t;

/* Today's CPU data path (dev = the executor's cf_backend_t). */
extern const cf_exec_ops_t cf_exec_cpu_ops;

#endif
