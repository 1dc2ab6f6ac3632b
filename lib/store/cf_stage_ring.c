/* cf_stage_ring — see cf_stage_ring.h. Plain C: no CUDA here (the GPU sink lives in
 * cf_gpu_load.c), so the ordering and bounds are tested on any machine. */
#include "store/cf_stage_ring.h"

#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

size_t cf_ring_slot_bytes(const cf_store_t *st) {
  return (cf_store_cell_bytes(cf_store_geom(st)) + 4095) & ~(size_t)4095;
}

int cf_ring_init(cf_ring_t *r, cf_store_t *st, int n_slots, void *mem) {
  memset(r, 0, sizeof *r);
  if (n_slots < 2 || n_slots > CF_RING_MAX_SLOTS)
    return cf_seterr(CF_EINVAL, "staging ring: n_slots %d not in [2, %d]", n_slots, CF_RING_MAX_SLOTS);
  if ((uintptr_t)mem % 4096)
    return cf_seterr(CF_EINVAL, "staging ring: buffer %p is not 4096-byte aligned (O_DIRECT reads)", mem);
  r->st = st;
  r->n_slots = n_slots;
  r->slot_bytes = cf_ring_slot_bytes(st);
  r->mem = mem;
  if (!mem) {
    r->mem = aligned_alloc(4096, r->slot_bytes * (size_t)n_slots);
    if (!r->mem) return cf_seterr(CF_ENOMEM, "staging ring: %d slots of %zu bytes", n_slots, r->slot_bytes);
    r->own_mem = 1;
  }
  /* depth n_slots: one read per slot can be in flight, never more */
  int rc = cf_store_reader_open(st, (unsigned)n_slots, &r->rd);
  if (rc) { cf_ring_close(r); return rc; }
  return 0;
}

/* Complete every read in flight (the kernel writes into our buffers until then); their
 * results are dropped, so this is only for the error path and close. */
static void cf__ring_quiesce(cf_ring_t *r) {
  cf_store_read_t *done[CF_RING_MAX_SLOTS];
  while (r->rd && cf_store_reader_inflight(r->rd) > 0)
    if (cf_store_read_poll(r->rd, 1, done, CF_RING_MAX_SLOTS) < 0) break;
  for (int s = 0; s < r->n_slots; s++)
    if (r->state[s] == CF__RING_READING || r->state[s] == CF__RING_READY) r->state[s] = CF__RING_FREE;
}

int cf_ring_drain(cf_ring_t *r, const cf_ring_sink_t *sink) {
  int err = 0;
  for (int s = 0; s < r->n_slots; s++) {
    if (r->state[s] != CF__RING_CONSUMING) continue;
    int rc = sink && sink->slot_done ? sink->slot_done(sink->ud, s, 1) : 1;
    if (rc < 0 && !err) err = rc;
    r->state[s] = CF__RING_FREE;
  }
  return err;
}

void cf_ring_close(cf_ring_t *r) {
  cf__ring_quiesce(r);
  if (r->rd) cf_store_reader_close(r->rd);
  if (r->own_mem) free(r->mem);
  memset(r, 0, sizeof *r);
}

/* Slot `s` may take a new read: free, or its consumer is done (asked without waiting unless
 * `wait`). Returns 1 / 0, or the sink's error. */
static int cf__ring_slot_free(cf_ring_t *r, int s, const cf_ring_sink_t *sink, int wait) {
  if (r->state[s] == CF__RING_FREE) return 1;
  if (r->state[s] != CF__RING_CONSUMING) return 0;
  int rc = sink->slot_done ? sink->slot_done(sink->ud, s, wait) : 1;
  if (rc < 0) return rc;
  if (rc == 0 && wait)
    return cf_seterr(CF_EINVAL, "staging ring: sink's slot_done(wait=1) returned 0 for slot %d", s);
  if (rc > 0) r->state[s] = CF__RING_FREE;
  return rc > 0;
}

