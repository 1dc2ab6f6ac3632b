/* cf_backend — argument checks shared by every backend, and backend selection by name. */
#include "model/cf_backend.h"

#include <string.h>

#include "util/cf_err.h"

/* Positions beyond this would overflow the int arithmetic of row offsets in some backends. */
#define CF__MAX_TOKENS (1 << 28)

int cf_backend_forward(cf_backend_t *be, const cf_fwd_args_t *a) {
  if (!be || !be->forward) return cf_seterr(CF_EINVAL, "forward: backend is NULL");
  if (!a) return cf_seterr(CF_EINVAL, "forward: args is NULL");
  const cf_model_t *m = be->model;
  if (!m) return cf_seterr(CF_EINVAL, "forward: backend has no model");
  const cf_model_config_t *c = &m->cfg;
  if (a->l0 < 0 || a->l0 >= a->l1 || a->l1 > c->n_layers)
    return cf_seterr(CF_EINVAL, "forward: layer range l0=%d l1=%d: need 0 <= l0 < l1 <= %d",
                     a->l0, a->l1, c->n_layers);
  if (a->t0 < 0 || a->t0 >= a->t1 || a->t1 > CF__MAX_TOKENS)
    return cf_seterr(CF_EINVAL, "forward: token range t0=%d t1=%d: need 0 <= t0 < t1 <= %d",
                     a->t0, a->t1, CF__MAX_TOKENS);
  if (a->l0 == 0) {
    if (!a->tokens) return cf_seterr(CF_EINVAL, "forward: tokens is NULL but l0 == 0");
    for (int i = 0; i < a->t1 - a->t0; i++)
      if (a->tokens[i] < 0 || a->tokens[i] >= c->vocab)
        return cf_seterr(CF_EINVAL, "forward: tokens[%d] (position %d) = %d outside [0, %d)",
                         i, a->t0 + i, (int)a->tokens[i], c->vocab);
  } else if (!a->hidden_in) {
    return cf_seterr(CF_EINVAL, "forward: hidden_in is NULL but l0 = %d > 0", a->l0);
  }
  if (!a->k) return cf_seterr(CF_EINVAL, "forward: k is NULL");
  if (!a->v) return cf_seterr(CF_EINVAL, "forward: v is NULL");
  for (int i = 0; i < a->l1 - a->l0; i++) {
    if (!a->k[i]) return cf_seterr(CF_EINVAL, "forward: k[%d] (layer %d) is NULL", i, a->l0 + i);
    if (!a->v[i]) return cf_seterr(CF_EINVAL, "forward: v[%d] (layer %d) is NULL", i, a->l0 + i);
  }
  return be->forward(be, a);
}

void cf_backend_free(cf_backend_t *be) {
  if (be && be->free) be->free(be);
}

int cf_backend_create(const char *name, const cf_model_t *m, cf_backend_t **out) {
  *out = NULL;
  if (!m) return cf_seterr(CF_EINVAL, "backend: model is NULL");
  if (!name || !strcmp(name, "auto")) {
    int rc = cf_backend_cuda_create(m, 0, out);
    if (rc != CF_ENODEV) return rc;
    cf_errclear();
    return cf_backend_cpu_create(m, 0, out);
  }
  if (!strcmp(name, "cpu")) return cf_backend_cpu_create(m, 0, out);
  if (!strcmp(name, "cuda")) return cf_backend_cuda_create(m, 0, out);
  return cf_seterr(CF_EINVAL, "backend '%s': expected cpu, cuda or auto", name);
}
