/* The cost eviction policy (CF_STORE_EVICT_COST): keep the chunks whose presence saves the most
 * restoration time, discounted by how long ago they were last asked for.
 *
 * A chunk's value in tier t, v_t, is the seconds its presence there saves a restore: recomputing
 * it (every layer, at its position) minus loading it from t, from the daemon's table
 * (cf_store_cost_t; the store does not know the cost model). Each tier keeps a binary min-heap
 * of its chunks on the priority
 *     pri = ln(f * v_t) + t_e / tau_t,   f = 1/2 before the chunk's first use, 2 after (CF__COST_*)
 * where t_e is the store's clock (arrivals + uses, cost_clock) at the chunk's arrival or last
 * use (a read at its first layer or a pin) and tau_t = CF__COST_TAU_SLOTS x the tier's slots.
 * That is the order of f * v_t * exp(-(now - t_e) / tau_t): expected time saved, decayed
 * exponentially with the traffic since the chunk was last wanted. `now` is common to all chunks,
 * so the key never changes while the chunk is left alone: O(log n) with a plain heap. A chunk
 * k times dearer outlives a cheap one of the same age by tau_t * ln k ticks (30x dearer: 3.4
 * tau); a dead session's chunks leave however dear they were, the dear ones later.
 * Measured against the GreedyDual-Size-Frequency form it replaces (pri = L + f * v, L the last
 * victim's priority; `make eval-evict`, seeds 1 and 2): GDSF's additive aging let a dead long
 * session's deep chunks (v ~ 100x a front chunk's) outlive dozens of cache turnovers of live
 * cheap ones; the decay brought chat's mean TTFT at 5-10% capacity 3-8% lower (README).
 * Slots all have the same size, so ordering by value per chunk is ordering by value per byte.
 *
 * The heaps hold the same members as the LRU lists the other policies use (q[CF__Q_LRU] for the
 * CPU tier, ssd_lru for the SSD tier): cf__list_push_head / cf__list_remove call in here, so
 * every place that adds or drops a chunk keeps the heap right without knowing about it, and the
 * lists still give the journal its order (compaction, shrink).
 * Cost: pick, add, remove and a use are O(log n). Memory: 16 bytes per heap node (one per chunk
 * per tier it is in), 8 bytes of heap positions per index entry (uses and pos fill padding) and
 * the 8-byte t_e per entry (cost_t, allocated only under this policy). */
#include <math.h>
#include <stdlib.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"

/* Frequency factor: a chunk nobody has read since it came in counts 1/2, one read since counts
 * 2 (and no more: caps of 4 and 8 were no better on the evaluation's traces, 8 up to 2% worse on
 * agentic ones; a log-sum of decayed uses, LRFU-style, was no better either). The 4x between
 * them is S3-FIFO's lesson: most chunks are never read again (a RAG document asked once), and
 * those should leave before chunks that proved useful; without it (every chunk counting 1) cost
 * lost 5-7% to S3-FIFO on RAG traces. */
#define CF__COST_F_NEW 0.5
#define CF__COST_FMAX 2
/* Decay time in units of the tier's capacity in chunks: 2 (a chunk's weight halves after 1.4
 * tier-fulls of arrivals and uses; scale-free: no trace's clock or size in it). Chosen on seed 1
 * at 5% and 10% capacity, then checked on held-out seeds: 0.5 and 1 fell toward LRU (chat +6-11%
 * mean TTFT against 2), 4 kept too much dead weight (chat +3%, agentic +2%). */
#define CF__COST_TAU_SLOTS 2.0
/* The CPU tier in front of an SSD tier: a chunk read since it came in ranks as if 0.35 tau
 * (0.7 CPU-tier-fulls of traffic) newer, i.e. half the frequency factor's ln 2 of a used chunk
 * over an unread one at f = 1. A little of what S3-FIFO's small queue does for RAG's popular
 * documents (0-1.5% lower mean TTFT on RAG traces, seeds 1 and 2), mild enough that agentic
 * runs' unread new chunks still stay (chat and agentic within +-1.3%). */
#define CF__COST_CPU_USED (0.5 * 0.6931471805599453)

static double cf__value(const cf_store_t *st, int tier, const cf__ent_t *en) {
  const cf_store_cost_t *c = &st->cfg.cost;
  if (!c->bucket_chunks) return 1.0;
  uint32_t pos = en->pos == CF__POS_UNKNOWN ? 0 : en->pos;
  uint32_t b = pos / c->bucket_chunks;
  if (b >= CF_STORE_COST_BUCKETS) b = CF_STORE_COST_BUCKETS - 1;
  double v = c->saved_s[tier][b];
  if (!(v > 1e-9)) v = 1e-9; /* never free to keep */
  uint32_t C = st->g.chunk_tokens, n = en->n_tokens ? en->n_tokens : C;
  return v * (double)n / (double)C;
}

