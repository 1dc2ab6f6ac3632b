/* cf_logits — see cf_logits.h. fp32 like the CPU backend; sgemv over the vocabulary. */
#include "model/cf_logits.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "util/cf_err.h"

int cf_logits_last(const cf_model_t *m, const float *hidden, float *logits) {
  const cf_model_config_t *c = &m->cfg;
  const float *w = m->lm_head ? m->lm_head : m->embed;
  if (!w) return cf_seterr(CF_EINVAL, "logits: model has neither lm_head nor embed_tokens");
  float *x = malloc(sizeof(float) * c->hidden);
  if (!x) return cf_seterr(CF_ENOMEM, "logits: %d floats", c->hidden);
  double ss = 0;
  for (int i = 0; i < c->hidden; i++) ss += (double)hidden[i] * hidden[i];
  float r = (float)(1.0 / sqrt(ss / c->hidden + c->rms_eps));
  for (int i = 0; i < c->hidden; i++) x[i] = hidden[i] * r * (m->final_norm ? m->final_norm[i] : 1.0f);
  cblas_sgemv(CblasRowMajor, CblasNoTrans, c->vocab, c->hidden, 1.0f, w, c->hidden, x, 1, 0.0f, logits, 1);
  free(x);
  int best = 0;
  for (int i = 1; i < c->vocab; i++) if (logits[i] > logits[best]) best = i;
  return best;
}
