// cf_ready_kern — system-scope readiness word kernels (see cf_ready_kern.h).
#include "kernels/cf_ready_kern.h"

#include <cuda/atomic>

#include "kernels/cf_cuda_check.h"

// kernels

// Stream order makes every earlier operation of the stream happen-before this kernel; the
// release store then publishes them at system scope before the value itself.
__global__ void cf_ready_store_kernel(unsigned long long *p, unsigned long long v) {
  cuda::atomic_ref<unsigned long long, cuda::thread_scope_system> a(*p);
  a.store(v, cuda::memory_order_release);
}

__global__ void cf_ready_wait_kernel(unsigned long long *p, unsigned long long v) {
  cuda::atomic_ref<unsigned long long, cuda::thread_scope_system> a(*p);
  while (a.load(cuda::memory_order_acquire) < v) __nanosleep(2000);
}

// launchers

extern "C" int cf_ready_store_u64(uint64_t *p, uint64_t v, cudaStream_t s) {
  CF_REQUIRE(p && (uintptr_t)p % 8 == 0, "cf_ready_store_u64: an 8-byte aligned address is required");
  cf_ready_store_kernel<<<1, 1, 0, s>>>((unsigned long long *)p, (unsigned long long)v);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_ready_wait_u64(const uint64_t *p, uint64_t v, cudaStream_t s) {
  CF_REQUIRE(p && (uintptr_t)p % 8 == 0, "cf_ready_wait_u64: an 8-byte aligned address is required");
  cf_ready_wait_kernel<<<1, 1, 0, s>>>((unsigned long long *)p, (unsigned long long)v);
  CF_LAUNCH_TRY();
  return 0;
}
