// kt_attn — chunk-over-prefix causal GQA attention (tensor-core and scalar kernels) against a
// double-precision CPU reference; `--bench` times the Llama-3-8B shape (32 heads, 8 KV heads,
// head_dim 128) at chunk 256/512/2048 x prefix 0/4k/16k/32k, the mma.sync kernels and the
// Hopper wgmma kernel side by side; `--wgmma` runs only the wgmma probe and a few wgmma shapes
// (for the sanitizer steps). Every case also runs with CF_ATTN_IMPL=wgmma selection
// (head_dim 128 takes the wgmma kernel, others fall back) and, for head_dim 128, with the
// wgmma variant forced.
#include "kernels/cf_attn.h"
#include "kt_common.h"

#include <map>

struct attn_case {
  int Tq, t0, H, KV, hd;
};

static void ref_attn(const attn_case &c, const std::vector<float> &q, int64_t qrs,
                     const std::vector<float> &k, const std::vector<float> &v, int64_t kvrs,
                     std::vector<double> &out) {
  out.assign((size_t)c.Tq * c.H * c.hd, 0.0);
  double scale = 1.0 / sqrt((double)c.hd);
  std::vector<double> s(c.t0 + c.Tq);
  for (int i = 0; i < c.Tq; i++)
    for (int h = 0; h < c.H; h++) {
      int g = h / (c.H / c.KV), last = c.t0 + i;
      double mx = -INFINITY;
      for (int j = 0; j <= last; j++) {
        double d = 0;
        for (int e = 0; e < c.hd; e++)
          d += (double)q[i * qrs + h * c.hd + e] * k[j * kvrs + g * c.hd + e];
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j <= last; j++) sum += (s[j] = exp(s[j] - mx));
      double *o = &out[((size_t)i * c.H + h) * c.hd];
      for (int j = 0; j <= last; j++)
        for (int e = 0; e < c.hd; e++) o[e] += s[j] / sum * v[j * kvrs + g * c.hd + e];
    }
}

static const char *vname[] = {"auto",        "scalar",      "mma16", "mma32",
                              "mma32-bc32", "mma16-split", "mma32-split", "wgmma",
                              "wgmma-simple", "wgmma-tma"};

// `impl`: the label of the CF_ATTN_IMPL selection in effect (printed with the variant).
static void test_attn(attn_case c, int variant, const char *impl = "") {
  int Tk = c.t0 + c.Tq;
  int64_t qrs = (int64_t)c.H * c.hd, kvrs = (int64_t)c.KV * c.hd + (c.hd % 16 ? 0 : 8);
  std::vector<uint16_t> qh, kh, vh;
  std::vector<float> qf, kf, vf;
  // Keys spread wide enough that softmax is far from uniform (a weak test otherwise).
  kt_rand_bf16(qh, qf, (size_t)c.Tq * qrs, -2, 2);
  kt_rand_bf16(kh, kf, (size_t)Tk * kvrs, -2, 2);
  kt_rand_bf16(vh, vf, (size_t)Tk * kvrs, -1, 1);
  cf_bf16_t *dq = kt_upload(qh), *dk = kt_upload(kh), *dv = kt_upload(vh);
  cf_bf16_t *dout = kt_dev<cf_bf16_t>((size_t)c.Tq * qrs);
  int64_t wsf = CF_ATTN_WS_FLOATS((int64_t)c.Tq * c.H, c.hd);
  float *ws = kt_dev<float>(wsf);  // poisoned: split partials must all be written
  cf_attn_args_t a = {c.Tq, c.t0, c.H, c.KV, c.hd, 1.f / sqrtf((float)c.hd), dq, qrs,
                      dk, dv, kvrs, dout, qrs, ws, wsf};
  bool ok = variant ? KT_RC(cf_attn_prefix_variant(&a, variant, 0)) : KT_RC(cf_attn_prefix(&a, 0));
  auto ho = kt_download(dout, (size_t)c.Tq * qrs);
  std::vector<double> ref;
  ref_attn(c, qf, qrs, kf, vf, kvrs, ref);
  double e = kt_rel_l2_bf16(ho.data(), ref.data(), ref.size());
  // Locate the worst row to make a failure readable.
  int worst = -1;
  double we = 0;
  for (int i = 0; i < c.Tq; i++) {
    std::vector<double> r(ref.begin() + (size_t)i * qrs, ref.begin() + (size_t)(i + 1) * qrs);
    double ei = kt_rel_l2_bf16(ho.data() + (size_t)i * qrs, r.data(), r.size());
    if (!(ei <= we)) { we = ei; worst = i; }
  }
  kt_check(ok && e <= 1e-2, "attn %s%s Tq=%d t0=%d H=%d KV=%d hd=%d: rel L2 %.2e (<= 1e-2), "
           "worst query row %d: %.2e", vname[variant], impl, c.Tq, c.t0, c.H, c.KV, c.hd, e,
           worst, we);
  cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout); cudaFree(ws);
}

