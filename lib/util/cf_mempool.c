/* cf_mempool — see cf_mempool.h. The arena is covered by a table of segments sorted by offset
 * (used or free; neighbouring free segments are always merged), so the table has at most
 * 2 x (blocks handed out) + 1 entries; its capacity is fixed at creation (CF__SEGS), and a call
 * that would need to split a segment with the table full takes the whole segment instead. */
#include "util/cf_mempool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "util/cf_err.h"

#define CF__GRAIN 4096 /* pages: O_DIRECT reads go straight into loader buffers */
#define CF__SEGS 16384

typedef struct {
  size_t off, size;
  int used;
} cf__seg_t;

struct cf_mempool_s {
  pthread_mutex_t mu;
  pthread_cond_t freed; /* broadcast by each free: cf_mempool_alloc_wait looks again */
  uint8_t *base;
  size_t budget, map_bytes; /* map_bytes 0: the caller's region (cf_mempool_create_at) */
  cf__seg_t *seg;
  int n_seg;
  cf_mempool_stats_t st;
};

size_t cf_mempool_charge(size_t bytes) { return (bytes + CF__GRAIN - 1) / CF__GRAIN * CF__GRAIN; }

/* One free segment over the whole budget; the lock. */
static cf_mempool_t *cf__start(cf_mempool_t *p) {
  p->seg[0] = (cf__seg_t){0, p->budget, 0};
  p->n_seg = 1;
  p->st.budget = p->budget;
  p->st.largest_free = p->budget;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->freed, NULL);
  return p;
}

int cf_mempool_create(const char *name, size_t budget, cf_mempool_t **out) {
  *out = NULL;
  if (!budget) return cf_seterr(CF_EINVAL, "%s memory pool: budget must be > 0 bytes", name);
  cf_mempool_t *p = calloc(1, sizeof *p);
  if (!p) return cf_seterr(CF_ENOMEM, "%s memory pool", name);
  p->budget = budget / CF__GRAIN * CF__GRAIN;
  p->map_bytes = budget;
  p->seg = calloc(CF__SEGS, sizeof *p->seg);
  void *m = p->seg && p->budget ? mmap(NULL, p->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                                : MAP_FAILED;
  if (m == MAP_FAILED) {
    free(p->seg); free(p);
    return cf_seterr(CF_ENOMEM, "%s memory pool: cannot map %zu bytes", name, budget);
  }
  p->base = m;
  /* resident from now on: the restore path never takes a page fault for a new page, and the
   * process's RSS is its budget at start-up, not a function of the load */
  memset(p->base, 0, p->budget);
  *out = cf__start(p);
  return 0;
}

int cf_mempool_create_at(const char *name, void *base, size_t bytes, cf_mempool_t **out) {
  *out = NULL;
  if (!base || bytes < CF__GRAIN) return cf_seterr(CF_EINVAL, "%s memory pool: a region of at least %d bytes needed", name, CF__GRAIN);
  cf_mempool_t *p = calloc(1, sizeof *p);
  if (!p || !(p->seg = calloc(CF__SEGS, sizeof *p->seg))) {
    free(p);
    return cf_seterr(CF_ENOMEM, "%s memory pool", name);
  }
  p->base = base;
  p->budget = bytes / CF__GRAIN * CF__GRAIN;
  *out = cf__start(p);
  return 0;
}

void cf_mempool_destroy(cf_mempool_t *p) {
  if (!p) return;
  if (p->map_bytes) munmap(p->base, p->map_bytes);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->freed);
  free(p->seg);
  free(p);
}

static void cf__largest(cf_mempool_t *p) {
  size_t m = 0;
  for (int i = 0; i < p->n_seg; i++)
    if (!p->seg[i].used && p->seg[i].size > m) m = p->seg[i].size;
  p->st.largest_free = m;
}

