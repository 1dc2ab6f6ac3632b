/* cf_kvbuf — an inference engine's paged KV buffer in a shared-memory file.
 *
 * The engine (another process) and cacheflowd map the same file by path (a /dev/shm file or
 * any file on a tmpfs; a regular file works too, only slower to page). The daemon writes
 * restored cells straight into the engine's blocks; the engine reads them in place.
 *
 * File format: a 4 KiB header page (magic, version, layout), then the layers back to back.
 * Each layer is paged the vLLM way, [2][num_blocks][block_size][n_kv_heads][head_dim]:
 * plane 0 holds K, plane 1 holds V; a block holds block_size consecutive token rows.
 * The strides are spelled out in cf_kv_layout_t (in elements) so the CUDA path, which gets
 * the same numbers from RegisterEngine, addresses blocks the same way.
 */
#ifndef CF_KVBUF_H
#define CF_KVBUF_H

#include <stddef.h>
#include <stdint.h>

#include "model/cf_model.h"

#define CF_KVBUF_MAGIC "CFKVBUF1"
#define CF_KVBUF_HEADER 4096u

typedef struct {
  int n_layers, num_blocks, block_size, n_kv_heads, head_dim;
  cf_dtype_t dtype;         /* CF_DT_F32 for the CPU backend; bf16/f16 on GPUs */
  /* element strides inside one layer */
  uint64_t stride_plane;    /* K -> V */
  uint64_t stride_block;
  uint64_t stride_token;
  uint64_t stride_head;
  uint64_t layer_bytes;     /* bytes of one layer (both planes) */
} cf_kv_layout_t;

/* Bytes per element of a KV dtype (f32 4, bf16/f16 2; 0 for anything else). Kept here rather
 * than calling cf_dtype_size so lib/ipc does not need the model loader linked in. */
static inline size_t cf_kv_elem_size(cf_dtype_t t) {
  return t == CF_DT_F32 ? 4 : (t == CF_DT_BF16 || t == CF_DT_F16) ? 2 : 0;
}

/* Fill `lay` with the dense vLLM layout for the given shape. Returns 0 or CF_EINVAL naming
 * the field that is not positive, or CF_ERANGE when the buffer would exceed 1 TiB. */
int cf_kv_layout_init(cf_kv_layout_t *lay, int n_layers, int num_blocks, int block_size,
                      int n_kv_heads, int head_dim, cf_dtype_t dtype);

/* Check that `lay` is self-consistent and matches model config `mc` (layers, heads, head_dim).
 * Returns 0 or CF_ESHAPE / CF_EINVAL / CF_EDTYPE with a detail naming the field. */
int cf_kv_layout_check(const cf_kv_layout_t *lay, const cf_model_config_t *mc);

/* Total file size: header + n_layers * layer_bytes. */
size_t cf_kv_layout_file_bytes(const cf_kv_layout_t *lay);

typedef struct {
  cf_kv_layout_t layout;
  uint8_t *data;            /* first layer (header skipped) */
  void *map;
  size_t map_bytes;
  char path[256];
  int owner;                /* created by us: unlinked on close */
} cf_kvbuf_t;

/* Create the file at `path` (must not exist), size it, write the header and map it shared.
 * The data area starts zeroed. Errors: CF_EEXIST, CF_EACCES, CF_ENOSPC, CF_EIO, CF_EINVAL. */
int cf_kvbuf_create(cf_kvbuf_t *b, const char *path, const cf_kv_layout_t *lay);

/* Map an existing buffer created by another process. When `expect` is not NULL the file's
 * layout must equal it (CF_EMISMATCH otherwise, naming the first field that differs).
 * Errors: CF_ENOENT, CF_EFORMAT (bad magic, truncated file). */
int cf_kvbuf_open(cf_kvbuf_t *b, const char *path, const cf_kv_layout_t *expect);

/* Unmap; the creator also unlinks the file. Safe on a zeroed struct. */
void cf_kvbuf_close(cf_kvbuf_t *b);

/* Address of token row `slot` of block `block`, plane `kv` (0 = K, 1 = V), layer `layer`:
 * n_kv_heads * head_dim contiguous elements. No bounds check (hot path; callers validate
 * block ids once per request with cf_kvbuf_check_blocks). */
static inline void *cf_kvbuf_row(const cf_kvbuf_t *b, int layer, int kv, int block, int slot) {
  const cf_kv_layout_t *L = &b->layout;
  size_t es = cf_kv_elem_size(L->dtype);
  uint64_t el = (uint64_t)kv * L->stride_plane + (uint64_t)block * L->stride_block +
                (uint64_t)slot * L->stride_token;
  return b->data + (size_t)layer * L->layer_bytes + el * es;
}

/* Check every block id in `blocks[0..n)` is in [0, num_blocks) and none repeats.
 * Returns 0 or CF_ERANGE / CF_EINVAL naming the index and value. */
int cf_kvbuf_check_blocks(const cf_kv_layout_t *lay, const int32_t *blocks, int n);

/* Copy token rows [t0, t1) of layer `layer` between a contiguous buffer pair k, v of
 * (t1-t0) rows [n_kv][hd] each (row 0 is token t0) and the paged buffer, where token t lives in
 * block blocks[t / block_size], slot t % block_size. Runs of a block are one memcpy each.
 * scatter: contiguous -> paged; gather: paged -> contiguous. f32 only. */
void cf_kvbuf_scatter(cf_kvbuf_t *b, int layer, const int32_t *blocks, int t0, int t1,
                      const float *k, const float *v);
void cf_kvbuf_gather(const cf_kvbuf_t *b, int layer, const int32_t *blocks, int t0, int t1,
                     float *k, float *v);

#endif
