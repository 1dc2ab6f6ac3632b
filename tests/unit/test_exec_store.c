/* Save -> store (CPU and SSD tiers) -> restore through the executor, with the real CPU backend,
 * the real store (O_DIRECT + io_uring files in a temp dir) and shared-memory engine buffers:
 * chunks evicted to SSD, removed mid-restore, or corrupted on disk are recomputed, and the
 * engine ends up with exactly the KV of a full recompute. */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "cf_test.h"
#include "exec/cf_cellsrc_store.h"
#include "exec/cf_exec.h"
#include "exec/cf_save.h"
#include "store/cf_stage_ring.h"
#include "model/cf_kv.h"
#include "model/cf_model_synth.h"
#include "store/cf_remote.h"
#include "unit/redis_testlib.h"

typedef struct {
  cf_model_t *m;
  cf_backend_t *be;
  int C, T, L;
  int32_t *tokens;
  cf_kv_t ref;          /* whole-sequence recompute */
} world_t;

static void world_init(world_t *w, int C, int T) {
  cf_model_config_t mc;
  CF_CHECK_OK(cf_synth_preset("tiny", &mc));
  mc.n_layers = 3;
  cf_synth_opts_t so = {.seed = 11, .std = 0.05f, .norm_jitter = 0.1f};
  CF_CHECK_OK(cf_model_synth(&mc, &so, &w->m));
  CF_CHECK_OK(cf_backend_cpu_create(w->m, 1, &w->be));
  w->C = C; w->T = T; w->L = mc.n_layers;
  w->tokens = malloc(sizeof(int32_t) * T);
  for (int t = 0; t < T; t++) w->tokens[t] = (int32_t)((t * 37 + 5) % mc.vocab);
  CF_CHECK_OK(cf_kv_init(&w->ref, &mc, T));
  CF_CHECK_OK(cf_kv_compute(w->be, w->tokens, 0, &w->ref));
}

static void world_free(world_t *w) {
  cf_kv_free(&w->ref);
  cf_backend_free(w->be);
  cf_model_synth_free(w->m);
  free(w->tokens);
}

/* An engine: its own shared-memory buffer and a scattered block table. */
typedef struct { cf_kvmap_t kv; int32_t blocks[256]; int nb; } engine_t;

static void engine_init(engine_t *e, const world_t *w, const char *name, int bs, int offset) {
  cf_kv_layout_t lay;
  e->nb = (w->T + bs - 1) / bs;
  CF_CHECK_OK(cf_kv_layout_init(&lay, w->L, e->nb * 3, bs, w->m->cfg.n_kv_heads, w->m->cfg.head_dim, CF_DT_F32));
  char path[512];
  snprintf(path, sizeof path, "%s/%s", cf_test_tmpdir(), name);
  CF_CHECK_OK(cf_kvmap_create(&e->kv, path, &lay));
  int pool = e->nb * 3, perm[768];
  for (int i = 0; i < pool; i++) perm[i] = (i + offset) % pool;
  for (int i = pool - 1; i > 0; i--) { int j = (int)(cf_test_rand() % (unsigned)(i + 1)), x = perm[i]; perm[i] = perm[j]; perm[j] = x; }
  for (int i = 0; i < e->nb; i++) e->blocks[i] = perm[i];
  CF_CHECK_OK(cf_kvmap_check_blocks(&lay, e->blocks, e->nb));
}

/* The engine's own prefill: write the reference KV into its blocks. */
static void engine_prefill(engine_t *e, const world_t *w) {
  for (int l = 0; l < w->L; l++) cf_kvmap_scatter(&e->kv, l, e->blocks, 0, w->T, w->ref.k[l], w->ref.v[l]);
}

/* Tokens before `exact_upto` bit-identical to the reference (loaded), the rest within 1e-4. */
static int engine_check(const engine_t *e, const world_t *w, int exact_upto) {
  size_t row = w->ref.row, n = row * w->T;
  float *k = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
  int bad = 0;
  for (int l = 0; l < w->L; l++) {
    cf_kvmap_gather(&e->kv, l, e->blocks, 0, w->T, k, v);
    for (size_t i = 0; i < n; i++)
      if (!(i < (size_t)exact_upto * row ? k[i] == w->ref.k[l][i] && v[i] == w->ref.v[l][i]
            : fabsf(k[i] - w->ref.k[l][i]) <= 1e-4f && fabsf(v[i] - w->ref.v[l][i]) <= 1e-4f)) {
        if (bad++ < 3) printf("    layer %d token %zu: %g vs %g\n", l, i / row, k[i], w->ref.k[l][i]);
      }
  }
  free(k); free(v);
  return bad;
}

static cf_store_t *open_store_promo(const world_t *w, const char *name, uint64_t cpu, uint64_t ssd,
                                    const char *remote_url, int64_t promote_bytes);
static cf_store_t *open_store_remote(const world_t *w, const char *name, uint64_t cpu, uint64_t ssd,
                                     const char *remote_url) {
  return open_store_promo(w, name, cpu, ssd, remote_url, 0);
}
static cf_store_t *open_store(const world_t *w, const char *name, uint64_t cpu, uint64_t ssd) {
  return open_store_remote(w, name, cpu, ssd, NULL);
}

static cf_store_t *open_store_promo(const world_t *w, const char *name, uint64_t cpu, uint64_t ssd,
                                    const char *remote_url, int64_t promote_bytes) {
  cf_store_geom_t g = {.dtype_size = 4, .chunk_tokens = (uint32_t)w->C, .n_layers = (uint32_t)w->L,
                       .n_kv_heads = (uint32_t)w->m->cfg.n_kv_heads, .head_dim = (uint32_t)w->m->cfg.head_dim};
  memcpy(g.fingerprint, w->m->fingerprint, 16);
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = cpu; c.ssd_bytes = ssd; c.spill = 0;
  c.remote_url = remote_url;
  c.remote_promote_bytes = promote_bytes;
  char dir[512];
  snprintf(dir, sizeof dir, "%s/%s", cf_test_tmpdir(), name);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  return st;
}

typedef struct {
  cf_store_key_t keys[64];
  cf_store_chunkref_t refs[64];
  cf_cellsrc_t *srcs[64];
  void *refp[64];
  uint8_t tiers[64];
  int h[64];
  size_t found;
  int n_chunks;
} plan_t;

static void plan_prepare(plan_t *p, cf_cellsrc_store_t *cs, const world_t *w) {
  memset(p, 0, sizeof *p);
  p->n_chunks = (w->T + w->C - 1) / w->C;
  size_t full = (size_t)w->T / w->C;
  cf_store_chain_keys(w->m->fingerprint, w->tokens, full * w->C, (uint32_t)w->C, p->keys);
  p->found = cf_cellsrc_store_prepare(cs, p->keys, full, p->refs, p->srcs, p->tiers);
  for (int c = 0; c < p->n_chunks; c++) {
    p->refp[c] = &p->refs[c];
    p->h[c] = (size_t)c < p->found ? 0 : w->L; /* load what is stored, compute the rest */
  }
}

