// cf_probe — the smallest real CUDA unit: reports whether a usable GPU is present.
// The CUDA backend's kernel families live beside it, one .cu/.h per family.
#include "kernels/cf_probe.h"

#include <cuda_runtime.h>

// kernels

__global__ void cf_probe_kernel(int *out) { *out = 42; }

// launchers

extern "C" int cf_probe_gpu_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}