int cf_ring_run(cf_ring_t *r, const cf_ring_cell_t *cells, size_t n, const cf_ring_sink_t *sink,
                int *status, size_t *n_ok) {
  if (n_ok) *n_ok = 0;
  if (!r->rd || !sink || !sink->deliver || (n && !cells))
    return cf_seterr(CF_EINVAL, "staging ring: run needs an open ring, cells and a sink with deliver");
  const cf_store_geom_t *g = cf_store_geom(r->st);
  const int S = r->n_slots;
  const uint64_t base = r->next;
  size_t sub = 0, dlv = 0, ok = 0;  /* cells submitted / delivered-or-failed so far */
  size_t issued = 0;                /* cells the sink's issue() saw */
  int err = 0;
#define SLOT(i) ((int)((base + (i)) % (uint64_t)S))
  while (dlv < n && !err) {
    int progress = 0;
    /* 1. submit reads into free slots, at most S ahead of delivery */
    while (sub < n && sub < dlv + (size_t)S) {
      int s = SLOT(sub);
      int fr = cf__ring_slot_free(r, s, sink, 0);
      if (fr < 0) { err = fr; break; }
      if (!fr) break;
      cf_store_read_t *q = &r->req[s];
      if (sub >= issued) { /* issued once per cell, even when the submit below must retry */
        int wait = dlv == sub; /* nothing outstanding: the sink may block */
        int rc = sink->issue ? sink->issue(sink->ud, sub, &cells[sub], wait) : 0;
        if (rc == CF_EAGAIN && !wait) break; /* hand over what is outstanding first */
        r->skip[s] = rc < 0 ? rc : 0;
        issued = sub + 1;
      }
      if (r->skip[s]) { /* not read: delivered as failed in its turn */
        memset(q, 0, sizeof *q);
        q->status = r->skip[s];
        r->state[s] = CF__RING_READY;
        sub++;
        progress = 1;
        continue;
      }
      memset(q, 0, sizeof *q);
      q->key = cells[sub].key;
      q->layer = cells[sub].layer;
      q->dst = r->mem + (size_t)s * r->slot_bytes;
      q->dst_bytes = r->slot_bytes;
      int rc = cf_store_read_submit(r->rd, q);
      if (rc == CF_EAGAIN) break;
      r->state[s] = rc == 1 ? CF__RING_READY : CF__RING_READING;
      sub++;
      progress = 1;
    }
    if (err) break;
    /* 2. deliver, in order, every cell whose read has finished */
    while (dlv < sub && r->state[SLOT(dlv)] == CF__RING_READY) {
      int s = SLOT(dlv);
      cf_store_read_t *q = &r->req[s];
      if (q->status == 0) {
        int rc = sink->deliver(sink->ud, dlv, &cells[dlv], s, q->dst,
                               cf_store_cell_bytes_n(g, q->n_tokens), q->n_tokens);
        /* a deliver that failed may have started consuming the buffer before it did (the
         * GPU sink: some copies of the cell enqueued): the slot is reused only once the
         * sink's slot_done says so */
        if (rc) { r->state[s] = CF__RING_CONSUMING; err = rc; break; }
        r->state[s] = CF__RING_CONSUMING;
        ok++;
        r->delivered++;
      } else {
        r->state[s] = CF__RING_FREE;
        if (sink->failed) sink->failed(sink->ud, dlv, &cells[dlv], q->status);
        r->failed++;
      }
      if (status) status[dlv] = q->status;
      dlv++;
      progress = 1;
    }
    if (progress || err || dlv == n) continue;
    /* 3. nothing moved: wait for a read, else for the consumer of the next slot we need */
    if (cf_store_reader_inflight(r->rd) > 0) {
      cf_store_read_t *done[CF_RING_MAX_SLOTS];
      int got = cf_store_read_poll(r->rd, 1, done, CF_RING_MAX_SLOTS);
      if (got < 0) { err = got; break; }
      for (int j = 0; j < got; j++) r->state[done[j] - r->req] = CF__RING_READY;
    } else {
      int fr = cf__ring_slot_free(r, SLOT(sub), sink, 1);
      if (fr < 0) err = fr;
    }
  }
#undef SLOT
  if (err) cf__ring_quiesce(r);
  r->next = base + sub;
  if (n_ok) *n_ok = ok;
  return err;
}
