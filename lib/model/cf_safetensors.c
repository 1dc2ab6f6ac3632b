/* cf_safetensors — see cf_safetensors.h. */
#include "model/cf_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cf_err.h"
#include "util/cf_json.h"

/* ------------------------------------------------------------------ reading */

void cf_st_tensors_free(cf_st_tensor_t *t, size_t n) {
  if (!t) return;
  for (size_t i = 0; i < n; i++) free(t[i].name);
  free(t);
}

static int cf__by_name(const void *a, const void *b) {
  return strcmp(((const cf_st_tensor_t *)a)->name, ((const cf_st_tensor_t *)b)->name);
}

static int cf__by_begin(const void *a, const void *b) {
  const cf_st_tensor_t *x = *(const cf_st_tensor_t *const *)a, *y = *(const cf_st_tensor_t *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

const char *cf_st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}

/* Reads a non-negative JSON integer array element; returns 0 or -1. */
static int cf__u64(const cf_json_t *v, uint64_t *out) {
  if (!v || v->type != CF_JSON_NUM || !v->is_int || v->i64 < 0) return -1;
  *out = (uint64_t)v->i64;
  return 0;
}

/* Validates one tensor entry `v` named v->key into *t. */
static int cf__parse_entry(const cf_json_t *v, uint64_t data_len, const char *file,
                           cf_st_tensor_t *t) {
  const char *nm = v->key;
  if (v->type != CF_JSON_OBJ)
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': expected an object, found %s", file, nm,
                     cf_json_type_name(v->type));
  const cf_json_t *dt = cf_json_get(v, "dtype"), *sh = cf_json_get(v, "shape"),
                  *off = cf_json_get(v, "data_offsets");
  if (!dt || dt->type != CF_JSON_STR)
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': key 'dtype': expected a string, found %s",
                     file, nm, dt ? cf_json_type_name(dt->type) : "nothing");
  if (cf_dtype_parse(dt->str, &t->dtype) != 0)
    return cf_seterr(CF_EDTYPE, "%s: tensor '%s': unknown dtype '%.32s' (known: F32, BF16, F16, "
                     "F64, I64, I32, I16, I8, U8, BOOL)", file, nm, dt->str);
  if (!sh || sh->type != CF_JSON_ARR)
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': key 'shape': expected an array, found %s",
                     file, nm, sh ? cf_json_type_name(sh->type) : "nothing");
  if (sh->len > CF_ST_MAX_DIMS)
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': %zu dimensions, at most %d supported", file,
                     nm, sh->len, CF_ST_MAX_DIMS);
  t->ndim = (int)sh->len;
  uint64_t numel = 1;
  int i = 0;
  for (const cf_json_t *d = sh->child; d; d = d->next, i++) {
    uint64_t x;
    if (cf__u64(d, &x) != 0)
      return cf_seterr(CF_EFORMAT, "%s: tensor '%s': shape[%d]: expected a non-negative integer",
                       file, nm, i);
    t->shape[i] = (int64_t)x;
    if (__builtin_mul_overflow(numel, x, &numel))
      return cf_seterr(CF_EFORMAT, "%s: tensor '%s': shape overflows 64 bits", file, nm);
  }
  t->numel = numel;
  if (!off || off->type != CF_JSON_ARR || off->len != 2 || cf__u64(off->child, &t->begin) ||
      cf__u64(off->child->next, &t->end))
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': key 'data_offsets': expected [begin, end] "
                     "non-negative integers", file, nm);
  if (t->end < t->begin)
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before begin",
                     file, nm, (unsigned long long)t->begin, (unsigned long long)t->end);
  uint64_t need;
  if (__builtin_mul_overflow(numel, (uint64_t)cf_dtype_size(t->dtype), &need) ||
      need != t->end - t->begin) {
    char s[160];
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] span %llu bytes, "
                     "but shape %s x %s needs %llu", file, nm, (unsigned long long)t->begin,
                     (unsigned long long)t->end, (unsigned long long)(t->end - t->begin),
                     cf_st_shape_str(s, sizeof s, t->ndim, t->shape), cf_dtype_name(t->dtype),
                     (unsigned long long)need);
  }
  if (t->end > data_len)
    return cf_seterr(CF_EFORMAT, "%s: tensor '%s': data ends at byte %llu of the data section, "
                     "but the file holds only %llu data bytes (truncated file?)", file, nm,
                     (unsigned long long)t->end, (unsigned long long)data_len);
  return 0;
}

