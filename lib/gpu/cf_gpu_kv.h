/* cf_gpu_kv — an inference engine's paged KV buffers on the GPU, opened from CUDA IPC handles.
 *
 * A GPU engine (vLLM-style: one [2, num_blocks, block_size, n_kv_heads, head_dim] tensor per
 * layer, or separate K and V tensors) registers each layer's K and V buffers as a 64-byte
 * cudaIpcMemHandle of the allocation that holds it plus a byte offset into it, and the UUID of
 * its GPU. The daemon opens each distinct handle once (cudaIpcOpenMemHandle; several layers
 * usually share one allocation, K and V always do in vLLM) and gets a device view with the
 * engine's layout (cf_kv_layout_t: byte strides, NHD or HND order; 2-byte dtypes).
 *
 * The GPU must be the same: CUDA IPC handles are meaningful only on the device that exported
 * them, so a UUID mismatch is refused with both UUIDs named, before any handle is touched.
 */
#ifndef CF_GPU_KV_H
#define CF_GPU_KV_H

#include "gpu/cf_gpu.h"
#include "ipc/cf_kvmap.h"

typedef struct {
  uint8_t b[CF_GPU_IPC_HANDLE_BYTES];
} cf_gpu_ipc_handle_t;

typedef struct cf_gpu_kv_s { /* tagged: lib/exec declares it without this header */
  cf_kv_layout_t layout;
  int device;
  uint8_t **k, **v;        /* [n_layers] device addresses of block 0 of layer l's K / V */
  struct {
    cf_gpu_ipc_handle_t h;
    void *base;            /* what cudaIpcOpenMemHandle returned */
    uint64_t bytes;        /* the allocation's size (cuMemGetAddressRange), 0 when unknown */
  } *opened;
  int n_opened;
} cf_gpu_kv_t;

/* Engine side (and tests): the IPC handle of the allocation holding device pointer `p`, and
 * p's offset from that allocation's base. Works from any thread (it makes p's device current
 * for the call and restores the caller's). Returns 0, CF_EINVAL (p is not device memory of this
 * process), CF_ENODEV, CF_ECUDA (e.g. pool / VMM memory, which legacy IPC handles cannot name). */
int cf_gpu_ipc_export(void *p, cf_gpu_ipc_handle_t *h, uint64_t *offset);

/* Open another process's allocation (borrowed weights: an engine's parameter storage) on the
 * current device: *base its mapping, *bytes its size (0 when the driver cannot tell). Close with
 * cf_gpu_ipc_close. 0, CF_ECUDA (the detail says why), CF_ENODEV without CUDA. */
int cf_gpu_ipc_open(const cf_gpu_ipc_handle_t *h, void **base, uint64_t *bytes);
void cf_gpu_ipc_close(void *base);
/* Copy n bytes from device address src to host dst (synchronous; cf_borrow_fetch_fn's shape,
 * ctx unused). 0, CF_ECUDA, CF_ENODEV without CUDA. */
int cf_gpu_copy_to_host(void *ctx, const void *src, void *dst, size_t n);

/* Open the engine's buffers on CUDA device `device`: layer l's K at khandle[l] + koff[l], V at
 * vhandle[l] + voff[l] (koff/voff NULL: offsets 0). `uuid` is the engine's GPU (must be `device`'s). `lay` is checked with
 * cf_kv_layout_check and must have a 2-byte dtype (bf16/f16: the GPU path copies 2-byte rows).
 * Each buffer (num_blocks * block_stride bytes) must lie inside its allocation when the driver
 * reports the allocation's size.
 * Errors: CF_ENODEV (no CUDA, no such device), CF_EMISMATCH (UUID differs: both named),
 * CF_EINVAL / CF_ESHAPE / CF_EDTYPE (layout), CF_ERANGE (buffer past its allocation, naming
 * layer and plane), CF_ECUDA (cudaIpcOpenMemHandle failed: handle from another process that
 * exited, or from this process), CF_ENOMEM. On error nothing stays open.
 * On success close with cf_gpu_kv_close(). */
int cf_gpu_kv_open(cf_gpu_kv_t *kv, int device, const uint8_t uuid[CF_GPU_UUID_BYTES],
                   const cf_kv_layout_t *lay, const cf_gpu_ipc_handle_t *khandle,
                   const uint64_t *koff, const cf_gpu_ipc_handle_t *vhandle, const uint64_t *voff);

/* The same view over device pointers this process owns (an engine and the daemon in one
 * process, tests): nothing is opened or closed. Errors: layout errors, CF_ENOMEM. */
int cf_gpu_kv_wrap(cf_gpu_kv_t *kv, int device, const cf_kv_layout_t *lay, uint8_t *const *k,
                   uint8_t *const *v);

/* Close every opened handle (cudaIpcCloseMemHandle) and free the arrays. Safe on a zeroed struct. */
void cf_gpu_kv_close(cf_gpu_kv_t *kv);

#endif
