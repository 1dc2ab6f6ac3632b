/* cf_kvmap — an inference engine's paged KV buffers, mapped from shared-memory files.
 *
 * The engine (another process) and cacheflowd map the same files by path (/dev/shm or any
 * tmpfs; a regular file works too). The daemon writes restored cells straight into the
 * engine's blocks; the engine reads them in place.
 *
 * Addressing follows RegisterEngine's LayerLayout: element (block b, token slot t, kv head h,
 * dim d) of layer l's K lives at k[l] + b*block_stride + t*token_stride + h*head_stride +
 * d*dim_stride (V likewise with V's strides, which may differ: vLLM's CPU float32 layout keeps
 * K dimension-major and V token-major inside one [2*head_dim] row), strides in bytes. Any
 * nesting of the four strides is accepted as long as one plane's elements never share bytes:
 * vLLM NHD ([block][token][head][dim]), HND ([block][head][token][dim]), the CPU backend's
 * [block][head][dim][token] K, padded blocks.
 *
 * Tensor-parallel shards: a map may hold only model KV heads [head0, head0 + n_kv_heads) of
 * model_heads (one TP rank's buffers). The contiguous side of scatter/gather always has whole
 * rows of model_heads heads; only the map's heads are copied (the rest of a row is untouched).
 *
 * Two ways to get a map:
 *   cf_kvmap_create/open: one file in CacheFlow's own format — a 4 KiB header (magic, shape,
 *     strides) then per layer a K plane and a V plane of num_blocks blocks each (the vLLM
 *     [2][num_blocks][block_size][n_kv_heads][head_dim] layer tensor). Engines built on
 *     lib/ipc (the reference engine, tests) use it and register the offsets it reports.
 *   cf_kvmap_attach: whatever files and offsets an engine registered (the daemon side).
 */
#ifndef CF_KVMAP_H
#define CF_KVMAP_H

#include <stddef.h>
#include <stdint.h>

#include "model/cf_model.h"

#define CF_KVMAP_MAGIC "CFKVBUF2"
#define CF_KVMAP_HEADER 4096u

/* Byte strides of one plane (K or V). */
typedef struct {
  uint64_t block, token, head, dim;
} cf_kv_strides_t;

typedef struct {
  int n_layers, num_blocks, block_size, n_kv_heads, head_dim;
  cf_dtype_t dtype;         /* element type of the blocks: CF_DT_F32, CF_DT_BF16 or CF_DT_F16 */
  uint64_t block_stride;    /* bytes; K's, and V's unless vs is set */
  uint64_t token_stride;    /* bytes */
  uint64_t head_stride;     /* bytes */
  uint64_t dim_stride;      /* bytes; 0 = the element size (dense head vectors) */
  cf_kv_strides_t vs;       /* V's strides; all zero = K's (vs.dim 0 = the element size) */
  int head0;                /* first model KV head held (TP shard); 0 for a whole engine */
  int model_heads;          /* heads of a contiguous row (the model's); 0 = n_kv_heads */
} cf_kv_layout_t;

/* Bytes per element of a KV dtype (f32 4, bf16/f16 2; 0 for anything else). */
static inline size_t cf_kv_elem_size(cf_dtype_t t) {
  return t == CF_DT_F32 ? 4 : (t == CF_DT_BF16 || t == CF_DT_F16) ? 2 : 0;
}

/* Plane kv's (0 = K, 1 = V) effective strides: V's own when set, dim 0 resolved. */
static inline cf_kv_strides_t cf_kv_plane(const cf_kv_layout_t *lay, int kv) {
  cf_kv_strides_t s = {lay->block_stride, lay->token_stride, lay->head_stride, lay->dim_stride};
  if (kv && (lay->vs.block | lay->vs.token | lay->vs.head | lay->vs.dim)) s = lay->vs;
  if (!s.dim) s.dim = cf_kv_elem_size(lay->dtype);
  return s;
}

/* Heads of a contiguous row: the model's (model_heads) or, for a whole engine, n_kv_heads. */
static inline int cf_kv_row_heads(const cf_kv_layout_t *lay) {
  return lay->model_heads ? lay->model_heads : lay->n_kv_heads;
}

/* Bytes from a plane's element (0,0,0,0) to one past its last element. */
uint64_t cf_kv_layout_extent(const cf_kv_layout_t *lay, int kv);

/* Fill `lay` with the dense vLLM (NHD) layout for the given shape. Returns 0 or CF_EINVAL
 * naming the field that is not positive, CF_EDTYPE, or CF_ERANGE past 1 TiB. */
int cf_kv_layout_init(cf_kv_layout_t *lay, int n_layers, int num_blocks, int block_size,
                      int n_kv_heads, int head_dim, cf_dtype_t dtype);

/* Check that `lay` is self-consistent (per plane: every stride whose count exceeds 1 is a
 * nonzero multiple of the element size, and the strides nest so no two elements share bytes;
 * a shard's heads lie inside model_heads) and, when `mc` is not NULL, matches the model
 * (layers, kv heads — model_heads for a shard —, head_dim). Returns 0 or CF_EINVAL / CF_ESHAPE
 * / CF_EDTYPE naming the plane and stride. */
int cf_kv_layout_check(const cf_kv_layout_t *lay, const cf_model_config_t *mc);