static int restore(const world_t *w, engine_t *e, plan_t *p, cf_exec_req_t *r) {
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, w->be, 2));
  memset(r, 0, sizeof *r);
  r->n_tokens = w->T; r->tokens = w->tokens; r->chunk_tokens = w->C; r->h = p->h;
  r->src = p->srcs; r->ref = p->refp; r->kv = &e->kv; r->blocks = e->blocks; r->n_blocks = e->nb;
  return cf_exec_run(&ex, r, 1);
}

CF_TEST(save_then_restore_from_cpu_and_ssd_tiers) {
  world_t w;
  world_init(&w, 16, 16 * 10 + 3);
  engine_t a, b;
  engine_init(&a, &w, "eng_a", 8, 1);
  engine_init(&b, &w, "eng_b", 4, 5);
  engine_prefill(&a, &w);
  cf_store_t *st = open_store(&w, "store1", 1 << 20, 8 << 20);
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_blocks(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, 0, &sr));
  CF_CHECK_EQ(sr.saved_tokens, 163); /* 10 chunks and the 3-token partial one */
  CF_CHECK_EQ(sr.new_chunks, 11);
  CF_CHECK_EQ(sr.durable, 0);
  /* saving again stores nothing new; a durable save flushes to SSD */
  CF_CHECK_OK(cf_save_blocks(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, CF_STORE_SAVE_DURABLE, &sr));
  CF_CHECK_EQ(sr.existing_chunks, 11);
  CF_CHECK_EQ(sr.new_chunks, 0);
  CF_CHECK_EQ(sr.durable, 1);
  /* half the chunks leave the CPU tier: restore reads those from SSD */
  cf_store_stats_t ss;
  cf_store_get_stats(st, &ss);
  CF_CHECK_OK(cf_store_evict_cpu(st, ss.cpu_bytes_used / 2));
  cf_cellsrc_store_t cs;
  CF_CHECK_OK(cf_cellsrc_store_init(&cs, st, NULL, NULL));
  plan_t p;
  plan_prepare(&p, &cs, &w);
  CF_CHECK_EQ(p.found, 10);
  int on_ssd = 0;
  for (int c = 0; c < 10; c++) on_ssd += p.tiers[c] == CF_STORE_TIER_SSD;
  CF_CHECK_GT(on_ssd, 0);
  CF_CHECK_LT(on_ssd, 10);
  cf_exec_req_t r;
  CF_CHECK_OK(restore(&w, &b, &p, &r));
  cf_cellsrc_store_unprepare(&cs, p.refs, p.found);
  cf_cellsrc_store_close(&cs);
  CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_SSD], (uint64_t)on_ssd * w.L);
  CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_CPU], (uint64_t)(10 - on_ssd) * w.L);
  CF_CHECK_EQ(r.stats.cells_computed, w.L); /* the 3-token tail */
  CF_CHECK_EQ(engine_check(&b, &w, 160), 0);
  cf_store_close(st);
  cf_kvmap_close(&a.kv); cf_kvmap_close(&b.kv);
  world_free(&w);
}

/* Chunks removed after the lookup and SSD data corrupted on disk: those cells fail their read
 * and are recomputed; the restore still delivers the right KV. */
CF_TEST(restore_survives_removed_and_corrupt_chunks) {
  world_t w;
  world_init(&w, 16, 16 * 8);
  engine_t a, b;
  engine_init(&a, &w, "eng_c", 16, 2);
  engine_init(&b, &w, "eng_d", 16, 9);
  engine_prefill(&a, &w);
  cf_store_t *st = open_store(&w, "store2", 1 << 20, 8 << 20);
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_blocks(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, CF_STORE_SAVE_DURABLE, &sr));
  CF_CHECK_OK(cf_store_evict_cpu(st, 0)); /* everything on SSD only */
  cf_cellsrc_store_t cs;
  CF_CHECK_OK(cf_cellsrc_store_init(&cs, st, NULL, NULL));
  plan_t p;
  plan_prepare(&p, &cs, &w);
  CF_CHECK_EQ(p.found, 8);
  for (int c = 0; c < 8; c++) CF_CHECK_EQ(p.tiers[c], CF_STORE_TIER_SSD);
  /* chunk 2 vanishes between plan and execution */
  CF_CHECK_OK(cf_store_remove(st, &p.keys[2]));
  /* and every data file gets a flipped byte every 4 KiB: every SSD cell fails its checksum */
  char dir[512];
  snprintf(dir, sizeof dir, "%s/store2", cf_test_tmpdir());
  DIR *d = opendir(dir);
  struct dirent *de;
  int files = 0;
  while ((de = readdir(d))) {
    if (strncmp(de->d_name, "data.", 5)) continue;
    char fp[1024];
    snprintf(fp, sizeof fp, "%s/%s", dir, de->d_name);
    int fd = open(fp, O_RDWR);
    off_t sz = lseek(fd, 0, SEEK_END);
    for (off_t o = 100; o < sz; o += 4096) {
      unsigned char ch;
      if (pread(fd, &ch, 1, o) == 1) { ch ^= 0x5a; CF_CHECK_EQ(pwrite(fd, &ch, 1, o), 1); }
    }
    close(fd);
    files++;
  }
  closedir(d);
  CF_CHECK_GT(files, 0);
  p.h[0] = 1; /* a staircase: chunk 0 computes layer 0, the rest loads (and fails) */
  cf_exec_req_t r;
  CF_CHECK_OK(restore(&w, &b, &p, &r));
  cf_cellsrc_store_unprepare(&cs, p.refs, p.found);
  cf_cellsrc_store_close(&cs);
  CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_SSD], 0);
  CF_CHECK_GT(r.stats.load_failures, 0);
  CF_CHECK_EQ(r.stats.cells_computed, (uint64_t)8 * w.L);
  CF_CHECK_EQ(engine_check(&b, &w, 0), 0);
  cf_store_stats_t ss;
  cf_store_get_stats(st, &ss);
  CF_CHECK_GT(ss.corrupt_cells, 0);
  cf_store_close(st);
  cf_kvmap_close(&a.kv); cf_kvmap_close(&b.kv);
  world_free(&w);
}

/* Holes (issue 15): chunks 1 and 4 of 8 are gone before the lookup; every other chunk is still
 * found (keys chain over token ids only), loaded, and the holes computed: the restore equals a
 * prefill from scratch. Chunk 6 then vanishes between the lookup and the read (SSD only, so
 * nothing pins it): its cells fail to load and are recomputed, never wrong KV. */