static void bench(void) {
  const int H = 32, KV = 8, hd = 128;
  const int chunks[] = {256, 512, 2048}, prefixes[] = {0, 4096, 16384, 32768};
  int maxT = 32768 + 2048;
  std::vector<uint16_t> h;
  std::vector<float> f;
  kt_rand_bf16(h, f, (size_t)maxT * KV * hd, -2, 2);
  cf_bf16_t *dk = kt_upload(h), *dv = kt_upload(h);
  kt_rand_bf16(h, f, (size_t)2048 * H * hd, -2, 2);
  cf_bf16_t *dq = kt_upload(h), *dout = kt_dev<cf_bf16_t>((size_t)2048 * H * hd);
  int64_t wsf = 16 << 20;  // what the backend gives it: 64 MiB
  float *ws = kt_dev<float>(wsf);
  bool wg = cf_attn_wgmma_supported();
  std::map<std::pair<int, int>, double> ours;  // (chunk, prefix) -> ms of cf_attn_prefix (mma)
  if (!wg) printf("wgmma kernel: not on this GPU (needs compute capability 9.0), not timed\n");
  printf("%-8s %-8s %10s %10s\n", "chunk", "prefix", "ms", "TFLOP/s");
  for (int c : chunks)
    for (int p : prefixes) {
      cf_attn_args_t a = {c, p, H, KV, hd, 1.f / sqrtf((float)hd), dq, (int64_t)H * hd,
                          dk, dv, (int64_t)KV * hd, dout, (int64_t)H * hd, ws, wsf};
      if (!KT_RC(cf_attn_prefix(&a, 0))) return;
      double ms = kt_time_ms([&] { cf_attn_prefix(&a, 0); }, 20);
      double ms8 = kt_time_ms([&] { cf_attn_prefix_variant(&a, CF_ATTN_MMA16, 0); }, 20);
      double ms32 = kt_time_ms([&] { cf_attn_prefix_variant(&a, CF_ATTN_MMA32, 0); }, 20);
      double msb = kt_time_ms([&] { cf_attn_prefix_variant(&a, CF_ATTN_MMA32_BC32, 0); }, 20);
      double flops = 4.0 * hd * H * ((double)c * p + (double)c * (c + 1) / 2);
      printf("%-8d %-8d %10.3f %10.1f   mma16: %8.3f %6.1f   mma32: %8.3f %6.1f   bc32: %8.3f "
             "%6.1f\n", c, p, ms, flops / ms / 1e9, ms8, flops / ms8 / 1e9, ms32, flops / ms32 / 1e9,
             msb, flops / msb / 1e9);
      printf("RESULT attn_bc32 %d %d %.4f\n", c, p, msb);
      printf("RESULT attn_ours %d %d %.4f\n", c, p, ms);
      printf("RESULT attn_mma16 %d %d %.4f\n", c, p, ms8);
      printf("RESULT attn_mma32 %d %d %.4f\n", c, p, ms32);
      ours[{c, p}] = ms;
    }
  // The wgmma kernel last, in its own loop: a fault there (unverified code) is sticky for the
  // process and must not cost the mma.sync numbers above.
  // TMA after cp.async: each variant's numbers are printed before the next one can fault.
  for (int v : {CF_ATTN_WGMMA, CF_ATTN_WGMMA_TMA}) {
    if (!wg) break;
    const char *name = v == CF_ATTN_WGMMA ? "attn_wgmma" : "attn_wgmma_tma";
    printf("%-8s %-8s %10s %10s %12s   (%s)\n", "chunk", "prefix", "ms", "TFLOP/s", "mma/this",
           vname[v]);
    for (int c : chunks)
      for (int p : prefixes) {
        cf_attn_args_t a = {c, p, H, KV, hd, 1.f / sqrtf((float)hd), dq, (int64_t)H * hd,
                            dk, dv, (int64_t)KV * hd, dout, (int64_t)H * hd, ws, wsf};
        if (!KT_RC(cf_attn_prefix_variant(&a, v, 0))) return;
        double msw = kt_time_ms([&] { cf_attn_prefix_variant(&a, v, 0); }, 20);
        double flops = 4.0 * hd * H * ((double)c * p + (double)c * (c + 1) / 2);
        printf("%-8d %-8d %10.3f %10.1f %12.3f\n", c, p, msw, flops / msw / 1e9, ours[{c, p}] / msw);
        printf("RESULT %s %d %d %.4f\n", name, c, p, msw);
      }
  }
  KT_CUDA(cudaDeviceSynchronize());
  cudaFree(dk); cudaFree(dv); cudaFree(dq); cudaFree(dout); cudaFree(ws);
}

