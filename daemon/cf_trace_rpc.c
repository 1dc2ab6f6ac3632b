/* Admin.Trace: a kept restore trace (cf_trace) as a TraceResponse. */
#include <stdlib.h>
#include <string.h>

#include "cacheflow/v1/cacheflow.pb-c.h"
#include "cf_rpc.h"
#include "cf_trace.h"
#include "util/cf_err.h"

void cf_trace_rpc(cf_rpc_call_t *c, cf_trace_t *t, uint64_t restore_id) {
  if (!t) {
    cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, "this cacheflowd keeps no restore traces (trace_restores = 0, or "
                  "no model: nothing is restored)");
    return;
  }
  cf_trace_rec_t r;
  int rc = cf_trace_get(t, restore_id, &r);
  if (rc) {
    cf_rpc_finish(c, cf_rpc_status_from_err(rc), "trace: %s", cf_errmsg());
    return;
  }
  uint64_t ids[1024];
  int n_ids = cf_trace_ids(t, ids, 1024);
  if (n_ids > 1024) n_ids = 1024;
  int n_ops = r.n_plan_ops + r.n_ev;
  Cacheflow__V1__TraceOp *ops = calloc((size_t)(n_ops ? n_ops : 1), sizeof *ops);
  Cacheflow__V1__TraceOp **pp = calloc((size_t)(n_ops ? n_ops : 1), sizeof *pp);
  uint32_t *h = calloc((size_t)(r.n_chunks ? r.n_chunks : 1), sizeof *h);
  if (!ops || !pp || !h) {
    cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "trace of restore %llu: out of memory", (unsigned long long)r.id);
    goto out;
  }
  for (int i = 0; i < r.n_plan_ops; i++) {
    const cf_plan_op_t *o = &r.plan_ops[i];
    cacheflow__v1__trace_op__init(&ops[i]);
    ops[i].kind = o->kind;
    ops[i].tier = o->kind ? o->tier : 0;
    ops[i].c0 = (uint32_t)o->c0;
    ops[i].c1 = (uint32_t)o->c1;
    ops[i].l0 = o->l0;
    ops[i].l1 = o->l1;
    ops[i].t0_us = o->t0_s * 1e6;
    ops[i].t1_us = o->t1_s * 1e6;
    pp[i] = &ops[i];
  }
  for (int i = 0; i < r.n_ev; i++) {
    const cf_exec_tev_t *e = &r.ev[i];
    Cacheflow__V1__TraceOp *o = &ops[r.n_plan_ops + i];
    cacheflow__v1__trace_op__init(o);
    o->kind = e->kind;
    o->lane = e->lane;
    o->tier = e->kind ? e->tier : 0;
    o->c0 = (uint32_t)e->c0;
    o->c1 = (uint32_t)e->c1;
    o->l0 = e->l;
    o->l1 = e->l + 1;
    o->t0_us = e->t0_ns * 1e-3;
    o->t1_us = e->t1_ns * 1e-3;
    pp[r.n_plan_ops + i] = o;
  }
  for (int i = 0; i < r.n_chunks; i++) h[i] = (uint32_t)r.h[i];
  Cacheflow__V1__TraceResponse resp = CACHEFLOW__V1__TRACE_RESPONSE__INIT;
  resp.restore_id = r.id;
  resp.policy = r.policy + 1; /* proto Policy = cf_policy_t + 1 */
  resp.layers = (uint32_t)r.n_layers;
  resp.chunk_tokens = (uint32_t)r.chunk_tokens;
  resp.tokens = (uint32_t)r.n_tokens;
  resp.loaders = (uint32_t)r.n_loaders;
  resp.n_h = (size_t)r.n_chunks;
  resp.h = h;
  if (r.tiers) { resp.chunk_tiers.data = r.tiers; resp.chunk_tiers.len = (size_t)r.n_chunks; }
  resp.n_planned = (size_t)r.n_plan_ops;
  resp.planned = pp;
  resp.n_executed = (size_t)r.n_ev;
  resp.executed = pp + r.n_plan_ops;
  resp.planned_dropped = (uint32_t)r.plan_ops_dropped;
  resp.executed_dropped = (uint32_t)r.ev_dropped;
  resp.predicted_us = r.predicted_us;
  resp.bound_us = r.bound_us;
  resp.time_us = r.time_us;
  resp.cells_loaded_cpu = r.cells_loaded[0];
  resp.cells_loaded_ssd = r.cells_loaded[1];
  resp.cells_loaded_remote = r.cells_loaded[2];
  resp.cells_computed = r.cells_computed;
  resp.forward_calls = r.forward_calls;
  resp.load_failures = r.load_failures;
  resp.n_kept_ids = (size_t)n_ids;
  resp.kept_ids = ids;
  resp.error = r.err ? (char *)cf_strerror(r.err) : (char *)"";
  cf_rpc_reply(c, &resp.base);
out:
  free(ops); free(pp); free(h);
  cf_trace_rec_free(&r);
}