int cf_st_parse_header(const char *json, size_t len, uint64_t data_len, const char *file,
                       cf_st_tensor_t **out, size_t *n) {
  *out = NULL;
  *n = 0;
  cf_json_t *root;
  int rc = cf_json_parse(json, len, &root);
  if (rc) return cf_err_prefix(rc, "%s: safetensors header: ", file);
  if (root->type != CF_JSON_OBJ) {
    rc = cf_seterr(CF_EFORMAT, "%s: safetensors header: expected a JSON object, found %s", file,
                   cf_json_type_name(root->type));
    cf_json_free(root);
    return rc;
  }
  cf_st_tensor_t *t = calloc(root->len ? root->len : 1, sizeof *t);
  cf_st_tensor_t **ord = calloc(root->len ? root->len : 1, sizeof *ord);
  size_t k = 0;
  if (!t || !ord) { rc = cf_seterr(CF_ENOMEM, "%s: %zu tensor entries", file, root->len); goto out; }
  for (const cf_json_t *v = root->child; v; v = v->next) {
    if (strcmp(v->key, "__metadata__") == 0) {
      if (v->type != CF_JSON_OBJ) {
        rc = cf_seterr(CF_EFORMAT, "%s: '__metadata__': expected an object, found %s", file,
                       cf_json_type_name(v->type));
        goto out;
      }
      continue;
    }
    if ((rc = cf__parse_entry(v, data_len, file, &t[k])) != 0) goto out;
    if (!(t[k].name = strdup(v->key))) { rc = cf_seterr(CF_ENOMEM, "%s: tensor name", file); goto out; }
    k++;
  }
  qsort(t, k, sizeof *t, cf__by_name);
  for (size_t i = 0; i + 1 < k; i++)
    if (strcmp(t[i].name, t[i + 1].name) == 0) {
      rc = cf_seterr(CF_EFORMAT, "%s: tensor '%s' appears twice in the header", file, t[i].name);
      goto out;
    }
  /* Overlap check over the non-empty spans in offset order. */
  size_t m = 0;
  for (size_t i = 0; i < k; i++)
    if (t[i].end > t[i].begin) ord[m++] = &t[i];
  qsort(ord, m, sizeof *ord, cf__by_begin);
  for (size_t i = 1; i < m; i++)
    if (ord[i]->begin < ord[i - 1]->end) {
      rc = cf_seterr(CF_EFORMAT, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap",
                     file, ord[i - 1]->name, (unsigned long long)ord[i - 1]->begin,
                     (unsigned long long)ord[i - 1]->end, ord[i]->name,
                     (unsigned long long)ord[i]->begin, (unsigned long long)ord[i]->end);
      goto out;
    }
out:
  free(ord);
  cf_json_free(root);
  if (rc) { cf_st_tensors_free(t, k); return rc; }
  *out = t;
  *n = k;
  return 0;
}

int cf_st_open_mem(const void *buf, size_t len, const char *name, cf_st_file_t *f) {
  memset(f, 0, sizeof *f);
  if (!(f->path = strdup(name))) return cf_seterr(CF_ENOMEM, "%s", name);
  const uint8_t *b = buf;
  int rc;
  if (len < 8) {
    rc = cf_seterr(CF_EFORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                   name, len);
    goto fail;
  }
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | b[i];
  if (hl > len - 8) {
    rc = cf_seterr(CF_EFORMAT, "%s: header length %llu runs past the end of the file (%zu bytes "
                   "after the length field)", name, (unsigned long long)hl, len - 8);
    goto fail;
  }
  if (hl > CF_ST_MAX_HEADER) {
    rc = cf_seterr(CF_EFORMAT, "%s: header length %llu exceeds the %u-byte limit", name,
                   (unsigned long long)hl, CF_ST_MAX_HEADER);
    goto fail;
  }
  f->data = b + 8 + hl;
  f->data_len = len - 8 - hl;
  rc = cf_st_parse_header((const char *)b + 8, (size_t)hl, f->data_len, name, &f->tensors,
                          &f->n_tensors);
  if (rc) goto fail;
  for (size_t i = 0; i < f->n_tensors; i++) f->tensors[i].data = f->data + f->tensors[i].begin;
  return 0;
fail:
  cf_st_close(f);
  return rc;
}

