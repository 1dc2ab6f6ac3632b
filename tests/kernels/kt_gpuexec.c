/* kt_gpuexec — lib/exec's GPU data path (cf_exec_gpu) on a real GPU, in-process, against the
 * CPU data path (cf_exec_cpu) running the SAME scheduler on the same plans.
 *
 * Test (default): a generated model (demo shape, 4 layers, bf16 KV), a prefix of 13 full
 * chunks + a partial tail, stored cells = the CPU backend's KV rounded to bf16 in pinned host
 * memory (what a pinned CPU tier holds). For every policy (lib/sched plans, with the plan's
 * link order and compute ops) and once more with injected load failures (evicted / corrupt
 * cells: recomputed), both executors restore into poisoned engine buffers: the CPU one into a
 * cf_kvmap, the GPU one into device blocks (vLLM layout, shuffled block table) wrapped with
 * cf_gpu_kv_wrap. Checked per cell: loaded cells bit-exact and equal to the stored bytes;
 * computed cells within bf16 tolerance of the CPU executor's (relative L2 <= 2e-2); no poison in
 * the restored rows; readiness: layer_ready_ns in order, the counter at L and DONE, the GPU gate
 * (slot.gate) at L, every layer's gate published (cf_gpu_ready); stats add up.
 *
 * --bench [T]: restore a T-token prefix (default 32768) on 4 Llama-3-8B-shaped layers (hidden
 * 4096, 32/8 heads, head_dim 128, MLP 14336, bf16) with each policy from pinned host cells:
 * executed time vs the planner's prediction (cf_sim on the cost model profiled on this GPU and
 * the measured pinned H2D rate) and vs the lower bound (cf_bound), and vs load-only and
 * recompute-only (the LOAD and RECOMPUTE policies, same run). Lines "RESULT gpuexec_<policy>".
 *
 * UNVERIFIED until a device session runs it (tests/device/run.sh step kt_gpuexec / bench-gpuexec).
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "exec/cf_exec.h"
#include "exec/cf_exec_gpu.h"
#include "exec/cf_exec_plan.h"
#include "exec/cf_profile.h"
#include "gpu/cf_gpu_kv.h"
#include "gpu/cf_gpu_load.h"
#include "gpu/cf_gpu_ready.h"
#include "kernels/cf_probe.h"
#include "model/cf_backend.h"
#include "model/cf_model_synth.h"
#include "sched/cf_bound.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "util/cf_err.h"

#include "tests/kernels/kt_check.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- a restore setup */

typedef struct {
  cf_model_t *m;
  cf_backend_t *cpu, *gpu;
  int L, C, T, n_chunks, n_full;
  size_t row;
  int32_t *tokens;
  uint16_t *cells;          /* pinned [n_full][L][2][C][row] bf16 */
  int32_t *blocks;
  int n_blocks, pool, bs;
  cf_kv_layout_t lay;
  uint8_t *dbuf;            /* device: per layer [2][pool][bs][row] bf16 */
  uint8_t **dk, **dv;
  cf_gpu_kv_t gkv;
  cf_kvmap_t hkv;           /* the CPU engine */
  cf_exec_gpu_t gx;
  cf_ready_t rd;
  cf_gpu_ready_t gr;
} fx_t;

static uint64_t g_rng = 0x1234567;
static unsigned rnd(void) {
  g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
  return (unsigned)(g_rng >> 11);
}

/* Stored cells from `kv_be`'s full prefill (fp32 KV rounded to bf16). */
static int fx_cells(fx_t *f, cf_backend_t *kv_be) {
  size_t lt = (size_t)f->T * f->row;
  float *k = malloc(sizeof(float) * lt * f->L), *v = malloc(sizeof(float) * lt * f->L);
  float **kp = malloc(sizeof(float *) * f->L), **vp = malloc(sizeof(float *) * f->L);
  if (!k || !v || !kp || !vp) return CF_ENOMEM;
  for (int l = 0; l < f->L; l++) { kp[l] = k + (size_t)l * lt; vp[l] = v + (size_t)l * lt; }
  cf_fwd_args_t a = {.l0 = 0, .l1 = f->L, .t0 = 0, .t1 = f->T, .tokens = f->tokens, .k = kp, .v = vp};
  int rc = cf_backend_forward(kv_be, &a);
  size_t cell = (size_t)f->C * f->row;
  for (int c = 0; !rc && c < f->n_full; c++)
    for (int l = 0; l < f->L; l++) {
      uint16_t *d = f->cells + ((size_t)c * f->L + l) * 2 * cell;
      cf_dtype_from_f32(CF_DT_BF16, kp[l] + (size_t)c * cell, d, cell);
      cf_dtype_from_f32(CF_DT_BF16, vp[l] + (size_t)c * cell, d + cell, cell);
    }
  free(k); free(v); free(kp); free(vp);
  return rc;
}

