// kt_paged — KV scatter into / gather from paged caches (vLLM default and custom strides,
// 16-byte and 2-byte paths, device and zero-copy mapped-host sources, skipped table entries),
// checked element by element; `--bench` measures the load path into paged blocks of
// 16 KiB - 1 MiB against one contiguous 1 GiB pinned cudaMemcpy.
#include "kernels/cf_paged.h"
#include "kt_common.h"

struct paged_case {
  const char *name;
  int block_size, KV, hd, hnd;  // hnd: [num_blocks][2][KV][block_size][hd] instead of vLLM's
  int tok0, T;
  bool host_src;
};

static void make_layout(const paged_case &c, int nblocks, cf_paged_layout_t *L) {
  cf_paged_layout_vllm(L, nblocks, c.block_size, c.KV, c.hd);
  if (c.hnd) {
    L->head_stride = (int64_t)c.block_size * c.hd;
    L->token_stride = c.hd;
    L->kv_stride = (int64_t)c.KV * c.block_size * c.hd;
    L->block_stride = 2 * L->kv_stride;
  }
}

static void test_paged(paged_case c) {
  int nlog = (c.tok0 + c.T + c.block_size - 1) / c.block_size;
  int nblocks = nlog + 5;
  cf_paged_layout_t L;
  make_layout(c, nblocks, &L);
  // Block table: a random permutation of the cache blocks; every 5th logical block is -1.
  std::vector<int32_t> perm(nblocks), table(nlog);
  for (int i = 0; i < nblocks; i++) perm[i] = i;
  for (int i = nblocks - 1; i > 0; i--) std::swap(perm[i], perm[kt_randint(i + 1)]);
  for (int p = 0; p < nlog; p++) table[p] = p % 5 == 3 ? -1 : perm[p];
  int64_t row = (int64_t)c.KV * c.hd, rs = row + (c.hd % 8 ? 2 : 8);  // padded rows
  size_t nsrc = (size_t)c.T * rs;
  std::vector<uint16_t> kh(nsrc), vh(nsrc);
  for (size_t i = 0; i < nsrc; i++) { kh[i] = (uint16_t)kt_rand(); vh[i] = (uint16_t)kt_rand(); }
  for (auto *h : {&kh, &vh})
    for (auto &x : *h)
      if (x == 0xffff) x = 0x1234;  // keep the poison pattern unique
  cf_bf16_t *dk, *dv, *hk = NULL, *hv = NULL;
  if (c.host_src) {
    KT_CUDA(cudaHostAlloc((void **)&hk, nsrc * 2, cudaHostAllocMapped));
    KT_CUDA(cudaHostAlloc((void **)&hv, nsrc * 2, cudaHostAllocMapped));
    memcpy(hk, kh.data(), nsrc * 2);
    memcpy(hv, vh.data(), nsrc * 2);
    KT_CUDA(cudaHostGetDevicePointer((void **)&dk, hk, 0));
    KT_CUDA(cudaHostGetDevicePointer((void **)&dv, hv, 0));
  } else {
    dk = kt_upload(kh);
    dv = kt_upload(vh);
  }
  int64_t span = cf_paged_layout_span(&L);
  cf_bf16_t *cache = kt_dev<cf_bf16_t>(span);
  int32_t *dtable = kt_upload(table);
  cf_paged_args_t a = {L, cache, dtable, nlog, c.tok0, c.T, dk, dv, rs, kt_randint(2) ? 0 : 3};
  // Expected cache: poison everywhere except the rows of valid blocks.
  std::vector<uint16_t> exp(span, 0xffff);
  for (int t = 0; t < c.T; t++) {
    int tok = c.tok0 + t, blk = table[tok / c.block_size];
    if (blk < 0) continue;
    for (int pl = 0; pl < 2; pl++)
      for (int h = 0; h < c.KV; h++)
        for (int d = 0; d < c.hd; d++)
          exp[pl * L.kv_stride + blk * L.block_stride + (tok % c.block_size) * L.token_stride +
              h * L.head_stride + d] = (pl ? vh : kh)[t * rs + h * c.hd + d];
  }
  // The staged path copies from host memory: give it the host rows (a small staging buffer
  // so that the copy runs in several pieces).
  std::vector<uint16_t> kpin, vpin;
  cf_paged_args_t ah = a;
  cf_bf16_t *hpk = NULL, *hpv = NULL;
  // Slots of a few rows each, so the copy runs in many pieces through the ring.
  cf_paged_stager_t st = kt_stager(CF_PAGED_STAGE_SLOTS * 2 * ((3 * rs + 7) / 8 * 8 + 8));
  KT_CUDA(cudaHostAlloc((void **)&hpk, nsrc * 2, 0));
  KT_CUDA(cudaHostAlloc((void **)&hpv, nsrc * 2, 0));
  memcpy(hpk, kh.data(), nsrc * 2);
  memcpy(hpv, vh.data(), nsrc * 2);
  ah.k = hpk;
  ah.v = hpv;
  const char *mname[] = {"scatter", "scatter_memcpy", "load_staged", "load_batched"};
  std::vector<void *> bd(7);
  std::vector<const void *> bs_(7);
  std::vector<size_t> bz(7);
  cf_paged_batch_t batch = {bd.data(), bs_.data(), bz.data(), 7};  // small: several batches
  for (int method = 0; method < 4; method++) {
    KT_CUDA(cudaMemset(cache, 0xff, span * 2));
    bool ok = method == 0   ? KT_RC(cf_paged_scatter(&a, 0))
              : method == 1 ? KT_RC(cf_paged_scatter_memcpy(&a, table.data(), 0))
              : method == 2 ? KT_RC(cf_paged_load_staged(&ah, &st))
                            : KT_RC(cf_paged_load_batched(&ah, table.data(), &batch, st.copy));
    KT_CUDA(cudaStreamSynchronize(st.copy));
    KT_CUDA(cudaStreamSynchronize(st.scatter));
    auto got = kt_download(cache, span);
    int64_t bad = 0;
    for (int64_t i = 0; i < span; i++) bad += got[i] != exp[i];
    kt_check(ok && bad == 0, "paged %s %s (bs=%d KV=%d hd=%d tok0=%d T=%d, %s source): %lld of "
             "%lld cache elements wrong", mname[method], c.name,
             c.block_size, c.KV, c.hd, c.tok0, c.T, c.host_src ? "mapped host" : "device",
             (long long)bad, (long long)span);
  }
  // Gather back into poisoned rows; rows of skipped blocks stay poisoned.
  cf_bf16_t *gk = kt_dev<cf_bf16_t>(nsrc), *gv = kt_dev<cf_bf16_t>(nsrc);
  cf_paged_args_t g = a;
  g.k = gk;
  g.v = gv;
  bool ok = KT_RC(cf_paged_gather(&g, 0));
  auto rk = kt_download(gk, nsrc), rv = kt_download(gv, nsrc);
  int64_t bad = 0;
  for (int t = 0; t < c.T; t++) {
    bool skip = table[(c.tok0 + t) / c.block_size] < 0;
    for (int64_t e = 0; e < rs; e++) {
      size_t i = (size_t)t * rs + e;
      bool data = !skip && e < row;
      bad += rk[i] != (data ? kh[i] : 0xffff);
      bad += rv[i] != (data ? vh[i] : 0xffff);
    }
  }
  kt_check(ok && bad == 0, "paged gather %s (bs=%d KV=%d hd=%d tok0=%d T=%d): %lld wrong",
           c.name, c.block_size, c.KV, c.hd, c.tok0, c.T, (long long)bad);
  cudaFreeHost(hpk); cudaFreeHost(hpv);
  kt_stager_free(&st);
  if (c.host_src) { cudaFreeHost(hk); cudaFreeHost(hv); }
  else { cudaFree(dk); cudaFree(dv); }
  cudaFree(cache); cudaFree(dtable); cudaFree(gk); cudaFree(gv);
}

