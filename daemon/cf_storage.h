/* cf_storage — the daemon's data path over lib/store, plugged into cf_service through
 * cf_service_backend_t: engine buffer mappings, Lookup, Save, Evict and tier usage. Restores
 * are cf_dataplane's (which wraps these hooks); their store lookup is this module's `lookup`,
 * called on the executor thread.
 *
 * The store keeps KV in one dtype (config `kv_dtype`, resolved by the caller: f32, bf16 or
 * f16), chunked by `chunk_tokens` and keyed with the model fingerprint; engines must register
 * buffers of that dtype (the service refuses others with FAILED_PRECONDITION, and so does
 * engine_added). Save copies through lib/exec's cf_save_blocks (on the service's save worker,
 * not the loop): one chunk (all layers) at a time, so memory stays bounded by one chunk.
 * `lookup` and `save` are thread-safe (lib/store is).
 */
#ifndef CF_STORAGE_H
#define CF_STORAGE_H

#include "exec/cf_exec_gpu.h"
#include "ipc/cf_kvmap.h"
#include "cf_config.h"
#include "cf_model_info.h"
#include "cf_service.h"
#include "store/cf_store.h"

typedef struct cf_storage_s cf_storage_t;

/* Open (creating or recovering) the store in cfg->store_dir for `model`, holding KV of
 * `kv_dtype` (CF_DT_F32, CF_DT_BF16 or CF_DT_F16). Returns 0 or the store's error
 * (CF_EMISMATCH when the directory holds another model's, chunk size's or dtype's KV — the
 * message names both — CF_EACCES, CF_EIO, ...) with its detail.
 * `gpu`: NULL (gpu_executor = off), or the GPU executor: the CPU tier is then pinned host
 * memory (cf_gpu_pinned_alloc), engines may register CUDA IPC buffers (opened on gpu->device,
 * UUID checked) and their Saves copy device blocks to the store (cf_exec_gpu_save). `gpu` is
 * borrowed and must outlive the storage. */
int cf_storage_open(cf_storage_t **out, const cf_config_t *cfg, const cf_model_info_t *model,
                        cf_dtype_t kv_dtype, cf_exec_gpu_t *gpu);
/* Fill the hooks of `be` (ctx = s) and be->kv_dtype (the store's, as the proto's DType). */
void cf_storage_backend(cf_storage_t *s, cf_service_backend_t *be);
/* The store, for the executor and stats. */
cf_store_t *cf_storage_store(cf_storage_t *s);
/* Write back CPU-only chunks (so a restart keeps them), then close. NULL is a no-op. */
void cf_storage_close(cf_storage_t *s);

/* Where the executor writes engine e's KV: its shared-memory view (*kv) for a shm engine, or
 * its device view (*gkv) for a CUDA IPC engine; the other is NULL. Both NULL: no mapping. */
void cf_storage_engine_kv(const cf_engine_t *e, cf_kvmap_t **kv, const cf_gpu_kv_t **gkv);
/* 1 when one of e's buffer mappings took a SIGBUS (the engine truncated its file: the mapping is
 * zero pages now, what was written there never reaches the engine; ipc/cf_shmguard.h), its path
 * into *path; else 0. */
int cf_storage_engine_broken(const cf_engine_t *e, const char **path);
/* Lookup's answer from chunk keys already hashed (keys[0..nk) of a prompt of n tokens, C per
 * chunk, the last partial when C does not divide n): per[tier] counts the tokens of the leading
 * run of stored chunks, chunk_tiers (may be NULL; nk entries) every chunk's tier. Thread-safe. */
int cf_storage_lookup_keys(cf_store_t *st, const cf_store_key_t *keys, size_t nk, size_t n, size_t C, uint32_t per[4],
                           uint8_t *chunk_tiers);

/* A restore into engine e ended (ok: it succeeded) having written tokens[present_tokens, n) into
 * `blocks` except the cells skip[] ([ceil(n / C) * L], NULL: none) marks: a windowed layer's
 * cells no later token needs, which keep whatever the engine had. Each block written is marked
 * with the key of the first chunk whose skipped cells it holds (cleared when ok and none), so a
 * later Save of the same prefix from those blocks stops before that chunk (wrong KV is never
 * stored), while a block the engine reused for other tokens saves normally. Bounded: 8 bytes
 * per engine block, made on the first skip. Thread-safe against Save; unregister frees it. */
void cf_storage_restored(cf_engine_t *e, const uint8_t fingerprint[16], int C, int L, const int32_t *tokens, int n,
                         const int32_t *blocks, int n_blocks, int present_tokens, const uint8_t *skip, int ok);

#endif
