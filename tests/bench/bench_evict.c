/* Per-operation cost of the store's eviction policies at 10k and 1M chunks (issue 15.2): the
 * real index, lists and heaps of lib/store driven under its lock without I/O (an SSD tier whose
 * slots are handed out here, so 1M chunks need no 4 GiB of files). One operation = give up the
 * policy's victim, add a new chunk at a random index in its place, and one use (read at the
 * first layer) of a random stored chunk: what a full tier does per save (every 4th new chunk is
 * one given up before: a ghost hit under cost). Reported: ns per
 * operation and the ratio 1M / 10k per policy (O(1): ~1 plus cache misses; O(log n): about
 * log(1M)/log(10k) = 1.5 plus cache misses), each policy against LRU (O(1)) at the same size,
 * and the index bytes per chunk. cost+sh: cost with the CPU tier's shadows (cf_store_cost_cpu.c).
 * Usage: bench_evict [ops per size, default 2000000] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exec/cf_evict_cost.h"
#include "sched/cf_cost.h"
#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

static uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); /* CPU time: the machine is shared */
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t key_ctr;
/* a new chunk in slot; again: the key of a chunk given up before (a ghost hit under cost) */
static void add_chunk(cf_store_t *st, int32_t slot, const cf_store_key_t *again) {
  cf_store_key_t k;
  uint64_t a = mix64(++key_ctr), b = mix64(a);
  memcpy(k.b, &a, 8);
  memcpy(k.b + 8, &b, 8);
  if (again) k = *again;
  int32_t e = cf__idx_insert(st, &k);
  if (e < 0) { fprintf(stderr, "bench_evict: index full\n"); exit(1); }
  cf__ent_t *en = &st->ents[e];
  en->n_tokens = st->g.chunk_tokens;
  cf__cost_set_pos(st, e, (uint32_t)(mix64(a ^ 77) % 256)); /* not in a heap yet: just recorded */
  en->ssd_slot = slot;
  en->flags |= CF__F_SSD;
  st->ssd_owner[slot] = e;
  cf__list_push_head(st, &st->ssd_lru, e, 1);
}

/* ns per operation with n chunks under policy pol; shadows: also the cost policy's CPU-tier
 * shadows (cf_store_cost_cpu.c) of a CPU tier of n slots in front of this SSD tier, fed each
 * op's new chunk as a CPU-tier arrival and its use (what a save and a read add there) */
