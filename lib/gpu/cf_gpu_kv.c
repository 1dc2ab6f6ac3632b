/* cf_gpu_kv — see cf_gpu_kv.h. */
#include "gpu/cf_gpu_kv.h"

#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

/* Checks that need no GPU: the layout and the arrays. */
static int cf__gpu_kv_check(const cf_kv_layout_t *lay, const void *k, const void *v) {
  if (!lay || !k || !v)
    return cf_seterr(CF_EINVAL, "gpu kv: layout and per-layer K and V arrays are required");
  int rc = cf_kv_layout_check(lay, NULL);
  if (rc) return rc;
  if (cf_kv_elem_size(lay->dtype) != 2)
    return cf_seterr(CF_EDTYPE, "gpu kv: dtype %d has %zu-byte elements; the GPU path copies "
                     "2-byte (bf16/f16) KV", (int)lay->dtype, cf_kv_elem_size(lay->dtype));
  /* The paged kernels (kernels/cf_paged.cu) take one set of block/token/head strides for both
   * planes and contiguous head vectors: every GPU attention layout (FlashAttention NHD, HND,
   * blocks-first) is such; vLLM's CPU layout and TP shards are CPU-path only for now: refused as
   * INVALID_ARGUMENT naming the stride (RegisterEngine of a CUDA IPC engine). */
  cf_kv_strides_t ks = cf_kv_plane(lay, 0), vs = cf_kv_plane(lay, 1);
  if (ks.dim != 2)
    return cf_seterr(CF_EINVAL, "gpu kv: dim_stride %llu: the GPU path needs contiguous head vectors "
                     "(dim_stride 2)", (unsigned long long)ks.dim);
  if (memcmp(&ks, &vs, sizeof ks))
    return cf_seterr(CF_EINVAL, "gpu kv: V strides (block %llu, token %llu, head %llu, dim %llu) differ "
                     "from K's: the GPU path needs one set", (unsigned long long)vs.block,
                     (unsigned long long)vs.token, (unsigned long long)vs.head, (unsigned long long)vs.dim);
  if (cf_kv_row_heads(lay) != lay->n_kv_heads)
    return cf_seterr(CF_EINVAL, "gpu kv: a TP shard (heads %d..%d of %d) is CPU-path only for now",
                     lay->head0, lay->head0 + lay->n_kv_heads - 1, cf_kv_row_heads(lay));
  return 0;
}

static int cf__gpu_kv_arrays(cf_gpu_kv_t *kv, const cf_kv_layout_t *lay, int device) {
  memset(kv, 0, sizeof *kv);
  kv->layout = *lay;
  kv->device = device;
  kv->k = calloc((size_t)lay->n_layers, sizeof *kv->k);
  kv->v = calloc((size_t)lay->n_layers, sizeof *kv->v);
  if (!kv->k || !kv->v) {
    cf_gpu_kv_close(kv);
    return cf_seterr(CF_ENOMEM, "gpu kv: %d layers", lay->n_layers);
  }
  return 0;
}

int cf_gpu_kv_wrap(cf_gpu_kv_t *kv, int device, const cf_kv_layout_t *lay, uint8_t *const *k,
                   uint8_t *const *v) {
  memset(kv, 0, sizeof *kv);
  int rc = cf__gpu_kv_check(lay, k, v);
  if (rc || (rc = cf__gpu_kv_arrays(kv, lay, device))) return rc;
  memcpy(kv->k, k, sizeof *kv->k * (size_t)lay->n_layers);
  memcpy(kv->v, v, sizeof *kv->v * (size_t)lay->n_layers);
  return 0;
}

static int cf__gpu_kv_open_dev(cf_gpu_kv_t *kv, int device, const uint8_t *uuid,
                               const cf_kv_layout_t *lay, const cf_gpu_ipc_handle_t *kh,
                               const uint64_t *ko, const cf_gpu_ipc_handle_t *vh, const uint64_t *vo);

/* Everything that needs no GPU is checked first, in every build. */
int cf_gpu_kv_open(cf_gpu_kv_t *kv, int device, const uint8_t uuid[CF_GPU_UUID_BYTES],
                   const cf_kv_layout_t *lay, const cf_gpu_ipc_handle_t *kh, const uint64_t *ko,
                   const cf_gpu_ipc_handle_t *vh, const uint64_t *vo) {
  memset(kv, 0, sizeof *kv);
  int rc = cf__gpu_kv_check(lay, kh, vh);
  return rc ? rc : cf__gpu_kv_open_dev(kv, device, uuid, lay, kh, ko, vh, vo);
}

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)

int cf_gpu_ipc_export(void *p, cf_gpu_ipc_handle_t *h, uint64_t *offset) {
  (void)p; (void)h; (void)offset;
  return cf_seterr(CF_ENODEV, "CUDA IPC export: CUDA not built into this binary");
}

