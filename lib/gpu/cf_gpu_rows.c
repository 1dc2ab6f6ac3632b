/* cf_gpu_rows — see cf_gpu_rows.h. */
#include "gpu/cf_gpu_rows.h"

#include <string.h>

#include "util/cf_err.h"

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)

int cf_gpu_kv_layer_paged(const cf_gpu_kv_t *kv, int l, void *pl, void **cache, int *swap) {
  (void)kv; (void)l; (void)pl; (void)cache; (void)swap;
  return cf_seterr(CF_ENODEV, "gpu rows: CUDA not built into this binary");
}
int cf_gpu_rows_scatter(const cf_gpu_kv_t *kv, int l, const int32_t *d_table, int n_table, int t0,
                        int t1, const uint16_t *k, const uint16_t *v, int64_t row_stride,
                        cudaStream_t s) {
  (void)kv; (void)l; (void)d_table; (void)n_table; (void)t0; (void)t1; (void)k; (void)v;
  (void)row_stride; (void)s;
  return cf_seterr(CF_ENODEV, "gpu rows: CUDA not built into this binary");
}
int cf_gpu_rows_gather(const cf_gpu_kv_t *kv, int l, const int32_t *d_table, int n_table, int t0,
                       int t1, uint16_t *k, uint16_t *v, int64_t row_stride, cudaStream_t s) {
  return cf_gpu_rows_scatter(kv, l, d_table, n_table, t0, t1, k, v, row_stride, s);
}

#else

#include "kernels/cf_paged.h"

int cf_gpu_kv_layer_paged(const cf_gpu_kv_t *kv, int l, void *paged_layout, void **cache, int *swap) {
  cf_paged_layout_t *pl = paged_layout;
  const cf_kv_layout_t *L = &kv->layout;
  if (l < 0 || l >= L->n_layers)
    return cf_seterr(CF_EINVAL, "gpu load: layer %d out of range [0, %d)", l, L->n_layers);
  uintptr_t k = (uintptr_t)kv->k[l], v = (uintptr_t)kv->v[l];
  if (k == v || k % 2 || v % 2 || L->block_stride % 2 || L->token_stride % 2 || L->head_stride % 2)
    return cf_seterr(CF_EINVAL, "gpu load: layer %d: K %p / V %p and strides must be distinct and "
                     "2-byte aligned", l, (void *)k, (void *)v);
  *swap = v < k;
  pl->num_blocks = L->num_blocks;
  pl->block_size = L->block_size;
  pl->n_kv_heads = L->n_kv_heads;
  pl->head_dim = L->head_dim;
  pl->block_stride = (int64_t)(L->block_stride / 2);
  pl->token_stride = (int64_t)(L->token_stride / 2);
  pl->head_stride = (int64_t)(L->head_stride / 2);
  pl->kv_stride = (int64_t)((*swap ? k - v : v - k) / 2);
  *cache = (void *)(*swap ? v : k);
  return 0;
}

/* The paged kernels' arguments for rows [t0, t1) of layer l (planes swapped as the base). */
static int cf__rows_args(const cf_gpu_kv_t *kv, int l, const int32_t *d_table, int n_table, int t0,
                         int t1, const uint16_t *k, const uint16_t *v, int64_t row_stride,
                         cf_paged_args_t *a) {
  memset(a, 0, sizeof *a);
  if (!kv || !d_table || !k || !v || t0 < 0 || t1 <= t0)
    return cf_seterr(CF_EINVAL, "gpu rows: kv, table, rows and tokens [%d, %d) required", t0, t1);
  void *cache = NULL;
  int swap = 0, rc = cf_gpu_kv_layer_paged(kv, l, &a->layout, &cache, &swap);
  if (rc) return rc;
  a->cache = cache;
  a->block_table = d_table;
  a->n_table = n_table;
  a->tok0 = t0;
  a->T = t1 - t0;
  a->k = (cf_bf16_t *)(swap ? v : k);
  a->v = (cf_bf16_t *)(swap ? k : v);
  a->row_stride = row_stride;
  return 0;
}

int cf_gpu_rows_scatter(const cf_gpu_kv_t *kv, int l, const int32_t *d_table, int n_table, int t0,
                        int t1, const uint16_t *k, const uint16_t *v, int64_t row_stride,
                        cudaStream_t s) {
  cf_paged_args_t a;
  int rc = cf__rows_args(kv, l, d_table, n_table, t0, t1, k, v, row_stride, &a);
  return rc ? rc : cf_paged_scatter(&a, s);
}

int cf_gpu_rows_gather(const cf_gpu_kv_t *kv, int l, const int32_t *d_table, int n_table, int t0,
                       int t1, uint16_t *k, uint16_t *v, int64_t row_stride, cudaStream_t s) {
  cf_paged_args_t a;
  int rc = cf__rows_args(kv, l, d_table, n_table, t0, t1, k, v, row_stride, &a);
  return rc ? rc : cf_paged_gather(&a, s);
}

#endif
