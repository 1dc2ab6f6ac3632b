/* cf_gpu_ready — see cf_gpu_ready.h. */
#include "gpu/cf_gpu_ready.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/cf_err.h"

static int cf__gpu_ready_slot(const cf_gpu_ready_t *g, int slot) {
  if (!g->r || slot < 0 || slot >= g->r->n_slots)
    return cf_seterr(CF_ERANGE, "gpu readiness: slot %d out of range [0, %d)", slot, g->r ? g->r->n_slots : 0);
  return 0;
}


static int cf__gate_write(cf_gpu_ready_t *g, int slot, uint64_t v, cudaStream_t s);

void cf_gpu_ready_apply(cf_ready_t *r, int slot, uint64_t req_id, uint64_t n, int finish) {
  if (!r || !r->slots || slot < 0 || slot >= r->n_slots) return;
  cf_ready_slot_t *sl = &r->slots[slot];
  /* Enqueued for an earlier request of this slot: the slot was begun again since (a restore
   * reused it before this callback ran), so this must not count toward the new request. */
  if (atomic_load(&sl->req_id) != req_id) return;
  if (finish) {
    /* only a running restore becomes DONE: a failure reported meanwhile (cf_gpu_ready_fail
     * from the CPU while this callback was queued) keeps its error */
    int64_t running = CF_READY_RUNNING;
    atomic_compare_exchange_strong(&sl->status, &running, (int64_t)CF_READY_DONE);
    cf_ready_publish(r, slot, 0); /* wakes CPU waiters; layers unchanged */
  } else {
    cf_ready_publish(r, slot, n);
  }
}

void cf_gpu_ready_fail(cf_gpu_ready_t *g, int slot, int err, const cudaStream_t *s) {
  if (cf__gpu_ready_slot(g, slot)) return;
  /* status first: a GPU waiter released by the gate must find the failure when its engine looks */
  cf_ready_finish(g->r, slot, err ? err : CF_ECANCELED);
  atomic_store(&g->r->slots[slot].gate, CF_READY_GATE_OPEN);
  if (s && g->dmap) (void)cf__gate_write(g, slot, CF_READY_GATE_OPEN, *s);
}

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)

static int cf__gate_write(cf_gpu_ready_t *g, int slot, uint64_t v, cudaStream_t s) {
  (void)g; (void)slot; (void)v; (void)s;
  return CF_ENODEV;
}

int cf_gpu_ready_init(cf_gpu_ready_t *g, cf_ready_t *r, unsigned flags) {
  (void)flags;
  memset(g, 0, sizeof *g);
  g->r = r;
  return cf_seterr(CF_ENODEV, "gpu readiness: CUDA not built into this binary");
}
void cf_gpu_ready_close(cf_gpu_ready_t *g) { memset(g, 0, sizeof *g); }
int cf_gpu_ready_uses_memops(const cf_gpu_ready_t *g) { (void)g; return 0; }
int cf_gpu_ready_publish(cf_gpu_ready_t *g, int slot, uint64_t n, cudaStream_t s) {
  (void)g; (void)slot; (void)n; (void)s;
  return cf_seterr(CF_ENODEV, "gpu readiness: CUDA not built into this binary");
}
int cf_gpu_ready_finish(cf_gpu_ready_t *g, int slot, cudaStream_t s) {
  (void)g; (void)slot; (void)s;
  return cf_seterr(CF_ENODEV, "gpu readiness: CUDA not built into this binary");
}
int cf_gpu_ready_stream_wait(cf_gpu_ready_t *g, int slot, uint64_t m, cudaStream_t s) {
  (void)g; (void)slot; (void)m; (void)s;
  return cf_seterr(CF_ENODEV, "gpu readiness: CUDA not built into this binary");
}

#else

#include <cuda.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_ready_kern.h"

typedef CUresult (*cf__memop_fn)(CUstream, CUdeviceptr, cuuint64_t, unsigned int);
typedef CUresult (*cf__dev_get_fn)(CUdevice *, int);
typedef CUresult (*cf__dev_attr_fn)(int *, CUdevice_attribute, CUdevice);

