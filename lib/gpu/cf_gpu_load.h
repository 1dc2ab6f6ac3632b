/* cf_gpu_load — restored cells into an engine's paged KV blocks on the GPU, on a copy stream.
 *
 * A cell is the K and V of one chunk for one layer, [2][t][n_kv_heads][head_dim] (lib/store).
 * Two sources:
 *   (a) pinned host memory: CPU-tier slots of a store whose region comes from
 *       cf_gpu_pinned_alloc (cf_store_config_t.cpu_alloc), pinned with cf_store_pin;
 *   (b) SSD-tier cells: lib/store's cf_stage_ring reads them (O_DIRECT io_uring, checksums
 *       verified) into pinned staging slots, and cf_gpu_ring_sink is its sink: the H2D copy of
 *       cell i runs while the ring reads cell i+1.
 * Two ways to move a cell (measured on the H100, tests/device/RESULTS-h100.md):
 *   CF_GPU_LOAD_STAGED (default): the copy engine moves the cell into a device staging ring
 *     (cudaMemcpyAsync on `copy`: no SM time) and the scatter kernel spreads it over the paged
 *     blocks on a high-priority `scatter` stream: 0.97-0.98 of a contiguous 1 GiB memcpy into
 *     16 KiB-1 MiB blocks (cf_paged_load_staged's path; here the slot counter carries across
 *     cells so consecutive cells pipeline).
 *   CF_GPU_LOAD_ZEROCOPY: the scatter kernel reads the pinned host cell over PCIe itself
 *     (0.92-0.93), with few CTAs (default 32) so it leaves SMs to compute.
 *   CF_GPU_LOAD_ARENA: for loads beside compute. Both of the above contend with the compute
 *     kernels for SMs (measured: 1.12-1.46 x the longer alone). Here the copy engine alone runs
 *     during compute, moving cells into a device arena (K rows and V rows in two halves, so
 *     consecutive cells of one layer form one run), and cf_gpu_loader_flush(ld, s) enqueues the
 *     scatters on the caller's stream `s` — the compute stream at a layer boundary, where they
 *     run at HBM speed on the whole GPU (measured for the same shape: 1.06 x).
 * Loads are complete when the loader's `scatter` stream has reached them: publish readiness
 * there (cf_gpu_ready_publish(.., cf_gpu_loader_stream(ld))) or record an event.
 *
 * One loader serves one restore at a time from one thread. Everything GPU-side here is
 * unverified until tests/device/run.sh has run it on a GPU (see the notes).
 */
#ifndef CF_GPU_LOAD_H
#define CF_GPU_LOAD_H

#include <stddef.h>

#include "gpu/cf_gpu_kv.h"
#include "store/cf_stage_ring.h"

typedef enum {
  CF_GPU_LOAD_STAGED = 0,
  CF_GPU_LOAD_ZEROCOPY = 1,
  CF_GPU_LOAD_ARENA = 2,
} cf_gpu_load_mode_t;

#define CF_GPU_LOAD_MAX_RUNS 256 /* pending scatter runs of ARENA mode between flushes */

typedef struct {
  int mode;
  int device;
  int zc_ctas;              /* CTAs of the zero-copy kernel (default 32) */
  cudaStream_t copy, scatter;
  void *stager;             /* cf_paged_stager_t (kernels/cf_paged.h), private */
  uint64_t stage_next;      /* STAGED: next staging slot (kept across cells) */
  int32_t *d_table;         /* device block table of the current restore */
  int n_table, table_cap;
  const cf_gpu_kv_t *kv;    /* for the ring sink */
  cudaEvent_t slot_ev[CF_RING_MAX_SLOTS]; /* ring sink: host staging slot read by the GPU */
  /* ARENA mode */
  uint16_t *arena;          /* device: K half then V half, arena_rows rows of `row` elements each */
  size_t arena_bytes;
  int64_t arena_rows, arena_used, row;
  cudaEvent_t arena_copied, arena_free;
  struct { int layer, tok0, T; int64_t off; } runs[CF_GPU_LOAD_MAX_RUNS];
  int n_runs;
  cudaStream_t flush_stream; /* where the last flush ran: loads are complete there */
  uint64_t cells, bytes;    /* enqueued so far */
} cf_gpu_loader_t;

/* Create the loader's streams (scatter at the highest priority), events and, for STAGED, a
 * device staging ring of `staging_bytes` (0: 16 MiB; each of its 4 slots must hold one token
 * row per plane); for ARENA the arena (0: 256 MiB; it must hold the largest cell). Uses the current device. Returns 0, CF_ENODEV, CF_EINVAL, CF_ENOMEM, CF_ECUDA.
 * Close with cf_gpu_loader_close. */
int cf_gpu_loader_init(cf_gpu_loader_t *ld, cf_gpu_load_mode_t mode, size_t staging_bytes);
/* Wait for the loader's work and release it. Safe on a zeroed struct. */
void cf_gpu_loader_close(cf_gpu_loader_t *ld);

/* The restore's block table: logical block p (tokens [p*block_size, (p+1)*block_size)) lives
 * in the engine's block table[p]; entries outside [0, num_blocks) are skipped. Waits for the
 * loader's earlier work (the device table is reused). Returns 0, CF_EINVAL, CF_ENOMEM, CF_ECUDA. */
int cf_gpu_loader_set_table(cf_gpu_loader_t *ld, const int32_t *table, int n);

/* Enqueue the load of one cell (pinned host memory, n_tok token rows per plane, 2-byte
 * elements, [2][n_tok][n_kv][hd]) into layer `layer` of `kv`, logical tokens
 * [tok0, tok0 + n_tok). The cell must stay untouched until the load is complete.
 * Returns 0, CF_EINVAL (layer, table too short, cell not pinned for ZEROCOPY), CF_ECUDA. */
int cf_gpu_load_cell(cf_gpu_loader_t *ld, const cf_gpu_kv_t *kv, int layer, int tok0,
                     const void *cell, int n_tok);

/* The stream on which enqueued loads complete (readiness and events go there): the scatter
 * stream; in ARENA mode the stream of the last cf_gpu_loader_flush. */
cudaStream_t cf_gpu_loader_stream(const cf_gpu_loader_t *ld);

/* ARENA mode: enqueue on `s` (NULL: the loader's scatter stream) the scatter of every cell
 * loaded since the last flush, after their copies. The arena is reused by later loads only
 * after these scatters (the copy stream waits for them). No-op in the other modes.
 * A load that finds the arena (or the run list) full flushes on the scatter stream by itself.
 * Returns 0 or CF_ECUDA / CF_EINVAL. */
int cf_gpu_loader_flush(cf_gpu_loader_t *ld, cudaStream_t s);

/* A cf_stage_ring sink that loads each delivered cell into `kv` at (cell->layer, cell->tok0)
 * with `ld`; a staging slot is free again once the GPU has read it. The ring's buffer must be
 * pinned (cf_gpu_pinned_alloc). `ld` and `kv` must outlive the ring's use of the sink. */
void cf_gpu_ring_sink(cf_gpu_loader_t *ld, const cf_gpu_kv_t *kv, cf_ring_sink_t *out);

/* cf_store_alloc_fn / cf_store_free_fn: anonymous page-aligned memory pinned with
 * cudaHostRegister (portable, mapped; O_DIRECT reads into it work on every kernel), zero-filled:
 * for a store's CPU region and the ring's staging buffers (free ignores `bytes`).
 * Returns NULL without CUDA or on failure. */
void *cf_gpu_pinned_alloc(size_t bytes, void *ud);
void cf_gpu_pinned_free(void *p, size_t bytes, void *ud);

#endif
