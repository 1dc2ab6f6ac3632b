// kt_elementwise — bf16<->fp32 conversion, bias add, embedding, RMSNorm (+fused add), SwiGLU
// and RoPE (default, llama3, bias, qwen3 q/k norm) against CPU references.
#include "kernels/cf_convert.h"
#include "kernels/cf_rmsnorm.h"
#include "kernels/cf_rope.h"
#include "kernels/cf_swiglu.h"
#include "kt_common.h"

static void test_convert(int64_t n) {
  std::vector<float> x(n);
  for (auto &v : x) v = kt_unif(-300.f, 300.f) * (kt_randint(4) == 0 ? 1e-3f : 1.f);
  float *dx = kt_upload(x);
  cf_bf16_t *db = kt_dev<cf_bf16_t>(n);
  float *dy = kt_dev<float>(n);
  bool ok = KT_RC(cf_bf16_from_f32(db, dx, n, 0)) && KT_RC(cf_f32_from_bf16(dy, db, n, 0));
  auto hb = kt_download(db, n);
  auto hy = kt_download(dy, n);
  int64_t bad_b = 0, bad_y = 0;
  for (int64_t i = 0; i < n; i++) {
    bad_b += hb[i] != kt_bf16(x[i]);
    bad_y += memcmp(&hy[i], &(const float &)kt_f32(hb[i]), 4) != 0;
  }
  kt_check(ok && bad_b == 0, "bf16_from_f32 n=%lld: %lld values differ from round-to-nearest-even",
           (long long)n, (long long)bad_b);
  kt_check(ok && bad_y == 0, "f32_from_bf16 n=%lld: %lld values not exact", (long long)n,
           (long long)bad_y);
  cudaFree(dx); cudaFree(db); cudaFree(dy);
}

static void test_bias_embed(int rows, int cols, int vocab) {
  std::vector<float> x(rows * (size_t)cols), b(cols);
  for (auto &v : x) v = kt_unif(-2, 2);
  for (auto &v : b) v = kt_unif(-2, 2);
  float *dx = kt_upload(x), *db = kt_upload(b);
  bool ok = KT_RC(cf_add_bias_f32(dx, db, rows, cols, 0));
  auto hx = kt_download(dx, x.size());
  std::vector<double> ref(x.size());
  for (size_t i = 0; i < x.size(); i++) ref[i] = (double)(x[i] + b[i % cols]);
  double e = kt_rel_l2(hx.data(), ref.data(), ref.size());
  kt_check(ok && e <= 1e-5, "add_bias_f32 %dx%d: rel L2 %.2e (<= 1e-5)", rows, cols, e);

  std::vector<uint16_t> tab;
  std::vector<float> tabf;
  kt_rand_bf16(tab, tabf, (size_t)vocab * cols, -1, 1);
  std::vector<int32_t> tok(rows);
  for (auto &t : tok) t = kt_randint(vocab);
  tok[rows / 2] = vocab;  // out of range: must give NaN, not an out-of-bounds read
  cf_bf16_t *dt = kt_upload(tab);
  int32_t *dtok = kt_upload(tok);
  float *dout = kt_dev<float>(x.size());
  ok = KT_RC(cf_embed_bf16(dout, dt, dtok, rows, cols, vocab, 0));
  auto ho = kt_download(dout, x.size());
  int64_t bad = 0;
  for (int r = 0; r < rows; r++)
    for (int c = 0; c < cols; c++) {
      float v = ho[(size_t)r * cols + c];
      bad += r == rows / 2 ? !isnan(v) : v != tabf[(size_t)tok[r] * cols + c];
    }
  kt_check(ok && bad == 0, "embed_bf16 T=%d hidden=%d: %lld wrong (out-of-range id -> NaN row)",
           rows, cols, (long long)bad);
  cudaFree(dx); cudaFree(db); cudaFree(dt); cudaFree(dtok); cudaFree(dout);
}