// CF_ATTN_IMPL parsing and its error (no GPU needed: the selection fails before any launch).
static void test_impl_selection(void) {
  kt_check(cf_attn_set_impl("wgmma") == 0 && cf_attn_impl() == CF_ATTN_IMPL_WGMMA &&
               cf_attn_set_impl("auto") == 0 && cf_attn_impl() == CF_ATTN_IMPL_AUTO &&
               cf_attn_set_impl("") == 0 && cf_attn_impl() == CF_ATTN_IMPL_MMA,
           "CF_ATTN_IMPL accepts wgmma, auto, empty (= mma)");
  cf_attn_args_t a = {};
  a.Tq = 1; a.n_heads = 2; a.n_kv_heads = 1; a.head_dim = 128; a.scale = 1;
  a.q = a.k = a.v = a.out = (cf_bf16_t *)256;
  a.q_row_stride = a.out_row_stride = 256; a.kv_row_stride = 128;
  int rc = cf_attn_set_impl("wgmma2");
  int rc2 = cf_attn_prefix(&a, 0);
  kt_check(rc == CF_EINVAL && rc2 == CF_EINVAL && strstr(cf_errmsg(), "CF_ATTN_IMPL=wgmma2"),
           "CF_ATTN_IMPL=wgmma2 is refused, and cf_attn_prefix reports it (%s)", cf_errmsg());
  cf_attn_set_impl("mma");
}

// The wgmma layouts alone (cf_wgmma_probe: one wgmma S = A·Bᵀ and one O = P·V) against a
// host matmul. If this fails, the layouts (swizzle, descriptors, fragments) are wrong; if it
// passes and the attention cases fail, look at the kernel's schedule (pipeline, masks, splits).
static void test_wgmma_probe(void) {
  std::vector<uint16_t> ah, bh, ph, vh;
  std::vector<float> af, bf, pf, vf;
  kt_rand_bf16(ah, af, 64 * 128, -1, 1);
  kt_rand_bf16(bh, bf, 128 * 128, -1, 1);
  kt_rand_bf16(ph, pf, 64 * 128, -1, 1);
  kt_rand_bf16(vh, vf, 128 * 128, -1, 1);
  cf_bf16_t *da = kt_upload(ah), *db = kt_upload(bh), *dp = kt_upload(ph), *dv = kt_upload(vh);
  float *ds = kt_dev<float>(64 * 128), *dout = kt_dev<float>(64 * 128);
  bool ok = KT_RC(cf_wgmma_probe(da, db, dp, dv, ds, dout, 0));
  auto hs = kt_download(ds, 64 * 128), ho = kt_download(dout, 64 * 128);
  const char *what[2] = {"S = A·Bᵀ (K-major descriptors, swizzle, accumulator layout)",
                         "O = P·V (A-operand registers, MN-major V descriptor)"};
  for (int m = 0; m < 2; m++) {
    double num = 0, den = 0, worst = 0;
    int wr = -1, wc = -1;
    for (int r = 0; r < 64; r++)
      for (int c = 0; c < 128; c++) {
        double ref = 0;
        for (int k = 0; k < 128; k++)
          ref += m == 0 ? (double)af[r * 128 + k] * bf[c * 128 + k] : (double)pf[r * 128 + k] * vf[k * 128 + c];
        double got = (m == 0 ? hs : ho)[r * 128 + c], d = fabs(got - ref);
        num += d * d;
        den += ref * ref;
        if (!(d <= worst)) { worst = d; wr = r; wc = c; }
      }
    double e = sqrt(num / den);
    kt_check(ok && e <= 1e-4, "wgmma probe %s: rel L2 %.2e (<= 1e-4), worst |err| %.3g at (%d, %d)",
             what[m], e, worst, wr, wc);
  }
  cudaFree(da); cudaFree(db); cudaFree(dp); cudaFree(dv); cudaFree(ds); cudaFree(dout);
}