static double cf__pri(const cf_store_t *st, int tier, int32_t e) {
  const cf__ent_t *en = &st->ents[e];
  if (st->cfg.rank) return st->cfg.rank(st->cfg.rank_ud, &en->key, en->pos == CF__POS_UNKNOWN ? 0 : en->pos, tier);
  double age = st->cost_t[e] / st->heap[tier].tau;
  /* The CPU copy of a chunk that goes to SSD when it leaves (write-back) saves only the SSD
   * read: recompute cancels out and every chunk is worth the same, so the CPU tier in front of
   * an SSD tier is recency, with a small head start for chunks read since they came in
   * (CF__COST_CPU_USED). Ranked by position value instead it was 4-6% worse at 25-50%
   * capacity; by the full frequency factor (ln f: 0.5 / 2) 1-2% better on RAG and 5-7% worse
   * on agentic traces, whose next step needs the chunks just saved, not yet read. */
  if (tier == 0 && st->n_ssd_slots) return age + (en->uses ? CF__COST_CPU_USED : 0.0);
  double f = en->uses ? 1.0 + (en->uses < CF__COST_FMAX - 1 ? en->uses : CF__COST_FMAX - 1) : CF__COST_F_NEW;
  return log(f * cf__value(st, tier, en)) + age;
}

static void cf__hset(cf_store_t *st, cf__heap_t *h, int tier, int32_t i, cf__hnode_t nd) {
  h->n[i] = nd;
  st->ents[nd.e].hpos[tier] = i;
}

static void cf__sift_up(cf_store_t *st, int tier, int32_t i) {
  cf__heap_t *h = &st->heap[tier];
  cf__hnode_t nd = h->n[i];
  while (i > 0) {
    int32_t p = (i - 1) / 2;
    if (h->n[p].pri <= nd.pri) break;
    cf__hset(st, h, tier, i, h->n[p]);
    i = p;
  }
  cf__hset(st, h, tier, i, nd);
}

static void cf__sift_down(cf_store_t *st, int tier, int32_t i) {
  cf__heap_t *h = &st->heap[tier];
  cf__hnode_t nd = h->n[i];
  for (;;) {
    int32_t c = 2 * i + 1;
    if (c >= h->len) break;
    if (c + 1 < h->len && h->n[c + 1].pri < h->n[c].pri) c++;
    if (h->n[c].pri >= nd.pri) break;
    cf__hset(st, h, tier, i, h->n[c]);
    i = c;
  }
  cf__hset(st, h, tier, i, nd);
}

static int cf__heap_grow(cf__heap_t *h) {
  int32_t nc = h->cap ? 2 * h->cap : 64;
  cf__hnode_t *n = realloc(h->n, sizeof *n * (size_t)nc);
  if (!n) return CF_ENOMEM;
  h->n = n;
  h->cap = nc;
  return 0;
}

int cf__cost_alloc(cf_store_t *st) {
  st->cost_on = 1;
  st->cost_clock = 0;
  int32_t want[2] = {st->n_cpu_slots, st->n_ssd_slots};
  st->cost_t = calloc((size_t)st->n_ents_max, sizeof *st->cost_t);
  if (!st->cost_t) return cf_seterr(CF_ENOMEM, "store %s: cost policy times of %d entries", st->dir, st->n_ents_max);
  for (int t = 0; t < 2; t++) {
    st->heap[t] = (cf__heap_t){NULL, 0, 0, CF__COST_TAU_SLOTS * (want[t] > 0 ? want[t] : 1)};
    st->heap[t].cap = want[t] > 0 ? want[t] : 1;
    st->heap[t].n = malloc(sizeof(cf__hnode_t) * (size_t)st->heap[t].cap);
    if (!st->heap[t].n) return cf_seterr(CF_ENOMEM, "store %s: cost policy heap of %d chunks", st->dir, want[t]);
  }
  return 0;
}

void cf__cost_free(cf_store_t *st) {
  for (int t = 0; t < 2; t++) { free(st->heap[t].n); st->heap[t].n = NULL; }
  free(st->cost_t);
  st->cost_t = NULL;
}

void cf__heap_add(cf_store_t *st, int tier, int32_t e) {
  cf__heap_t *h = &st->heap[tier];
  if (h->len == h->cap && cf__heap_grow(h)) {
    /* cannot happen with the heap sized to the tier's slots; stay correct if it does: the chunk
     * is then simply never chosen by the heap (the LRU list still holds it) */
    st->ents[e].hpos[tier] = -1;
    return;
  }
  /* an arrival (not a write-back of a chunk the CPU tier holds) starts the chunk's time; the
   * replay adds the journal's chunks oldest first, so the oldest is also the first to go */
  if (st->ents[e].hpos[0] < 0 && st->ents[e].hpos[1] < 0) st->cost_t[e] = ++st->cost_clock;
  int32_t i = h->len++;
  cf__hset(st, h, tier, i, (cf__hnode_t){cf__pri(st, tier, e), e});
  cf__sift_up(st, tier, i);
}