static int fx_init(fx_t *f, const cf_model_config_t *mc, int C, int n_full, int tail, int bs, int with_cpu,
                   cf_gpu_load_mode_t mode) {
  memset(f, 0, sizeof *f);
  cf_synth_opts_t so = {.seed = 7, .std = 0.02f, .norm_jitter = 0.1f};
  if (!RC(cf_model_synth(mc, &so, &f->m))) return -1;
  if (with_cpu && !RC(cf_backend_cpu_create(f->m, 8, &f->cpu))) return -1;
  if (!RC(cf_backend_cuda_create(f->m, 0, &f->gpu))) return -1;
  f->L = mc->n_layers; f->C = C; f->n_full = n_full; f->T = n_full * C + tail;
  f->n_chunks = (f->T + C - 1) / C;
  f->row = (size_t)mc->n_kv_heads * mc->head_dim;
  f->bs = bs;
  f->tokens = malloc(sizeof(int32_t) * f->T);
  for (int t = 0; t < f->T; t++) f->tokens[t] = (int32_t)(rnd() % (unsigned)mc->vocab);
  size_t cells_bytes = (size_t)n_full * f->L * 2 * C * f->row * 2;
  f->cells = cf_gpu_pinned_alloc(cells_bytes, NULL);
  if (!f->cells) { check(0, "pinned cells (%zu bytes)", cells_bytes); return -1; }
  if (!RC(fx_cells(f, with_cpu ? f->cpu : f->gpu))) return -1;
  f->n_blocks = (f->T + bs - 1) / bs;
  f->pool = f->n_blocks * 2 + 3;
  if (!RC(cf_kv_layout_init(&f->lay, f->L, f->pool, bs, mc->n_kv_heads, mc->head_dim, CF_DT_BF16))) return -1;
  int *perm = malloc(sizeof(int) * f->pool);
  for (int i = 0; i < f->pool; i++) perm[i] = i;
  for (int i = f->pool - 1; i > 0; i--) { int j = (int)(rnd() % (unsigned)(i + 1)), x = perm[i]; perm[i] = perm[j]; perm[j] = x; }
  f->blocks = malloc(sizeof(int32_t) * f->n_blocks);
  for (int i = 0; i < f->n_blocks; i++) f->blocks[i] = perm[i];
  free(perm);
  size_t plane = cf_kv_layout_plane_bytes(&f->lay);
  CU(cudaMalloc((void **)&f->dbuf, plane * 2 * f->L));
  f->dk = malloc(sizeof(uint8_t *) * f->L); f->dv = malloc(sizeof(uint8_t *) * f->L);
  for (int l = 0; l < f->L; l++) { f->dk[l] = f->dbuf + plane * 2 * l; f->dv[l] = f->dk[l] + plane; }
  if (!RC(cf_gpu_kv_wrap(&f->gkv, 0, &f->lay, f->dk, f->dv))) return -1;
  if (with_cpu) {
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/kt_gpuexec-%d.kv", (int)getpid());
    unlink(path);
    if (!RC(cf_kvmap_create(&f->hkv, path, &f->lay))) return -1;
  }
  if (!RC(cf_exec_gpu_init(&f->gx, f->gpu, 0, mode))) return -1;
  char rpath[256];
  snprintf(rpath, sizeof rpath, "/dev/shm/kt_gpuexec-%d.ready", (int)getpid());
  unlink(rpath);
  if (!RC(cf_ready_create(&f->rd, rpath, 2))) return -1;
  if (!RC(cf_gpu_ready_init(&f->gr, &f->rd, 0))) return -1;
  return 0;
}

