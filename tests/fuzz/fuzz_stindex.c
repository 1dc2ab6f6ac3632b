/* libFuzzer target: model.safetensors.index.json text through cf_st_index_parse. On success
 * every entry must point at a listed shard whose name is a plain file name. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "model/cf_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cf_st_index_t ix;
  if (cf_st_index_parse((const char *)data, size, "fuzz/index.json", &ix) != 0) return 0;
  if (ix.n_entries == 0 || ix.n_shards == 0 || ix.n_shards > ix.n_entries) __builtin_trap();
  for (size_t i = 0; i < ix.n_entries; i++)
    if (ix.shard[i] >= ix.n_shards || !ix.tensor[i]) __builtin_trap();
  for (size_t i = 0; i < ix.n_shards; i++)
    if (!ix.shards[i][0] || strchr(ix.shards[i], '/') || strcmp(ix.shards[i], "..") == 0)
      __builtin_trap();
  cf_st_index_free(&ix);
  return 0;
}
