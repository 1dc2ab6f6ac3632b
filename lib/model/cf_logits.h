/* cf_logits — the last step of a prefill: final RMSNorm and lm_head for one token.
 * An engine's first token comes from these logits (the reference engine measures TTFT to here). */
#ifndef CF_LOGITS_H
#define CF_LOGITS_H

#include "model/cf_model.h"

/* logits[vocab] = lm_head . rmsnorm(hidden[hidden], final_norm). hidden is the input of "layer
 * L" (cf_fwd_args_t.hidden_out of the last layer). lm_head falls back to the embedding when the
 * checkpoint ties them. Returns the argmax token, or CF_EINVAL when the model has neither
 * lm_head nor embedding. */
int cf_logits_last(const cf_model_t *m, const float *hidden, float *logits);

#endif