int cf_st_open(const char *path, cf_st_file_t *f) {
  memset(f, 0, sizeof *f);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return cf_seterr(cf_err_from_errno(-e), "%s: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return cf_seterr(cf_err_from_errno(-e), "%s: stat: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return cf_seterr(CF_EFORMAT, "%s: not a regular file", path);
  }
  size_t len = (size_t)st.st_size;
  void *map = NULL;
  if (len > 0) {
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      int e = errno;
      close(fd);
      return cf_seterr(cf_err_from_errno(-e), "%s: mmap of %zu bytes: %s", path, len, strerror(e));
    }
  }
  close(fd); /* the mapping keeps the file alive */
  int rc = cf_st_open_mem(map ? map : "", len, path, f);
  if (rc) {
    if (map) munmap(map, len);
    return rc;
  }
  f->map = map;
  f->map_len = len;
  return 0;
}

void cf_st_close(cf_st_file_t *f) {
  if (!f) return;
  cf_st_tensors_free(f->tensors, f->n_tensors);
  if (f->map) munmap(f->map, f->map_len);
  free(f->path);
  memset(f, 0, sizeof *f);
}

const cf_st_tensor_t *cf_st_find(const cf_st_file_t *f, const char *name) {
  size_t lo = 0, hi = f->n_tensors;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(f->tensors[mid].name, name);
    if (c == 0) return &f->tensors[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

/* ------------------------------------------------------------------ shard index */

void cf_st_index_free(cf_st_index_t *ix) {
  if (!ix) return;
  for (size_t i = 0; i < ix->n_entries; i++) free(ix->tensor[i]);
  for (size_t i = 0; i < ix->n_shards; i++) free(ix->shards[i]);
  free(ix->tensor);
  free(ix->shard);
  free(ix->shards);
  memset(ix, 0, sizeof *ix);
}

int cf_st_index_parse(const char *json, size_t len, const char *file, cf_st_index_t *ix) {
  memset(ix, 0, sizeof *ix);
  cf_json_t *root;
  int rc = cf_json_parse(json, len, &root);
  if (rc) return cf_err_prefix(rc, "%s: ", file);
  const cf_json_t *wm = cf_json_get(root, "weight_map");
  if (!wm || wm->type != CF_JSON_OBJ) {
    rc = cf_seterr(CF_EFORMAT, "%s: key 'weight_map': expected an object, found %s", file,
                   wm ? cf_json_type_name(wm->type) : "nothing");
    goto out;
  }
  if (wm->len == 0) { rc = cf_seterr(CF_EFORMAT, "%s: weight_map is empty", file); goto out; }
  if (!(ix->tensor = calloc(wm->len, sizeof *ix->tensor)) ||
      !(ix->shard = calloc(wm->len, sizeof *ix->shard)) ||
      !(ix->shards = calloc(wm->len, sizeof *ix->shards))) {
    rc = cf_seterr(CF_ENOMEM, "%s: %zu entries", file, wm->len);
    goto out;
  }
  for (const cf_json_t *e = wm->child; e; e = e->next) {
    if (e->type != CF_JSON_STR || !e->str[0] || strchr(e->str, '/') || strcmp(e->str, ".") == 0 ||
        strcmp(e->str, "..") == 0 || strlen(e->str) != e->len) {
      rc = cf_seterr(CF_EFORMAT, "%s: weight_map['%s']: expected a file name in the checkpoint "
                     "directory", file, e->key);
      goto out;
    }
    /* Shards are few (tens) even for large models: a linear search is fine. */
    size_t s = 0;
    while (s < ix->n_shards && strcmp(ix->shards[s], e->str) != 0) s++;
    if (s == ix->n_shards) {
      if (!(ix->shards[s] = strdup(e->str))) { rc = cf_seterr(CF_ENOMEM, "%s", file); goto out; }
      ix->n_shards++;
    }
    if (!(ix->tensor[ix->n_entries] = strdup(e->key))) { rc = cf_seterr(CF_ENOMEM, "%s", file); goto out; }
    ix->shard[ix->n_entries++] = s;
  }
out:
  cf_json_free(root);
  if (rc) cf_st_index_free(ix);
  return rc;
}

/* ------------------------------------------------------------------ writing */

void cf_st_writer_init(cf_st_writer_t *w) { memset(w, 0, sizeof *w); }

void cf_st_writer_close(cf_st_writer_t *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
  free(w->e);
  free(w->meta_json);
  memset(w, 0, sizeof *w);
}

int cf_st_writer_add(cf_st_writer_t *w, const char *name, cf_dtype_t dtype, int ndim,
                     const int64_t *shape, const void *data) {
  if (!name || !*name || strcmp(name, "__metadata__") == 0)
    return cf_seterr(CF_EINVAL, "safetensors writer: invalid tensor name '%s'", name ? name : "");
  if ((unsigned)dtype >= CF_DT__COUNT)
    return cf_seterr(CF_EINVAL, "safetensors writer: tensor '%s': unknown dtype %d", name, dtype);
  if (ndim < 0 || ndim > CF_ST_MAX_DIMS)
    return cf_seterr(CF_EINVAL, "safetensors writer: tensor '%s': %d dimensions (0..%d)", name,
                     ndim, CF_ST_MAX_DIMS);
  for (size_t i = 0; i < w->n; i++)
    if (strcmp(w->e[i].name, name) == 0)
      return cf_seterr(CF_EINVAL, "safetensors writer: tensor '%s' added twice", name);
  uint64_t bytes = cf_dtype_size(dtype);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return cf_seterr(CF_EINVAL, "safetensors writer: tensor '%s': shape[%d] = %lld", name, i,
                       (long long)shape[i]);
    if (__builtin_mul_overflow(bytes, (uint64_t)shape[i], &bytes))
      return cf_seterr(CF_EINVAL, "safetensors writer: tensor '%s': size overflows", name);
  }
  if (w->n == w->cap) {
    size_t nc = w->cap ? 2 * w->cap : 16;
    cf_st_wentry_t *ne = realloc(w->e, nc * sizeof *ne);
    if (!ne) return cf_seterr(CF_ENOMEM, "safetensors writer: %zu entries", nc);
    w->e = ne;
    w->cap = nc;
  }
  cf_st_wentry_t *e = &w->e[w->n];
  memset(e, 0, sizeof *e);
  if (!(e->name = strdup(name))) return cf_seterr(CF_ENOMEM, "safetensors writer: name");
  e->dtype = dtype;
  e->ndim = ndim;
  for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
  e->data = data;
  e->bytes = bytes;
  w->n++;
  return 0;
}

/* Appends JSON-escaped `s` (with quotes) to a growing buffer. */
typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} cf__sb;

