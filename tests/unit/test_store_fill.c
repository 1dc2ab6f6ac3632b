/* `cacheflowctl store fill` end to end: run the real command on a generated model, then read every
 * chunk back from the store and compare it with the KV the engine computes for the same tokens
 * (fill draws token ids as splitmix64(seed) % vocab, in order, one prefix after the other). */
#include <stdlib.h>
#include <sys/wait.h>

#include "cf_test.h"
#include "model/cf_backend.h"
#include "model/cf_model.h"
#include "store/cf_store.h"
#include "unit/store_testlib.h"

static int run(const char *cmd) {
  int s = system(cmd);
  return WIFEXITED(s) ? WEXITSTATUS(s) : -1;
}

CF_TEST(store_fill_saves_the_engines_kv) {
  const char *b = getenv("BUILD") ? getenv("BUILD") : "build";
  const char *t = cf_test_tmpdir();
  char cmd[4096], mdir[1100], sdir[1100];
  snprintf(mdir, sizeof mdir, "%s/model", t);
  snprintf(sdir, sizeof sdir, "%s/store", t);
  snprintf(cmd, sizeof cmd, "%s/cacheflowctl gen-model --out %s --preset tiny >/dev/null", b, mdir);
  if (run(cmd) != 0) CF_SKIP("cacheflowctl gen-model unavailable (run from the repository root)");
  const int P = 2, T = 100, C = 32;
  snprintf(cmd, sizeof cmd,
           "%s/cacheflowctl store fill --dir %s --model %s --prefixes %d --tokens %d --seed 7 "
           "--chunk %d >/dev/null", b, sdir, mdir, P, T, C);
  CF_CHECK_EQ(run(cmd), 0);
  snprintf(cmd, sizeof cmd, "%s/cacheflowctl store verify --dir %s >/dev/null", b, sdir);
  CF_CHECK_EQ(run(cmd), 0);

  cf_model_t *m;
  CF_CHECK_OK(cf_model_load(mdir, &m));
  if (!m) return;
  cf_backend_t *be;
  CF_CHECK_OK(cf_backend_cpu_create(m, 0, &be));
  const int L = m->cfg.n_layers, nkv = m->cfg.n_kv_heads, hd = m->cfg.head_dim;
  cf_store_geom_t g;
  memset(&g, 0, sizeof g);
  memcpy(g.fingerprint, m->fingerprint, 16);
  g.dtype_size = 4;
  g.chunk_tokens = C;
  g.n_layers = (uint32_t)L;
  g.n_kv_heads = (uint32_t)nkv;
  g.head_dim = (uint32_t)hd;
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 0;
  c.ssd_bytes = 64 << 20;
  cf_store_t *st;
  CF_CHECK_OK(cf_store_open(sdir, &g, &c, &st));
  if (!st) return;
  size_t row = (size_t)nkv * hd;
  float *k[64], *v[64];
  for (int l = 0; l < L; l++) { k[l] = malloc(4 * row * T); v[l] = malloc(4 * row * T); }
  int32_t tok[T];
  cf_store_key_t keys[8];
  size_t cb = cf_store_cell_bytes(&g);
  float *got = aligned_alloc(4096, (cb * L + 4095) / 4096 * 4096);
  uint64_t rng = 7;
  int chunks = 0;
  double maxdiff = 0;
  for (int p = 0; p < P; p++) {
    for (int i = 0; i < T; i++) { tok[i] = (int32_t)(st_mix(rng) % (uint64_t)m->cfg.vocab); rng += 0x9e3779b97f4a7c15ULL; }
    cf_fwd_args_t a = {.l0 = 0, .l1 = L, .t0 = 0, .t1 = T, .tokens = tok, .k = k, .v = v};
    CF_CHECK_OK(cf_backend_forward(be, &a));
    size_t nk = cf_store_chain_keys_partial(g.fingerprint, tok, T, C, keys);
    CF_CHECK_EQ(nk, 4); /* 3 full chunks + a partial one of 4 tokens */
    for (size_t ci = 0; ci < nk; ci++) {
      int nt = ci * C + C <= (size_t)T ? C : T - (int)(ci * C);
      int tier;
      int rc = cf_store_read(st, &keys[ci], 0, (uint32_t)L, got, cb * L, &tier);
      CF_CHECK_MSG(rc == 0, "prefix %d chunk %zu: %s", p, ci, cf_err_name(rc));
      if (rc) continue;
      chunks++;
      for (int l = 0; l < L; l++) {
        const float *cell = got + (size_t)l * 2 * nt * row;
        for (size_t j = 0; j < (size_t)nt * row; j++) {
          double dk = fabs(cell[j] - k[l][ci * C * row + j]);
          double dv = fabs(cell[(size_t)nt * row + j] - v[l][ci * C * row + j]);
          if (dk > maxdiff) maxdiff = dk;
          if (dv > maxdiff) maxdiff = dv;
        }
      }
    }
  }
  CF_CHECK_EQ(chunks, P * 4);
  CF_CHECK_LE(maxdiff, 1e-5);
  /* the same fill again saves nothing new */
  cf_store_close(st);
  snprintf(cmd, sizeof cmd,
           "%s/cacheflowctl store fill --dir %s --model %s --prefixes %d --tokens %d --seed 7 "
           "--chunk %d | grep -q '0 chunks saved, 8 already present'", b, sdir, mdir, P, T, C);
  CF_CHECK_EQ(run(cmd), 0);
  for (int l = 0; l < L; l++) { free(k[l]); free(v[l]); }
  free(got);
  cf_backend_free(be);
  cf_model_free(m);
}
