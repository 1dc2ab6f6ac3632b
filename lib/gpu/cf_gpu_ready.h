/* cf_gpu_ready — per-layer readiness counters (lib/ipc/cf_ready) written and awaited by GPU
 * streams.
 *
 * The counter file stays the one the CPU path uses: cf_gpu_ready_init pins its mapping
 * (cudaHostRegister, mapped), so a GPU can write and poll it over PCIe. For each published
 * layer count n the daemon's GPU, in the order of the stream that loads the KV:
 *   1. writes slot.gate = n (cuStreamWriteValue64; fallback: a one-thread kernel with a
 *      system-scope release store) — engine streams waiting on the gate start right away;
 *   2. runs a host callback (cudaLaunchHostFunc, on a side stream so the copy stream never
 *      stalls behind the CPU) that does cf_ready_publish(n): slot.layers, seq++, FUTEX_WAKE —
 *      so CPU waiters (cf_ready_wait) keep working unchanged.
 *
 * HOW A vLLM-STYLE ENGINE USES IT
 *   The engine maps the same counter file (cf_ready_open), cf_gpu_ready_init's it once, and for
 *   a request being restored in readiness slot `slot` enqueues, before layer l's attention in
 *   its forward pass (e.g. in the attention backend's per-layer hook, or before replaying a
 *   CUDA graph segment):
 *       cf_gpu_ready_stream_wait(&g, slot, l + 1, torch.cuda.current_stream())
 *   Only after the slot holds this request (slot.req_id == the request's id, set by the daemon's
 *   cf_ready_begin, which also zeroes the gate): a wait enqueued while the slot still holds the
 *   previous request's gate (its layer count, or CF_READY_GATE_OPEN after a failure) passes at
 *   once, before this request's KV is there.
 *   The stream then blocks on the device (cuStreamWaitValue64 >= l+1, no CPU round trip) until
 *   the daemon's loads of layers [0, l] are complete, so the engine's prefill of the new tokens
 *   overlaps the restore of later layers. After the step completes the engine must check the
 *   slot on the CPU (cf_ready_wait(slot, n_layers, 0) == 0 and req_id): when the restore failed,
 *   the daemon opened the gate (CF_READY_GATE_OPEN) so the stream did not hang, and the step's
 *   outputs must be discarded (the engine recomputes the prefix itself).
 *
 * Writers call cf_ready_begin (CPU) before enqueueing the first publish of a restore (the
 * previous restore's stream work on that slot must be complete), and cf_gpu_ready_fail on
 * failure.
 */
#ifndef CF_GPU_READY_H
#define CF_GPU_READY_H

#include "gpu/cf_gpu.h"
#include "ipc/cf_ready.h"

#define CF_GPU_READY_KERNEL 1u /* flag: use the kernel fallback even when the driver has stream
                                * memory operations (tests both paths) */

typedef struct cf_gpu_ready_s { /* tagged: lib/exec declares it without this header */
  cf_ready_t *r;
  int device;
  int registered;          /* we cudaHostRegister'ed the mapping (unregistered at close) */
  uint8_t *dmap;           /* device address of r->map */
  void *write64, *wait64;  /* cuStreamWriteValue64 / cuStreamWaitValue64, NULL: kernel fallback */
  cudaStream_t side;       /* host callbacks */
  cudaEvent_t ev;          /* unused since each call orders `side` with its own event */
} cf_gpu_ready_t;

/* Make counter file `r` (open; stays the caller's) usable by streams of the current device.
 * Returns 0, CF_ENODEV (no CUDA), CF_ECUDA (registration failed: RLIMIT_MEMLOCK?). */
int cf_gpu_ready_init(cf_gpu_ready_t *g, cf_ready_t *r, unsigned flags);
/* Wait for the side stream, unregister. Safe on a zeroed struct. */
void cf_gpu_ready_close(cf_gpu_ready_t *g);
/* 1 when the driver's stream memory operations are used (the entry points exist AND the device
 * reports CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS), 0 for the kernel fallback. */
int cf_gpu_ready_uses_memops(const cf_gpu_ready_t *g);

/* Daemon side: once the work enqueued on `s` so far is done, slot.gate = n_layers_done, then
 * (host callback) cf_ready_publish(slot, n_layers_done). Returns 0, CF_ERANGE (slot), CF_ECUDA,
 * CF_ENOMEM. */
int cf_gpu_ready_publish(cf_gpu_ready_t *g, int slot, uint64_t n_layers_done, cudaStream_t s);
/* Daemon side, after `s`'s work is done: (host callback) cf_ready_finish(slot, 0). */
int cf_gpu_ready_finish(cf_gpu_ready_t *g, int slot, cudaStream_t s);
/* Daemon side, on failure: status = err and gate = CF_READY_GATE_OPEN at once from the CPU
 * (works when the stream is broken), wake CPU waiters; and when `s` is not NULL, gate =
 * CF_READY_GATE_OPEN once more in the order of *s — a gate write of an earlier publish still
 * queued there would otherwise lower the gate again after the CPU store and hang the engine's
 * stream. (If *s is broken, nothing queued on it runs, so the CPU store stands.) */
void cf_gpu_ready_fail(cf_gpu_ready_t *g, int slot, int err, const cudaStream_t *s);

/* What the host callback of cf_gpu_ready_publish / cf_gpu_ready_finish does once the stream
 * work before it is done (exposed for tests; plain atomics, no CUDA): nothing when slot's
 * req_id is no longer `req_id` (the slot was begun again for another request while the
 * callback was queued); else publish n layers, or (finish) DONE — only if the status is still
 * RUNNING, so a failure reported meanwhile keeps its error.
 * Slot reuse: the gate write of a publish is stream-ordered and cannot be checked like this,
 * so begin a slot again only after (a) a successful restore's status left RUNNING (its finish
 * callback ran, hence every earlier callback and gate write on that stream too), or (b) after a
 * failed one, cudaStreamSynchronize of every stream it published on (an error from that means
 * nothing queued there runs any more): cf_gpu_ready_fail sets the status at once, while gate
 * writes of that restore may still be queued, and one landing after cf_ready_begin would open
 * the new request's gate before its KV is loaded. */
void cf_gpu_ready_apply(cf_ready_t *r, int slot, uint64_t req_id, uint64_t n, int finish);

/* Engine side: work enqueued on `s` after this call starts only once slot.gate >= min_layers.
 * Returns 0, CF_ERANGE (slot), CF_ECUDA. */
int cf_gpu_ready_stream_wait(cf_gpu_ready_t *g, int slot, uint64_t min_layers, cudaStream_t s);

#endif
