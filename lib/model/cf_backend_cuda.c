/* CUDA backend of the model primitive. Placeholder until the CUDA backend lands: it reports
 * CF_ENODEV so cf_backend_create("auto") falls back to the CPU backend. */
#include "model/cf_backend.h"
#include "util/cf_err.h"

int cf_backend_cuda_create(const cf_model_t *m, int device, cf_backend_t **out) {
  (void)m; (void)device;
  *out = NULL;
  return cf_seterr(CF_ENODEV, "CUDA backend not built into this binary");
}