static void fx_free(fx_t *f) {
  cf_gpu_ready_close(&f->gr);
  cf_ready_close(&f->rd);
  cf_exec_gpu_close(&f->gx);
  cf_gpu_kv_close(&f->gkv);
  if (f->hkv.k) cf_kvmap_close(&f->hkv);
  if (f->dbuf) cudaFree(f->dbuf);
  free(f->dk); free(f->dv);
  cf_gpu_pinned_free(f->cells, 0, NULL);
  free(f->tokens); free(f->blocks);
  if (f->cpu) cf_backend_free(f->cpu);
  if (f->gpu) cf_backend_free(f->gpu);
  if (f->m) cf_model_synth_free(f->m);
}

/* A plan of `policy` for the stored prefix (chunks past it: h = L), its link order and ops. */
typedef struct {
  int *h;
  uint32_t *rank;
  cf_exec_cop_t *cops;
  int n_cops;
  double predicted_s, bound_s;
} plan_t;

static int make_plan(const fx_t *f, const cf_sched_cost_t *cost, cf_policy_t pol, plan_t *p) {
  memset(p, 0, sizeof *p);
  cf_sched_req_t rq = {.prefix_tokens = (int64_t)f->n_full * f->C, .device = 0};
  cf_sched_input_t in = {.cost = *cost, .reqs = &rq, .n_reqs = 1, .refine_evals = -1};
  cf_sched_plan_t plan;
  cf_sched_plan_init(&plan);
  int rc = cf_sched_plan(&in, pol, &plan);
  if (rc) return rc;
  p->h = malloc(sizeof(int) * f->n_chunks);
  for (int c = 0; c < f->n_chunks; c++) p->h[c] = c < plan.n_chunks[0] ? plan.h[plan.h_off[0] + c] : f->L;
  p->rank = cf_exec_plan_load_rank(&plan, 0, f->n_chunks, f->L);
  p->cops = cf_exec_plan_cops(&plan, 0, &p->n_cops);
  cf_sim_result_t sim;
  cf_sim_result_init(&sim);
  if (!cf_sim_run(&in, &plan, &sim)) p->predicted_s = sim.makespan_s;
  cf_sim_result_free(&sim);
  p->bound_s = cf_bound(&in);
  cf_sched_plan_free(&plan);
  return 0;
}

static void plan_free(plan_t *p) { free(p->h); free(p->rank); free(p->cops); }

static void fx_req(fx_t *f, cf_exec_req_t *r, const plan_t *p, cf_cellsrc_t **srcs, void **refs, int gpu) {
  memset(r, 0, sizeof *r);
  for (int c = 0; c < f->n_chunks; c++) { srcs[c] = c < f->n_full ? srcs[0] : NULL; refs[c] = CF_CELLSRC_REF(c); }
  r->n_tokens = f->T; r->tokens = f->tokens; r->chunk_tokens = f->C; r->h = p->h;
  r->src = srcs; r->ref = refs; r->load_rank = p->rank; r->cops = p->cops; r->n_cops = p->n_cops;
  r->blocks = f->blocks; r->n_blocks = f->n_blocks;
  r->ready = &f->rd; r->ready_slot = 1; r->req_id = 77;
  if (gpu) { r->gkv = &f->gkv; r->gready = &f->gr; }
  else r->kv = &f->hkv;
}

/* ---------------------------------------------------------------- the comparison test */