/* Whether device `device` supports the 64-bit stream memory operations. The entry points exist
 * in every CUDA 12 driver, but the calls return CUDA_ERROR_NOT_SUPPORTED on a device without
 * CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS: ask first, so such a device takes the
 * kernel fallback instead of failing every publish. Any failure to ask counts as "no". */
static int cf__memops64(int device) {
  void *get = NULL, *attr = NULL;
  CUdevice d = 0;
  int v = 0;
  if (cf_gpu_driver_fn("cuDeviceGet", &get) || cf_gpu_driver_fn("cuDeviceGetAttribute", &attr))
    return 0;
  if (((cf__dev_get_fn)get)(&d, device) != CUDA_SUCCESS) return 0;
  if (((cf__dev_attr_fn)attr)(&v, CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS, d) != CUDA_SUCCESS)
    return 0;
  return v != 0;
}

int cf_gpu_ready_init(cf_gpu_ready_t *g, cf_ready_t *r, unsigned flags) {
  memset(g, 0, sizeof *g);
  g->r = r;
  if (!r || !r->map) return cf_seterr(CF_EINVAL, "gpu readiness: an open counter file is required");
  cudaError_t e = cudaGetDevice(&g->device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ENODEV, "gpu readiness: no CUDA device: %s", cudaGetErrorString(e));
  }
  /* Register whole pages: the mapping starts page-aligned and covers its last page. */
  size_t pg = (size_t)sysconf(_SC_PAGESIZE), bytes = (r->map_bytes + pg - 1) / pg * pg;
  e = cudaHostRegister(r->map, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable);
  if (e == cudaErrorHostMemoryAlreadyRegistered) (void)cudaGetLastError();
  else if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ECUDA, "gpu readiness: cudaHostRegister of %s (%zu bytes): %s (RLIMIT_MEMLOCK?)",
                     r->path, bytes, cudaGetErrorString(e));
  } else g->registered = 1;
  void *d = NULL;
  int rc = 0;
  if ((e = cudaHostGetDevicePointer(&d, r->map, 0)) != cudaSuccess) {
    (void)cudaGetLastError();
    rc = cf_seterr(CF_ECUDA, "gpu readiness: cudaHostGetDevicePointer(%s): %s", r->path, cudaGetErrorString(e));
  }
  g->dmap = d;
  if (!rc && !(flags & CF_GPU_READY_KERNEL) && cf__memops64(g->device)) {
    /* Optional: without them the one-thread kernels do the same job. */
    if (cf_gpu_driver_fn("cuStreamWriteValue64", &g->write64) ||
        cf_gpu_driver_fn("cuStreamWaitValue64", &g->wait64))
      g->write64 = g->wait64 = NULL;
  }
  if (!rc && (e = cudaStreamCreateWithFlags(&g->side, cudaStreamNonBlocking)) != cudaSuccess)
    rc = cf_seterr(CF_ECUDA, "gpu readiness: cudaStreamCreate: %s", cudaGetErrorString(e));
  if (rc) cf_gpu_ready_close(g);
  return rc;
}

void cf_gpu_ready_close(cf_gpu_ready_t *g) {
  if (g->side) { (void)cudaStreamSynchronize(g->side); (void)cudaStreamDestroy(g->side); }
  if (g->ev) (void)cudaEventDestroy(g->ev);
  if (g->registered) (void)cudaHostUnregister(g->r->map);
  (void)cudaGetLastError();
  memset(g, 0, sizeof *g);
}

int cf_gpu_ready_uses_memops(const cf_gpu_ready_t *g) { return g->write64 != NULL; }

/* Device address of slot `slot`'s gate word. */
static uint64_t *cf__gate(const cf_gpu_ready_t *g, int slot) {
  size_t off = (size_t)((uint8_t *)&g->r->slots[slot].gate - (uint8_t *)g->r->map);
  return (uint64_t *)(g->dmap + off);
}

typedef struct {
  cf_ready_t *r;
  int slot, finish;
  uint64_t n, req_id;
} cf__ready_cb_t;

