/* cf_weights — borrowed weights (issue 18): compute on an engine's weight tensors instead of
 * the daemon's own copy.
 *
 * An engine offers its tensors (OfferWeights: names, shapes, dtypes, where they live). borrow()
 * maps every shared-memory file once (read-only), checks the tensors against the checkpoint the
 * daemon serves (lib/model/cf_borrow: shapes, dtypes, sampled elements bit for bit), points the
 * backend at views into the mapping on the executor thread between rounds, and only then drops
 * the daemon's own copy (its pages go back: cf_model_release_weights). The cuda backend instead
 * opens the engine's CUDA IPC handles, checks sampled elements copied from the device, and
 * points its matrices at vLLM's fused bf16 tensors (its own device copy freed): written, not
 * run on a GPU. give_back() reverses it
 * in the safe order: the own copy is reloaded first, the executor swapped back, then the views
 * freed and the files unmapped (a dead engine's file stays readable through our mapping until
 * then). Both may block (checkpoint reads, a running round): call them off the loop thread. One
 * borrowing at a time. Not thread-safe between borrow and give_back (the caller serialises);
 * cf_weights_stats may be called from any thread.
 */
#ifndef CF_WEIGHTS_H
#define CF_WEIGHTS_H

#include <stdint.h>

#include "cacheflow/v1/cacheflow.pb-c.h"
#include "cf_executor.h"
#include "model/cf_backend.h"

typedef struct cf_weights_s cf_weights_t;

typedef struct {
  int borrowed;                 /* the backend computes on an engine's tensors now */
  uint64_t borrowed_bytes;      /* weight bytes read from the engine's memory */
  uint64_t own_bytes;           /* the daemon's own weight bytes held (0 while borrowed) */
  uint64_t borrows, give_backs, refusals; /* totals */
} cf_weights_stats_t;

typedef struct {
  uint32_t weights_checked, tensors_used;
  uint64_t elements_checked, bytes_borrowed, own_bytes_released;
} cf_weights_report_t;

/* `own` is the daemon's model (its weights are dropped and reloaded here), `be` the backend the
 * executor `x` runs on (its model pointer is swapped); all borrowed. 0 or CF_ENOMEM. */
int cf_weights_init(cf_weights_t **out, cf_model_t *own, cf_backend_t *be, cf_executor_t *x);
/* Borrow the offered tensors (the request already field-checked: cf_reqcheck_offer_fields).
 * 0 with *rep filled, or CF_E* with a detail naming the tensor (cf_errmsg): CF_EBUSY (already
 * borrowing), CF_EUNSUPPORTED (this backend cannot compute on them: CUDA IPC tensors on the cpu
 * backend, bf16 or TP shards on it; shared memory, unfused or TP shards on the cuda backend), CF_ENOENT / CF_EIO (a file), CF_ERANGE (a
 * tensor past its file's end), or cf_borrow_model's (CF_ESHAPE, CF_EDTYPE, CF_ENOTFOUND,
 * CF_EMISMATCH). On error nothing changed: the daemon keeps its own copy. */
int cf_weights_borrow(cf_weights_t *w, const Cacheflow__V1__OfferWeightsRequest *r, cf_weights_report_t *rep);
/* Back to the daemon's own copy (reloaded from its checkpoint). 0 (also when not borrowing) or
 * the reload's error: the borrowed views then stay in use (still mapped) and it may be retried. */
int cf_weights_give_back(cf_weights_t *w);
void cf_weights_stats(cf_weights_t *w, cf_weights_stats_t *out);
/* Free the views and unmap (no reload: shutting down). Call after the executor stopped. NULL ok. */
void cf_weights_close(cf_weights_t *w);

#endif