static double rel_l2(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) { double d = (double)a[i] - b[i]; num += d * d; den += (double)b[i] * b[i]; }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void compare_one(fx_t *f, cf_exec_t *cx, cf_exec_t *gxe, const plan_t *p, const int *fail, const char *what) {
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_BF16, f->cells, f->n_full, f->L, f->C, f->row, fail, NULL);
  cf_cellsrc_t **srcs = malloc(sizeof(void *) * f->n_chunks);
  void **refs = malloc(sizeof(void *) * f->n_chunks);
  srcs[0] = &mem.src;
  /* CPU executor (reference) */
  for (int l = 0; l < f->L; l++) {
    memset(f->hkv.k[l], 0xff, cf_kv_layout_plane_bytes(&f->lay));
    memset(f->hkv.v[l], 0xff, cf_kv_layout_plane_bytes(&f->lay));
  }
  cf_exec_req_t rc_, rg;
  fx_req(f, &rc_, p, srcs, refs, 0);
  int64_t *lr = calloc((size_t)f->L, sizeof(int64_t));
  check(RC(cf_exec_run(cx, &rc_, 1)), "%s: CPU executor", what);
  /* GPU executor */
  CU(cudaMemset(f->dbuf, 0xff, cf_kv_layout_plane_bytes(&f->lay) * 2 * f->L));
  CU(cudaDeviceSynchronize());
  fx_req(f, &rg, p, srcs, refs, 1);
  rg.layer_ready_ns = lr;
  double t0 = now_s();
  int ok = RC(cf_exec_run(gxe, &rg, 1));
  double dt = now_s() - t0;
  check(ok, "%s: GPU executor (%.1f ms, %llu loaded, %llu computed, %llu load failures)", what, dt * 1e3,
        (unsigned long long)rg.stats.cells_loaded[0], (unsigned long long)rg.stats.cells_computed,
        (unsigned long long)rg.stats.load_failures);
  /* the engine's blocks back to the host, compared cell by cell */
  size_t plane = cf_kv_layout_plane_bytes(&f->lay);
  uint8_t *hb = malloc(plane * 2 * f->L);
  CU(cudaMemcpy(hb, f->dbuf, plane * 2 * f->L, cudaMemcpyDeviceToHost));
  cf_kvmap_t gview;
  uint8_t **hk = malloc(sizeof(void *) * f->L), **hv = malloc(sizeof(void *) * f->L);
  for (int l = 0; l < f->L; l++) { hk[l] = hb + plane * 2 * l; hv[l] = hk[l] + plane; }
  RC(cf_kvmap_view(&gview, &f->lay, hk, hv));
  size_t cell = (size_t)f->C * f->row;
  uint16_t *ak = malloc(cell * 2), *av = malloc(cell * 2), *bk = malloc(cell * 2), *bv = malloc(cell * 2);
  float *fa = malloc(cell * 2 * 4), *fb = malloc(cell * 2 * 4);
  int bad_loaded = 0, bad_computed = 0, poison = 0, n_loaded = 0;
  double worst = 0;
  for (int c = 0; c < f->n_chunks; c++)
    for (int l = 0; l < f->L; l++) {
      int a0 = c * f->C, a1 = a0 + f->C < f->T ? a0 + f->C : f->T;
      size_t n = (size_t)(a1 - a0) * f->row;
      cf_kvmap_gather(&gview, l, f->blocks, a0, a1, ak, av);
      cf_kvmap_gather(&f->hkv, l, f->blocks, a0, a1, bk, bv);
      for (size_t i = 0; i < n; i++) poison += ak[i] == 0xffff || av[i] == 0xffff;
      /* loaded by both executors: the stored bytes, bit for bit. With failures, a chunk is
       * computed up to its highest failed layer; cells below it that a loader had already
       * brought keep their loaded bytes (a race), so only cells above must be loaded. */
      int top = -1;
      for (int l2 = 0; fail && c < f->n_full && l2 < f->L; l2++) if (fail[c * f->L + l2]) top = l2;
      int loaded = c < f->n_full && l >= p->h[c] && l > top;
      if (loaded) {
        const uint16_t *st = f->cells + ((size_t)c * f->L + l) * 2 * cell;
        n_loaded++;
        if (memcmp(ak, st, n * 2) || memcmp(av, st + cell, n * 2) || memcmp(bk, st, n * 2)) bad_loaded++;
      } else {
        cf_dtype_to_f32(CF_DT_BF16, ak, fa, n); cf_dtype_to_f32(CF_DT_BF16, av, fa + n, n);
        cf_dtype_to_f32(CF_DT_BF16, bk, fb, n); cf_dtype_to_f32(CF_DT_BF16, bv, fb + n, n);
        double e = rel_l2(fa, fb, 2 * n);
        if (e > worst) worst = e;
        if (!(e <= 2e-2)) { if (bad_computed < 3) printf("    %s: computed cell (%d, %d) rel L2 %.3g\n", what, c, l, e); bad_computed++; }
      }
    }
  check(poison == 0, "%s: no poison left in the restored rows (%d)", what, poison);
  check(bad_loaded == 0, "%s: %d loaded cells bit-exact = stored bytes (%d wrong)", what, n_loaded, bad_loaded);
  check(bad_computed == 0, "%s: computed cells within bf16 tolerance of the CPU executor (worst rel L2 %.3g)", what, worst);
  /* with failures, which cells below a failed one were loaded first is a race: counts differ */
  check(rg.stats.cells_loaded[0] + rg.stats.cells_computed == (uint64_t)f->n_chunks * f->L &&
        (fail || rg.stats.cells_loaded[0] == rc_.stats.cells_loaded[0]),
        "%s: stats: every cell once (%llu loaded, CPU executor %llu)", what,
        (unsigned long long)rg.stats.cells_loaded[0], (unsigned long long)rc_.stats.cells_loaded[0]);
  int order = 1;
  for (int l = 1; l < f->L; l++) order &= lr[l - 1] <= lr[l] && lr[l] > 0;
  check(order, "%s: layers became ready in order", what);
  uint64_t layers = 0;
  int wr = cf_ready_wait(&f->rd, 1, (uint64_t)f->L, 5000000000LL, &layers);
  CU(cudaDeviceSynchronize()); /* the gate's host callbacks ran */
  check(wr == 0 && layers == (uint64_t)f->L && atomic_load(&f->rd.slots[1].gate) == (uint64_t)f->L &&
        atomic_load(&f->rd.slots[1].status) == CF_READY_DONE,
        "%s: readiness: counter %llu, gate %llu (want %d), status DONE", what, (unsigned long long)layers,
        (unsigned long long)atomic_load(&f->rd.slots[1].gate), f->L);
  free(ak); free(av); free(bk); free(bv); free(fa); free(fb); free(hk); free(hv); free(hb); free(lr);
  cf_kvmap_close(&gview);
  free(srcs); free(refs);
}

