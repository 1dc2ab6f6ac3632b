/* libFuzzer target: a whole safetensors file image through cf_st_open_mem (header length,
 * header JSON, every tensor's dtype/shape/offsets, overlap and bounds checks). On success it
 * reads every byte of every tensor, so ASan catches any span the validator let past the
 * buffer, and looks every name up again. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "model/cf_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cf_st_file_t f;
  if (cf_st_open_mem(data, size, "fuzz.safetensors", &f) != 0) return 0;
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < f.n_tensors; i++) {
    const cf_st_tensor_t *t = &f.tensors[i];
    const uint8_t *p = t->data;
    for (uint64_t b = 0; b < t->end - t->begin; b++) sink ^= p[b];
    if (cf_st_find(&f, t->name) != t) __builtin_trap();
    if (t->numel * cf_dtype_size(t->dtype) != t->end - t->begin) __builtin_trap();
  }
  (void)sink;
  cf_st_close(&f);
  return 0;
}