static void test_rmsnorm(int rows, int dim, bool add) {
  std::vector<float> x(rows * (size_t)dim), w(dim);
  for (auto &v : x) v = kt_unif(-3, 3);
  for (auto &v : w) v = kt_unif(0.5f, 1.5f);
  std::vector<uint16_t> ah;
  std::vector<float> af;
  kt_rand_bf16(ah, af, x.size(), -2, 2);
  float *dx = kt_upload(x), *dw = kt_upload(w);
  cf_bf16_t *da = kt_upload(ah), *dy = kt_dev<cf_bf16_t>(x.size());
  bool ok = KT_RC(cf_rmsnorm(dy, dx, add ? da : NULL, dw, rows, dim, 1e-5f, 0));
  auto hy = kt_download(dy, x.size());
  auto hx = kt_download(dx, x.size());
  std::vector<double> ry(x.size()), rx(x.size());
  for (int r = 0; r < rows; r++) {
    double ss = 0;
    for (int c = 0; c < dim; c++) {
      size_t i = (size_t)r * dim + c;
      float v = add ? x[i] + af[i] : x[i];
      rx[i] = v;
      ss += (double)v * v;
    }
    double inv = 1.0 / sqrt(ss / dim + 1e-5);
    for (int c = 0; c < dim; c++) {
      size_t i = (size_t)r * dim + c;
      ry[i] = rx[i] * inv * w[c];
    }
  }
  double ey = kt_rel_l2_bf16(hy.data(), ry.data(), ry.size());
  double ex = kt_rel_l2(hx.data(), rx.data(), rx.size());
  kt_check(ok && ey <= 1e-2 && ex <= 1e-5,
           "rmsnorm%s rows=%d dim=%d: y rel L2 %.2e (bf16, <= 1e-2), residual %.2e (<= 1e-5)",
           add ? "+add" : "", rows, dim, ey, ex);
  cudaFree(dx); cudaFree(dw); cudaFree(da); cudaFree(dy);
}

static void test_swiglu(int T, int I, bool bias, bool misalign) {
  std::vector<uint16_t> gh;
  std::vector<float> gf;
  kt_rand_bf16(gh, gf, (size_t)T * 2 * I + 8, -4, 4);
  std::vector<float> bg(I), bu(I);
  for (auto &v : bg) v = kt_unif(-1, 1);
  for (auto &v : bu) v = kt_unif(-1, 1);
  cf_bf16_t *dg = kt_upload(gh), *dout = kt_dev<cf_bf16_t>((size_t)T * I + 8);
  float *dbg = kt_upload(bg), *dbu = kt_upload(bu);
  int sh = misalign ? 1 : 0;  // an odd element offset forces the scalar path
  bool ok = KT_RC(cf_swiglu(dout + sh, dg + sh, bias ? dbg : NULL, bias ? dbu : NULL, T, I, 0));
  auto ho = kt_download(dout + sh, (size_t)T * I);
  std::vector<double> ref((size_t)T * I);
  for (int t = 0; t < T; t++)
    for (int j = 0; j < I; j++) {
      double g = gf[sh + (size_t)t * 2 * I + j] + (bias ? bg[j] : 0);
      double u = gf[sh + (size_t)t * 2 * I + I + j] + (bias ? bu[j] : 0);
      ref[(size_t)t * I + j] = g / (1 + exp(-g)) * u;
    }
  double e = kt_rel_l2_bf16(ho.data(), ref.data(), ref.size());
  kt_check(ok && e <= 1e-2, "swiglu T=%d I=%d bias=%d %s path: rel L2 %.2e (<= 1e-2)", T, I, bias,
           misalign || I % 8 ? "scalar" : "vector", e);
  cudaFree(dg); cudaFree(dout); cudaFree(dbg); cudaFree(dbu);
}

struct rope_case {
  int T, pos0, H, KV, hd, llama3, bias, qknorm, f32in;
};