static double run(cf_store_evict_t pol, int32_t n, long ops, const char *dir, size_t *bytes_per_chunk, int shadows) {
  cf_store_geom_t g;
  memset(&g, 0, sizeof g);
  g.dtype_size = 2;
  g.chunk_tokens = 512;
  g.n_layers = 1;
  g.n_kv_heads = 1;
  g.head_dim = 1;
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 0;
  c.ssd_bytes = (uint64_t)n * 4096;
  c.spill = 0;
  c.cpu_evict = pol;
  cf_sched_cost_t cost;
  cf_cost_h100_llama8b(&cost);
  cost.tier_Bps[1] = 6.8e9;
  cf_evict_cost_table(&cost, 512, &c.cost);
  char d[512];
  snprintf(d, sizeof d, "%s/p%d_n%d", dir, (int)pol, (int)n);
  cf_store_t *st;
  if (cf_store_open(d, &g, &c, &st)) { fprintf(stderr, "bench_evict: open: %s\n", cf_errmsg()); exit(1); }
  pthread_mutex_lock(&st->mu);
  if (shadows) {
    /* the shadows of a CPU tier of n slots (sized from n_cpu_slots; the tier itself is not
     * needed: the shadows hold keys only) */
    int32_t keep = st->n_cpu_slots;
    st->n_cpu_slots = n;
    if (cf__cpush_alloc(st)) { fprintf(stderr, "bench_evict: shadows: %s\n", cf_errmsg()); exit(1); }
    st->n_cpu_slots = keep;
  }
  for (int32_t s = 0; s < n; s++) add_chunk(st, s, NULL);
  uint64_t r = 42;
  double t0 = now_s();
  for (long i = 0; i < ops; i++) {
    int32_t v = cf__ssd_pick(st);
    if (v < 0) { fprintf(stderr, "bench_evict: no victim\n"); exit(1); }
    int32_t s = st->ents[v].ssd_slot;
    cf_store_key_t vk = st->ents[v].key;
    cf__cost_evicted(st, v); /* cost: a ghost remembers it (what cf__ssd_alloc does) */
    cf__ssd_detach(st, v);
    cf__ent_maybe_free(st, v);
    add_chunk(st, s, i % 4 == 3 ? &vk : NULL); /* every 4th op the victim comes back */
    if (shadows) cf__cpush_arrive(st, st->ssd_owner[s]);
    r = mix64(r);
    cf__ssd_touch(st, st->ssd_owner[r % (uint64_t)n]);
  }
  double dt = now_s() - t0;
  /* bytes per chunk of the index: entry, hash table share, checksums, slot maps; cost: heap node,
   * the last-use time (cost_t) and the SSD tier's ghosts per slot (a ring entry and its share of
   * the ghosts' hash table, and the frequency sketch's share: 8 bytes per word) */
  *bytes_per_chunk = sizeof(cf__ent_t) + (size_t)(st->tab_mask + 1) * 4 / (size_t)st->n_ents_max +
                     8 * g.n_layers + 4 + 2 + 1 + 4 +
                     (pol == CF_STORE_EVICT_COST ? sizeof(cf__hnode_t) + sizeof *st->cost_t + sizeof(cf__ghost_t) +
                                                       (size_t)(st->ghosts.mask + 1) * 4 / (size_t)n +
                                                       (size_t)(st->sketch.mask + 1) * 8 / (size_t)n : 0);
  /* leave nothing for close to write back or record: the chunks never had bytes */
  st->ssd_order_dirty = 0;
  pthread_mutex_unlock(&st->mu);
  cf_store_close(st);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  if (system(cmd) != 0) {}
  return dt / ops * 1e9;
}

int main(int argc, char **argv) {
  long ops = argc > 1 ? atol(argv[1]) : 2000000;
  cf_log_level = CF_LOG_WARN;
  char tmpl[] = "/tmp/bench_evict.XXXXXX";
  if (!mkdtemp(tmpl)) { perror("mkdtemp"); return 1; }
  const char *names[4] = {"lru", "s3fifo", "cost", "cost+sh"};
  printf("%-7s %10s %10s %8s %12s %12s %14s\n", "policy", "ns/op@10k", "ns/op@1M", "1M/10k", "vs lru@10k",
         "vs lru@1M", "index B/chunk");
  double lru_a = 0, lru_b = 0;
  for (int p = 0; p < 4; p++) {
    size_t b1, b2;
    cf_store_evict_t pol = p == 3 ? CF_STORE_EVICT_COST : (cf_store_evict_t)p;
    double a = run(pol, 10000, ops, tmpl, &b1, p == 3);
    double b = run(pol, 1000000, ops, tmpl, &b2, p == 3);
    if (p == 0) { lru_a = a; lru_b = b; }
    printf("%-7s %10.0f %10.0f %8.2f %12.2f %12.2f %14zu\n", names[p], a, b, b / a, a / lru_a, b / lru_b, b2);
  }
  printf("(CPU time per op; the 1M/10k growth shared by every policy is cache misses: 10k chunks fit\n"
         " in cache, 1M do not. An O(log n) policy would add log(1M)/log(10k) = 1.5x on top of it.\n"
         " cost+sh: cost with the CPU-tier shadows of a CPU tier of as many slots fed an arrival and a\n"
         " use per op; their memory is per CPU slot, not per chunk: %zu bytes per slot up to %d slots,\n"
         " then sampled, %zu KiB at most; and the reuse-rate counts, %zu bytes per slot of both tiers,\n"
         " %zu MiB at most)\n", cf__cpush_bytes(4096) / 4096, 4096, cf__cpush_bytes(1 << 30) >> 10,
         cf__rate_bytes(1 << 20) >> 20, cf__rate_bytes(1ll << 30) >> 20);
  rmdir(tmpl);
  return 0;
}
