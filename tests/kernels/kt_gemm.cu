// kt_gemm — cuBLAS bf16 GEMM wrapper (row-major Y = X·Wᵀ, fp32 accumulate; bf16 or fp32 Y,
// beta = 0 or 1, padded leading dimensions) against a double reference on the same bf16
// inputs; `--bench` prints TFLOP/s for the Llama-3-8B projection shapes.
#include <cublas_v2.h>

#include "kernels/cf_gemm.h"
#include "kt_common.h"

static cublasHandle_t blas;

static void test_gemm(int M, int N, int K, bool f32, float beta, int pad) {
  int64_t ldx = K + pad, ldw = K + pad, ldy = N + pad;
  std::vector<uint16_t> xh, wh;
  std::vector<float> xf, wf;
  kt_rand_bf16(xh, xf, (size_t)M * ldx, -1, 1);
  kt_rand_bf16(wh, wf, (size_t)N * ldw, -1, 1);
  std::vector<float> y0((size_t)M * ldy);
  for (auto &v : y0) v = kt_unif(-1, 1);
  cf_bf16_t *dx = kt_upload(xh), *dw = kt_upload(wh);
  void *dy = f32 ? (void *)kt_upload(y0) : (void *)kt_dev<cf_bf16_t>((size_t)M * ldy);
  cf_gemm_args_t a = {M, N, K, dx, ldx, dw, ldw, dy, ldy, f32, beta};
  bool ok = KT_RC(cf_gemm_bf16(blas, &a, 0));
  std::vector<double> ref((size_t)M * N);
  std::vector<float> got((size_t)M * N);
  std::vector<float> hy32;
  std::vector<uint16_t> hy16;
  if (f32) hy32 = kt_download((float *)dy, (size_t)M * ldy);
  else hy16 = kt_download((cf_bf16_t *)dy, (size_t)M * ldy);
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double s = f32 ? (double)beta * y0[(size_t)i * ldy + j] : 0.0;
      for (int k = 0; k < K; k++) s += (double)xf[(size_t)i * ldx + k] * wf[(size_t)j * ldw + k];
      ref[(size_t)i * N + j] = s;
      got[(size_t)i * N + j] = f32 ? hy32[(size_t)i * ldy + j] : kt_f32(hy16[(size_t)i * ldy + j]);
    }
  double e = kt_rel_l2(got.data(), ref.data(), ref.size());
  double tol = f32 ? 1e-5 : 1e-2;
  kt_check(ok && e <= tol, "gemm M=%d N=%d K=%d %s beta=%g pad=%d: rel L2 %.2e (<= %.0e)", M, N, K,
           f32 ? "fp32-out" : "bf16-out", beta, pad, e, tol);
  cudaFree(dx); cudaFree(dw); cudaFree(dy);
}

static void bench(void) {
  struct { int M, N, K; const char *what; } sh[] = {
      {8192, 6144, 4096, "qkv"}, {8192, 4096, 4096, "o (fp32 out, beta 1)"},
      {8192, 28672, 4096, "gate|up"}, {8192, 4096, 14336, "down (fp32 out, beta 1)"},
      {512, 6144, 4096, "qkv M=512"}};
  for (auto &s : sh) {
    bool f32 = strstr(s.what, "fp32") != NULL;
    cf_bf16_t *x = kt_dev<cf_bf16_t>((size_t)s.M * s.K), *w = kt_dev<cf_bf16_t>((size_t)s.N * s.K);
    KT_CUDA(cudaMemset(x, 0x3c, (size_t)s.M * s.K * 2));  // 1.0-ish, not zeros
    KT_CUDA(cudaMemset(w, 0x3b, (size_t)s.N * s.K * 2));
    void *y = f32 ? (void *)kt_dev<float>((size_t)s.M * s.N) : (void *)kt_dev<cf_bf16_t>((size_t)s.M * s.N);
    KT_CUDA(cudaMemset(y, 0, (size_t)s.M * s.N * (f32 ? 4 : 2)));
    cf_gemm_args_t a = {s.M, s.N, s.K, x, s.K, w, s.K, y, s.N, f32, f32 ? 1.f : 0.f};
    double ms = kt_time_ms([&] { cf_gemm_bf16(blas, &a, 0); }, 20);
    printf("gemm %-26s %5dx%5dx%5d: %.3f ms, %.0f TFLOP/s\n", s.what, s.M, s.N, s.K, ms,
           2.0 * s.M * s.N * s.K / ms / 1e9);
    cudaFree(x); cudaFree(w); cudaFree(y);
  }
}

int main(int argc, char **argv) {
  bool b;
  if (!kt_init(argc, argv, &b)) return kt_finish();
  void *ws;
  KT_CUDA(cudaMalloc(&ws, 32 << 20));
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cublasSetWorkspace(blas, ws, 32 << 20)) {
    kt_check(false, "cublasCreate/cublasSetWorkspace");
    return kt_finish();
  }
  if (b) { bench(); return kt_finish(); }
  test_gemm(1, 96, 96, false, 0, 0);
  test_gemm(37, 200, 64, true, 1, 8);
  test_gemm(150, 512, 96, false, 0, 8);
  test_gemm(64, 4096, 512, true, 0, 0);
  test_gemm(300, 96, 4096, true, 1, 0);
  test_gemm(33, 6144, 256, false, 0, 0);
  cf_gemm_args_t bad = {4, 8, 16, (cf_bf16_t *)16, 8, (cf_bf16_t *)16, 16, (void *)16, 8, 0, 0};
  kt_check(cf_gemm_bf16(blas, &bad, 0) == CF_EINVAL, "gemm rejects ldx < K (%s)", cf_errmsg());
  cublasDestroy(blas);
  cudaFree(ws);
  return kt_finish();
}