static int cf__gpu_kv_open_dev(cf_gpu_kv_t *kv, int device, const uint8_t *uuid,
                               const cf_kv_layout_t *lay, const cf_gpu_ipc_handle_t *kh,
                               const uint64_t *ko, const cf_gpu_ipc_handle_t *vh, const uint64_t *vo) {
  (void)kv; (void)device; (void)uuid; (void)lay; (void)kh; (void)ko; (void)vh; (void)vo;
  return cf_seterr(CF_ENODEV, "gpu kv: CUDA IPC handles need CUDA, not built into this binary");
}

void cf_gpu_kv_close(cf_gpu_kv_t *kv) {
  free(kv->k);
  free(kv->v);
  free(kv->opened);
  memset(kv, 0, sizeof *kv);
}

int cf_gpu_ipc_open(const cf_gpu_ipc_handle_t *h, void **base, uint64_t *bytes) {
  (void)h; *base = NULL; *bytes = 0;
  return cf_seterr(CF_ENODEV, "CUDA IPC: CUDA not built into this binary");
}
void cf_gpu_ipc_close(void *base) { (void)base; }
int cf_gpu_copy_to_host(void *ctx, const void *src, void *dst, size_t n) {
  (void)ctx; (void)src; (void)dst; (void)n;
  return cf_seterr(CF_ENODEV, "device copy: CUDA not built into this binary");
}

#else

#include <cuda.h>

#include "kernels/cf_cuda_check.h"

typedef CUresult (*cf__addr_range_fn)(CUdeviceptr *base, size_t *size, CUdeviceptr p);

int cf_gpu_ipc_export(void *p, cf_gpu_ipc_handle_t *h, uint64_t *offset) {
  _Static_assert(sizeof(cudaIpcMemHandle_t) == CF_GPU_IPC_HANDLE_BYTES, "64-byte IPC handle");
  /* The handle names a whole allocation: export its base (as PyTorch does) and register p's
   * offset inside it. Without cuMemGetAddressRange, p must be the base itself. */
  /* The driver call below needs the allocation's context current on this thread (an engine
   * may export from a thread that never made a runtime call): make the owning device's primary
   * context current for the duration, then restore the caller's device. */
  struct cudaPointerAttributes pa;
  if (cudaPointerGetAttributes(&pa, p) != cudaSuccess || pa.type != cudaMemoryTypeDevice) {
    (void)cudaGetLastError();
    return cf_seterr(CF_EINVAL, "CUDA IPC export: %p is not device memory (cudaMalloc) of this process", p);
  }
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  if (cudaSetDevice(pa.device) != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ECUDA, "CUDA IPC export: cannot make device %d (owner of %p) current", pa.device, p);
  }
  void *base = p, *fn;
  int rc = 0;
  if (cf_gpu_driver_fn("cuMemGetAddressRange", &fn) == 0) {
    CUdeviceptr b = 0;
    size_t size = 0;
    CUresult cr = ((cf__addr_range_fn)fn)(&b, &size, (CUdeviceptr)(uintptr_t)p);
    if (cr != CUDA_SUCCESS)
      rc = cf_seterr(CF_ECUDA, "CUDA IPC export: cuMemGetAddressRange(%p) failed (CUresult %d)", p, (int)cr);
    else
      base = (void *)(uintptr_t)b;
  }
  cudaIpcMemHandle_t ih;
  cudaError_t e = rc ? cudaSuccess : cudaIpcGetMemHandle(&ih, base);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    /* e.g. memory from cudaMallocAsync pools or cuMemCreate (PyTorch expandable segments),
     * which legacy IPC handles cannot name */
    rc = cf_seterr(CF_ECUDA, "CUDA IPC export: cudaIpcGetMemHandle(base %p of %p): %s", base, p,
                   cudaGetErrorString(e));
  }
  if (prev >= 0 && prev != pa.device) (void)cudaSetDevice(prev);
  if (rc) return rc;
  memcpy(h->b, &ih, sizeof ih);
  *offset = (uint64_t)((uintptr_t)p - (uintptr_t)base);
  return 0;
}

int cf_gpu_ipc_open(const cf_gpu_ipc_handle_t *h, void **base, uint64_t *bytes) {
  cudaIpcMemHandle_t ih;
  memcpy(&ih, h->b, sizeof ih);
  *base = NULL;
  *bytes = 0;
  cudaError_t e = cudaIpcOpenMemHandle(base, ih, cudaIpcMemLazyEnablePeerAccess);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ECUDA, "cudaIpcOpenMemHandle: %s (%s) — the exporting process must be alive, on this GPU, "
                     "and not this process", cudaGetErrorString(e), cudaGetErrorName(e));
  }
  void *fn;
  if (cf_gpu_driver_fn("cuMemGetAddressRange", &fn) == 0) {
    CUdeviceptr b = 0;
    size_t s = 0;
    if (((cf__addr_range_fn)fn)(&b, &s, (CUdeviceptr)(uintptr_t)*base) == CUDA_SUCCESS) *bytes = s;
  }
  return 0;
}

