/* cf_gpu_rows — contiguous device KV rows <-> one layer of an engine's paged blocks on the GPU.
 *
 * The GPU executor (lib/exec/cf_exec_gpu.c) keeps, per layer some chunk computes, the
 * request's K and V rows contiguous on the device ([T][n_kv_heads][head_dim] bf16, what
 * cf_backend_cuda_forward_dev attends over). These move rows between that staging and the
 * engine's blocks with the paged kernels (kernels/cf_paged.h), through a device block table.
 * Everything here is unverified until tests/device/run.sh has run it on a GPU.
 */
#ifndef CF_GPU_ROWS_H
#define CF_GPU_ROWS_H

#include "gpu/cf_gpu_kv.h"

/* Layer `l` of `kv` as the paged kernels' single-base layout (kernels/cf_paged.h's
 * cf_paged_layout_t, passed as void* so C callers without nvcc headers can hold it): the
 * kernel addresses V as cache + kv_stride (> 0), so when the engine's V buffer lies below its
 * K buffer the base is V and the planes swap (*swap = 1). Returns 0, CF_EINVAL (layer range,
 * K == V, odd addresses or strides), CF_ENODEV without CUDA. */
int cf_gpu_kv_layer_paged(const cf_gpu_kv_t *kv, int l, void *paged_layout, void **cache, int *swap);

/* Rows [t0, t1) of layer l: device k/v (row t at k + (t - t0) * row_stride elements) into the
 * engine's blocks (scatter) or out of them (gather), logical block p at d_table[p] (device,
 * n_table entries), enqueued on `s`. Returns 0, CF_EINVAL, CF_ECUDA, CF_ENODEV. */
int cf_gpu_rows_scatter(const cf_gpu_kv_t *kv, int l, const int32_t *d_table, int n_table, int t0,
                        int t1, const uint16_t *k, const uint16_t *v, int64_t row_stride,
                        cudaStream_t s);
int cf_gpu_rows_gather(const cf_gpu_kv_t *kv, int l, const int32_t *d_table, int n_table, int t0,
                       int t1, uint16_t *k, uint16_t *v, int64_t row_stride, cudaStream_t s);

#endif