static void test(void) {
  cf_model_config_t mc;
  cf_synth_preset("demo", &mc);
  mc.n_layers = 4;
  const char *modes[] = {"staged", "zerocopy", "arena"};
  for (int mode = 0; mode < 3; mode++) {
    fx_t f;
    if (fx_init(&f, &mc, 32, 13, 20, 16, 1, (cf_gpu_load_mode_t)mode)) { fx_free(&f); return; }
    cf_exec_t cx, gxe;
    RC(cf_exec_init(&cx, f.cpu, 2));
    RC(cf_exec_init_ops(&gxe, f.gpu, 2, &cf_exec_gpu_ops, &f.gx));
    /* a cost model that makes every policy mix computing and loading on this small prefix */
    cf_sched_cost_t cost;
    cf_cost_h100_llama8b(&cost);
    cost.n_layers = f.L; cost.chunk_tokens = f.C; cost.kv_bytes_per_token = 2.0 * f.row * 2;
    cost.link_Bps = 2e8;
    for (int pol = 0; pol < CF_POLICY_COUNT && (mode == 0 || pol == CF_POLICY_OPTIMAL); pol++) {
      plan_t p;
      if (!RC(make_plan(&f, &cost, (cf_policy_t)pol, &p))) continue;
      char what[64];
      snprintf(what, sizeof what, "%s/%s", modes[mode], cf_policy_name((cf_policy_t)pol));
      compare_one(&f, &cx, &gxe, &p, NULL, what);
      plan_free(&p);
    }
    /* load failures (evicted, corrupt) on the GPU path: recomputed, as on the CPU */
    plan_t p;
    if (RC(make_plan(&f, &cost, CF_POLICY_LOAD, &p))) {
      int *fail = calloc((size_t)f.n_full * f.L, sizeof(int));
      for (int i = 0; i < f.n_full * f.L; i++)
        if (rnd() % 7 == 0) fail[i] = rnd() % 2 ? CF_ENOTFOUND : CF_ECORRUPT;
      char what[64];
      snprintf(what, sizeof what, "%s/load+failures", modes[mode]);
      compare_one(&f, &cx, &gxe, &p, fail, what);
      free(fail);
      plan_free(&p);
    }
    fx_free(&f);
  }
}

/* ---------------------------------------------------------------- benchmark */

static double h2d_Bps(size_t bytes) {
  void *h = cf_gpu_pinned_alloc(bytes, NULL), *d = NULL;
  CU(cudaMalloc(&d, bytes));
  double best = 0;
  for (int i = 0; i < 4; i++) {
    double t0 = now_s();
    CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    double r = bytes / (now_s() - t0);
    if (i && r > best) best = r;
  }
  cudaFree(d);
  cf_gpu_pinned_free(h, bytes, NULL);
  return best;
}

