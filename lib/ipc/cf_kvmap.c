/* cf_kvmap — see cf_kvmap.h. */
#include "ipc/cf_kvmap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cf_err.h"

/* On-disk header of a CacheFlow-format file (little-endian hosts only). */
typedef struct {
  char magic[8];
  uint32_t version;
  int32_t n_layers, num_blocks, block_size, n_kv_heads, head_dim, dtype;
  uint64_t block_stride, token_stride, head_stride;
} cf__kvhdr_t;

int cf_kv_layout_init(cf_kv_layout_t *lay, int n_layers, int num_blocks, int block_size,
                      int n_kv_heads, int head_dim, cf_dtype_t dtype) {
  memset(lay, 0, sizeof *lay);
  const struct { const char *n; int v; } f[] = {{"n_layers", n_layers}, {"num_blocks", num_blocks},
      {"block_size", block_size}, {"n_kv_heads", n_kv_heads}, {"head_dim", head_dim}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
    if (f[i].v <= 0) return cf_seterr(CF_EINVAL, "kv layout: %s must be > 0, got %d", f[i].n, f[i].v);
  size_t es = cf_kv_elem_size(dtype);
  if (!es) return cf_seterr(CF_EDTYPE, "kv layout: dtype %d is not a KV dtype (f32, bf16, f16)", (int)dtype);
  lay->n_layers = n_layers; lay->num_blocks = num_blocks; lay->block_size = block_size;
  lay->n_kv_heads = n_kv_heads; lay->head_dim = head_dim; lay->dtype = dtype;
  lay->head_stride = (uint64_t)head_dim * es;
  lay->token_stride = lay->head_stride * (uint64_t)n_kv_heads;
  lay->block_stride = lay->token_stride * (uint64_t)block_size;
  if ((double)lay->block_stride * num_blocks * 2 * n_layers > (double)(1ull << 40))
    return cf_seterr(CF_ERANGE, "kv layout: %d layers x %d blocks x %llu bytes exceeds 1 TiB", n_layers,
                     num_blocks, (unsigned long long)lay->block_stride);
  return 0;
}

int cf_kv_layout_check(const cf_kv_layout_t *lay, const cf_model_config_t *mc) {
  if (lay->n_layers <= 0 || lay->num_blocks <= 0 || lay->block_size <= 0 ||
      lay->n_kv_heads <= 0 || lay->head_dim <= 0)
    return cf_seterr(CF_EINVAL, "kv layout: non-positive shape (%d layers, %d blocks, block_size %d, "
                     "%d kv heads, head_dim %d)", lay->n_layers, lay->num_blocks, lay->block_size,
                     lay->n_kv_heads, lay->head_dim);
  if (mc) {
    if (lay->n_layers != mc->n_layers)
      return cf_seterr(CF_ESHAPE, "kv layout: %d layers, model has %d", lay->n_layers, mc->n_layers);
    if (cf_kv_row_heads(lay) != mc->n_kv_heads)
      return cf_seterr(CF_ESHAPE, "kv layout: %d kv heads, model has %d", cf_kv_row_heads(lay), mc->n_kv_heads);
    if (lay->head_dim != mc->head_dim)
      return cf_seterr(CF_ESHAPE, "kv layout: head_dim %d, model has %d", lay->head_dim, mc->head_dim);
  }
  uint64_t es = cf_kv_elem_size(lay->dtype);
  if (!es) return cf_seterr(CF_EDTYPE, "kv layout: dtype %d is not a KV dtype (f32, bf16, f16)", (int)lay->dtype);
  for (int kv = 0; kv < 2; kv++) {
    cf_kv_strides_t s = cf_kv_plane(lay, kv);
    const char *pl = kv ? "V" : "K";
    typedef struct { uint64_t stride, count; const char *name; } dim_t;
    dim_t d[4] = {{s.block, (uint64_t)lay->num_blocks, "block_stride"},
                  {s.token, (uint64_t)lay->block_size, "token_stride"},
                  {s.head, (uint64_t)lay->n_kv_heads, "head_stride"},
                  {s.dim, (uint64_t)lay->head_dim, "dim_stride"}};
    for (int i = 0; i < 4; i++)
      if (d[i].count > 1 && (!d[i].stride || d[i].stride % es))
        return cf_seterr(CF_ESHAPE, "kv layout: %s %s %llu is not a nonzero multiple of the element size %llu",
                         pl, d[i].name, (unsigned long long)d[i].stride, (unsigned long long)es);
    for (int i = 0; i < 4; i++) /* smallest stride first: each must step over all smaller ones */
      for (int j = i + 1; j < 4; j++)
        if (d[j].stride < d[i].stride) { dim_t t = d[i]; d[i] = d[j]; d[j] = t; }
    uint64_t span = es;
    const char *pname = NULL;
    for (int i = 0; i < 4; i++) {
      if (d[i].count <= 1) continue;
      if (d[i].stride < span)
        return cf_seterr(CF_ESHAPE, "kv layout: %s %s %llu overlaps: %s spans %llu bytes (elements would share bytes)",
                         pl, d[i].name, (unsigned long long)d[i].stride, pname ? pname : "one element",
                         (unsigned long long)span);
      if ((double)d[i].stride * (double)(d[i].count - 1) > (double)(1ull << 50))
        return cf_seterr(CF_ERANGE, "kv layout: %s %s %llu x %llu exceeds 1 PiB", pl, d[i].name,
                         (unsigned long long)d[i].stride, (unsigned long long)d[i].count);
      span += d[i].stride * (d[i].count - 1);
      pname = d[i].name;
    }
  }
  if (lay->head0 < 0 || lay->model_heads < 0 || lay->head0 + lay->n_kv_heads > cf_kv_row_heads(lay))
    return cf_seterr(CF_ESHAPE, "kv layout: heads %d..%d of a %d-head row", lay->head0,
                     lay->head0 + lay->n_kv_heads - 1, cf_kv_row_heads(lay));
  return 0;
}

uint64_t cf_kv_layout_extent(const cf_kv_layout_t *lay, int kv) {
  cf_kv_strides_t s = cf_kv_plane(lay, kv);
  uint64_t e = cf_kv_elem_size(lay->dtype);
  if (lay->num_blocks > 1) e += s.block * (uint64_t)(lay->num_blocks - 1);
  if (lay->block_size > 1) e += s.token * (uint64_t)(lay->block_size - 1);
  if (lay->n_kv_heads > 1) e += s.head * (uint64_t)(lay->n_kv_heads - 1);
  if (lay->head_dim > 1) e += s.dim * (uint64_t)(lay->head_dim - 1);
  return e;
}

static int cf__set_path(char *dst, size_t n, const char *path) {
  if (strlen(path) >= n) return cf_seterr(CF_EINVAL, "kv buffer path longer than %zu bytes: %s", n - 1, path);
  snprintf(dst, n, "%s", path);
  return 0;
}

static int cf__alloc_layers(cf_kvmap_t *m, int L) {
  m->k = calloc((size_t)L, sizeof(uint8_t *));
  m->v = calloc((size_t)L, sizeof(uint8_t *));
  if (!m->k || !m->v) return cf_seterr(CF_ENOMEM, "kv map: %d layers", L);
  return 0;
}

static void cf__finish_map(cf_kvmap_t *m) {
  const cf_kv_layout_t *L = &m->layout;
  uint64_t es = cf_kv_elem_size(L->dtype);
  m->dense_rows = cf_kv_row_heads(L) == L->n_kv_heads;
  for (int kv = 0; kv < 2; kv++) {
    cf_kv_strides_t s = cf_kv_plane(L, kv);
    m->dense_rows &= s.dim == es && s.head == es * (uint64_t)L->head_dim &&
                     s.token == s.head * (uint64_t)L->n_kv_heads;
  }
}

/* Map the file behind `fd` whole (we need it all: blocks of every layer). */
static int cf__map_fd(cf_kvmap_t *m, int fd, const char *path, size_t bytes) {
  if (m->n_maps == CF_KVMAP_MAX_FILES)
    return cf_seterr(CF_EINVAL, "kv map: more than %d distinct files (at %s)", CF_KVMAP_MAX_FILES, path);
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    return cf_seterr(cf_err_from_errno(-errno), "%s: mmap %zu bytes: %s", path, bytes, strerror(errno));
  m->maps[m->n_maps].addr = p;
  m->maps[m->n_maps].len = bytes;
  snprintf(m->maps[m->n_maps].path, sizeof m->maps[0].path, "%s", path);
  m->n_maps++;
  return 0;
}

static void cf__file_layers(cf_kvmap_t *m) {
  uint8_t *base = m->maps[0].addr;
  for (int l = 0; l < m->layout.n_layers; l++) {
    uint64_t ko, vo;
    cf_kvmap_file_offsets(&m->layout, l, &ko, &vo);
    m->k[l] = base + ko;
    m->v[l] = base + vo;
  }
  cf__finish_map(m);
}

int cf_kvmap_create(cf_kvmap_t *m, const char *path, const cf_kv_layout_t *lay) {
  memset(m, 0, sizeof *m);
  int rc = cf_kv_layout_check(lay, NULL);
  if (rc) return rc;
  /* the header records block/token/head strides only: dense head vectors, whole rows */
  if ((lay->dim_stride && lay->dim_stride != cf_kv_elem_size(lay->dtype)) ||
      (lay->vs.block | lay->vs.token | lay->vs.head | lay->vs.dim) || lay->head0 ||
      (lay->model_heads && lay->model_heads != lay->n_kv_heads))
    return cf_seterr(CF_EINVAL, "kv file %s: dim_stride, V strides and shards are not recorded by the file format", path);
  char tmp[256];
  if ((rc = cf__set_path(tmp, sizeof tmp, path))) return rc;
  m->layout = *lay;
  if ((rc = cf__alloc_layers(m, lay->n_layers))) { cf_kvmap_close(m); return rc; }
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0660);
  if (fd < 0) {
    rc = cf_seterr(cf_err_from_errno(-errno), "%s: create: %s", path, strerror(errno));
    cf_kvmap_close(m);
    return rc;
  }
  size_t bytes = CF_KVMAP_HEADER + (size_t)lay->n_layers * 2 * cf_kv_layout_plane_bytes(lay);
  /* posix_fallocate reserves tmpfs pages now, so a full /dev/shm fails here with ENOSPC
   * instead of SIGBUS on first touch in the middle of a restore. */
  int e = posix_fallocate(fd, 0, (off_t)bytes);
  if (e == EOPNOTSUPP || e == EINVAL) e = ftruncate(fd, (off_t)bytes) ? errno : 0;
  cf__kvhdr_t h = {.version = 2, .n_layers = lay->n_layers, .num_blocks = lay->num_blocks,
                   .block_size = lay->block_size, .n_kv_heads = lay->n_kv_heads,
                   .head_dim = lay->head_dim, .dtype = (int32_t)lay->dtype,
                   .block_stride = lay->block_stride, .token_stride = lay->token_stride,
                   .head_stride = lay->head_stride};
  memcpy(h.magic, CF_KVMAP_MAGIC, 8);
  if (e) rc = cf_seterr(cf_err_from_errno(-e), "%s: reserve %zu bytes: %s", path, bytes, strerror(e));
  else if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
    rc = cf_seterr(CF_EIO, "%s: write header: %s", path, strerror(errno));
  else rc = cf__map_fd(m, fd, path, bytes);
  close(fd);
  if (rc) { unlink(path); cf_kvmap_close(m); return rc; }
  m->owner = 1;
  cf__file_layers(m);
  return 0;
}