/* First fit of `need` (whole pages) under the lock: the block, or NULL (nothing counted). */
static void *cf__take(cf_mempool_t *p, size_t need) {
  int i = 0;
  while (i < p->n_seg && (p->seg[i].used || p->seg[i].size < need)) i++;
  if (i == p->n_seg) return NULL;
  cf__seg_t *s = &p->seg[i];
  if (s->size > need && p->n_seg < CF__SEGS) { /* split: the rest stays free after it */
    memmove(&p->seg[i + 2], &p->seg[i + 1], (size_t)(p->n_seg - i - 1) * sizeof *p->seg);
    p->seg[i + 1] = (cf__seg_t){s->off + need, s->size - need, 0};
    s->size = need;
    p->n_seg++;
  }
  s->used = 1;
  p->st.used += s->size;
  if (p->st.used > p->st.peak) p->st.peak = p->st.used;
  p->st.allocs++;
  cf__largest(p);
  return p->base + s->off;
}

void *cf_mempool_alloc(cf_mempool_t *p, size_t bytes) {
  if (!p || !bytes) return NULL;
  pthread_mutex_lock(&p->mu);
  void *r = cf__take(p, cf_mempool_charge(bytes));
  if (!r) p->st.refusals++;
  pthread_mutex_unlock(&p->mu);
  return r;
}

void *cf_mempool_alloc_wait(cf_mempool_t *p, size_t bytes) {
  if (!p || !bytes) return NULL;
  size_t need = cf_mempool_charge(bytes);
  pthread_mutex_lock(&p->mu);
  void *r = need <= p->budget ? cf__take(p, need) : NULL;
  if (!r && need <= p->budget) {
    p->st.waits++;
    while (!(r = cf__take(p, need))) pthread_cond_wait(&p->freed, &p->mu);
  }
  if (!r) p->st.refusals++;
  pthread_mutex_unlock(&p->mu);
  return r;
}

void *cf_mempool_calloc(cf_mempool_t *p, size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *r = cf_mempool_alloc(p, n * size);
  if (r) memset(r, 0, n * size);
  return r;
}

void cf_mempool_free(cf_mempool_t *p, void *ptr) {
  if (!p || !ptr) return;
  size_t off = (size_t)((uint8_t *)ptr - p->base);
  pthread_mutex_lock(&p->mu);
  int lo = 0, hi = p->n_seg - 1, i = -1;
  while (lo <= hi) { /* the segment starting at off */
    int mid = (lo + hi) / 2;
    if (p->seg[mid].off == off) { i = mid; break; }
    if (p->seg[mid].off < off) lo = mid + 1;
    else hi = mid - 1;
  }
  if (i < 0 || !p->seg[i].used) { /* not ours, or freed twice: a bug in the caller */
    pthread_mutex_unlock(&p->mu);
    abort();
  }
  p->seg[i].used = 0;
  p->st.used -= p->seg[i].size;
  p->st.frees++;
  if (i + 1 < p->n_seg && !p->seg[i + 1].used) { /* merge the next */
    p->seg[i].size += p->seg[i + 1].size;
    memmove(&p->seg[i + 1], &p->seg[i + 2], (size_t)(p->n_seg - i - 2) * sizeof *p->seg);
    p->n_seg--;
  }
  if (i > 0 && !p->seg[i - 1].used) { /* into the previous */
    p->seg[i - 1].size += p->seg[i].size;
    memmove(&p->seg[i], &p->seg[i + 1], (size_t)(p->n_seg - i - 1) * sizeof *p->seg);
    p->n_seg--;
  }
  cf__largest(p);
  pthread_cond_broadcast(&p->freed);
  pthread_mutex_unlock(&p->mu);
}

void cf_mempool_stats(cf_mempool_t *p, cf_mempool_stats_t *out) {
  pthread_mutex_lock(&p->mu);
  *out = p->st;
  pthread_mutex_unlock(&p->mu);
}

void cf_mempool_reset_peak(cf_mempool_t *p) {
  pthread_mutex_lock(&p->mu);
  p->st.peak = p->st.used;
  pthread_mutex_unlock(&p->mu);
}