static void test_preconditions(void) {
  cf_paged_args_t a = {};
  cf_paged_layout_vllm(&a.layout, 4, 16, 2, 16);
  a.cache = a.k = a.v = (cf_bf16_t *)16;
  a.block_table = (const int32_t *)16;
  a.n_table = 1;
  a.tok0 = 10; a.T = 10; a.row_stride = 32;
  kt_check(cf_paged_scatter(&a, 0) == CF_EINVAL, "paged rejects a block table too short (%s)",
           cf_errmsg());
  a.tok0 = 0;
  void *d[1];
  const void *sr[1];
  size_t z[1];
  cf_paged_batch_t b = {d, sr, z, 1};
  int32_t tab[1] = {0};
  kt_check(cf_paged_load_batched(&a, tab, &b, 0) == CF_EINVAL,
           "load_batched rejects the legacy default stream (%s)", cf_errmsg());
}

// Load path: 1 GiB of K+V from mapped pinned host memory into randomly placed paged blocks.
static void bench(void) {
  const int KV = 8, hd = 128;
  const int64_t row = KV * hd, T = (1ll << 30) / (2 * row * 2);  // 262144 tokens
  size_t bytes = (size_t)T * row * 2;                            // per plane: 512 MiB
  cf_bf16_t *hk, *hv, *mk, *mv;
  KT_CUDA(cudaHostAlloc((void **)&hk, bytes, cudaHostAllocMapped));
  KT_CUDA(cudaHostAlloc((void **)&hv, bytes, cudaHostAllocMapped));
  for (size_t i = 0; i < bytes / 2; i++) { hk[i] = (uint16_t)(i * 2654435761u >> 7); hv[i] = hk[i] ^ 0x5555; }
  KT_CUDA(cudaHostGetDevicePointer((void **)&mk, hk, 0));
  KT_CUDA(cudaHostGetDevicePointer((void **)&mv, hv, 0));
  cf_bf16_t *dst;
  size_t dst_bytes = 2 * bytes + 2 * bytes / 8 + (64 << 20);  // the cache has 1/8 spare blocks
  KT_CUDA(cudaMalloc((void **)&dst, dst_bytes));
  cudaStream_t s;
  KT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cf_paged_stager_t st = kt_stager(32ll << 20);  // 64 MiB ring for the copy-engine path
  cudaEvent_t done;
  KT_CUDA(cudaEventCreate(&done));
  // Baseline: one contiguous 1 GiB pinned host-to-device copy.
  double base = kt_time_ms([&] {
    cudaMemcpyAsync(dst, hk, bytes, cudaMemcpyHostToDevice, s);
    cudaMemcpyAsync(dst + bytes / 2, hv, bytes, cudaMemcpyHostToDevice, s);
  }, 5, s);
  printf("contiguous 1 GiB pinned cudaMemcpy: %.2f ms = %.1f GB/s\n", base, 2 * bytes / base / 1e6);
  printf("RESULT load_contig 1073741824 %.4f\n", base);
  printf("%-10s %12s %10s %12s %10s %12s %10s %8s\n", "block", "kernel_ms", "GB/s", "64cta_ms",
         "GB/s", "memcpy_ms", "GB/s", "ratio");
  for (int bs : {8, 32, 128, 512}) {  // 16 KiB, 64 KiB, 256 KiB, 1 MiB per block and plane
    int nlog = (int)(T / bs), nblocks = nlog + nlog / 8;
    cf_paged_layout_t L;
    cf_paged_layout_vllm(&L, nblocks, bs, KV, hd);
    if (cf_paged_layout_span(&L) * 2 > (int64_t)dst_bytes) continue;
    std::vector<int32_t> perm(nblocks), table(nlog);
    for (int i = 0; i < nblocks; i++) perm[i] = i;
    for (int i = nblocks - 1; i > 0; i--) std::swap(perm[i], perm[kt_randint(i + 1)]);
    for (int p = 0; p < nlog; p++) table[p] = perm[p];
    int32_t *dtable = kt_upload(table);
    cf_paged_args_t a = {L, dst, dtable, nlog, 0, (int)T, mk, mv, row, 0};
    if (!KT_RC(cf_paged_scatter(&a, s))) return;
    double kms = kt_time_ms([&] { cf_paged_scatter(&a, s); }, 5, s);
    cf_paged_args_t a64 = a;
    a64.ctas = 64;
    double k64 = kt_time_ms([&] { cf_paged_scatter(&a64, s); }, 5, s);
    cf_paged_args_t ah = a;  // the copy-engine path reads the host pointers themselves
    ah.k = hk;
    ah.v = hv;
    // Timed on s: it waits for the scatter stream's last event, so the load is inside the window.
    double sms = kt_time_ms([&] {
      cudaEventRecord(done, s);
      cudaStreamWaitEvent(st.copy, done, 0);
      cf_paged_load_staged(&ah, &st);
      cudaEventRecord(done, st.scatter);
      cudaStreamWaitEvent(s, done, 0);
    }, 5, s);
    printf("RESULT load_staged %zu %.4f\n", (size_t)bs * row * 2, sms);
    std::vector<void *> bd(8192);
    std::vector<const void *> bsrc(8192);
    std::vector<size_t> bz(8192);
    cf_paged_batch_t batch = {bd.data(), bsrc.data(), bz.data(), 8192};
    if (KT_RC(cf_paged_load_batched(&ah, table.data(), &batch, s))) {
      double bms = kt_time_ms([&] { cf_paged_load_batched(&ah, table.data(), &batch, s); }, 3, s);
      printf("RESULT load_batched %zu %.4f\n", (size_t)bs * row * 2, bms);
    }
    double mms = kt_time_ms([&] { cf_paged_scatter_memcpy(&a, table.data(), s); }, 3, s);
    size_t bb = (size_t)bs * row * 2;
    printf("%-10zu %12.2f %10.1f %12.2f %10.1f %12.2f %10.1f %8.3f\n", bb, kms,
           2 * bytes / kms / 1e6, k64, 2 * bytes / k64 / 1e6, mms, 2 * bytes / mms / 1e6, base / kms);
    printf("RESULT load_paged %zu %.4f %.4f %.4f\n", bb, kms, mms, k64);
    cudaFree(dtable);
  }
  // How many CTAs the zero-copy load needs (32 KiB blocks): PCIe latency x bandwidth bounds it.
  {
    int bs = 16, nlog = (int)(T / bs);
    cf_paged_layout_t L;
    cf_paged_layout_vllm(&L, nlog, bs, KV, hd);
    std::vector<int32_t> table(nlog);
    for (int i = 0; i < nlog; i++) table[i] = i;
    for (int i = nlog - 1; i > 0; i--) std::swap(table[i], table[kt_randint(i + 1)]);
    int32_t *dtable = kt_upload(table);
    printf("32 KiB blocks, CTAs:");
    for (int ctas : {8, 16, 32, 64, 132, 264, 0}) {
      cf_paged_args_t a = {L, dst, dtable, nlog, 0, (int)T, mk, mv, row, ctas};
      double ms = kt_time_ms([&] { cf_paged_scatter(&a, s); }, 5, s);
      printf("  %d: %.1f GB/s", ctas, 2 * bytes / ms / 1e6);
      printf("\nRESULT load_ctas %d %.4f", ctas, ms);
    }
    printf("\n");
    cudaFree(dtable);
  }
  kt_stager_free(&st);
  cudaEventDestroy(done);
  cudaFree(dst); cudaFreeHost(hk); cudaFreeHost(hv); cudaStreamDestroy(s);
}

int main(int argc, char **argv) {
  bool b;
  if (!kt_init(argc, argv, &b)) return kt_finish();
  if (b) { bench(); return kt_finish(); }
  paged_case cases[] = {
      {"vllm", 16, 8, 128, 0, 0, 100, false},    {"vllm", 16, 8, 128, 0, 21, 77, true},
      {"vllm", 32, 2, 16, 0, 5, 150, false},     {"vllm-2byte", 16, 3, 6, 0, 3, 40, false},
      {"hnd", 16, 4, 64, 1, 7, 90, false},       {"hnd", 8, 2, 128, 1, 0, 33, true},
      {"vllm", 1, 2, 16, 0, 2, 9, false},
  };
  for (auto &c : cases) test_paged(c);
  test_preconditions();
  return kt_finish();
}
