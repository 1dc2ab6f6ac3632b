/* cf_ready — per-request readiness counters in a shared-memory file.
 *
 * The daemon restores a request's KV layer by layer; the engine starts its own prefill of the
 * new tokens on layer l as soon as layers [0, l] are complete. Each slot holds:
 *   layers  64-bit count of complete layers (only grows during one restore),
 *   status  RUNNING, DONE, or a negative CF_E* code when the restore failed/was cancelled,
 *   req_id  which restore the slot currently belongs to (the engine checks it),
 *   seq     32-bit word bumped on every change: the futex waiters sleep on.
 * Writers store then bump seq and FUTEX_WAKE (shared futex: works across processes that map
 * the same file); waiters re-check after every wake, so spurious wakes are harmless.
 *
 * On GPUs the same counter lives in device memory written with cuStreamWriteValue64; this is
 * the CPU/shared-memory form used by the CPU backend and by tests.
 */
#ifndef CF_READY_H
#define CF_READY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CF_READY_MAGIC "CFREADY1"
#define CF_READY_RUNNING 0
#define CF_READY_DONE 1
#define CF_READY_IDLE 2
#define CF_READY_GATE_OPEN (1ull << 62)

typedef struct {
  _Atomic uint64_t layers;
  _Atomic int64_t status;     /* CF_READY_* or a negative CF_E* code */
  _Atomic uint64_t req_id;
  _Atomic uint32_t seq;
  uint32_t pad0_;
  /* gate: what GPU streams wait on (lib/gpu/cf_gpu_ready: cuStreamWaitValue64 >= l). The
   * daemon's GPU writes the layer count here in stream order; CF_READY_GATE_OPEN when the
   * restore failed, so device-side waiters never hang (the engine then learns the failure
   * from status, on the CPU). 0 in files of older writers: nothing waits on it there. */
  _Atomic uint64_t gate;
  uint32_t pad_[6];           /* one cache line per slot: no false sharing between requests */
} cf_ready_slot_t;

typedef struct {
  cf_ready_slot_t *slots;
  int n_slots;
  void *map;
  size_t map_bytes;
  char path[256];
  int owner;
} cf_ready_t;

/* Create the counter file at `path` (must not exist) with n_slots idle slots, mapped shared.
 * Errors: CF_EINVAL (n_slots not in [1, 65536]), CF_EEXIST, CF_EACCES, CF_EIO. */
int cf_ready_create(cf_ready_t *r, const char *path, int n_slots);
/* Map an existing counter file. Errors: CF_ENOENT, CF_EFORMAT (bad magic, truncated). */
int cf_ready_open(cf_ready_t *r, const char *path);
/* Unmap; the creator also unlinks. Safe on a zeroed struct. */
void cf_ready_close(cf_ready_t *r);

/* Writer side (the daemon). begin: layers = 0, gate = 0, status RUNNING, req_id. publish: layers =
 * max(layers, n). finish: status = DONE (err == 0) or err. Each wakes every waiter. */
void cf_ready_begin(cf_ready_t *r, int slot, uint64_t req_id);
void cf_ready_publish(cf_ready_t *r, int slot, uint64_t n_layers_done);
void cf_ready_finish(cf_ready_t *r, int slot, int err);

/* Engine side: wait until slot `slot` has at least `min_layers` complete layers (returns 0),
 * the restore failed (returns its CF_E* code), or timeout_ns passed (CF_ETIMEDOUT; < 0 waits
 * forever). *layers_out (may be NULL) gets the count seen last. A restore that finished with
 * fewer layers than asked returns CF_ERANGE. */
int cf_ready_wait(cf_ready_t *r, int slot, uint64_t min_layers, int64_t timeout_ns,
                  uint64_t *layers_out);

#endif