static void test_rope(rope_case c) {
  int ns = c.H + 2 * c.KV;
  size_t nqkv = (size_t)c.T * ns * c.hd;
  std::vector<uint16_t> xh;
  std::vector<float> xf;
  kt_rand_bf16(xh, xf, nqkv, -2, 2);
  std::vector<float> bias((size_t)ns * c.hd), qn(c.hd), kn(c.hd), inv(c.hd / 2);
  for (auto &v : bias) v = kt_unif(-0.5f, 0.5f);
  for (auto &v : qn) v = kt_unif(0.5f, 1.5f);
  for (auto &v : kn) v = kt_unif(0.5f, 1.5f);
  bool ok = KT_RC(cf_rope_inv_freq(inv.data(), c.hd, c.llama3 ? 500000.0 : 10000.0, c.llama3, 8.0,
                                   1.0, 4.0, 8192));
  // Reference frequencies in double, as transformers' _compute_llama3_parameters.
  for (int i = 0; i < c.hd / 2; i++) {
    double f = 1.0 / pow(c.llama3 ? 500000.0 : 10000.0, (double)(2 * i) / c.hd);
    if (c.llama3) {
      double wl = 2 * M_PI / f, lw = 8192 / 1.0, hw = 8192 / 4.0;
      if (wl > lw) f /= 8.0;
      else if (wl >= hw) {
        double sm = (8192 / wl - 1.0) / (4.0 - 1.0);
        f = (1 - sm) * f / 8.0 + sm * f;
      }
    }
    ok = ok && fabs(inv[i] - f) <= 1e-6 * f;
  }
  kt_check(ok, "rope_inv_freq hd=%d llama3=%d matches the double-precision formula", c.hd,
           c.llama3);
  std::vector<float> x32(nqkv);
  for (size_t i = 0; i < nqkv; i++) x32[i] = c.f32in ? xf[i] + kt_unif(-1e-3f, 1e-3f) : xf[i];
  if (c.f32in) xf = x32;  // fp32 input: values off the bf16 grid
  cf_bf16_t *dx = kt_upload(xh);
  float *dx32 = kt_upload(x32);
  float *db = kt_upload(bias), *dqn = kt_upload(qn), *dkn = kt_upload(kn), *dinv = kt_upload(inv);
  int64_t kv_rs = (int64_t)c.KV * c.hd + 8;  // a padded row stride
  cf_bf16_t *dq = kt_dev<cf_bf16_t>((size_t)c.T * c.H * c.hd);
  cf_bf16_t *dk = kt_dev<cf_bf16_t>((size_t)c.T * kv_rs), *dv = kt_dev<cf_bf16_t>((size_t)c.T * kv_rs);
  cf_rope_args_t a = {c.T, c.pos0, c.H, c.KV, c.hd, c.f32in ? (const void *)dx32 : dx, c.f32in,
                      c.bias ? db : NULL,
                      c.qknorm ? dqn : NULL, c.qknorm ? dkn : NULL, 1e-6f, dinv, dq, dk, dv, kv_rs};
  ok = KT_RC(cf_rope_qkv(&a, 0));
  auto hq = kt_download(dq, (size_t)c.T * c.H * c.hd);
  auto hk = kt_download(dk, (size_t)c.T * kv_rs);
  auto hv = kt_download(dv, (size_t)c.T * kv_rs);
  std::vector<double> rq(hq.size()), rk, rv;
  std::vector<float> ok_k, ok_v;
  int half = c.hd / 2;
  for (int t = 0; t < c.T; t++)
    for (int j = 0; j < ns; j++) {
      std::vector<double> x(c.hd);
      for (int d = 0; d < c.hd; d++)
        x[d] = xf[((size_t)t * ns + j) * c.hd + d] + (c.bias ? bias[(size_t)j * c.hd + d] : 0.0);
      if (j < c.H + c.KV) {
        if (c.qknorm) {
          double ss = 0;
          for (double v : x) ss += v * v;
          double iv = 1 / sqrt(ss / c.hd + 1e-6);
          for (int d = 0; d < c.hd; d++) x[d] *= iv * (j < c.H ? qn[d] : kn[d]);
        }
        std::vector<double> y(c.hd);
        for (int i = 0; i < half; i++) {
          double ang = (double)((float)(c.pos0 + t) * inv[i]);  // the fp32 product, as torch
          y[i] = x[i] * cos(ang) - x[i + half] * sin(ang);
          y[i + half] = x[i + half] * cos(ang) + x[i] * sin(ang);
        }
        x = y;
      }
      for (int d = 0; d < c.hd; d++) {
        if (j < c.H) rq[((size_t)t * c.H + j) * c.hd + d] = x[d];
        else if (j < c.H + c.KV) {
          rk.push_back(x[d]);
          ok_k.push_back(kt_f32(hk[(size_t)t * kv_rs + (j - c.H) * c.hd + d]));
        } else {
          rv.push_back(x[d]);
          ok_v.push_back(kt_f32(hv[(size_t)t * kv_rs + (j - c.H - c.KV) * c.hd + d]));
        }
      }
    }
  double eq = kt_rel_l2_bf16(hq.data(), rq.data(), rq.size());
  double ek = kt_rel_l2(ok_k.data(), rk.data(), rk.size());
  double ev = kt_rel_l2(ok_v.data(), rv.data(), rv.size());
  // The padding after each K/V row must be untouched (still the poison pattern).
  int64_t pad_written = 0;
  for (int t = 0; t < c.T; t++)
    for (int e = c.KV * c.hd; e < kv_rs; e++)
      pad_written += hk[(size_t)t * kv_rs + e] != 0xffff || hv[(size_t)t * kv_rs + e] != 0xffff;
  kt_check(ok && eq <= 1e-2 && ek <= 1e-2 && ev <= 1e-2 && pad_written == 0,
           "rope T=%d pos0=%d H=%d KV=%d hd=%d llama3=%d bias=%d qknorm=%d %s in: rel L2 q %.2e "
           "k %.2e v %.2e (<= 1e-2), %lld padding elements written",
           c.T, c.pos0, c.H, c.KV, c.hd, c.llama3, c.bias, c.qknorm, c.f32in ? "fp32" : "bf16", eq,
           ek, ev,
           (long long)pad_written);
  cudaFree(dx); cudaFree(dx32); cudaFree(db); cudaFree(dqn); cudaFree(dkn); cudaFree(dinv);
  cudaFree(dq); cudaFree(dk); cudaFree(dv);
}