int cf_kvmap_open(cf_kvmap_t *m, const char *path, const cf_kv_layout_t *expect) {
  memset(m, 0, sizeof *m);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return cf_seterr(cf_err_from_errno(-errno), "%s: open: %s", path, strerror(errno));
  struct stat st;
  cf__kvhdr_t h;
  int rc = 0;
  if (fstat(fd, &st) || pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
    rc = cf_seterr(CF_EFORMAT, "%s: shorter than the %zu-byte kv buffer header", path, sizeof h);
    goto out;
  }
  if (memcmp(h.magic, CF_KVMAP_MAGIC, 8) || h.version != 2) {
    rc = cf_seterr(CF_EFORMAT, "%s: not a CacheFlow kv buffer file (bad magic or version %u)", path, h.version);
    goto out;
  }
  if (h.dtype < 0 || h.dtype >= CF_DT__COUNT) {
    rc = cf_seterr(CF_EFORMAT, "%s: header dtype %d unknown", path, h.dtype);
    goto out;
  }
  cf_kv_layout_t l = {.n_layers = h.n_layers, .num_blocks = h.num_blocks, .block_size = h.block_size,
                      .n_kv_heads = h.n_kv_heads, .head_dim = h.head_dim, .dtype = (cf_dtype_t)h.dtype,
                      .block_stride = h.block_stride, .token_stride = h.token_stride,
                      .head_stride = h.head_stride};
  if ((rc = cf_kv_layout_check(&l, NULL))) { cf_err_prefix(rc, "%s: ", path); goto out; }
  if (expect) {
#define CF__CMP(f)                                                                            \
  if ((uint64_t)l.f != (uint64_t)expect->f) {                                                 \
    rc = cf_seterr(CF_EMISMATCH, "%s: layout field " #f " is %llu, expected %llu", path,      \
                   (unsigned long long)l.f, (unsigned long long)expect->f);                   \
    goto out;                                                                                 \
  }
    CF__CMP(n_layers) CF__CMP(num_blocks) CF__CMP(block_size) CF__CMP(n_kv_heads)
    CF__CMP(head_dim) CF__CMP(dtype) CF__CMP(block_stride) CF__CMP(token_stride) CF__CMP(head_stride)
#undef CF__CMP
  }
  size_t bytes = CF_KVMAP_HEADER + (size_t)l.n_layers * 2 * cf_kv_layout_plane_bytes(&l);
  if ((size_t)st.st_size < bytes) {
    rc = cf_seterr(CF_EFORMAT, "%s: file is %lld bytes, layout needs %zu", path, (long long)st.st_size, bytes);
    goto out;
  }
  m->layout = l;
  if ((rc = cf__alloc_layers(m, l.n_layers))) goto out;
  if ((rc = cf__map_fd(m, fd, path, bytes))) goto out;
  cf__file_layers(m);
out:
  close(fd);
  if (rc) cf_kvmap_close(m);
  return rc;
}