static void cf__sb_put(cf__sb *b, const char *s, size_t len) {
  if (b->oom) return;
  if (b->n + len + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + len + 1) nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) { b->oom = 1; return; }
    b->p = np;
    b->cap = nc;
  }
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = 0;
}

static void cf__sb_fmt(cf__sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cf__sb_fmt(cf__sb *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  cf__sb_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

static void cf__sb_str(cf__sb *b, const char *s) {
  size_t need = cf_json_escape(NULL, 0, s);
  char *tmp = malloc(need + 1);
  if (!tmp) { b->oom = 1; return; }
  cf_json_escape(tmp, need + 1, s);
  cf__sb_put(b, tmp, need);
  free(tmp);
}

int cf_st_writer_meta(cf_st_writer_t *w, const char *key, const char *value) {
  cf__sb b = {0};
  if (w->meta_json) cf__sb_put(&b, w->meta_json, strlen(w->meta_json)), cf__sb_put(&b, ",", 1);
  cf__sb_str(&b, key);
  cf__sb_put(&b, ":", 1);
  cf__sb_str(&b, value);
  if (b.oom) { free(b.p); return cf_seterr(CF_ENOMEM, "safetensors writer: metadata"); }
  free(w->meta_json);
  w->meta_json = b.p;
  return 0;
}

static int cf__write_all(int fd, const void *p, uint64_t n, const char *path) {
  const char *c = p;
  while (n > 0) {
    size_t k = n > (1u << 30) ? (1u << 30) : (size_t)n;
    ssize_t r = write(fd, c, k);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      return cf_seterr(cf_err_from_errno(-e), "%s: write: %s", path, strerror(e));
    }
    c += r;
    n -= (uint64_t)r;
  }
  return 0;
}

int cf_st_writer_write(cf_st_writer_t *w, const char *path) {
  cf__sb h = {0};
  cf__sb_put(&h, "{", 1);
  if (w->meta_json) {
    cf__sb_put(&h, "\"__metadata__\":{", 16);
    cf__sb_put(&h, w->meta_json, strlen(w->meta_json));
    cf__sb_put(&h, "}", 1);
  }
  uint64_t off = 0;
  for (size_t i = 0; i < w->n; i++) {
    const cf_st_wentry_t *e = &w->e[i];
    if (i || w->meta_json) cf__sb_put(&h, ",", 1);
    cf__sb_str(&h, e->name);
    cf__sb_fmt(&h, ":{\"dtype\":\"%s\",\"shape\":[", cf_dtype_name(e->dtype));
    for (int d = 0; d < e->ndim; d++) cf__sb_fmt(&h, "%s%lld", d ? "," : "", (long long)e->shape[d]);
    cf__sb_fmt(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
               (unsigned long long)(off + e->bytes));
    off += e->bytes;
  }
  cf__sb_put(&h, "}", 1);
  /* Pad with spaces so the data section starts 8-byte aligned (as the reference writer does):
   * F32 tensors can then be used in place from a mapping. */
  while (!h.oom && (h.n + 8) % 8) cf__sb_put(&h, " ", 1);
  if (h.oom) { free(h.p); return cf_seterr(CF_ENOMEM, "%s: safetensors header", path); }

  size_t tl = strlen(path) + 32;
  char *tmp = malloc(tl);
  if (!tmp) { free(h.p); return cf_seterr(CF_ENOMEM, "%s", path); }
  snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
  int rc = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    rc = cf_seterr(cf_err_from_errno(-e), "%s: %s", tmp, strerror(e));
    goto out;
  }
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
  if ((rc = cf__write_all(fd, len8, 8, tmp)) || (rc = cf__write_all(fd, h.p, h.n, tmp))) goto out;
  for (size_t i = 0; i < w->n && !rc; i++)
    if (w->e[i].bytes) rc = cf__write_all(fd, w->e[i].data, w->e[i].bytes, tmp);
  if (rc) goto out;
  if (fsync(fd) != 0) {
    int e = errno;
    rc = cf_seterr(cf_err_from_errno(-e), "%s: fsync: %s", tmp, strerror(e));
    goto out;
  }
  if (close(fd) != 0) {
    int e = errno;
    fd = -1;
    rc = cf_seterr(cf_err_from_errno(-e), "%s: close: %s", tmp, strerror(e));
    goto out;
  }
  fd = -1;
  if (rename(tmp, path) != 0) {
    int e = errno;
    rc = cf_seterr(cf_err_from_errno(-e), "rename %s -> %s: %s", tmp, path, strerror(e));
    goto out;
  }
  /* Make the rename itself durable; best effort (some filesystems refuse fsync on dirs). */
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup(".");
  int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  if (dfd >= 0) {
    (void)fsync(dfd);
    close(dfd);
  }
  free(dir);
out:
  if (fd >= 0) close(fd);
  if (rc) unlink(tmp);
  free(tmp);
  free(h.p);
  return rc;
}
