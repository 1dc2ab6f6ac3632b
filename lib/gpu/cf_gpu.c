/* cf_gpu — see cf_gpu.h. */
#include "gpu/cf_gpu.h"

#include <stdio.h>
#include <string.h>

#include "util/cf_err.h"

void cf_gpu_uuid_str(const uint8_t u[CF_GPU_UUID_BYTES], char *out) {
  /* nvidia-smi's grouping: 4-2-2-2-6 bytes */
  char *p = out + sprintf(out, "GPU-");
  for (int i = 0; i < CF_GPU_UUID_BYTES; i++) {
    p += sprintf(p, "%02x", u[i]);
    if (i == 3 || i == 5 || i == 7 || i == 9) *p++ = '-';
  }
  *p = 0;
}

static int cf__hex(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int cf_gpu_uuid_parse(const char *s, uint8_t u[CF_GPU_UUID_BYTES]) {
  static const char grouped[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
  if (!s) return cf_seterr(CF_EINVAL, "gpu uuid: missing (expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
  const char *p = s;
  if (!strncmp(p, "GPU-", 4) || !strncmp(p, "MIG-", 4)) p += 4;
  size_t n = strlen(p);
  int dashed = n == sizeof grouped - 1;
  if (!dashed && n != 2 * CF_GPU_UUID_BYTES) goto bad;
  for (size_t i = 0, d = 0; i < n; i++) {
    if (dashed && grouped[i] == '-') {
      if (p[i] != '-') goto bad;
      continue;
    }
    int v = cf__hex(p[i]);
    if (v < 0) goto bad;
    if (d % 2 == 0) u[d / 2] = (uint8_t)(v << 4);
    else u[d / 2] |= (uint8_t)v;
    d++;
  }
  return 0;
bad:
  return cf_seterr(CF_EINVAL, "gpu uuid '%s': expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx "
                   "(nvidia-smi -L; MIG-... for a MIG instance; 32 hex digits without dashes also accepted)", s);
}

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)

int cf_gpu_device_uuid(int device, uint8_t uuid[CF_GPU_UUID_BYTES]) {
  (void)device; (void)uuid;
  return cf_seterr(CF_ENODEV, "GPU device %d: CUDA not built into this binary (no nvcc at build time)", device);
}

int cf_gpu_driver_fn(const char *name, void **fn) {
  *fn = NULL;
  return cf_seterr(CF_ENODEV, "driver function %s: CUDA not built into this binary", name);
}

#else

#include <string.h>

int cf_gpu_device_uuid(int device, uint8_t uuid[CF_GPU_UUID_BYTES]) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || device < 0 || device >= n) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ENODEV, "GPU device %d: %s (%d devices visible)", device,
                     e != cudaSuccess ? cudaGetErrorString(e) : "no such device", n);
  }
  struct cudaDeviceProp p;
  if ((e = cudaGetDeviceProperties(&p, device)) != cudaSuccess)
    return cf_seterr(CF_ECUDA, "GPU device %d: cudaGetDeviceProperties: %s", device, cudaGetErrorString(e));
  memcpy(uuid, p.uuid.bytes, CF_GPU_UUID_BYTES);
  return 0;
}

int cf_gpu_driver_fn(const char *name, void **fn) {
  enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  *fn = NULL;
  /* 12000: the CUDA 12.0 ABI of each symbol (e.g. the _v2 stream memory operations), whatever
   * toolkit built us. */
  cudaError_t e = cudaGetDriverEntryPointByVersion(name, fn, 12000, cudaEnableDefault, &q);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ENODEV, "driver function %s: %s", name, cudaGetErrorString(e));
  }
  if (q != cudaDriverEntryPointSuccess || !*fn) {
    *fn = NULL;
    return cf_seterr(CF_EUNSUPPORTED, "driver function %s: not provided by this driver (query result %d)",
                     name, (int)q);
  }
  return 0;
}

#endif