// The same probe with decodable operands: in each product one operand is one-hot (one 1.0 per
// row of A / P, or per key column of B / per output column of V) and the other is made of
// distinct bf16 values, so every fp32 output is exactly one input element and names it. On a
// failure the first wrong outputs print as "got X[i][j], want X[i0][j0]": which descriptor
// stride, swizzle or fragment map is off, from one device call. With correct layouts every
// output is exact.
static uint16_t kt_uniq_bf16(int i) { return (uint16_t)(0x3F80 + i); }  // distinct, finite: i < 16384
static int kt_uniq_of(float f) {                                         // -1: not one such value
  uint32_t u;
  memcpy(&u, &f, 4);
  if (u & 0xFFFFu) return -1;
  int i = (int)(u >> 16) - 0x3F80;
  return i >= 0 && i < 16384 ? i : -1;
}
static int kt_hot(int r) { return (3 * r + 1) % 128; }  // the column of one-hot row r

static void test_wgmma_probe_decode(void) {
  const uint16_t one = 0x3F80;  // bf16 1.0
  for (int side = 0; side < 2; side++) {
    // side 0: A and P one-hot rows, B and V distinct: outputs name B / V elements.
    // side 1: B (per key row n) and V (per output column n) one-hot, A and P distinct.
    std::vector<uint16_t> a(64 * 128, 0), b(128 * 128, 0), p(64 * 128, 0), v(128 * 128, 0);
    for (int m = 0; m < 64; m++)
      for (int k = 0; k < 128; k++) {
        uint16_t x = side ? kt_uniq_bf16(m * 128 + k) : (k == kt_hot(m) ? one : 0);
        a[m * 128 + k] = x;
        p[m * 128 + k] = x;
      }
    for (int n = 0; n < 128; n++)
      for (int k = 0; k < 128; k++) {
        b[n * 128 + k] = side ? (k == kt_hot(n) ? one : 0) : kt_uniq_bf16(n * 128 + k);
        v[k * 128 + n] = side ? (k == kt_hot(n) ? one : 0) : kt_uniq_bf16(k * 128 + n);
      }
    cf_bf16_t *da = kt_upload(a), *db = kt_upload(b), *dp = kt_upload(p), *dv = kt_upload(v);
    float *ds = kt_dev<float>(64 * 128), *dout = kt_dev<float>(64 * 128);
    bool ok = KT_RC(cf_wgmma_probe(da, db, dp, dv, ds, dout, 0));
    auto hs = kt_download(ds, 64 * 128), ho = kt_download(dout, 64 * 128);
    for (int prod = 0; prod < 2; prod++) {  // 0: S = A·Bᵀ, 1: O = P·V
      const char *src = prod == 0 ? (side ? "A" : "B") : (side ? "P" : "V");
      int exact = 0, shown = 0;
      for (int m = 0; m < 64; m++)
        for (int n = 0; n < 128; n++) {
          // the one input element output (m, n) must be, as a row-major index of `src`
          int want = prod == 0 ? (side ? m * 128 + kt_hot(n) : n * 128 + kt_hot(m))
                               : (side ? m * 128 + kt_hot(n) : kt_hot(m) * 128 + n);
          float got = (prod == 0 ? hs : ho)[m * 128 + n];
          int g = kt_uniq_of(got);
          if (g == want) { exact++; continue; }
          if (shown++ < 4) {
            if (g >= 0)
              printf("  wgmma probe %s (m %d, n %d): got %s[%d][%d], want %s[%d][%d]\n",
                     prod ? "O" : "S", m, n, src, g / 128, g % 128, src, want / 128, want % 128);
            else
              printf("  wgmma probe %s (m %d, n %d): got %g (not a single %s element), want %s[%d][%d]\n",
                     prod ? "O" : "S", m, n, got, src, src, want / 128, want % 128);
          }
        }
      kt_check(ok && exact == 64 * 128, "wgmma probe decoded %s, %s read through its layout: %d of %d "
               "outputs are exactly the element they must be", prod ? "O = P·V" : "S = A·Bᵀ", src, exact,
               64 * 128);
    }
    cudaFree(da); cudaFree(db); cudaFree(dp); cudaFree(dv); cudaFree(ds); cudaFree(dout);
  }
}