static void test_preconditions(void) {
  float *d = kt_dev<float>(16);
  kt_check(cf_rmsnorm((cf_bf16_t *)d, d, NULL, d, 1, 0, 1e-5f, 0) == CF_EINVAL,
           "rmsnorm rejects dim 0 with CF_EINVAL (%s)", cf_errmsg());
  cf_rope_args_t a = {};
  a.T = 1; a.n_heads = 2; a.n_kv_heads = 1; a.head_dim = 7;
  kt_check(cf_rope_qkv(&a, 0) == CF_EINVAL, "rope rejects odd head_dim (%s)", cf_errmsg());
  kt_check(cf_swiglu(NULL, (cf_bf16_t *)d, NULL, NULL, 1, 8, 0) == CF_EINVAL,
           "swiglu rejects a NULL output (%s)", cf_errmsg());
  cudaFree(d);
}

int main(int argc, char **argv) {
  bool bench;
  if (!kt_init(argc, argv, &bench)) return kt_finish();
  if (bench) return kt_finish();  // these kernels are timed inside the layer benchmark
  test_convert(1);
  test_convert(1000003);
  test_bias_embed(37, 96, 300);
  test_bias_embed(5, 4096, 1000);
  for (int dim : {96, 4096, 5120, 33})
    for (int add = 0; add < 2; add++) test_rmsnorm(dim == 4096 ? 64 : 17, dim, add);
  test_swiglu(33, 256, false, false);
  test_swiglu(7, 14336, true, false);
  test_swiglu(9, 100, true, false);
  test_swiglu(9, 256, false, true);
  rope_case rc[] = {
      {150, 0, 6, 2, 16, 0, 0, 0, 0},     {37, 5, 32, 8, 128, 1, 0, 0, 1},
      {64, 30000, 32, 8, 128, 1, 0, 0, 0}, {17, 100, 4, 4, 64, 0, 1, 0, 1},
      {23, 7, 8, 2, 128, 0, 0, 1, 0},     {11, 4090, 14, 2, 64, 0, 1, 1, 1},
      {5, 3, 2, 1, 256, 1, 1, 1, 0},      {9, 31000, 4, 2, 24, 1, 1, 1, 1},
  };
  for (auto &c : rc) test_rope(c);
  test_preconditions();
  return kt_finish();
}