/* Map `path` unless mapped already; *base gets its address, *len its size. */
static int cf__map_path(cf_kvmap_t *m, const char *path, uint8_t **base, size_t *len) {
  for (int i = 0; i < m->n_maps; i++)
    if (!strcmp(m->maps[i].path, path)) { *base = m->maps[i].addr; *len = m->maps[i].len; return 0; }
  char tmp[256];
  int rc = cf__set_path(tmp, sizeof tmp, path);
  if (rc) return rc;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return cf_seterr(cf_err_from_errno(-errno), "%s: open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) || st.st_size <= 0) {
    close(fd);
    return cf_seterr(CF_ERANGE, "%s: empty file", path);
  }
  rc = cf__map_fd(m, fd, path, (size_t)st.st_size);
  close(fd);
  if (rc) return rc;
  *base = m->maps[m->n_maps - 1].addr;
  *len = m->maps[m->n_maps - 1].len;
  return 0;
}

int cf_kvmap_attach(cf_kvmap_t *m, const cf_kv_layout_t *lay, const char *const *kpath,
                    const uint64_t *koff, const char *const *vpath, const uint64_t *voff) {
  memset(m, 0, sizeof *m);
  int rc = cf_kv_layout_check(lay, NULL);
  if (rc) return rc;
  m->layout = *lay;
  if ((rc = cf__alloc_layers(m, lay->n_layers))) goto fail;
  for (int l = 0; l < lay->n_layers; l++)
    for (int kv = 0; kv < 2; kv++) {
      const char *p = kv ? vpath[l] : kpath[l];
      uint64_t off = kv ? voff[l] : koff[l], span = cf_kv_layout_extent(lay, kv);
      uint8_t *base = NULL;
      size_t len = 0;
      if ((rc = cf__map_path(m, p, &base, &len))) goto fail;
      if (off > len || span > len - off) {
        rc = cf_seterr(CF_ERANGE, "layer %d %s buffer: offset %llu + %llu bytes (%d blocks x %llu) past the end of %s (%zu bytes)",
                       l, kv ? "V" : "K", (unsigned long long)off, (unsigned long long)span,
                       lay->num_blocks, (unsigned long long)cf_kv_plane(lay, kv).block, p, len);
        goto fail;
      }
      (kv ? m->v : m->k)[l] = base + off;
    }
  cf__finish_map(m);
  return 0;
fail:
  cf_kvmap_close(m);
  return rc;
}

