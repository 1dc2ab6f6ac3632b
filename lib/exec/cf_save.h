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
  uint32_t pending_tokens; /* cf_save_shard: tokens held until the group's other shards saved */
  uint32_t refused_chunks; /* cf_save_blocks_refusing: chunks not stored (refuse[c] set, not in the store) */
} cf_save_result_t;

/* Save tokens[0..n) whose KV lies in `kv` at blocks[0..n_blocks) into `st`. flags: 0 or
 * CF_STORE_SAVE_DURABLE. Returns 0, CF_EINVAL / CF_ERANGE (block table, geometry), CF_EDTYPE
 * (the engine's dtype is not the store's: both named), or the store's error (CF_EBUSY,
 * CF_ENOSPC, CF_EIO) with chunks before the failing one saved. */
int cf_save_blocks(cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                   const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res);

/* cf_save_blocks, except chunk c where refuse[c] (NULL: none) is set: its blocks do not hold
 * its KV (a windowed restore skipped cells there), so it is never gathered nor stored. One the
 * store already holds counts as saved (the store's copy is right); one it lacks is a hole
 * (res->refused_chunks) and the later chunks are saved all the same. Durable is then not promised. */
int cf_save_blocks_refusing(cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                            const int32_t *blocks, int n_blocks, unsigned flags, const uint8_t *refuse,
                            cf_save_result_t *res);

/* The same over any engine buffer of layout `lay`: gather(ctx, l, t0, t1, k, v) copies layer l's
 * tokens [t0, t1) (logical, through `blocks`) into host rows k and v (the buffer's bytes
 * unchanged) and returns 0 or a CF_E* code. cf_save_blocks is this with cf_kvmap_gather; the
 * GPU executor's save gathers on the device and copies D2H (cf_exec_gpu_save). */
typedef int (*cf_save_gather_fn)(void *ctx, int l, int t0, int t1, void *k, void *v);
int cf_save_cells(cf_store_t *st, const cf_kv_layout_t *lay, cf_save_gather_fn gather, void *ctx,
                  const int32_t *tokens, int n, const int32_t *blocks, int n_blocks, unsigned flags,
                  cf_save_result_t *res);

/* Saves from tensor-parallel shards (engines holding KV heads [head0, head0 + n) of the model's,
 * cf_kv_layout_t.head0/model_heads). The store keeps whole cells only (engines of any TP size
 * share them), and a shard's blocks may be freed as soon as its Save returns, so a group keeps a
 * pending whole-row copy per saved prefix (exactly the same token ids): each shard's Save copies
 * its heads in; the Save that completes the last head stores the chunks (cf_save_cells) and
 * drops the copy. Nothing partial is ever stored. Pending copies are bounded by max_bytes: the
 * oldest is dropped (its tokens are simply not saved, logged). Thread-safe. */
typedef struct cf_save_group_s cf_save_group_t;

/* A group for engines of `heads` model KV heads, `n_layers` x `head_dim`, dtype `dt`.
 * Returns 0, CF_EINVAL, CF_ENOMEM. */
int cf_save_group_create(cf_save_group_t **out, int n_layers, int heads, int head_dim, cf_dtype_t dt,
                         size_t max_bytes);
void cf_save_group_free(cf_save_group_t *g);
/* Bytes of pending copies (for stats and tests) and their count. */
size_t cf_save_group_pending(cf_save_group_t *g, int *n_prefixes);

/* Shard `kv` saves tokens[0..n) from blocks: res->pending_tokens = n while heads are missing;
 * on completion res is cf_save_cells' (flags as there). Errors: cf_save_cells' and CF_ESHAPE
 * (the shard's geometry is not the group's), CF_ENOMEM, CF_ERANGE (one prefix over max_bytes). */
int cf_save_shard(cf_save_group_t *g, cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                  const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res);

#endif
