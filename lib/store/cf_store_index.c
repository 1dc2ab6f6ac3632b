/* The chunk index (open addressing, linear probing, backward-shift delete) and the intrusive
 * lists that link its entries: CPU queues, SSD LRU, dirty FIFO (and, under the cost policy, the
 * heaps that follow the CPU LRU queue and the SSD LRU: cf_store_cost.c). Call everything with
 * mu held. */
#include <string.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

static uint32_t cf__khash(const cf_store_key_t *k) {
  uint64_t h;
  memcpy(&h, k->b + 8, 8); /* the key is already a uniform hash */
  return (uint32_t)(h ^ (h >> 32));
}

int32_t cf__idx_find(cf_store_t *st, const cf_store_key_t *k) {
  uint32_t i = cf__khash(k) & st->tab_mask;
  for (;;) {
    int32_t e = st->tab[i];
    if (e < 0) return -1;
    if (memcmp(st->ents[e].key.b, k->b, 16) == 0) return e;
    i = (i + 1) & st->tab_mask;
  }
}

int32_t cf__idx_insert(cf_store_t *st, const cf_store_key_t *k) {
  if (st->ent_free < 0) return -1;
  int32_t e = st->ent_free;
  st->ent_free = st->ents[e].cnext;
  cf__ent_t *en = &st->ents[e];
  memset(en, 0, sizeof *en);
  en->key = *k;
  en->cpu_slot = en->ssd_slot = -1;
  en->cprev = en->cnext = en->sprev = en->snext = en->dprev = en->dnext = -1;
  en->hpos[0] = en->hpos[1] = -1;
  en->pos = CF__POS_UNKNOWN;
  uint32_t i = cf__khash(k) & st->tab_mask;
  while (st->tab[i] >= 0) i = (i + 1) & st->tab_mask;
  st->tab[i] = e;
  return e;
}

/* Remove entry e from the table (backward-shift deletion keeps probe chains intact). */
static void cf__idx_remove(cf_store_t *st, int32_t e) {
  uint32_t i = cf__khash(&st->ents[e].key) & st->tab_mask;
  while (st->tab[i] != e) i = (i + 1) & st->tab_mask;
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & st->tab_mask;
    int32_t f = st->tab[j];
    if (f < 0) break;
    uint32_t home = cf__khash(&st->ents[f].key) & st->tab_mask;
    /* can f move back to i? only when its home is not cyclically in (i, j] */
    if (((j - home) & st->tab_mask) >= ((j - i) & st->tab_mask)) {
      st->tab[i] = f;
      i = j;
    }
  }
  st->tab[i] = -1;
  st->ents[e].cnext = st->ent_free;
  st->ents[e].flags = 0;
  st->ent_free = e;
}

void cf__ent_maybe_free(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (en->flags || en->pins) return;
  cf__idx_remove(st, e);
}

/* which: 0 CPU queue links, 1 SSD LRU links, 2 dirty links (see cf_store_int.h) */
static int32_t *cf__prev(cf_store_t *st, int32_t e, int which) {
  return which == 0 ? &st->ents[e].cprev : which == 1 ? &st->ents[e].sprev : &st->ents[e].dprev;
}
static int32_t *cf__next(cf_store_t *st, int32_t e, int which) {
  return which == 0 ? &st->ents[e].cnext : which == 1 ? &st->ents[e].snext : &st->ents[e].dnext;
}

/* COST: the heap of the tier whose membership list l is (0 CPU, 1 SSD), -1 for other lists */
static int cf__heap_of(const cf_store_t *st, const cf__list_t *l, int which) {
  if (!st->cost_on) return -1;
  if (which == 0 && l == &st->q[CF__Q_LRU]) return 0;
  if (which == 1 && l == &st->ssd_lru) return 1;
  return -1;
}

void cf__list_push_head(cf_store_t *st, cf__list_t *l, int32_t e, int which) {
  int h = cf__heap_of(st, l, which);
  if (h >= 0) cf__heap_add(st, h, e);
  *cf__prev(st, e, which) = -1;
  *cf__next(st, e, which) = l->head;
  if (l->head >= 0) *cf__prev(st, l->head, which) = e;
  l->head = e;
  if (l->tail < 0) l->tail = e;
  l->n++;
}

void cf__list_remove(cf_store_t *st, cf__list_t *l, int32_t e, int which) {
  int h = cf__heap_of(st, l, which);
  if (h >= 0) cf__heap_del(st, h, e);
  int32_t p = *cf__prev(st, e, which), n = *cf__next(st, e, which);
  if (p >= 0) *cf__next(st, p, which) = n; else l->head = n;
  if (n >= 0) *cf__prev(st, n, which) = p; else l->tail = p;
  *cf__prev(st, e, which) = *cf__next(st, e, which) = -1;
  l->n--;
}

void cf__q_set(cf_store_t *st, int32_t e, int q) {
  cf__ent_t *en = &st->ents[e];
  if (en->queue) cf__list_remove(st, &st->q[en->queue], e, 0);
  en->queue = (uint8_t)q;
  if (q) cf__list_push_head(st, &st->q[q], e, 0);
}

void cf__dirty_set(cf_store_t *st, int32_t e, int on) {
  cf__ent_t *en = &st->ents[e];
  if (on == en->in_dirty) return;
  if (on) cf__list_push_head(st, &st->dirty, e, 2);
  else cf__list_remove(st, &st->dirty, e, 2);
  en->in_dirty = (uint8_t)on;
}