static void bench(int T) {
  cf_model_config_t mc;
  cf_synth_preset("demo", &mc);
  mc.n_layers = 4; mc.hidden = 4096; mc.n_heads = 32; mc.n_kv_heads = 8; mc.head_dim = 128;
  mc.intermediate = 14336; mc.vocab = 32000; mc.rope_theta = 500000;
  int C = 256;
  fx_t f;
  printf("bench: %d tokens, 4 Llama-3-8B-shaped layers, chunks of %d, bf16 KV from pinned host cells\n", T, C);
  if (fx_init(&f, &mc, C, T / C, 0, 16, 0, CF_GPU_LOAD_STAGED)) { fx_free(&f); return; }
  cf_exec_t gxe;
  RC(cf_exec_init_ops(&gxe, f.gpu, 4, &cf_exec_gpu_ops, &f.gx));
  cf_sched_cost_t cost;
  cf_cost_h100_llama8b(&cost); /* every field valid; the compute and link terms measured below */
  if (!RC(cf_profile_compute(f.gpu, C, 5, &cost))) { fx_free(&f); return; }
  cost.kv_bytes_per_token = 2.0 * f.row * 2;
  cost.n_devices = 1;
  cost.link_Bps = h2d_Bps(256u << 20);
  cost.link_latency_s = 10e-6;
  printf("cost model (this GPU): gamma %.3g s, alpha %.3g s/token, beta %.3g s/token^2, link %.1f GB/s (pinned H2D)\n",
         cost.gamma_s, cost.alpha_s, cost.beta_s, cost.link_Bps / 1e9);
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_BF16, f.cells, f.n_full, f.L, f.C, f.row, NULL, NULL);
  cf_cellsrc_t **srcs = malloc(sizeof(void *) * f.n_chunks);
  void **refs = malloc(sizeof(void *) * f.n_chunks);
  srcs[0] = &mem.src;
  double t_pol[CF_POLICY_COUNT] = {0};
  for (int pol = 0; pol < CF_POLICY_COUNT; pol++) {
    plan_t p;
    if (!RC(make_plan(&f, &cost, (cf_policy_t)pol, &p))) continue;
    double best = 1e30;
    cf_exec_req_t r;
    for (int rep = 0; rep < 3; rep++) {
      fx_req(&f, &r, &p, srcs, refs, 1);
      double t0 = now_s();
      if (!RC(cf_exec_run(&gxe, &r, 1))) break;
      double dt = now_s() - t0;
      if (dt < best) best = dt;
    }
    t_pol[pol] = best;
    printf("RESULT gpuexec_%s tokens=%d executed_ms=%.2f predicted_ms=%.2f bound_ms=%.2f exec/pred=%.3f exec/bound=%.3f "
           "loaded=%llu computed=%llu\n", cf_policy_name((cf_policy_t)pol), T, best * 1e3, p.predicted_s * 1e3,
           p.bound_s * 1e3, p.predicted_s > 0 ? best / p.predicted_s : 0, p.bound_s > 0 ? best / p.bound_s : 0,
           (unsigned long long)r.stats.cells_loaded[0], (unsigned long long)r.stats.cells_computed);
    plan_free(&p);
  }
  for (int pol = 0; pol < CF_POLICY_COUNT; pol++)
    if (t_pol[pol] > 0 && t_pol[CF_POLICY_LOAD] > 0 && t_pol[CF_POLICY_RECOMPUTE] > 0)
      printf("RESULT gpuexec_vs_%s tokens=%d vs_load_only=%.3f vs_recompute_only=%.3f\n", cf_policy_name((cf_policy_t)pol), T,
             t_pol[pol] / t_pol[CF_POLICY_LOAD], t_pol[pol] / t_pol[CF_POLICY_RECOMPUTE]);
  free(srcs); free(refs);
  fx_free(&f);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (cf_probe_gpu_count() <= 0) {
    printf("skip: no CUDA GPU on this machine\n");
    g_skip++;
    return finish();
  }
  if (argc > 1 && !strcmp(argv[1], "--bench")) {
    bench(argc > 2 ? atoi(argv[2]) : 32768);
    return finish();
  }
  test();
  return finish();
}