CF_TEST(restore_with_holes_loads_past_them) {
  world_t w;
  world_init(&w, 16, 16 * 8);
  engine_t a, b;
  engine_init(&a, &w, "eng_h1", 16, 2);
  engine_init(&b, &w, "eng_h2", 16, 9);
  engine_prefill(&a, &w);
  cf_store_t *st = open_store(&w, "store_holes", 1 << 20, 8 << 20);
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_blocks(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, CF_STORE_SAVE_DURABLE, &sr));
  CF_CHECK_OK(cf_store_evict_cpu(st, 0)); /* on SSD only: nothing pinned */
  plan_t p;
  memset(&p, 0, sizeof p);
  cf_store_chain_keys(w.m->fingerprint, w.tokens, (size_t)w.T, (uint32_t)w.C, p.keys);
  CF_CHECK_OK(cf_store_remove(st, &p.keys[1]));
  CF_CHECK_OK(cf_store_remove(st, &p.keys[4]));
  CF_CHECK_EQ(cf_store_lookup(st, p.keys, 8, NULL), 1); /* the leading run stops at the hole */
  uint8_t t8[8];
  CF_CHECK_EQ(cf_store_lookup_each(st, p.keys, 8, t8), 6);
  CF_CHECK(t8[1] == CF_STORE_TIER_NONE && t8[4] == CF_STORE_TIER_NONE && t8[0] == CF_STORE_TIER_SSD &&
           t8[7] == CF_STORE_TIER_SSD);
  cf_cellsrc_store_t cs;
  CF_CHECK_OK(cf_cellsrc_store_init(&cs, st, NULL, NULL));
  CF_CHECK_EQ(cf_cellsrc_store_prepare_each(&cs, p.keys, 8, p.refs, p.srcs, p.tiers), 6);
  for (int c = 0; c < 8; c++) {
    CF_CHECK_EQ(p.srcs[c] == NULL, c == 1 || c == 4);
    p.refp[c] = p.srcs[c] ? &p.refs[c] : NULL;
    p.h[c] = p.srcs[c] ? 0 : w.L; /* load what is stored, compute the holes */
  }
  CF_CHECK_OK(cf_store_remove(st, &p.keys[6])); /* gone between lookup and read */
  cf_exec_req_t r;
  CF_CHECK_OK(restore(&w, &b, &p, &r));
  cf_cellsrc_store_unprepare(&cs, p.refs, 8);
  cf_cellsrc_store_close(&cs);
  CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_SSD], (uint64_t)5 * w.L);
  CF_CHECK_EQ(r.stats.cells_computed, (uint64_t)3 * w.L);
  CF_CHECK_GT(r.stats.load_failures, 0);
  CF_CHECK_EQ(engine_check(&b, &w, 16), 0); /* chunk 0 loaded: bit-exact; the rest within 1e-4 */
  cf_store_close(st);
  cf_kvmap_close(&a.kv); cf_kvmap_close(&b.kv);
  world_free(&w);
}

CF_TEST(save_rejects_bad_blocks_and_geometry) {
  world_t w;
  world_init(&w, 16, 40);
  engine_t a;
  engine_init(&a, &w, "eng_e", 8, 0);
  cf_store_t *st = open_store(&w, "store3", 1 << 20, 0);
  cf_save_result_t sr;
  CF_CHECK_ERR(cf_save_blocks(st, &a.kv, w.tokens, w.T, a.blocks, 4, 0, &sr), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "need 5 blocks");
  int32_t bad[5] = {0, 1, 2, 3, 999};
  CF_CHECK_ERR(cf_save_blocks(st, &a.kv, w.tokens, w.T, bad, 5, 0, &sr), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "block_ids[4] = 999");
  /* a 10-token prefix is one partial chunk: saved under its own key (Lookup counts it) */
  CF_CHECK_OK(cf_save_blocks(st, &a.kv, w.tokens, 10, a.blocks, 2, 0, &sr));
  CF_CHECK_EQ(sr.saved_tokens, 10);
  CF_CHECK_EQ(sr.new_chunks, 1);
  cf_store_close(st);
  cf_kvmap_close(&a.kv);
  world_free(&w);
}

/* cf_save_blocks_refusing (the daemon's Save after a windowed restore skipped cells): a refused
 * chunk the store lacks is a hole and the later chunks are stored; one it holds counts as saved
 * (the store keeps its own copy). */
CF_TEST(save_refusing_leaves_holes) {
  world_t w;
  world_init(&w, 16, 40);
  engine_t a;
  engine_init(&a, &w, "eng_r", 8, 0);
  engine_prefill(&a, &w);
  cf_store_t *st = open_store(&w, "store_r", 1 << 20, 0);
  cf_store_key_t keys[3];
  CF_CHECK_EQ(cf_store_chain_keys_partial(cf_store_geom(st)->fingerprint, w.tokens, (size_t)w.T, 16, keys), 3);
  const uint8_t refuse[3] = {0, 1, 0};
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_blocks_refusing(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, 0, refuse, &sr));
  CF_CHECK_EQ(sr.refused_chunks, 1);
  CF_CHECK_EQ(sr.new_chunks, 2);
  CF_CHECK_EQ(sr.saved_tokens, 24);
  CF_CHECK_EQ(cf_store_lookup(st, &keys[0], 1, NULL), 1);
  CF_CHECK_EQ(cf_store_lookup(st, &keys[1], 1, NULL), 0); /* the hole */
  CF_CHECK_EQ(cf_store_lookup(st, &keys[2], 1, NULL), 1);
  CF_CHECK_OK(cf_save_blocks(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, 0, &sr));
  CF_CHECK_EQ(sr.new_chunks, 1);
  CF_CHECK_OK(cf_save_blocks_refusing(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, 0, refuse, &sr));
  CF_CHECK_EQ(sr.refused_chunks, 0);
  CF_CHECK_EQ(sr.existing_chunks, 3);
  CF_CHECK_EQ(sr.saved_tokens, 40);
  cf_store_close(st);
  cf_kvmap_close(&a.kv);
  world_free(&w);
}

/* cf_save_cells (the GPU executor's Save goes through it with a device gather): a gather that
 * fails at chunk 1 stops the save there with the chunk named, chunk 0 stays saved, and the
 * gather saw each chunk's layers with the right token ranges. */
typedef struct { const cf_kvmap_t *kv; const int32_t *blocks; int calls, fail_t0; } gather_ctx_t;
static int failing_gather(void *ctx, int l, int t0, int t1, void *k, void *v) {
  gather_ctx_t *g = ctx;
  g->calls++;
  if (t0 == g->fail_t0) return cf_seterr(CF_ECUDA, "injected device copy failure at layer %d", l);
  cf_kvmap_gather(g->kv, l, g->blocks, t0, t1, k, v);
  return 0;
}
CF_TEST(save_cells_stops_at_a_failed_gather) {
  world_t w;
  world_init(&w, 16, 40);
  engine_t a;
  engine_init(&a, &w, "eng_g", 8, 0);
  engine_prefill(&a, &w);
  cf_store_t *st = open_store(&w, "store_g", 1 << 20, 0);
  gather_ctx_t g = {.kv = &a.kv, .blocks = a.blocks, .fail_t0 = 16};
  cf_save_result_t sr;
  CF_CHECK_ERR(cf_save_cells(st, &a.kv.layout, failing_gather, &g, w.tokens, w.T, a.blocks, a.nb, 0, &sr), CF_ECUDA);
  CF_CHECK_CONTAINS(cf_errmsg(), "chunk 1 (tokens [16, 32)) from the engine");
  CF_CHECK_EQ(sr.new_chunks, 1);
  CF_CHECK_EQ(sr.saved_tokens, 16);
  CF_CHECK_EQ(g.calls, w.L + 1); /* chunk 0: every layer; chunk 1: the first layer failed */
  g.fail_t0 = -1;
  CF_CHECK_OK(cf_save_cells(st, &a.kv.layout, failing_gather, &g, w.tokens, w.T, a.blocks, a.nb, 0, &sr));
  CF_CHECK_EQ(sr.existing_chunks, 1);
  CF_CHECK_EQ(sr.new_chunks, 2);
  CF_CHECK_EQ(sr.saved_tokens, 40);
  cf_store_close(st);
  cf_kvmap_close(&a.kv);
  world_free(&w);
}

