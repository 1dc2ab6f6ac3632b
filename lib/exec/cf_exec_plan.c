/* cf_exec_plan — see cf_exec_plan.h. */
#include "exec/cf_exec_plan.h"

#include <stdlib.h>

uint32_t *cf_exec_plan_load_rank(const cf_sched_plan_t *plan, int req, int n_chunks, int L) {
  size_t cells = (size_t)n_chunks * (size_t)L;
  uint32_t *rank = malloc((cells ? cells : 1) * sizeof *rank);
  if (!rank) return NULL;
  for (size_t x = 0; x < cells; x++) rank[x] = UINT32_MAX;
  for (size_t k = 0; k < plan->n_ops; k++) {
    const cf_sched_op_t *op = &plan->ops[k];
    if (op->kind != CF_OP_LOAD || op->req != req) continue;
    for (int c = op->c0; c < op->c1 && c < n_chunks; c++)
      for (int l = op->l0; l < op->l1 && l < L; l++) rank[(size_t)c * L + l] = (uint32_t)k;
  }
  return rank;
}

cf_exec_cop_t *cf_exec_plan_cops(const cf_sched_plan_t *plan, int req, int *n) {
  *n = 0;
  size_t m = 0;
  for (size_t k = 0; k < plan->n_ops; k++)
    if (plan->ops[k].kind == CF_OP_COMPUTE && plan->ops[k].req == req) m++;
  if (!m) return NULL;
  cf_exec_cop_t *out = malloc(m * sizeof *out);
  if (!out) return NULL;
  for (size_t k = 0; k < plan->n_ops; k++) {
    const cf_sched_op_t *op = &plan->ops[k];
    if (op->kind == CF_OP_COMPUTE && op->req == req)
      out[(*n)++] = (cf_exec_cop_t){.rank = k, .l = op->l0, .c0 = op->c0, .c1 = op->c1};
  }
  return out;
}