void cf_gpu_ipc_close(void *base) {
  if (base && cudaIpcCloseMemHandle(base) != cudaSuccess) (void)cudaGetLastError();
}

int cf_gpu_copy_to_host(void *ctx, const void *src, void *dst, size_t n) {
  (void)ctx;
  CF_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
  return 0;
}

/* Open handle `h` (once: reuse when already open); *base gets the mapping. */
static int cf__gpu_kv_handle(cf_gpu_kv_t *kv, const cf_gpu_ipc_handle_t *h, int i, const char *plane,
                             uint8_t **base, uint64_t *bytes) {
  for (int j = 0; j < kv->n_opened; j++)
    if (!memcmp(kv->opened[j].h.b, h->b, CF_GPU_IPC_HANDLE_BYTES)) {
      *base = kv->opened[j].base;
      *bytes = kv->opened[j].bytes;
      return 0;
    }
  cudaIpcMemHandle_t ih;
  memcpy(&ih, h->b, sizeof ih);
  void *p = NULL;
  cudaError_t e = cudaIpcOpenMemHandle(&p, ih, cudaIpcMemLazyEnablePeerAccess);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ECUDA, "gpu kv: layer %d %s: cudaIpcOpenMemHandle: %s (%s) — the exporting "
                     "process must be alive, on this GPU, and not this process", i, plane,
                     cudaGetErrorString(e), cudaGetErrorName(e));
  }
  uint64_t sz = 0;
  void *fn;
  if (cf_gpu_driver_fn("cuMemGetAddressRange", &fn) == 0) {
    CUdeviceptr b = 0;
    size_t s = 0;
    if (((cf__addr_range_fn)fn)(&b, &s, (CUdeviceptr)(uintptr_t)p) == CUDA_SUCCESS) sz = s;
  }
  int j = kv->n_opened++;
  kv->opened[j].h = *h;
  kv->opened[j].base = p;
  kv->opened[j].bytes = sz;
  *base = p;
  *bytes = sz;
  return 0;
}

static int cf__gpu_kv_open_dev(cf_gpu_kv_t *kv, int device, const uint8_t *uuid,
                               const cf_kv_layout_t *lay, const cf_gpu_ipc_handle_t *kh,
                               const uint64_t *ko, const cf_gpu_ipc_handle_t *vh, const uint64_t *vo) {
  int rc;
  uint8_t mine[CF_GPU_UUID_BYTES];
  if ((rc = cf_gpu_device_uuid(device, mine))) return rc;
  if (!uuid || memcmp(mine, uuid, CF_GPU_UUID_BYTES)) {
    char a[48] = "(none)", b[48];
    if (uuid) cf_gpu_uuid_str(uuid, a);
    cf_gpu_uuid_str(mine, b);
    return cf_seterr(CF_EMISMATCH, "gpu kv: the engine's KV is on %s, but device %d is %s: CUDA IPC "
                     "handles only open on the GPU that exported them", a, device, b);
  }
  CF_CUDA_TRY(cudaSetDevice(device));
  if ((rc = cf__gpu_kv_arrays(kv, lay, device))) return rc;
  kv->opened = calloc(2 * (size_t)lay->n_layers, sizeof *kv->opened);
  if (!kv->opened) { cf_gpu_kv_close(kv); return cf_seterr(CF_ENOMEM, "gpu kv: handle table"); }
  uint64_t span = cf_kv_layout_plane_bytes(lay);
  for (int l = 0; l < lay->n_layers && !rc; l++)
    for (int pl = 0; pl < 2 && !rc; pl++) {
      const char *name = pl ? "V" : "K";
      uint64_t off = pl ? (vo ? vo[l] : 0) : (ko ? ko[l] : 0), bytes = 0;
      uint8_t *base = NULL;
      if ((rc = cf__gpu_kv_handle(kv, pl ? &vh[l] : &kh[l], l, name, &base, &bytes))) break;
      if (bytes && (off > bytes || span > bytes - off))
        rc = cf_seterr(CF_ERANGE, "gpu kv: layer %d %s: offset %llu + %llu bytes (%d blocks x %llu) "
                       "is past its allocation of %llu bytes", l, name, (unsigned long long)off,
                       (unsigned long long)span, lay->num_blocks,
                       (unsigned long long)lay->block_stride, (unsigned long long)bytes);
      (pl ? kv->v : kv->k)[l] = base + off;
    }
  if (rc) cf_gpu_kv_close(kv);
  return rc;
}

void cf_gpu_kv_close(cf_gpu_kv_t *kv) {
  for (int j = 0; j < kv->n_opened; j++)
    if (kv->opened[j].base) (void)cudaIpcCloseMemHandle(kv->opened[j].base);
  (void)cudaGetLastError();
  free(kv->k);
  free(kv->v);
  free(kv->opened);
  memset(kv, 0, sizeof *kv);
}

#endif