int cf_kvmap_view(cf_kvmap_t *m, const cf_kv_layout_t *lay, uint8_t *const *k, uint8_t *const *v) {
  memset(m, 0, sizeof *m);
  int rc = cf_kv_layout_check(lay, NULL);
  if (rc) return rc;
  m->layout = *lay;
  if ((rc = cf__alloc_layers(m, lay->n_layers))) { cf_kvmap_close(m); return rc; }
  for (int l = 0; l < lay->n_layers; l++) {
    if (!k[l] || !v[l]) { cf_kvmap_close(m); return cf_seterr(CF_EINVAL, "kv view: layer %d buffer not mapped", l); }
    m->k[l] = k[l];
    m->v[l] = v[l];
  }
  cf__finish_map(m);
  return 0;
}

void cf_kvmap_close(cf_kvmap_t *m) {
  for (int i = 0; i < m->n_maps; i++) {
    munmap(m->maps[i].addr, m->maps[i].len);
    if (m->owner) unlink(m->maps[i].path);
  }
  free(m->k);
  free(m->v);
  memset(m, 0, sizeof *m);
}

int cf_kvmap_check_blocks(const cf_kv_layout_t *lay, const int32_t *blocks, int n) {
  /* A bitmap finds repeats in O(n + num_blocks) without sorting the caller's array. */
  size_t words = ((size_t)lay->num_blocks + 63) / 64;
  uint64_t stackbits[64], *seen = stackbits;
  if (words > 64 && !(seen = calloc(words, 8))) return cf_seterr(CF_ENOMEM, "block check: %zu words", words);
  if (words <= 64) memset(stackbits, 0, sizeof stackbits);
  int rc = 0;
  for (int i = 0; i < n; i++) {
    int32_t id = blocks[i];
    if (id < 0 || id >= lay->num_blocks) {
      rc = cf_seterr(CF_ERANGE, "block_ids[%d] = %d out of range [0, %d)", i, id, lay->num_blocks);
      break;
    }
    if (seen[id / 64] >> (id % 64) & 1) {
      rc = cf_seterr(CF_EINVAL, "block_ids[%d] = %d repeats an earlier block id", i, id);
      break;
    }
    seen[id / 64] |= 1ull << (id % 64);
  }
  if (seen != stackbits) free(seen);
  return rc;
}