// The Hopper wgmma kernel (UNVERIFIED until this passes on an H100): every case through
// cf_attn_prefix with CF_ATTN_IMPL=wgmma (head_dim 128 takes it, the rest fall back), then the
// variant forced on the head_dim 128 cases plus shapes that cross several 128-row query blocks
// and 128-key tiles at unaligned offsets. Run last (and alone with --wgmma, for the sanitizer
// steps): a fault in it is sticky for the process.
// `quick` (--wgmma, for the sanitizer): the probe and the extra shapes only.
static void test_wgmma(const attn_case *cases, int n, bool quick) {
  if (!cf_attn_wgmma_supported()) {
    printf("skip: wgmma attention needs a compute capability 9.0 GPU\n");
    kt_skipped++;
    return;
  }
  test_wgmma_probe();
  test_wgmma_probe_decode();
  if (quick) n = 0;
  cf_attn_set_impl("wgmma");
  for (int i = 0; i < n; i++) test_attn(cases[i], CF_ATTN_AUTO, " (CF_ATTN_IMPL=wgmma)");
  cf_attn_set_impl("mma");
  attn_case wcases[] = {{1000, 0, 4, 1, 128}, {513, 777, 8, 2, 128}, {128, 128, 2, 1, 128},
                        {300, 4096, 4, 2, 128}, {257, 0, 2, 2, 128}, {2, 255, 4, 4, 128}};
  for (int v : {CF_ATTN_WGMMA, CF_ATTN_WGMMA_SIMPLE, CF_ATTN_WGMMA_TMA}) {
    for (int i = 0; i < n; i++)
      if (cases[i].hd == 128) test_attn(cases[i], v);
    for (auto &c : wcases) test_attn(c, v);
  }
}

int main(int argc, char **argv) {
  bool b;
  bool gpu = kt_init(argc, argv, &b);
  if (!b) test_impl_selection();
  if (!gpu) return kt_finish();
  if (b) { bench(); return kt_finish(); }
  attn_case cases[] = {
      {1, 0, 4, 2, 16},     {150, 0, 6, 2, 16},   {64, 64, 6, 2, 16},   {7, 300, 4, 1, 32},
      {100, 37, 8, 2, 64},  {256, 0, 32, 8, 128}, {129, 700, 32, 8, 128}, {65, 5, 4, 4, 128},
      {1, 1000, 8, 8, 128}, {33, 70, 6, 3, 80},   {300, 1000, 4, 2, 64},
      {700, 0, 4, 1, 128},  {333, 1500, 4, 2, 128}, {1000, 100, 4, 1, 64},
      {64, 4000, 8, 2, 128}, {33, 2000, 4, 1, 64},  {100, 5000, 6, 2, 32},  {7, 3000, 2, 1, 16},
      {96, 5000, 4, 1, 128},
  };
  const int ncases = (int)(sizeof cases / sizeof cases[0]);
  if (argc > 1 && strcmp(argv[1], "--wgmma") == 0) {
    test_wgmma(cases, ncases, true);
    return kt_finish();
  }
  for (auto &c : cases) test_attn(c, CF_ATTN_AUTO);
  for (auto &c : cases)
    if (c.hd == 16 || c.hd == 32 || c.hd == 64 || c.hd == 128) test_attn(c, CF_ATTN_MMA16);
  for (auto &c : cases)
    if (c.hd == 64 || c.hd == 128) test_attn(c, CF_ATTN_MMA32);
  for (auto &c : cases)
    if (c.hd == 128) test_attn(c, CF_ATTN_MMA32_BC32);
  for (auto &c : cases)
    if (c.hd == 16 || c.hd == 32 || c.hd == 64 || c.hd == 128) test_attn(c, CF_ATTN_MMA16_SPLIT);
  for (auto &c : cases)
    if (c.Tq * (c.t0 + c.Tq) < 200000) test_attn(c, CF_ATTN_SCALAR);
  // Unaligned row stride forces the scalar path through cf_attn_prefix: still correct.
  cf_attn_args_t bad = {};
  bad.Tq = 1; bad.n_heads = 3; bad.n_kv_heads = 2; bad.head_dim = 16;
  bad.q = bad.k = bad.v = bad.out = (cf_bf16_t *)16;
  bad.q_row_stride = bad.out_row_stride = 48; bad.kv_row_stride = 32;
  kt_check(cf_attn_prefix(&bad, 0) == CF_EINVAL, "attn rejects n_heads %% n_kv_heads != 0 (%s)",
           cf_errmsg());
  test_wgmma(cases, ncases, false);
  return kt_finish();
}