/* Host callback: no CUDA calls allowed here; cf_ready_* are plain atomics and a futex. */
static void CUDART_CB cf__ready_cb(void *p) {
  cf__ready_cb_t *c = p;
  cf_gpu_ready_apply(c->r, c->slot, c->req_id, c->n, c->finish);
  free(c);
}

/* Run cf__ready_cb on the side stream once `s`'s work so far is done. */
static int cf__ready_host(cf_gpu_ready_t *g, int slot, uint64_t n, int finish, cudaStream_t s) {
  cf__ready_cb_t *c = malloc(sizeof *c);
  if (!c) return cf_seterr(CF_ENOMEM, "gpu readiness: callback");
  *c = (cf__ready_cb_t){g->r, slot, finish, n, atomic_load(&g->r->slots[slot].req_id)};
  /* An event per call, not g->ev: with one shared event, two threads publishing at once (two
   * restores on two loader streams) could interleave record and wait, and a callback would then
   * wait for the other thread's stream and publish layers whose loads are still running. An
   * event destroyed right after the wait is released once it completes (CUDA defers it). */
  cudaEvent_t ev = NULL;
  cudaError_t e;
  if ((e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming)) != cudaSuccess ||
      (e = cudaEventRecord(ev, s)) != cudaSuccess ||
      (e = cudaStreamWaitEvent(g->side, ev, 0)) != cudaSuccess ||
      (e = cudaLaunchHostFunc(g->side, cf__ready_cb, c)) != cudaSuccess) {
    free(c);
    if (ev) (void)cudaEventDestroy(ev);
    (void)cudaGetLastError();
    return cf_seterr(CF_ECUDA, "gpu readiness: slot %d: host callback: %s", slot, cudaGetErrorString(e));
  }
  (void)cudaEventDestroy(ev);
  return 0;
}

/* gate = v in the order of stream s. */
static int cf__gate_write(cf_gpu_ready_t *g, int slot, uint64_t v, cudaStream_t s) {
  uint64_t *gate = cf__gate(g, slot);
  if (g->write64) {
    /* DEFAULT flags: ordered after every earlier write of the stream (no NO_MEMORY_BARRIER) */
    CUresult cr = ((cf__memop_fn)g->write64)((CUstream)s, (CUdeviceptr)(uintptr_t)gate, v, 0);
    if (cr != CUDA_SUCCESS)
      return cf_seterr(CF_ECUDA, "gpu readiness: slot %d: cuStreamWriteValue64: CUresult %d", slot, (int)cr);
    return 0;
  }
  return cf_ready_store_u64(gate, v, s);
}

int cf_gpu_ready_publish(cf_gpu_ready_t *g, int slot, uint64_t n, cudaStream_t s) {
  int rc = cf__gpu_ready_slot(g, slot);
  if (rc || (rc = cf__gate_write(g, slot, n, s))) return rc;
  return cf__ready_host(g, slot, n, 0, s);
}

int cf_gpu_ready_finish(cf_gpu_ready_t *g, int slot, cudaStream_t s) {
  int rc = cf__gpu_ready_slot(g, slot);
  return rc ? rc : cf__ready_host(g, slot, 0, 1, s);
}

int cf_gpu_ready_stream_wait(cf_gpu_ready_t *g, int slot, uint64_t min_layers, cudaStream_t s) {
  int rc = cf__gpu_ready_slot(g, slot);
  if (rc) return rc;
  uint64_t *gate = cf__gate(g, slot);
  if (g->wait64) {
    CUresult cr = ((cf__memop_fn)g->wait64)((CUstream)s, (CUdeviceptr)(uintptr_t)gate, min_layers,
                                            CU_STREAM_WAIT_VALUE_GEQ);
    if (cr != CUDA_SUCCESS)
      return cf_seterr(CF_ECUDA, "gpu readiness: slot %d: cuStreamWaitValue64: CUresult %d", slot, (int)cr);
    return 0;
  }
  return cf_ready_wait_u64(gate, min_layers, s);
}

#endif