/* How cf__copy moves a run of `n` elements between the paged side (layout dtype) and the flat
 * side: raw bytes, or the flat side in fp32 (converted on the way). */
enum { CF__RAW = 0, CF__F32 = 1 };

static inline void cf__run(cf_dtype_t dt, size_t es, void *paged, void *flat, size_t n, int to_paged, int mode) {
  if (mode == CF__RAW) {
    if (to_paged) memcpy(paged, flat, n * es);
    else memcpy(flat, paged, n * es);
  } else if (to_paged) {
    cf_dtype_from_f32(dt, flat, paged, n);
  } else {
    cf_dtype_to_f32(dt, paged, flat, n);
  }
}

/* n token rows of one block between the paged side (plane strides s, rows from `paged`) and the
 * flat rows, element by element, for head vectors that are not contiguous (vLLM's CPU float32 K:
 * dimension-major, tokens adjacent). Both sides hold the layout's dtype (a bit copy). Loops run
 * dim-outer, token-inner: the paged side then walks memory in order for such a K. */
static void cf__strided_bits(const cf_kv_layout_t *L, cf_kv_strides_t s, uint8_t *paged, uint8_t *flat, int n,
                             size_t row, int to_paged) {
  size_t es = cf_kv_elem_size(L->dtype), hd = (size_t)L->head_dim;
  for (int h = 0; h < L->n_kv_heads; h++)
    for (size_t d = 0; d < hd; d++) {
      uint8_t *p = paged + (size_t)h * s.head + d * s.dim;
      uint8_t *f = flat + ((size_t)(L->head0 + h) * hd + d) * es;
      /* fixed-size memcpy: inlined, and no alignment assumed of the engine's offsets */
      if (es == 4) {
        for (int i = 0; i < n; i++) {
          uint8_t *a = p + (size_t)i * s.token, *b = f + (size_t)i * row * 4;
          if (to_paged) memcpy(a, b, 4);
          else memcpy(b, a, 4);
        }
      } else {
        for (int i = 0; i < n; i++) {
          uint8_t *a = p + (size_t)i * s.token, *b = f + (size_t)i * row * 2;
          if (to_paged) memcpy(a, b, 2);
          else memcpy(b, a, 2);
        }
      }
    }
}