/* A bf16 store end to end on the real CPU backend and real store files: a bf16 engine saves
 * (its blocks' bytes, unchanged), another bf16 engine restores from the CPU tier and, after
 * eviction, from the SSD tier: every loaded token bit-identical to the saver's bytes, the partial
 * tail (recomputed, rounded) within bf16 tolerance of the fp32 recompute. An f32 engine cannot
 * save into it, and sources over it refuse an f32 engine, both naming the two dtypes. */
CF_TEST(bf16_store_save_restore_round_trip) {
  world_t w;
  world_init(&w, 16, 16 * 6 + 5);
  engine_t a, b, f32e;
  cf_kv_layout_t lay;
  int bs = 8, nb = (w.T + bs - 1) / bs;
  CF_CHECK_OK(cf_kv_layout_init(&lay, w.L, nb * 3, bs, w.m->cfg.n_kv_heads, w.m->cfg.head_dim, CF_DT_BF16));
  char path[512];
  engine_t *es[2] = {&a, &b};
  for (int i = 0; i < 2; i++) {
    snprintf(path, sizeof path, "%s/bf16_eng_%d", cf_test_tmpdir(), i);
    CF_CHECK_OK(cf_kvmap_create(&es[i]->kv, path, &lay));
    es[i]->nb = nb;
    for (int j = 0; j < nb; j++) es[i]->blocks[j] = i ? 3 * nb - 1 - 2 * j : 3 * j % (3 * nb); /* scattered */
    CF_CHECK_OK(cf_kvmap_check_blocks(&lay, es[i]->blocks, nb));
  }
  for (int l = 0; l < w.L; l++) cf_kvmap_scatter_f32(&a.kv, l, a.blocks, 0, w.T, w.ref.k[l], w.ref.v[l]);
  cf_store_geom_t g = {.chunk_tokens = (uint32_t)w.C, .n_layers = (uint32_t)w.L,
                       .n_kv_heads = (uint32_t)w.m->cfg.n_kv_heads, .head_dim = (uint32_t)w.m->cfg.head_dim};
  memcpy(g.fingerprint, w.m->fingerprint, 16);
  CF_CHECK_OK(cf_exec_geom_dtype(&g, CF_DT_BF16));
  CF_CHECK_EQ(g.dtype_size, 2);
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 1 << 20; c.ssd_bytes = 8 << 20; c.spill = 0;
  snprintf(path, sizeof path, "%s/bf16_store", cf_test_tmpdir());
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(path, &g, &c, &st));
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_blocks(st, &a.kv, w.tokens, w.T, a.blocks, a.nb, CF_STORE_SAVE_DURABLE, &sr));
  CF_CHECK_EQ(sr.new_chunks, 7);
  CF_CHECK_EQ(sr.saved_tokens, (uint32_t)w.T);
  /* the saver's bytes, the reference for loaded cells */
  size_t row = w.ref.row, n = row * w.T;
  uint16_t *sk = malloc(2 * n * w.L), *sv = malloc(2 * n * w.L), *gk = malloc(2 * n), *gv = malloc(2 * n);
  float *fk = malloc(4 * n), *fv = malloc(4 * n);
  for (int l = 0; l < w.L; l++) cf_kvmap_gather(&a.kv, l, a.blocks, 0, w.T, sk + l * n, sv + l * n);
  cf_cellsrc_store_t cs;
  CF_CHECK_OK(cf_cellsrc_store_init(&cs, st, NULL, NULL));
  CF_CHECK_EQ(cs.cpu.dtype, CF_DT_BF16);
  for (int round = 0; round < 2; round++) {
    if (round) CF_CHECK_OK(cf_store_evict_cpu(st, 0)); /* round 1: every cell from the SSD tier */
    for (int l = 0; l < w.L; l++) { memset(b.kv.k[l], 0xff, cf_kv_layout_plane_bytes(&lay)); memset(b.kv.v[l], 0xff, cf_kv_layout_plane_bytes(&lay)); }
    plan_t p;
    plan_prepare(&p, &cs, &w);
    CF_CHECK_EQ(p.found, 6);
    cf_exec_req_t r;
    CF_CHECK_OK(restore(&w, &b, &p, &r));
    CF_CHECK_EQ(r.stats.cells_loaded[round ? CF_EXEC_TIER_SSD : CF_EXEC_TIER_CPU], 6 * (uint64_t)w.L);
    CF_CHECK_EQ(r.stats.bytes_loaded[round ? CF_EXEC_TIER_SSD : CF_EXEC_TIER_CPU], 6ull * w.L * 2 * 16 * row * 2);
    cf_cellsrc_store_unprepare(&cs, p.refs, p.found);
    int bad = 0;
    size_t upto = 96 * row; /* the 6 full chunks: loaded */
    for (int l = 0; l < w.L; l++) {
      cf_kvmap_gather(&b.kv, l, b.blocks, 0, w.T, gk, gv);
      cf_kvmap_gather_f32(&b.kv, l, b.blocks, 0, w.T, fk, fv);
      if (memcmp(gk, sk + l * n, 2 * upto) || memcmp(gv, sv + l * n, 2 * upto)) bad++;
      for (size_t i = upto; i < n; i++)
        if (!(fabsf(fk[i] - w.ref.k[l][i]) <= 1.0f / 64 * fabsf(w.ref.k[l][i]) + 1e-3f &&
              fabsf(fv[i] - w.ref.v[l][i]) <= 1.0f / 64 * fabsf(w.ref.v[l][i]) + 1e-3f)) { bad++; break; }
    }
    CF_CHECK_EQ(bad, 0);
  }
  /* dtype mismatches */
  engine_init(&f32e, &w, "bf16_f32eng", 8, 0);
  CF_CHECK_ERR(cf_save_blocks(st, &f32e.kv, w.tokens, w.T, f32e.blocks, f32e.nb, 0, &sr), CF_EDTYPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "engine's KV dtype is F32, the store holds BF16 cells");
  plan_t p;
  plan_prepare(&p, &cs, &w);
  cf_exec_req_t r;
  CF_CHECK_ERR(restore(&w, &f32e, &p, &r), CF_EDTYPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "holds BF16 cells, the engine buffer is F32");
  cf_cellsrc_store_unprepare(&cs, p.refs, p.found);
  cf_cellsrc_store_close(&cs);
  cf_store_close(st);
  free(sk); free(sv); free(gk); free(gv); free(fk); free(fv);
  cf_kvmap_close(&a.kv); cf_kvmap_close(&b.kv); cf_kvmap_close(&f32e.kv);
  world_free(&w);
}

/* ---------------------------------------------------------------- SSD tier: streamed reads */

/* A restore of n_chunks full chunks, every one on the SSD tier only (saved durable, CPU tier
 * evicted), into engine `b`. */
