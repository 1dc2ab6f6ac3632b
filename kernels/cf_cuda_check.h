/* cf_cuda_check — llm.c-style checks for CUDA runtime and cuBLAS calls, but returning
 * errors instead of exiting: the daemon must turn a failed call into an error for one
 * request, never die.
 *
 *   CF_CUDA_TRY(cudaMemcpyAsync(...));   // on failure: return CF_ECUDA with "file:line: call: msg"
 *   CF_CUBLAS_TRY(cublasGemmEx(...));
 *   CF_LAUNCH_TRY();                      // after every <<<>>> launch: cudaGetLastError()
 *
 * They are usable from C and CUDA C++ code inside a function that returns int. The detail
 * message (cf_errmsg()) names the file, line, the failing expression and the CUDA error string.
 */
#ifndef CF_CUDA_CHECK_H
#define CF_CUDA_CHECK_H

#include <cuda_runtime_api.h>

/* cf_err.h is a C header without extern "C": give it C linkage when included from CUDA C++. */
#ifdef __cplusplus
extern "C" {
#endif
#include "util/cf_err.h"
#ifdef __cplusplus
}
#endif

/* On failure the runtime's last-error state is cleared too, so a later CF_LAUNCH_TRY does not
 * report this (non-sticky) error again as a launch failure. */
#define CF_CUDA_TRY(call)                                                                  \
  do {                                                                                     \
    cudaError_t cf__e = (call);                                                            \
    if (cf__e != cudaSuccess) {                                                            \
      (void)cudaGetLastError();                                                            \
      return cf_seterr(CF_ECUDA, "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #call,          \
                       cudaGetErrorString(cf__e), cudaGetErrorName(cf__e));                \
    }                                                                                      \
  } while (0)

#define CF_LAUNCH_TRY()                                                                    \
  do {                                                                                     \
    cudaError_t cf__e = cudaGetLastError();                                                \
    if (cf__e != cudaSuccess)                                                              \
      return cf_seterr(CF_ECUDA, "%s:%d: kernel launch: %s (%s)", __FILE__, __LINE__,      \
                       cudaGetErrorString(cf__e), cudaGetErrorName(cf__e));                \
  } while (0)

/* cuBLAS status codes are small ints; cublasGetStatusString exists since CUDA 11.4. */
#define CF_CUBLAS_TRY(call)                                                                \
  do {                                                                                     \
    int cf__s = (int)(call);                                                               \
    if (cf__s != 0)                                                                        \
      return cf_seterr(CF_ECUDA, "%s:%d: %s: cuBLAS status %d (%s)", __FILE__, __LINE__,   \
                       #call, cf__s, cublasGetStatusString((cublasStatus_t)cf__s));        \
  } while (0)

/* Precondition of a launcher: on failure return CF_EINVAL naming the condition. */
#define CF_REQUIRE(cond, ...)                                                              \
  do {                                                                                     \
    if (!(cond)) return cf_seterr(CF_EINVAL, __VA_ARGS__);                                 \
  } while (0)

#endif
