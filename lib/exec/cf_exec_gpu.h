/* cf_exec_gpu — the GPU data path of lib/exec's scheduler (cf_exec_ops.h).
 *
 * The scheduler (cf_exec.c) is unchanged; this implements its ops on one CUDA device:
 *   staging   per layer some chunk computes: the request's K and V rows [0, T) contiguous on
 *             the device, bf16 [T][n_kv_heads][head_dim] (what the forward attends over);
 *             hidden states fp32 [T][hidden] x 2 and the token ids on the device too;
 *   load      cf_gpu_load (one cf_gpu_loader_t, i.e. its own copy/scatter streams, per loader
 *             thread; STAGED, ZEROCOPY or ARENA, flushed per cell) into the engine's paged
 *             blocks; a cell a later computed chunk attends over is then gathered from the
 *             blocks into the staging on the loader's stream (device to device: the link
 *             carries the cell once); the op returns once the loader's stream has reached
 *             the copies (an event), so the scheduler marks the cell present only then;
 *   gather /  the paged kernels (lib/gpu/cf_gpu_rows) on the compute stream;
 *   write
 *   forward   cf_backend_cuda_forward_dev on the compute stream, one layer, the chunks' rows;
 *   readiness cf_gpu_ready_publish on the executor's publish stream: slot.gate written in
 *             stream order, then the futex counter (every op before a publish has completed,
 *             so the gate follows the layer's last copy and compute); failure: cf_gpu_ready_fail
 *             opens the gate. A request without gready: the CPU counters alone (cf_ready).
 * Every op waits for its stream before returning (the ops' contract: synchronous). Engine
 * buffers: cf_exec_req_t.gkv (cf_gpu_kv_open from CUDA IPC handles, or cf_gpu_kv_wrap), bf16.
 *
 * UNVERIFIED: no GPU has run this yet (tests/device/run.sh steps kt_gpuexec and
 * gpuexec-e2e check it against the CPU executor); cacheflowd uses it only with
 * gpu_executor = on.
 */
#ifndef CF_EXEC_GPU_H
#define CF_EXEC_GPU_H

#include <pthread.h>

#include "exec/cf_exec.h"
#include "exec/cf_save.h"
#include "gpu/cf_gpu_load.h"
#include "gpu/cf_gpu_ready.h"

#define CF_EXEC_GPU_MAX_LOADERS 64

typedef struct {
  cf_backend_t *be;           /* the CUDA backend (cf_backend_cuda_create), borrowed */
  int device;
  cf_gpu_load_mode_t mode;
  size_t loader_staging;      /* cf_gpu_loader_init's staging_bytes (0: its default) */
  cudaStream_t compute, pub;  /* forward/gather/write; readiness publishes */
  cudaStream_t save;          /* cf_exec_gpu_save's (the daemon's loop thread, beside restores) */
  /* memory budget (cf_exec_gpu_set_budget): one device region, cudaMalloc'ed once; staging,
   * hidden states, token ids and block tables of restores come from it (NULL: cudaMalloc) */
  void *arena;
  size_t arena_bytes;
  struct cf_mempool_s *dpool;
  /* Kept across runs, made by the first run that needs them (issue 18: nothing allocated per
   * restore): each loader index's state (its streams, events and device staging / arena,
   * cudaMalloc'ed once) and the loaders' pinned cell buffers (cudaHostRegister'ed once). */
  void *loaders[CF_EXEC_GPU_MAX_LOADERS];
  void *hbuf[CF_EXEC_GPU_MAX_LOADERS];
  size_t hcap[CF_EXEC_GPU_MAX_LOADERS];
  int n_hbuf;
  pthread_mutex_t hmu;
  /* cf_exec_gpu_save's device buffers (one cell of K and V rows and that cell's block-table
   * entries: a fixed size, not the prefix's): one region taken by the first Save, from the
   * arena when a budget is set (else cudaMalloc), kept until close; retaken only when a Save
   * needs more (a smaller engine block size). smu: one Save at a time on the save stream. */
  pthread_mutex_t smu;
  void *sbuf;
  size_t sbuf_bytes;
} cf_exec_gpu_t;

/* Streams on CUDA device `device` for backend `be` (must be the CUDA backend on that device).
 * Returns 0, CF_ENODEV (no CUDA build or device), CF_EINVAL, CF_ECUDA.
 * Close with cf_exec_gpu_close. Then cf_exec_init_ops(ex, be, n, &cf_exec_gpu_ops, g). */
int cf_exec_gpu_init(cf_exec_gpu_t *g, cf_backend_t *be, int device, cf_gpu_load_mode_t mode);
void cf_exec_gpu_close(cf_exec_gpu_t *g);
/* Restores' device working memory from one region of `bytes` (cudaMalloc'ed now, freed at
 * close): the scheduler then runs in its budget mode (cf_exec_set_budget_mode or
 * cf_exec_set_pool on the executor) and nothing is cudaMalloc'ed per request. Returns 0,
 * CF_EINVAL (already set, set after a Save took cudaMalloc memory, 0 bytes), CF_ENOMEM (the device has
 * not that much free), CF_ENODEV.
 * UNVERIFIED on a GPU, like the rest of this path. */
int cf_exec_gpu_set_budget(cf_exec_gpu_t *g, size_t bytes);

extern const cf_exec_ops_t cf_exec_gpu_ops;

/* Save (cf_save.h) from an engine's device blocks: each cell is gathered on the device (paged
 * kernel) and copied to the host (D2H) on g's save stream. Its device buffers (2 x one cell of
 * rows + one cell's block-table entries) are the executor's kept region (g->sbuf), taken once
 * from the arena when a budget is set, waiting while restores hold it (cf_mempool_alloc_wait;
 * CF_ENOMEM only when it exceeds the whole arena): nothing is allocated per Save. Same contract and errors as
 * cf_save_blocks, plus CF_ECUDA / CF_ENODEV. */
int cf_exec_gpu_save(cf_exec_gpu_t *g, cf_store_t *st, const cf_gpu_kv_t *kv, const int32_t *tokens,
                     int n, const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res);

#endif