typedef struct {
  world_t w;
  engine_t a, b;
  cf_store_t *st;
  cf_cellsrc_store_t cs;
  cf_ratelimit_t rl;
  plan_t p;
  char dir[512];
} ssdfx_t;

static void ssdfx_init(ssdfx_t *f, const char *name, int n_chunks, double ssd_Bps) {
  world_init(&f->w, 16, 16 * n_chunks);
  char en[64];
  snprintf(en, sizeof en, "%s_a", name);
  engine_init(&f->a, &f->w, en, 16, 3);
  snprintf(en, sizeof en, "%s_b", name);
  engine_init(&f->b, &f->w, en, 8, 7);
  engine_prefill(&f->a, &f->w);
  f->st = open_store(&f->w, name, 1 << 20, 16 << 20);
  snprintf(f->dir, sizeof f->dir, "%s/%s", cf_test_tmpdir(), name);
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_blocks(f->st, &f->a.kv, f->w.tokens, f->w.T, f->a.blocks, f->a.nb, CF_STORE_SAVE_DURABLE, &sr));
  CF_CHECK_EQ(sr.new_chunks, (uint32_t)n_chunks);
  CF_CHECK_OK(cf_store_evict_cpu(f->st, 0));
  CF_CHECK_OK(cf_ratelimit_init(&f->rl, ssd_Bps, 0));
  CF_CHECK_OK(cf_cellsrc_store_init(&f->cs, f->st, NULL, ssd_Bps > 0 ? &f->rl : NULL));
  plan_prepare(&f->p, &f->cs, &f->w);
  CF_CHECK_EQ(f->p.found, (size_t)n_chunks);
  for (int c = 0; c < n_chunks; c++) CF_CHECK_EQ(f->p.tiers[c], CF_STORE_TIER_SSD);
}

static void ssdfx_free(ssdfx_t *f) {
  cf_cellsrc_store_unprepare(&f->cs, f->p.refs, f->p.found);
  cf_cellsrc_store_close(&f->cs);
  cf_ratelimit_close(&f->rl);
  cf_store_close(f->st);
  cf_kvmap_close(&f->a.kv); cf_kvmap_close(&f->b.kv);
  world_free(&f->w);
}

/* Flip one byte of chunk `c`'s cell at `layer` in the store's first data file (chunks were
 * saved in order into slots 0, 1, ...: slot c = L cell strides). */
static void ssdfx_corrupt(ssdfx_t *f, int c, int layer) {
  char fp[1024];
  snprintf(fp, sizeof fp, "%s/data.000", f->dir);
  size_t stride = cf_ring_slot_bytes(f->st);
  off_t off = (off_t)((size_t)c * f->w.L * stride + (size_t)layer * stride + 100);
  int fd = open(fp, O_RDWR);
  CF_CHECK_GE(fd, 0);
  unsigned char ch = 0;
  CF_CHECK_EQ(pread(fd, &ch, 1, off), 1);
  ch ^= 0x5a;
  CF_CHECK_EQ(pwrite(fd, &ch, 1, off), 1);
  close(fd);
}

/* Every cell from the SSD tier through the loaders' staging rings: several reads in flight per
 * loader (the old path had one), never more than the ring's slots (bounded memory), every cell
 * written exactly once and bit-identical; the same restore with a ring depth of 1 (one read at
 * a time per loader) gives the same bytes. */
CF_TEST(ssd_restore_keeps_several_reads_in_flight) {
  ssdfx_t f;
  ssdfx_init(&f, "ssd_stream", 40, 0);
  for (int depth = CF_CELLSRC_SSD_DEPTH; depth >= 1; depth -= CF_CELLSRC_SSD_DEPTH - 1) {
    f.cs.ssd_depth = depth;
    for (int l = 0; l < f.w.L; l++) {
      memset(f.b.kv.k[l], 0xff, cf_kv_layout_plane_bytes(&f.b.kv.layout));
      memset(f.b.kv.v[l], 0xff, cf_kv_layout_plane_bytes(&f.b.kv.layout));
    }
    cf_exec_req_t r;
    CF_CHECK_OK(restore(&f.w, &f.b, &f.p, &r));
    printf("    depth %d: peak %d reads in flight per loader, %llu cells\n", depth, r.stats.load_depth_peak,
           (unsigned long long)r.stats.cells_loaded[CF_EXEC_TIER_SSD]);
    CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_SSD], 40ull * f.w.L);
    CF_CHECK_EQ(r.stats.cells_computed, 0);
    CF_CHECK_EQ(r.stats.load_failures, 0);
    CF_CHECK_GT(r.stats.load_busy_ns[CF_EXEC_TIER_SSD], 0);
    CF_CHECK_LE(r.stats.load_busy_ns[CF_EXEC_TIER_SSD], r.stats.t_done_ns - r.stats.t_start_ns);
    if (depth > 1) {
      CF_CHECK_GT(r.stats.load_depth_peak, 2);
      CF_CHECK_LE(r.stats.load_depth_peak, depth);
    } else {
      CF_CHECK_LE(r.stats.load_depth_peak, 1);
    }
    CF_CHECK_EQ(engine_check(&f.b, &f.w, f.w.T), 0);
  }
  ssdfx_free(&f);
}

/* Failures inside a stream: chunk 3's layer-1 cell corrupted on disk (its checksum fails, the
 * store drops the chunk, so its later cells are gone too) and chunk 5 removed after the plan.
 * Those cells are recomputed, every other one still comes from the SSD tier, and each cell
 * reaches the engine exactly once: loaded + computed = all cells. */
CF_TEST(ssd_stream_recomputes_corrupt_and_removed_cells) {
  ssdfx_t f;
  ssdfx_init(&f, "ssd_fail", 24, 0);
  ssdfx_corrupt(&f, 3, 1);
  CF_CHECK_OK(cf_store_remove(f.st, &f.p.keys[5]));
  cf_exec_req_t r;
  CF_CHECK_OK(restore(&f.w, &f.b, &f.p, &r));
  uint64_t all = 24ull * f.w.L, loaded = r.stats.cells_loaded[CF_EXEC_TIER_SSD];
  printf("    %llu loaded, %llu computed, %llu failures\n", (unsigned long long)loaded,
         (unsigned long long)r.stats.cells_computed, (unsigned long long)r.stats.load_failures);
  CF_CHECK_EQ(loaded + r.stats.cells_computed, all);
  CF_CHECK_GE(loaded, 22ull * f.w.L);         /* every other chunk loaded */
  CF_CHECK_LE(loaded, 22ull * f.w.L + 2);     /* chunk 3: at most layers 0 and 2 (read before the drop) */
  CF_CHECK_GE(r.stats.cells_computed, 1 + 2); /* chunk 3 layer 1, chunk 5's cells... */
  CF_CHECK_GE(r.stats.load_failures, 2);
  CF_CHECK_EQ(engine_check(&f.b, &f.w, 3 * f.w.C), 0); /* chunks 0-2 bit-exact, the rest within 1e-4 */
  cf_store_stats_t ss;
  cf_store_get_stats(f.st, &ss);
  CF_CHECK_GT(ss.corrupt_cells, 0);
  ssdfx_free(&f);
}