void cf__heap_del(cf_store_t *st, int tier, int32_t e) {
  cf__heap_t *h = &st->heap[tier];
  int32_t i = st->ents[e].hpos[tier];
  if (i < 0) return;
  st->ents[e].hpos[tier] = -1;
  int32_t last = --h->len;
  if (i == last) return;
  int32_t m = h->n[last].e;
  cf__hset(st, h, tier, i, h->n[last]);
  cf__sift_down(st, tier, i);
  cf__sift_up(st, tier, st->ents[m].hpos[tier]);
}

/* recompute e's priority in tier's heap (with the tier's current L) and restore the order */
static void cf__heap_refresh(cf_store_t *st, int tier, int32_t e) {
  int32_t i = st->ents[e].hpos[tier];
  if (i < 0) return;
  st->heap[tier].n[i].pri = cf__pri(st, tier, e);
  cf__sift_up(st, tier, i);
  cf__sift_down(st, tier, st->ents[e].hpos[tier]);
}

void cf__cost_use(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (en->uses < 255) en->uses++;
  if (en->flags & CF__F_REFUSED) st->st.ssd_refused_read++;
  st->cost_t[e] = ++st->cost_clock;
  for (int t = 0; t < 2; t++) cf__heap_refresh(st, t, e);
}

void cf__cost_set_pos(cf_store_t *st, int32_t e, uint32_t pos) {
  if (pos >= CF__POS_KEEP) return;
  uint16_t p = pos >= CF__POS_UNKNOWN ? CF__POS_UNKNOWN - 1 : (uint16_t)pos;
  cf__ent_t *en = &st->ents[e];
  if (en->pos == p) return;
  en->pos = p;
  if (st->cost_on)
    for (int t = 0; t < 2; t++) cf__heap_refresh(st, t, e);
}

int32_t cf__heap_pick(cf_store_t *st, int tier, int (*ok)(cf_store_t *, int32_t)) {
  cf__heap_t *h = &st->heap[tier];
  /* Refused members (pinned, being written, being read) are popped and put back afterwards:
   * their count bounds the extra work (64 at most, then one linear scan). */
  int32_t pick = -1;
  cf__hnode_t held[64];
  int nheld = 0;
  while (h->len > 0) {
    cf__hnode_t top = h->n[0];
    if (!ok || ok(st, top.e)) { pick = top.e; break; }
    if (nheld == 64) {
      /* many refused: fall back to a linear scan for the lowest acceptable one (rare: readers
       * pin what they copy, a few chunks at a time) */
      double best = 0;
      for (int32_t i = 0; i < h->len; i++)
        if ((pick < 0 || h->n[i].pri < best) && ok(st, h->n[i].e)) { pick = h->n[i].e; best = h->n[i].pri; }
      break;
    }
    held[nheld++] = top;
    cf__heap_del(st, tier, top.e);
  }
  for (int i = 0; i < nheld; i++) {
    int32_t j = h->len++; /* the nodes came out of this heap: there is room */
    cf__hset(st, h, tier, j, held[i]);
    cf__sift_up(st, tier, j);
  }
  return pick;
}

int cf__cost_refuse(cf_store_t *st, int32_t e) {
  cf__heap_t *h = &st->heap[1];
  if (!st->n_ssd_slots || st->n_ssd_free > 0 || !h->len ||
      __atomic_load_n(&st->files_ready, __ATOMIC_ACQUIRE) < st->n_files)
    return 0;
  return cf__pri(st, 1, e) < h->n[0].pri;
}

int cf__cost_dear(const cf_store_t *st, uint32_t pos, uint32_t n_tokens) {
  const cf_store_cost_t *c = &st->cfg.cost;
  if (!c->bucket_chunks) return 1;
  double avg = 0;
  for (int b = 0; b < CF_STORE_COST_BUCKETS; b++) avg += c->saved_s[1][b];
  avg /= CF_STORE_COST_BUCKETS;
  cf__ent_t en = {.n_tokens = n_tokens, .pos = pos >= CF__POS_UNKNOWN ? CF__POS_UNKNOWN : (uint16_t)pos};
  return cf__value(st, 1, &en) >= avg;
}

void cf_store_set_cost(cf_store_t *st, const cf_store_cost_t *cost) {
  if (!st || !cost) return;
  pthread_mutex_lock(&st->mu);
  st->cfg.cost = *cost;
  if (st->cost_on) {
    for (int t = 0; t < 2; t++) {
      cf__heap_t *h = &st->heap[t];
      for (int32_t i = 0; i < h->len; i++) h->n[i].pri = cf__pri(st, t, h->n[i].e);
      for (int32_t i = h->len / 2 - 1; i >= 0; i--) cf__sift_down(st, t, i);
    }
  }
  pthread_mutex_unlock(&st->mu);
}
