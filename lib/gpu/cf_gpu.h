/* cf_gpu — shared pieces of the GPU restore data path (lib/gpu): CUDA types for builds without
 * nvcc, driver entry points, device identity.
 *
 * lib/gpu never links libcuda: driver functions (stream memory operations, address ranges) are
 * looked up at run time with cudaGetDriverEntryPointByVersion, so binaries start on machines
 * without a driver and fail only the call that needs one, with CF_ENODEV / CF_ECUDA.
 * Built without nvcc (CF_HAVE_CUDA unset) every function returns CF_ENODEV.
 */
#ifndef CF_GPU_H
#define CF_GPU_H

#include <stdint.h>

#if defined(CF_HAVE_CUDA) && CF_HAVE_CUDA
#include <cuda_runtime_api.h>
#else
/* The runtime's own definitions, so prototypes read the same with and without CUDA. */
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
#endif

#define CF_GPU_IPC_HANDLE_BYTES 64 /* sizeof(cudaIpcMemHandle_t) */
#define CF_GPU_UUID_BYTES 16       /* sizeof(cudaUUID_t) */

/* The 16-byte UUID of CUDA device `device` (what nvidia-smi -L prints as GPU-xxxxxxxx-...).
 * Returns 0, CF_ENODEV (no CUDA in this build, no driver or no such device), CF_ECUDA. */
int cf_gpu_device_uuid(int device, uint8_t uuid[CF_GPU_UUID_BYTES]);

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" into out (>= 41 bytes). */
void cf_gpu_uuid_str(const uint8_t uuid[CF_GPU_UUID_BYTES], char *out);

/* Parse a device UUID as engines send it: "GPU-" (nvidia-smi -L, cf_gpu_uuid_str) or "MIG-"
 * (a MIG instance, R470+ drivers) followed by 32 hex digits, upper or lower case, either in the
 * 8-4-4-4-12 grouping or without dashes; the bare 32-digit / grouped form (torch's
 * `str(torch.cuda.get_device_properties(d).uuid)`) too. Returns 0 or CF_EINVAL naming the
 * string (e.g. the old "MIG-GPU-.../gi/ci" form, which carries no instance UUID). */
int cf_gpu_uuid_parse(const char *s, uint8_t uuid[CF_GPU_UUID_BYTES]);

/* Look up driver function `name` (e.g. "cuStreamWriteValue64") for the CUDA 12.0 ABI into *fn.
 * Returns 0, CF_ENODEV (no CUDA build, no driver) or CF_EUNSUPPORTED (this driver lacks it). */
int cf_gpu_driver_fn(const char *name, void **fn);

#endif