/* The one copy loop behind the four scatter/gather entry points. */
static void cf__copy(const cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1, void *k,
                     void *v, int to_paged, int mode) {
  const cf_kv_layout_t *L = &m->layout;
  size_t es = cf_kv_elem_size(L->dtype), fes = mode == CF__F32 ? sizeof(float) : es;
  size_t hd = (size_t)L->head_dim, row = hd * (size_t)cf_kv_row_heads(L); /* elements */
  for (int kv = 0; kv < 2; kv++) {
    cf_kv_strides_t s = cf_kv_plane(L, kv);
    int dense_vec = s.dim == es;
    for (int t = t0; t < t1;) {
      int bi = t / L->block_size, slot = t % L->block_size;
      int n = L->block_size - slot;
      if (n > t1 - t) n = t1 - t;
      uint8_t *paged = cf_kvmap_row(m, layer, kv, blocks[bi], slot);
      uint8_t *flat = (uint8_t *)(kv ? v : k) + (size_t)(t - t0) * row * fes;
      if (m->dense_rows) { /* a block's rows are contiguous on both sides: one run */
        cf__run(L->dtype, es, paged, flat, (size_t)n * row, to_paged, mode);
        t += n;
        continue;
      }
      if (!dense_vec && es == fes) { /* strided head vectors (vLLM CPU's K), a bit copy */
        cf__strided_bits(L, s, paged, flat, n, row, to_paged);
        t += n;
        continue;
      }
      for (int i = 0; i < n; i++)
        for (int h = 0; h < L->n_kv_heads; h++) {
          uint8_t *p = paged + (size_t)i * s.token + (size_t)h * s.head;
          uint8_t *f = flat + ((size_t)i * row + (size_t)(L->head0 + h) * hd) * fes;
          if (dense_vec) { cf__run(L->dtype, es, p, f, hd, to_paged, mode); continue; }
          for (size_t d = 0; d < hd; d++) /* strided and converted: element by element */
            cf__run(L->dtype, es, p + d * s.dim, f + d * fes, 1, to_paged, mode);
        }
      t += n;
    }
  }
}

void cf_kvmap_scatter(cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                      const void *k, const void *v) {
  cf__copy(m, layer, blocks, t0, t1, (void *)k, (void *)v, 1, CF__RAW);
}

void cf_kvmap_gather(const cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                     void *k, void *v) {
  cf__copy(m, layer, blocks, t0, t1, k, v, 0, CF__RAW);
}

void cf_kvmap_scatter_f32(cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                          const float *k, const float *v) {
  cf__copy(m, layer, blocks, t0, t1, (void *)k, (void *)v, 1, CF__F32);
}

void cf_kvmap_gather_f32(const cf_kvmap_t *m, int layer, const int32_t *blocks, int t0, int t1,
                         float *k, float *v) {
  cf__copy(m, layer, blocks, t0, t1, k, v, 0, CF__F32);
}
