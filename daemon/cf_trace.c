/* cf_trace — see cf_trace.h. */
#include "cf_trace.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

struct cf_trace_s {
  pthread_mutex_t mu;
  int keep, max_ops;
  cf_trace_rec_t *ring; /* [keep]; slot (next - 1) % keep is the latest */
  uint64_t next;        /* records ever added */
};

int cf_trace_init(cf_trace_t **out, int keep, int max_ops) {
  *out = NULL;
  cf_trace_t *t = calloc(1, sizeof *t);
  if (!t || !(t->ring = calloc((size_t)(keep > 0 ? keep : 1), sizeof *t->ring))) {
    free(t);
    return cf_seterr(CF_ENOMEM, "trace ring of %d restores", keep);
  }
  pthread_mutex_init(&t->mu, NULL);
  t->keep = keep > 0 ? keep : 1;
  t->max_ops = max_ops > 0 ? max_ops : 1;
  *out = t;
  return 0;
}

void cf_trace_rec_free(cf_trace_rec_t *r) {
  free(r->h);
  free(r->tiers);
  free(r->plan_ops);
  free(r->ev);
  memset(r, 0, sizeof *r);
}

void cf_trace_free(cf_trace_t *t) {
  if (!t) return;
  for (int i = 0; i < t->keep; i++) cf_trace_rec_free(&t->ring[i]);
  pthread_mutex_destroy(&t->mu);
  free(t->ring);
  free(t);
}

cf_exec_trace_t *cf_trace_begin(cf_trace_t *t) {
  cf_exec_trace_t *tr = calloc(1, sizeof *tr);
  if (tr && !(tr->ev = malloc((size_t)t->max_ops * sizeof *tr->ev))) { free(tr); return NULL; }
  if (tr) tr->cap = t->max_ops;
  return tr;
}

void cf_trace_end(cf_trace_t *t, cf_exec_trace_t *tr, const cf_exec_req_t *r, const cf_restore_plan_t *pl,
                  int n_layers, int n_loaders) {
  if (!tr) return;
  int C = r->chunk_tokens, nc = (r->n_tokens + C - 1) / C;
  int n = atomic_load(&tr->n), kept = n < tr->cap ? n : tr->cap;
  int np = pl->n_ops < t->max_ops ? pl->n_ops : t->max_ops;
  cf_trace_rec_t rec = {.id = r->req_id, .err = r->err, .policy = pl->policy, .n_layers = n_layers,
                        .chunk_tokens = C, .n_chunks = nc, .n_tokens = r->n_tokens, .n_loaders = n_loaders,
                        .n_ev = kept, .ev_dropped = n - kept, .n_plan_ops = np, .plan_ops_dropped = pl->n_ops - np,
                        .predicted_us = pl->predicted_us, .bound_us = pl->bound_us,
                        .time_us = (r->stats.t_done_ns - r->stats.t_start_ns) * 1e-3,
                        .cells_computed = r->stats.cells_computed, .forward_calls = r->stats.forward_calls,
                        .load_failures = r->stats.load_failures};
  for (int k = 0; k < 3; k++) rec.cells_loaded[k] = r->stats.cells_loaded[k];
  rec.ev = tr->ev; /* taken over */
  free(tr);
  for (int i = 0; i < kept; i++) { /* times from the request's start */
    rec.ev[i].t0_ns -= r->stats.t_start_ns;
    rec.ev[i].t1_ns -= r->stats.t_start_ns;
    if (rec.ev[i].t0_ns < 0) rec.ev[i].t0_ns = 0;
    if (rec.ev[i].t1_ns < rec.ev[i].t0_ns) rec.ev[i].t1_ns = rec.ev[i].t0_ns;
  }
  rec.h = malloc((size_t)(nc ? nc : 1) * sizeof *rec.h);
  rec.plan_ops = np ? malloc((size_t)np * sizeof *rec.plan_ops) : NULL;
  rec.tiers = pl->tiers ? malloc((size_t)(nc ? nc : 1)) : NULL;
  if (!rec.h || (np && !rec.plan_ops) || (pl->tiers && !rec.tiers)) { cf_trace_rec_free(&rec); return; }
  for (int c = 0; c < nc; c++) rec.h[c] = r->h[c];
  if (np) memcpy(rec.plan_ops, pl->ops, (size_t)np * sizeof *rec.plan_ops);
  if (rec.tiers) memcpy(rec.tiers, pl->tiers, (size_t)nc);
  pthread_mutex_lock(&t->mu);
  cf_trace_rec_t *slot = &t->ring[t->next % (uint64_t)t->keep];
  cf_trace_rec_t old = *slot;
  *slot = rec;
  t->next++;
  pthread_mutex_unlock(&t->mu);
  cf_trace_rec_free(&old);
}

static int cf__copy(const cf_trace_rec_t *s, cf_trace_rec_t *d) {
  *d = *s;
  d->h = malloc((size_t)(s->n_chunks ? s->n_chunks : 1) * sizeof *d->h);
  d->tiers = s->tiers ? malloc((size_t)(s->n_chunks ? s->n_chunks : 1)) : NULL;
  d->plan_ops = malloc((size_t)(s->n_plan_ops ? s->n_plan_ops : 1) * sizeof *d->plan_ops);
  d->ev = malloc((size_t)(s->n_ev ? s->n_ev : 1) * sizeof *d->ev);
  if (!d->h || (s->tiers && !d->tiers) || !d->plan_ops || !d->ev) {
    cf_trace_rec_free(d);
    return cf_seterr(CF_ENOMEM, "trace of restore %llu", (unsigned long long)s->id);
  }
  memcpy(d->h, s->h, (size_t)s->n_chunks * sizeof *d->h);
  if (s->tiers) memcpy(d->tiers, s->tiers, (size_t)s->n_chunks);
  if (s->n_plan_ops) memcpy(d->plan_ops, s->plan_ops, (size_t)s->n_plan_ops * sizeof *d->plan_ops);
  if (s->n_ev) memcpy(d->ev, s->ev, (size_t)s->n_ev * sizeof *d->ev);
  return 0;
}

int cf_trace_get(cf_trace_t *t, uint64_t id, cf_trace_rec_t *out) {
  memset(out, 0, sizeof *out);
  int rc = CF_ENOTFOUND;
  pthread_mutex_lock(&t->mu);
  uint64_t kept = t->next < (uint64_t)t->keep ? t->next : (uint64_t)t->keep;
  for (uint64_t k = 0; k < kept; k++) { /* newest first */
    const cf_trace_rec_t *s = &t->ring[(t->next - 1 - k) % (uint64_t)t->keep];
    if (id && s->id != id) continue;
    rc = cf__copy(s, out);
    break;
  }
  pthread_mutex_unlock(&t->mu);
  if (rc == CF_ENOTFOUND) {
    if (id) return cf_seterr(CF_ENOTFOUND, "restore %llu is not among the %llu traced restores kept "
                             "(trace_restores = %d)", (unsigned long long)id, (unsigned long long)kept, t->keep);
    return cf_seterr(CF_ENOTFOUND, "no restore has been traced yet");
  }
  return rc;
}

int cf_trace_ids(cf_trace_t *t, uint64_t *ids, int cap) {
  pthread_mutex_lock(&t->mu);
  int kept = t->next < (uint64_t)t->keep ? (int)t->next : t->keep;
  for (int k = 0; k < kept && k < cap; k++)
    ids[k] = t->ring[(t->next - (uint64_t)kept + (uint64_t)k) % (uint64_t)t->keep].id;
  pthread_mutex_unlock(&t->mu);
  return kept;
}