/* Bytes one layer's K (or V) buffer spans: num_blocks * block_stride. */
static inline uint64_t cf_kv_layout_plane_bytes(const cf_kv_layout_t *lay) {
  return (uint64_t)lay->num_blocks * lay->block_stride;
}

/* Offsets of layer l's K and V buffers inside a CacheFlow-format file. */
static inline void cf_kvmap_file_offsets(const cf_kv_layout_t *lay, int l, uint64_t *koff, uint64_t *voff) {
  uint64_t p = cf_kv_layout_plane_bytes(lay);
  *koff = CF_KVMAP_HEADER + (uint64_t)l * 2 * p;
  *voff = *koff + p;
}

#define CF_KVMAP_MAX_FILES 8

typedef struct {
  cf_kv_layout_t layout;
  uint8_t **k, **v;                 /* [n_layers]: address of block 0 of each buffer */
  struct { void *addr; size_t len; char path[256]; } maps[CF_KVMAP_MAX_FILES];
  int n_maps;
  int owner;                        /* created the file: unlinked on close */
  int dense_rows;                   /* NHD with dense rows: a block run is one memcpy */
} cf_kvmap_t;

/* Create a CacheFlow-format file at `path` (must not exist), reserve its pages, map it.
 * The data starts zeroed. `lay` must be the dense layout of cf_kv_layout_init.
 * Errors: CF_EEXIST, CF_EACCES, CF_ENOSPC, CF_EIO, CF_EINVAL, CF_ENOMEM. */
int cf_kvmap_create(cf_kvmap_t *m, const char *path, const cf_kv_layout_t *lay);

/* Map a CacheFlow-format file created by another process. When `expect` is not NULL the file's
 * layout must equal it (CF_EMISMATCH otherwise, naming the first field that differs).
 * Errors: CF_ENOENT, CF_EFORMAT (bad magic, truncated file). */
int cf_kvmap_open(cf_kvmap_t *m, const char *path, const cf_kv_layout_t *expect);

/* Map what an engine registered: layer l's K at kpath[l] + koff[l], V at vpath[l] + voff[l]
 * (the same file may appear many times; it is mapped once). Each buffer must lie inside its
 * file. Errors: CF_ENOENT/CF_EACCES (file), CF_ERANGE (buffer past the end of the file, naming
 * layer and file), CF_EINVAL (more than CF_KVMAP_MAX_FILES files, bad layout). */
int cf_kvmap_attach(cf_kvmap_t *m, const cf_kv_layout_t *lay, const char *const *kpath,
                    const uint64_t *koff, const char *const *vpath, const uint64_t *voff);

/* A view of buffers mapped by someone else (the daemon's cf_storage): layer l's K at k[l], V at
 * v[l]. The pointer arrays are copied; cf_kvmap_close frees the copies and unmaps nothing.
 * Errors: CF_EINVAL / CF_ESHAPE (layout), CF_ENOMEM. */
int cf_kvmap_view(cf_kvmap_t *m, const cf_kv_layout_t *lay, uint8_t *const *k, uint8_t *const *v);

/* Unmap; the creator also unlinks. Safe on a zeroed struct. */
void cf_kvmap_close(cf_kvmap_t *m);

/* Check every block id in `blocks[0..n)` is in [0, num_blocks) and none repeats.
 * Returns 0 or CF_ERANGE / CF_EINVAL naming the index and value. */
int cf_kvmap_check_blocks(const cf_kv_layout_t *lay, const int32_t *blocks, int n);

/* Address of (layer, plane kv 0=K 1=V, block, slot): the row's head 0, dim 0. No bounds check. */
static inline void *cf_kvmap_row(const cf_kvmap_t *m, int layer, int kv, int block, int slot) {
  uint8_t *base = kv ? m->v[layer] : m->k[layer];
  cf_kv_strides_t s = cf_kv_plane(&m->layout, kv);
  return base + (uint64_t)block * s.block + (uint64_t)slot * s.token;
}

/* Copy token rows [t0, t1) of `layer` between contiguous k, v buffers of (t1-t0) rows
 * [row heads][hd] each (row 0 is token t0; cf_kv_row_heads) and the paged buffers, where token t
 * lives in block blocks[t / block_size], slot t % block_size. Dense NHD layouts copy one run per
 * block; dense head vectors one run per head; other strides element by element. Only the
 * map's heads (head0 ..) move. scatter: contiguous -> paged; gather: paged -> contiguous.
 *
 * cf_kvmap_scatter / cf_kvmap_gather: raw bytes, the contiguous side holds elements of the
 *   layout's dtype (f32, bf16 or f16): a bit copy (loaded cells, saves).
 * cf_kvmap_scatter_f32 / cf_kvmap_gather_f32: the contiguous side is fp32 (the compute's
 *   staging): scatter rounds to the layout's dtype (round-to-nearest-even, as the CUDA kernels'
 *   __float2bfloat16 / __float2half), gather widens exactly. For f32 layouts both are bit copies. */
void cf_kvmap_scatter(cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                      const void *k, const void *v);
void cf_kvmap_gather(const cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                     void *k, void *v);
void cf_kvmap_scatter_f32(cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                          const float *k, const float *v);
void cf_kvmap_gather_f32(const cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                         float *k, float *v);

#endif
