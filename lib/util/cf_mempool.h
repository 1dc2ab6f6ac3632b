/* cf_mempool — a fixed memory budget, reserved once and handed out again and again.
 *
 * The daemon's restore working memory (hidden states, K/V staging, loader cell buffers, the
 * scheduler's per-cell bookkeeping) comes from one arena of `budget` bytes mapped and touched at
 * creation: the pages are resident from start-up, so the process's resident size does not grow
 * with the requests it serves, and nothing on the restore path asks the C library for memory.
 *
 * Allocation is first fit over a segment table with a fixed capacity (made at creation too),
 * 4096-byte aligned (a page: O_DIRECT reads go straight into them); freeing merges neighbours. When no free segment is large enough the call
 * returns NULL (no error is set: running out is an expected state the caller waits on).
 * Thread-safe (one mutex). The stats count what the pool handed out, its high-water mark and the
 * refusals, for Admin.Stats and /metrics.
 */
#ifndef CF_MEMPOOL_H
#define CF_MEMPOOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct cf_mempool_s cf_mempool_t;

typedef struct {
  size_t budget;        /* arena bytes */
  size_t used;          /* bytes handed out now (rounded to whole pages) */
  size_t peak;          /* the most ever handed out at once */
  size_t largest_free;  /* the largest block one call could get now */
  uint64_t allocs, frees, refusals; /* calls that got memory, frees, calls that got NULL */
  uint64_t waits;       /* cf_mempool_alloc_wait calls that had to wait for a free */
} cf_mempool_stats_t;

/* An arena of `budget` bytes (> 0), mapped and touched now. name: for messages ("host").
 * Returns 0, CF_EINVAL or CF_ENOMEM (the budget cannot be had from the system). */
int cf_mempool_create(const char *name, size_t budget, cf_mempool_t **out);
/* The same allocator over a region the caller owns (device memory from one cudaMalloc): nothing
 * is mapped or touched, only offsets are handed out (base + offset); destroy leaves the region. */
int cf_mempool_create_at(const char *name, void *base, size_t bytes, cf_mempool_t **out);
void cf_mempool_destroy(cf_mempool_t *p);

/* `bytes` (> 0) from the arena, page aligned, or NULL when no free block is large enough. */
void *cf_mempool_alloc(cf_mempool_t *p, size_t bytes);
/* The same, but when no free block is large enough now it waits until frees make one (blocks
 * are given back by others: restores finish). NULL, at once, only when `bytes` exceeds the whole
 * budget (it could never fit) or is 0. The caller must hold none of the pool's blocks while it
 * waits on others' (one block per call: ask for all you need at once). */
void *cf_mempool_alloc_wait(cf_mempool_t *p, size_t bytes);
/* The same, zeroed. */
void *cf_mempool_calloc(cf_mempool_t *p, size_t n, size_t size);
/* Give back a block cf_mempool_alloc returned (NULL: nothing). */
void cf_mempool_free(cf_mempool_t *p, void *ptr);
/* Bytes the pool charges for a block of `bytes` (whole pages): what a planner sums. */
size_t cf_mempool_charge(size_t bytes);

void cf_mempool_stats(cf_mempool_t *p, cf_mempool_stats_t *out);
/* Forget the high-water mark (it becomes the current use). */
void cf_mempool_reset_peak(cf_mempool_t *p);

#endif
