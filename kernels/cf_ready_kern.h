/* cf_ready_kern — one-thread kernels that write and wait on a 64-bit readiness word at system
 * scope: the fallback of lib/gpu/cf_gpu_ready when the driver lacks stream memory operations
 * (cuStreamWriteValue64 / cuStreamWaitValue64). `p` is a device address of host-mapped memory
 * (cudaHostRegister ... Mapped + cudaHostGetDevicePointer) or of device memory. */
#ifndef CF_READY_KERN_H
#define CF_READY_KERN_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Enqueue on `s`: once everything before it on s is done, store v to *p with a system-scope
 * release (visible to the CPU and to other GPUs' waiters in that order). Returns 0 or CF_ECUDA. */
int cf_ready_store_u64(uint64_t *p, uint64_t v, cudaStream_t s);

/* Enqueue on `s`: work after it on s starts only once *p >= v (system-scope acquire loads,
 * polled with __nanosleep; holds one thread of one SM while it waits). Returns 0 or CF_ECUDA. */
int cf_ready_wait_u64(const uint64_t *p, uint64_t v, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