/* The SSD tier's rate limit holds for streamed reads (the restore takes at least the link's
 * time for its bytes, a lower bound a busy machine cannot break), while the tier-busy time it
 * reports is within the restore's (printed: the disk moved the bytes in a fraction of it). */
static int cancel_after_one(cf_exec_req_t *r, int layers_ready, void *arg) {
  (void)r; (void)layers_ready;
  atomic_store((atomic_int *)arg, 1);
  return 0;
}
static void on_layer_cancel(cf_exec_req_t *r, int n, void *arg) { cancel_after_one(r, n, arg); }

CF_TEST(ssd_stream_respects_rate_limit_and_cancellation) {
  ssdfx_t f;
  double Bps = 8e6; /* 24 x 3 cells of 4 KiB: ~37 ms on this link */
  ssdfx_init(&f, "ssd_rl", 24, Bps);
  cf_exec_req_t r;
  CF_CHECK_OK(restore(&f.w, &f.b, &f.p, &r));
  double bytes = (double)r.stats.bytes_loaded[CF_EXEC_TIER_SSD];
  double took = (r.stats.t_done_ns - r.stats.t_start_ns) * 1e-9;
  double busy = r.stats.load_busy_ns[CF_EXEC_TIER_SSD] * 1e-9;
  printf("    %.0f bytes in %.1f ms (link time %.1f ms), tier busy %.1f ms\n", bytes, took * 1e3,
         bytes / Bps * 1e3, busy * 1e3);
  CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_SSD], 24ull * f.w.L);
  CF_CHECK_MSG(took >= 0.9 * bytes / Bps, "took %.4f s for %.0f bytes at %.0f B/s", took, bytes, Bps);
  /* how small a fraction of `took` the disk needed is this machine's business (printed above);
   * the accounting's bounds are not */
  CF_CHECK_MSG(busy > 0 && busy <= took, "tier busy %.4f s of %.4f s", busy, took);
  CF_CHECK_EQ(engine_check(&f.b, &f.w, f.w.T), 0);
  /* cancelled once layer 1 is ready: the restore stops, reads in flight are drained */
  atomic_int cancel = 0;
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.w.be, 2));
  cf_ratelimit_set(&f.rl, 4e6);
  memset(&r, 0, sizeof r);
  r.n_tokens = f.w.T; r.tokens = f.w.tokens; r.chunk_tokens = f.w.C; r.h = f.p.h;
  r.src = f.p.srcs; r.ref = f.p.refp; r.kv = &f.b.kv; r.blocks = f.b.blocks; r.n_blocks = f.b.nb;
  r.cancel = &cancel; r.on_layer = on_layer_cancel; r.on_layer_arg = &cancel;
  CF_CHECK_ERR(cf_exec_run(&ex, &r, 1), CF_ECANCELED);
  CF_CHECK_EQ(r.err, CF_ECANCELED);
  CF_CHECK_LT(r.stats.cells_loaded[CF_EXEC_TIER_SSD], 24ull * f.w.L);
  CF_CHECK_LT(r.stats.layers_ready, f.w.L);
  ssdfx_free(&f);
}

/* ---------------------------------------------------------------- remote tier */

typedef struct {
  const world_t *w;
  engine_t *e;
  plan_t *p;
  cf_exec_req_t r;
  int rc;
} bg_restore_t;

static void *bg_restore(void *arg) {
  bg_restore_t *b = arg;
  b->rc = restore(b->w, b->e, b->p, &b->r);
  return NULL;
}

/* Two nodes, one Redis: node A saves (its store writes the chunks back to the remote tier), node
 * B — its own empty local store — finds them there and restores them bit-exact through the
 * executor's remote source (pipelined GETs). Then the damage cases on B: a cell deleted, a cell
 * corrupted, and the server killed with SIGKILL in the middle of a rate-limited restore: every
 * such cell is recomputed and the engine still gets exactly the KV of a full recompute. */
