/* cf_safetensors — reading (memory-mapped, fully validated) and writing safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {...}, "name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
 * then the data section; offsets are relative to its start. The reader trusts nothing: the
 * header length must lie inside the file, every tensor's byte span must equal
 * numel × dtype size and lie inside the data section, spans must not overlap, names must be
 * unique. Each failure is CF_EFORMAT (CF_EDTYPE for an unknown dtype) with a detail naming
 * the file and tensor, expected vs found.
 */
#ifndef CF_SAFETENSORS_H
#define CF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "model/cf_model.h"

#define CF_ST_MAX_DIMS 8
/* Headers larger than this are refused (the reference implementation's limit is 100 MB). */
#define CF_ST_MAX_HEADER (100u << 20)

typedef struct cf_st_tensor_s {
  char *name;
  cf_dtype_t dtype;
  int ndim;
  int64_t shape[CF_ST_MAX_DIMS];
  uint64_t numel;
  uint64_t begin, end;  /* byte span inside the data section */
  const void *data;     /* begin of the bytes (inside the mapping / buffer); any alignment */
} cf_st_tensor_t;

typedef struct cf_st_file_s {
  char *path;                 /* as given (names the file in error messages) */
  void *map;                  /* mmap of the whole file, or NULL for cf_st_open_mem */
  size_t map_len;
  const uint8_t *data;        /* data section */
  uint64_t data_len;
  cf_st_tensor_t *tensors;    /* sorted by name */
  size_t n_tensors;
} cf_st_file_t;

/* Parses and validates a header: `json[0..len)` is the JSON text, `data_len` the size of the
 * data section it describes, `file` names it in error details. On success *out (sorted by
 * name, `data` left NULL) and *n are owned by the caller: free with cf_st_tensors_free.
 * Errors: CF_EFORMAT, CF_EDTYPE, CF_ENOMEM. */
int cf_st_parse_header(const char *json, size_t len, uint64_t data_len, const char *file,
                       cf_st_tensor_t **out, size_t *n);
void cf_st_tensors_free(cf_st_tensor_t *t, size_t n);

/* Validates a whole safetensors image buf[0..len) (borrowed: must outlive f) into *f.
 * Close with cf_st_close. Errors as cf_st_parse_header. */
int cf_st_open_mem(const void *buf, size_t len, const char *name, cf_st_file_t *f);
/* Maps `path` read-only and validates it. Errors: CF_ENOENT/CF_EACCES/CF_EIO (open, stat,
 * mmap), then as cf_st_open_mem. Close with cf_st_close. */
int cf_st_open(const char *path, cf_st_file_t *f);
/* Unmaps and frees; NULL-safe, idempotent on a zeroed or closed struct. */
void cf_st_close(cf_st_file_t *f);

/* Tensor by exact name (binary search) or NULL. */
const cf_st_tensor_t *cf_st_find(const cf_st_file_t *f, const char *name);

/* The raw safetensors entry (dtype, shape, bytes in the mapping) of tensor `name` in a loaded
 * model, whatever shard holds it, or NULL. Valid until cf_model_free. For consumers that want
 * the stored precision (e.g. uploading BF16 weights as they are) rather than the fp32 view. */
const cf_st_tensor_t *cf_model_find_tensor(const cf_model_t *m, const char *name);

/* Formats a shape as "[2, 3]" into buf[cap] (truncated silently: for messages); returns buf. */
const char *cf_st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* A sharded checkpoint's model.safetensors.index.json: {"weight_map": {tensor: shard file}}.
 * Shard names must be plain file names in the checkpoint directory (no '/', not "." or "..",
 * no NUL); each distinct name appears once in `shards`, in first-use order. */
typedef struct {
  size_t n_entries;
  char **tensor;      /* [n_entries] tensor names */
  size_t *shard;      /* [n_entries] index into shards */
  size_t n_shards;
  char **shards;      /* [n_shards] file names */
} cf_st_index_t;

/* Parses index text json[0..len); `file` names it in error details. On success *ix is owned by
 * the caller (cf_st_index_free). Errors: CF_EFORMAT (bad JSON, no/empty weight_map, a value
 * that is not a plain file name), CF_ENOMEM. */
int cf_st_index_parse(const char *json, size_t len, const char *file, cf_st_index_t *ix);
/* NULL-safe; leaves *ix zeroed. */
void cf_st_index_free(cf_st_index_t *ix);

/* Writer: collect (name, dtype, shape, data) entries, then write them in the order added.
 * Data pointers are borrowed until cf_st_writer_write returns; names are copied.
 *   cf_st_writer_t w; cf_st_writer_init(&w);
 *   cf_st_writer_add(&w, "tokens", CF_DT_I32, 1, (int64_t[]){T}, ids);
 *   rc = cf_st_writer_write(&w, "out.safetensors");
 *   cf_st_writer_close(&w);
 */
typedef struct {
  char *name;
  cf_dtype_t dtype;
  int ndim;
  int64_t shape[CF_ST_MAX_DIMS];
  const void *data;
  uint64_t bytes;
} cf_st_wentry_t;

typedef struct {
  cf_st_wentry_t *e;
  size_t n, cap;
  char *meta_json;  /* optional "__metadata__" object text */
} cf_st_writer_t;

void cf_st_writer_init(cf_st_writer_t *w);
/* Adds one tensor. Errors: CF_EINVAL (empty or duplicate name, "__metadata__", ndim out of
 * 0..8, negative dim, unknown dtype, size overflow), CF_ENOMEM. */
int cf_st_writer_add(cf_st_writer_t *w, const char *name, cf_dtype_t dtype, int ndim,
                     const int64_t *shape, const void *data);
/* Adds a "__metadata__" string entry (key and value copied). Errors: CF_ENOMEM. */
int cf_st_writer_meta(cf_st_writer_t *w, const char *key, const char *value);
/* Writes `path` atomically: `path`.tmp.<pid> is written, fsync'd, then renamed over `path`
 * (and the directory fsync'd), so readers see either the old file or the whole new one. Errors: CF_EIO, CF_ENOSPC,
 * CF_EACCES, CF_ENOENT (directory missing), CF_ENOMEM; no temp file is left behind. */
int cf_st_writer_write(cf_st_writer_t *w, const char *path);
void cf_st_writer_close(cf_st_writer_t *w);

#endif
