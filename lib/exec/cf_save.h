/* cf_save — the Save path: copy the KV an engine holds in its paged blocks into the store.
 * The daemon's Save RPC (daemon/cf_storage.c) and the tests both go through it.
 *
 * The engine names the blocks that hold the KV of token_ids (block i holds tokens
 * [i*block_size, (i+1)*block_size)); each chunk of C tokens — and a trailing partial chunk of
 * n % C tokens, stored under its own key (cf_store_chain_keys_partial) so Lookup counts it;
 * restores never load it, they recompute it — is gathered from the blocks into a contiguous
 * cell per layer ([2][t][n_kv][hd], K then V) and saved under its chained key (model
 * fingerprint, parent key, the chunk's tokens). The cells are the blocks' bytes unchanged: the
 * engine's dtype must be the store's. Chunks already stored are skipped (CF_EEXIST is not an
 * error). Memory: one chunk (all layers) at a time.
 */
#ifndef CF_SAVE_H
#define CF_SAVE_H

#include <stdint.h>

#include "ipc/cf_kvmap.h"
#include "store/cf_store.h"

typedef struct {
  uint32_t saved_tokens;   /* tokens covered by stored chunks (new or already there), the
                              partial last chunk included */
  uint32_t new_chunks, existing_chunks;
  int durable;             /* CF_STORE_SAVE_DURABLE was asked and every chunk is now durable */
} cf_save_result_t;

/* Save tokens[0..n) whose KV lies in `kv` at blocks[0..n_blocks) into `st`. flags: 0 or
 * CF_STORE_SAVE_DURABLE. Returns 0, CF_EINVAL / CF_ERANGE (block table, geometry), CF_EDTYPE
 * (the engine's dtype is not the store's: both named), or the store's error (CF_EBUSY,
 * CF_ENOSPC, CF_EIO) with chunks before the failing one saved. */
int cf_save_blocks(cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                   const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res);

/* The same over any engine buffer of layout `lay`: gather(ctx, l, t0, t1, k, v) copies layer l's
 * tokens [t0, t1) (logical, through `blocks`) into host rows k and v (the buffer's bytes
 * unchanged) and returns 0 or a CF_E* code. cf_save_blocks is this with cf_kvmap_gather; the
 * GPU executor's save gathers on the device and copies D2H (cf_exec_gpu_save). */
typedef int (*cf_save_gather_fn)(void *ctx, int l, int t0, int t1, void *k, void *v);
int cf_save_cells(cf_store_t *st, const cf_kv_layout_t *lay, cf_save_gather_fn gather, void *ctx,
                  const int32_t *tokens, int n, const int32_t *blocks, int n_blocks, unsigned flags,
                  cf_save_result_t *res);

#endif