CF_TEST(remote_tier_two_nodes_one_redis) {
  if (!rt_have_redis()) { cf_test_skip("redis-server not installed (make deps)"); return; }
  rt_server_t srv;
  CF_CHECK_EQ(rt_standalone(&srv, cf_test_tmpdir(), "redis", NULL), 0);
  char url[64];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", srv.port);
  world_t w;
  world_init(&w, 16, 16 * 10 + 3);
  engine_t a, b;
  engine_init(&a, &w, "rem_a", 8, 1);
  engine_init(&b, &w, "rem_b", 4, 5);
  engine_prefill(&a, &w);
  cf_store_t *sa = open_store_remote(&w, "node_a", 1 << 20, 8 << 20, url);
  cf_store_t *sb = open_store_remote(&w, "node_b", 1 << 20, 8 << 20, url);
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_blocks(sa, &a.kv, w.tokens, w.T, a.blocks, a.nb, 0, &sr));
  CF_CHECK_EQ(sr.new_chunks, 11);
  CF_CHECK_OK(cf_remote_flush(cf_store_remote(sa), 20000));
  cf_remote_stats_t rs;
  cf_remote_get_stats(cf_store_remote(sa), &rs);
  CF_CHECK_EQ(rs.chunks_written, 11);
  /* B's local tiers are empty; lookup_all finds the remote chunks, plain lookup does not */
  cf_store_key_t keys[16];
  cf_store_chain_keys(w.m->fingerprint, w.tokens, 160, 16, keys);
  uint8_t tiers[16];
  CF_CHECK_EQ(cf_store_lookup(sb, keys, 10, NULL), 0);
  CF_CHECK_EQ(cf_store_lookup_all(sb, keys, 10, tiers), 10);
  CF_CHECK_EQ(tiers[9], CF_STORE_TIER_REMOTE);
  /* cf_store_read falls back to the remote tier */
  size_t cb = cf_store_cell_bytes(cf_store_geom(sb));
  uint8_t *cell = malloc(cb);
  int tier = 0;
  CF_CHECK_OK(cf_store_read(sb, &keys[3], 1, 1, cell, cb, &tier));
  CF_CHECK_EQ(tier, CF_STORE_TIER_REMOTE);
  CF_CHECK(memcmp(cell, w.ref.k[1] + (size_t)3 * 16 * w.ref.row, cb / 2) == 0);
  free(cell);

  cf_cellsrc_store_t cs;
  CF_CHECK_OK(cf_cellsrc_store_init(&cs, sb, NULL, NULL));
  plan_t p;
  plan_prepare(&p, &cs, &w);
  CF_CHECK_EQ(p.found, 10);
  for (int c = 0; c < 10; c++) CF_CHECK_EQ(p.tiers[c], CF_STORE_TIER_REMOTE);
  cf_exec_req_t r;
  CF_CHECK_OK(restore(&w, &b, &p, &r));
  CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_REMOTE], 10ull * w.L);
  CF_CHECK_EQ(r.stats.cells_computed, w.L); /* the 3-token tail */
  CF_CHECK_EQ(r.stats.load_failures, 0);
  CF_CHECK_EQ(engine_check(&b, &w, 160), 0);

  /* promotion: every chunk read whole and verified was saved into B's local tiers (by the
   * store's promoter thread), not written back to the remote tier (it holds them) */
  CF_CHECK_OK(cf_store_promote_flush(sb, 60000));
  CF_CHECK_EQ(cf_store_lookup(sb, keys, 10, tiers), 10);
  CF_CHECK_OK(cf_remote_flush(cf_store_remote(sb), 20000));
  cf_remote_get_stats(cf_store_remote(sb), &rs);
  CF_CHECK_EQ(rs.promoted, 10);
  CF_CHECK_EQ(rs.promote_failed, 0);
  CF_CHECK_EQ(rs.chunks_written + rs.put_skipped + rs.queue_chunks, 0);
  /* the next restore on B reads them locally, bit-exact */
  {
    cf_cellsrc_store_t cl;
    CF_CHECK_OK(cf_cellsrc_store_init(&cl, sb, NULL, NULL));
    plan_t pl;
    plan_prepare(&pl, &cl, &w);
    CF_CHECK_EQ(pl.found, 10);
    for (int c = 0; c < 10; c++) CF_CHECK(pl.tiers[c] == CF_STORE_TIER_CPU || pl.tiers[c] == CF_STORE_TIER_SSD);
    for (int l = 0; l < w.L; l++) {
      memset(b.kv.k[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
      memset(b.kv.v[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
    }
    CF_CHECK_OK(restore(&w, &b, &pl, &r));
    CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_REMOTE], 0);
    CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_CPU] + r.stats.cells_loaded[CF_EXEC_TIER_SSD], 10ull * w.L);
    CF_CHECK_EQ(engine_check(&b, &w, 160), 0);
    cf_cellsrc_store_unprepare(&cl, pl.refs, pl.found);
    cf_cellsrc_store_close(&cl);
  }
  /* a budget below one chunk promotes nothing (counted) and the restore is the same */
  {
    cf_store_t *sd = open_store_promo(&w, "node_d", 1 << 20, 8 << 20, url, 1);
    cf_cellsrc_store_t cd;
    CF_CHECK_OK(cf_cellsrc_store_init(&cd, sd, NULL, NULL));
    plan_t pd;
    plan_prepare(&pd, &cd, &w);
    CF_CHECK_EQ(pd.found, 10);
    CF_CHECK_OK(restore(&w, &b, &pd, &r));
    CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_REMOTE], 10ull * w.L);
    CF_CHECK_EQ(engine_check(&b, &w, 160), 0);
    CF_CHECK_OK(cf_store_promote_flush(sd, 60000));
    cf_remote_get_stats(cf_store_remote(sd), &rs);
    CF_CHECK_EQ(rs.promoted, 0);
    CF_CHECK_EQ(rs.promote_skipped, 10);
    CF_CHECK_EQ(cf_store_lookup(sd, keys, 10, NULL), 0);
    cf_cellsrc_store_unprepare(&cd, pd.refs, pd.found);
    cf_cellsrc_store_close(&cd);
    cf_store_close(sd);
  }

  /* damage behind the tier's back: chunk 2's layer-1 cell deleted, chunk 6's layer 0 corrupted;
   * node C restores (recomputing those cells) and promotes the other 8 chunks only */
  cf_store_t *sc = open_store_remote(&w, "node_c", 1 << 20, 8 << 20, url);
  cf_cellsrc_store_t csc;
  CF_CHECK_OK(cf_cellsrc_store_init(&csc, sc, NULL, NULL));
  char key[200];
  size_t kl = cf_remote_key(cf_store_remote(sb), &keys[2], 1, key, sizeof key);
  redisReply *x = rt_cmd(&srv, "DEL %b", key, kl);
  if (x) freeReplyObject(x);
  kl = cf_remote_key(cf_store_remote(sb), &keys[6], 0, key, sizeof key);
  x = rt_cmd(&srv, "SETRANGE %b 200 %b", key, kl, "XYZ", (size_t)3);
  if (x) freeReplyObject(x);
  for (int l = 0; l < w.L; l++) {
    memset(b.kv.k[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
    memset(b.kv.v[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
  }
  plan_t pc;
  plan_prepare(&pc, &csc, &w);
  CF_CHECK_EQ(pc.found, 10);
  CF_CHECK_OK(restore(&w, &b, &pc, &r));
  CF_CHECK_GE(r.stats.load_failures, 2);
  CF_CHECK_EQ(engine_check(&b, &w, 0), 0); /* recomputed cells within 1e-4, loaded ones exact */
  cf_remote_get_stats(cf_store_remote(sc), &rs);
  CF_CHECK_GE(rs.cells_corrupt, 1);
  CF_CHECK_GE(rs.cells_missing, 1);
  cf_cellsrc_store_unprepare(&csc, pc.refs, pc.found);
  cf_cellsrc_store_close(&csc);
  CF_CHECK_OK(cf_store_promote_flush(sc, 60000));
  cf_remote_get_stats(cf_store_remote(sc), &rs);
  CF_CHECK_EQ(rs.promoted, 8);
  for (int c = 0; c < 10; c++)
    CF_CHECK_EQ(cf_store_lookup(sc, &keys[c], 1, NULL), (size_t)(c != 2 && c != 6));
  cf_store_close(sc);

  /* SIGKILL of the server mid-restore (loads held to 256 KB/s so the restore is still loading) */
  cf_ratelimit_t rl;
  CF_CHECK_OK(cf_ratelimit_init(&rl, 256e3, 0));
  cs.remote.limit = &rl;
  cs.remote_depth = 2;
  for (int l = 0; l < w.L; l++) {
    memset(b.kv.k[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
    memset(b.kv.v[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
  }
  bg_restore_t bg = {&w, &b, &p, {0}, 0};
  pthread_t th;
  pthread_create(&th, NULL, bg_restore, &bg);
  rt_sleep_ms(30);
  rt_stop(&srv);
  pthread_join(th, NULL);
  CF_CHECK_OK(bg.rc);
  CF_CHECK_EQ(engine_check(&b, &w, 0), 0);
  printf("    killed mid-restore: %llu cells loaded, %llu computed, %llu load failures\n",
         (unsigned long long)bg.r.stats.cells_loaded[CF_EXEC_TIER_REMOTE],
         (unsigned long long)bg.r.stats.cells_computed, (unsigned long long)bg.r.stats.load_failures);
  cf_cellsrc_store_unprepare(&cs, p.refs, p.found);
  cf_cellsrc_store_close(&cs);
  /* with the server gone, B restores the promoted prefix from its local tiers, bit-exact */
  CF_CHECK_EQ(cf_store_lookup_all(sb, keys, 10, tiers), 10);
  for (int c = 0; c < 10; c++) CF_CHECK(tiers[c] != CF_STORE_TIER_REMOTE);
  {
    cf_cellsrc_store_t cl;
    CF_CHECK_OK(cf_cellsrc_store_init(&cl, sb, NULL, NULL));
    plan_t pl;
    plan_prepare(&pl, &cl, &w);
    CF_CHECK_EQ(pl.found, 10);
    for (int l = 0; l < w.L; l++) {
      memset(b.kv.k[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
      memset(b.kv.v[l], 0xff, cf_kv_layout_plane_bytes(&b.kv.layout));
    }
    CF_CHECK_OK(restore(&w, &b, &pl, &r));
    CF_CHECK_EQ(r.stats.cells_loaded[CF_EXEC_TIER_REMOTE], 0);
    CF_CHECK_EQ(r.stats.load_failures, 0);
    CF_CHECK_EQ(engine_check(&b, &w, 160), 0);
    cf_cellsrc_store_unprepare(&cl, pl.refs, pl.found);
    cf_cellsrc_store_close(&cl);
  }
  cf_ratelimit_close(&rl);
  cf_store_close(sa);
  cf_store_close(sb);
  cf_kvmap_close(&a.kv); cf_kvmap_close(&b.kv);
  world_free(&w);
}

/* TP shards save into whole cells: shard 0's save alone stores nothing (pending), shard 1's
 * completes the rows and stores them; a whole-head engine then restores them bit-exact (each
 * shard's heads came from its own blocks). A durable shard save makes the completed chunks
 * durable; the pending cap drops the oldest prefix rather than store anything partial. */
CF_TEST(tp_shard_saves_assemble_whole_cells) {
  world_t w;
  world_init(&w, 16, 16 * 4 + 5);
  int H = w.m->cfg.n_kv_heads, hd = w.m->cfg.head_dim;
  CF_CHECK_GE(H, 2);
  int split = H / 2;
  /* two shard engines: heads [0, split) and [split, H), each its own buffer and block table */
  cf_kvmap_t sh[2];
  uint8_t *mem[2];
  int32_t blocks[2][64];
  int bs = 8, nb = (w.T + bs - 1) / bs;
  for (int s = 0; s < 2; s++) {
    cf_kv_layout_t lay;
    CF_CHECK_OK(cf_kv_layout_init(&lay, w.L, nb + 2, bs, s ? H - split : split, hd, CF_DT_F32));
    lay.head0 = s ? split : 0;
    lay.model_heads = H;
    size_t plane = cf_kv_layout_plane_bytes(&lay);
    mem[s] = calloc(1, 2 * plane * w.L);
    uint8_t *kp[8], *vp[8];
    for (int l = 0; l < w.L; l++) { kp[l] = mem[s] + 2 * plane * l; vp[l] = kp[l] + plane; }
    CF_CHECK_OK(cf_kvmap_view(&sh[s], &lay, kp, vp));
    for (int i = 0; i < nb; i++) blocks[s][i] = (i * 3 + s) % (nb + 2);
    CF_CHECK_OK(cf_kvmap_check_blocks(&lay, blocks[s], nb));
    for (int l = 0; l < w.L; l++) cf_kvmap_scatter(&sh[s], l, blocks[s], 0, w.T, w.ref.k[l], w.ref.v[l]);
  }
  cf_store_t *st = open_store(&w, "store_tp", 1 << 20, 8 << 20);
  cf_save_group_t *g;
  CF_CHECK_OK(cf_save_group_create(&g, w.L, H, hd, CF_DT_F32, 64 << 20));
  cf_save_result_t sr;
  CF_CHECK_OK(cf_save_shard(g, st, &sh[0], w.tokens, w.T, blocks[0], nb, 0, &sr));
  CF_CHECK_EQ(sr.pending_tokens, (uint32_t)w.T);
  CF_CHECK_EQ(sr.saved_tokens, 0);
  cf_store_key_t keys[8];
  cf_store_chain_keys(w.m->fingerprint, w.tokens, 4 * 16, 16, keys);
  CF_CHECK_EQ(cf_store_lookup(st, keys, 4, NULL), 0); /* nothing partial stored */
  int np;
  CF_CHECK_GT(cf_save_group_pending(g, &np), 0);
  CF_CHECK_EQ(np, 1);
  /* the same shard again: still pending (its heads only) */
  CF_CHECK_OK(cf_save_shard(g, st, &sh[0], w.tokens, w.T, blocks[0], nb, 0, &sr));
  CF_CHECK_EQ(sr.pending_tokens, (uint32_t)w.T);
  CF_CHECK_OK(cf_save_shard(g, st, &sh[1], w.tokens, w.T, blocks[1], nb, CF_STORE_SAVE_DURABLE, &sr));
  CF_CHECK_EQ(sr.pending_tokens, 0);
  CF_CHECK_EQ(sr.saved_tokens, (uint32_t)w.T);
  CF_CHECK_EQ(sr.new_chunks, 5);
  CF_CHECK_EQ(sr.durable, 1);
  CF_CHECK_EQ(cf_save_group_pending(g, &np), 0);
  CF_CHECK_EQ(np, 0);
  CF_CHECK_EQ(cf_store_lookup(st, keys, 4, NULL), 4);
  /* a whole-head engine restores the assembled cells bit-exact */
  engine_t b;
  engine_init(&b, &w, "eng_tp_b", 4, 2);
  cf_cellsrc_store_t cs;
  CF_CHECK_OK(cf_cellsrc_store_init(&cs, st, NULL, NULL));
  plan_t p;
  plan_prepare(&p, &cs, &w);
  CF_CHECK_EQ(p.found, 4);
  cf_exec_req_t r;
  CF_CHECK_OK(restore(&w, &b, &p, &r));
  cf_cellsrc_store_unprepare(&cs, p.refs, p.found);
  cf_cellsrc_store_close(&cs);
  CF_CHECK_EQ(engine_check(&b, &w, 64), 0);
  /* the cap: a second prefix pushes the first (never completed) out */
  cf_save_group_free(g);
  size_t one = (size_t)w.L * 2 * w.T * H * hd * 4;
  CF_CHECK_OK(cf_save_group_create(&g, w.L, H, hd, CF_DT_F32, one + one / 2));
  CF_CHECK_OK(cf_save_shard(g, st, &sh[0], w.tokens, w.T, blocks[0], nb, 0, &sr));
  int32_t other[128];
  memcpy(other, w.tokens, sizeof(int32_t) * w.T);
  other[0] ^= 1;
  CF_CHECK_OK(cf_save_shard(g, st, &sh[0], other, w.T, blocks[0], nb, 0, &sr));
  CF_CHECK_EQ(cf_save_group_pending(g, &np), one);
  CF_CHECK_EQ(np, 1);
  /* shard 1 of the dropped prefix: pending again (shard 0's half is gone), nothing stored */
  CF_CHECK_OK(cf_save_shard(g, st, &sh[1], w.tokens, w.T, blocks[1], nb, 0, &sr));
  CF_CHECK_EQ(sr.pending_tokens, (uint32_t)w.T);
  /* an engine holding every head completes a prefix on its own */
  engine_prefill(&b, &w);
  CF_CHECK_OK(cf_save_shard(g, st, &b.kv, other, w.T, b.blocks, b.nb, 0, &sr));
  CF_CHECK_EQ(sr.pending_tokens, 0);
  CF_CHECK_EQ(sr.saved_tokens, (uint32_t)w.T);
  cf_save_group_free(g);
  cf_store_close(st);
  for (int s = 0; s < 2; s++) { cf_kvmap_close(&sh[s]); free(mem[s]); }
  cf_kvmap_close(&b.kv);
  world_free(&w);
}
