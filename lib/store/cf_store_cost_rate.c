/* The cost policy's CPU tier in reuse-rate order (issue 15, RAG's popular documents).
 *
 * The CPU tier in front of an SSD tier ranks by recency with a head start for read chunks, the
 * head start chosen by shadow caches (cf_store_cost_cpu.c). On RAG traces the shadow with the
 * largest head start (ln 4 tau, toward S3-FIFO's filter) takes charge, and even it forgets a
 * popular document asked every few CPU-tier-fulls of traffic: that tier held 13-17% of the
 * prompts' chunks at 5-10% capacity where the online reference `bayes --bayes nostruct`, ranking
 * by reuse rate counted since first seen, held 20-26% (RAG seed 1), and that is where cost's mean
 * TTFT lost to it (3% at 5%, 9% at 10%; cost held more chunks in all, 31% against 27% at 5%).
 *
 * So while the ln 4 shadow is in charge, the CPU tier ranks by
 *     ln((1 + reads) / (a0 + age)),
 * reads: the chunk's uses since the store first saw it (cf__cost_use: reads at the first layer,
 * pins, re-saves of a stored chunk; never lookups, never a re-save after it left), age: the
 * store's clock (arrivals + uses) since then, a0: a prior of CF__RATE_A0 CPU-tier-fulls. The
 * counts outlive the chunk (RAG's documents leave both tiers between asks). The key is taken at
 * the chunk's last touch, so it does not move while the chunk is left alone and the tier's heaps
 * keep the order (O(log n)); every CPU-tier-full of events all keys are taken again at the
 * current clock (cf__cost_rekey, O(slots) per `slots` events: O(1) amortized), so a chunk read
 * a few times early and never again does not keep its rate for good. When the ln 4 shadow gives
 * up charge, the tier goes back to recency (re-keyed once, O(n), rare).
 *
 * Why gated: ranked so from the start (no chooser), RAG gained 1.6-4.6% of mean TTFT (seeds 1-3,
 * 5-50%), but chat lost 7-37% and agentic 22-64% (seed 1): their dead sessions' chunks, read at
 * every turn, outrank the fresh unread chunks the next step needs. A rate term added to the
 * recency key (t / tau + w ln rate, w 0.25-1) kept little of RAG's gain (0.3-2.1%) and lost
 * agentic 2-11%. The ln 4 shadow's lead is the RAG signal the store already has: on seeds 1-8 it
 * ended in charge on RAG at 5-25% in every run and never took charge on chat or agentic.
 *
 * Memory: the counts, a direct-mapped table of 64-bit words (16-bit tag, 16-bit reads, 32-bit
 * first-seen clock), 2 words per slot of both tiers (16 bytes a slot, at least 8 KiB, at most
 * 16 MiB); nothing per index entry. A collision replaces the older key's counts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"

/* the prior age, CPU-tier-fulls of clock ticks (16 and 256 were within 0.4% on RAG seed 1 at 5-10%) */
#define CF__RATE_A0 64.0
#define CF__RATE_MAX (1u << 21) /* words at most: 16 MiB */

struct cf__rate_s {
  uint64_t *rt;  /* tag 16 | reads 16 | first seen 32 */
  uint32_t rmask;
  double a0;     /* prior age, clock ticks */
  double t_ref;  /* the keys' latest refresh: none is taken before it */
  int32_t n_ev;  /* events since */
  int on;        /* the CPU tier is in the rate order */
};

static uint32_t cf__rate_words(int64_t slots) {
  uint32_t w = 1024;
  while (w < CF__RATE_MAX && (int64_t)w < 2 * slots) w <<= 1;
  return w;
}

size_t cf__rate_bytes(int64_t slots) { return (size_t)cf__rate_words(slots) * sizeof(uint64_t); }

int cf__rate_alloc(cf_store_t *st) {
  if (st->cfg.rank || !st->n_ssd_slots || st->n_cpu_slots <= 0) return 0; /* as the shadows */
  struct cf__rate_s *r = calloc(1, sizeof *r);
  uint32_t w = cf__rate_words((int64_t)st->n_cpu_slots + st->n_ssd_slots);
  if (r) r->rt = calloc(w, sizeof *r->rt);
  if (!r || !r->rt) {
    free(r);
    return cf_seterr(CF_ENOMEM, "store %s: cost policy reuse counts of %u keys", st->dir, w);
  }
  r->rmask = w - 1;
  r->a0 = CF__RATE_A0 * st->n_cpu_slots;
  st->rate = r;
  return 0;
}

void cf__rate_free(cf_store_t *st) {
  if (!st->rate) return;
  free(st->rate->rt);
  free(st->rate);
  st->rate = NULL;
}

static uint64_t *cf__rate_word(const struct cf__rate_s *r, const cf_store_key_t *k, uint64_t *tag) {
  uint64_t a, b;
  memcpy(&a, k->b, 8);
  memcpy(&b, k->b + 8, 8);
  uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ULL)) * 0xd6e8feb86659fd93ULL; /* tests build keys by hand */
  h ^= h >> 29;
  *tag = ((h >> 16) & 0xffff) | 1; /* never 0: 0 is an empty word */
  return &r->rt[(h >> 32) & r->rmask];
}

/* k's reads since first seen and the clock then; a key not in the table is new (now) */
static void cf__rate_get(const struct cf__rate_s *r, const cf_store_key_t *k, uint32_t now, uint32_t *reads,
                         uint32_t *first) {
  uint64_t tag, w = *cf__rate_word(r, k, &tag);
  if (w >> 48 != tag) { *reads = 0; *first = now; return; }
  *reads = (uint32_t)(w >> 32) & 0xffff;
  *first = (uint32_t)w;
}

void cf__rate_touch(cf_store_t *st, int32_t e, int read) {
  struct cf__rate_s *r = st->rate;
  if (!r) return;
  const cf_store_key_t *k = &st->ents[e].key;
  uint32_t now = (uint32_t)(uint64_t)st->cost_clock, reads, first;
  cf__rate_get(r, k, now, &reads, &first);
  if (read && reads < 0xffff) reads++;
  uint64_t tag, *w = cf__rate_word(r, k, &tag);
  *w = tag << 48 | (uint64_t)reads << 32 | first;
}

int cf__rate_on(const cf_store_t *st, int tier) { return tier == 0 && st->rate && st->rate->on; }

double cf__rate_key(const cf_store_t *st, int32_t e) {
  const struct cf__rate_s *r = st->rate;
  double t = st->cost_t[e] > r->t_ref ? st->cost_t[e] : r->t_ref;
  uint32_t now = (uint32_t)(uint64_t)t, reads, first;
  cf__rate_get(r, &st->ents[e].key, now, &reads, &first);
  return log((1.0 + reads) / (r->a0 + (double)(uint32_t)(now - first)));
}

void cf__rate_tick(cf_store_t *st) {
  struct cf__rate_s *r = st->rate;
  if (!r) return;
  int on = cf__cpush_filter(st);
  if (on != r->on) { /* into or out of the rate order: the tier's keys are another quantity */
    r->on = on;
    r->n_ev = 0;
    r->t_ref = st->cost_clock;
    cf__cost_rekey(st, 0);
    return;
  }
  if (!on || ++r->n_ev < st->n_cpu_slots) return;
  r->n_ev = 0;
  r->t_ref = st->cost_clock;
  cf__cost_rekey(st, 0);
}
