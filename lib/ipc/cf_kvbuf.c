/* cf_kvbuf — see cf_kvbuf.h. */
#include "ipc/cf_kvbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cf_err.h"

/* On-disk header: the layout as fixed-width little-endian fields (we only run on LE hosts). */
typedef struct {
  char magic[8];
  uint32_t version;
  int32_t n_layers, num_blocks, block_size, n_kv_heads, head_dim, dtype;
  uint64_t stride_plane, stride_block, stride_token, stride_head, layer_bytes;
} cf__kvhdr_t;

int cf_kv_layout_init(cf_kv_layout_t *lay, int n_layers, int num_blocks, int block_size,
                      int n_kv_heads, int head_dim, cf_dtype_t dtype) {
  memset(lay, 0, sizeof *lay);
  const struct { const char *n; int v; } f[] = {{"n_layers", n_layers}, {"num_blocks", num_blocks},
      {"block_size", block_size}, {"n_kv_heads", n_kv_heads}, {"head_dim", head_dim}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
    if (f[i].v <= 0) return cf_seterr(CF_EINVAL, "kv layout: %s must be > 0, got %d", f[i].n, f[i].v);
  if (dtype != CF_DT_F32 && dtype != CF_DT_BF16 && dtype != CF_DT_F16)
    return cf_seterr(CF_EDTYPE, "kv layout: dtype %d is not a KV dtype (f32, bf16, f16)", (int)dtype);
  lay->n_layers = n_layers; lay->num_blocks = num_blocks; lay->block_size = block_size;
  lay->n_kv_heads = n_kv_heads; lay->head_dim = head_dim; lay->dtype = dtype;
  lay->stride_head = (uint64_t)head_dim;
  lay->stride_token = lay->stride_head * (uint64_t)n_kv_heads;
  lay->stride_block = lay->stride_token * (uint64_t)block_size;
  lay->stride_plane = lay->stride_block * (uint64_t)num_blocks;
  lay->layer_bytes = 2 * lay->stride_plane * cf_kv_elem_size(dtype);
  if ((double)lay->layer_bytes * n_layers > (double)(1ull << 40))
    return cf_seterr(CF_ERANGE, "kv layout: %d layers x %llu bytes exceeds 1 TiB", n_layers,
                     (unsigned long long)lay->layer_bytes);
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
    if (lay->n_kv_heads != mc->n_kv_heads)
      return cf_seterr(CF_ESHAPE, "kv layout: %d kv heads, model has %d", lay->n_kv_heads, mc->n_kv_heads);
    if (lay->head_dim != mc->head_dim)
      return cf_seterr(CF_ESHAPE, "kv layout: head_dim %d, model has %d", lay->head_dim, mc->head_dim);
  }
  size_t es = cf_kv_elem_size(lay->dtype);
  if (lay->dtype != CF_DT_F32 && lay->dtype != CF_DT_BF16 && lay->dtype != CF_DT_F16)
    return cf_seterr(CF_EDTYPE, "kv layout: dtype %d is not a KV dtype (f32, bf16, f16)", (int)lay->dtype);
  /* Rows must be dense (one memcpy per token row) and blocks must not overlap. */
  if (lay->stride_head != (uint64_t)lay->head_dim ||
      lay->stride_token != lay->stride_head * lay->n_kv_heads)
    return cf_seterr(CF_ESHAPE, "kv layout: token rows must be dense (stride_head %llu, stride_token %llu)",
                     (unsigned long long)lay->stride_head, (unsigned long long)lay->stride_token);
  if (lay->stride_block < lay->stride_token * lay->block_size)
    return cf_seterr(CF_ESHAPE, "kv layout: stride_block %llu < block_size x stride_token %llu",
                     (unsigned long long)lay->stride_block,
                     (unsigned long long)(lay->stride_token * lay->block_size));
  if (lay->stride_plane < lay->stride_block * lay->num_blocks)
    return cf_seterr(CF_ESHAPE, "kv layout: stride_plane %llu < num_blocks x stride_block %llu",
                     (unsigned long long)lay->stride_plane,
                     (unsigned long long)(lay->stride_block * lay->num_blocks));
  if (lay->layer_bytes < 2 * lay->stride_plane * es)
    return cf_seterr(CF_ESHAPE, "kv layout: layer_bytes %llu < 2 planes x %llu bytes",
                     (unsigned long long)lay->layer_bytes,
                     (unsigned long long)(lay->stride_plane * es));
  return 0;
}

size_t cf_kv_layout_file_bytes(const cf_kv_layout_t *lay) {
  return CF_KVBUF_HEADER + (size_t)lay->n_layers * lay->layer_bytes;
}

static void cf__hdr_from_layout(cf__kvhdr_t *h, const cf_kv_layout_t *l) {
  memset(h, 0, sizeof *h);
  memcpy(h->magic, CF_KVBUF_MAGIC, 8);
  h->version = 1;
  h->n_layers = l->n_layers; h->num_blocks = l->num_blocks; h->block_size = l->block_size;
  h->n_kv_heads = l->n_kv_heads; h->head_dim = l->head_dim; h->dtype = (int32_t)l->dtype;
  h->stride_plane = l->stride_plane; h->stride_block = l->stride_block;
  h->stride_token = l->stride_token; h->stride_head = l->stride_head;
  h->layer_bytes = l->layer_bytes;
}

static int cf__map(cf_kvbuf_t *b, int fd, size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    return cf_seterr(cf_err_from_errno(-errno), "%s: mmap %zu bytes: %s", b->path, bytes, strerror(errno));
  b->map = p;
  b->map_bytes = bytes;
  b->data = (uint8_t *)p + CF_KVBUF_HEADER;
  return 0;
}

int cf_kvbuf_create(cf_kvbuf_t *b, const char *path, const cf_kv_layout_t *lay) {
  memset(b, 0, sizeof *b);
  int rc = cf_kv_layout_check(lay, NULL);
  if (rc) return rc;
  if (strlen(path) >= sizeof b->path)
    return cf_seterr(CF_EINVAL, "kv buffer path longer than %zu bytes: %s", sizeof b->path - 1, path);
  snprintf(b->path, sizeof b->path, "%s", path);
  b->layout = *lay;
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0660);
  if (fd < 0) return cf_seterr(cf_err_from_errno(-errno), "%s: create: %s", path, strerror(errno));
  size_t bytes = cf_kv_layout_file_bytes(lay);
  /* posix_fallocate reserves tmpfs pages now, so a full /dev/shm fails here with ENOSPC
   * instead of SIGBUS on first touch in the middle of a restore. */
  int e = posix_fallocate(fd, 0, (off_t)bytes);
  if (e == EOPNOTSUPP || e == EINVAL) e = ftruncate(fd, (off_t)bytes) ? errno : 0;
  if (e) {
    close(fd); unlink(path);
    return cf_seterr(cf_err_from_errno(-e), "%s: reserve %zu bytes: %s", path, bytes, strerror(e));
  }
  cf__kvhdr_t h;
  cf__hdr_from_layout(&h, lay);
  if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
    rc = cf_seterr(CF_EIO, "%s: write header: %s", path, strerror(errno));
    close(fd); unlink(path);
    return rc;
  }
  rc = cf__map(b, fd, bytes);
  close(fd);
  if (rc) { unlink(path); return rc; }
  b->owner = 1;
  return 0;
}

int cf_kvbuf_open(cf_kvbuf_t *b, const char *path, const cf_kv_layout_t *expect) {
  memset(b, 0, sizeof *b);
  if (strlen(path) >= sizeof b->path)
    return cf_seterr(CF_EINVAL, "kv buffer path longer than %zu bytes: %s", sizeof b->path - 1, path);
  snprintf(b->path, sizeof b->path, "%s", path);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return cf_seterr(cf_err_from_errno(-errno), "%s: open: %s", path, strerror(errno));
  struct stat st;
  cf__kvhdr_t h;
  int rc = 0;
  if (fstat(fd, &st) || pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
    rc = cf_seterr(CF_EFORMAT, "%s: shorter than the %zu-byte kv buffer header", path, sizeof h);
    goto out;
  }
  if (memcmp(h.magic, CF_KVBUF_MAGIC, 8) || h.version != 1) {
    rc = cf_seterr(CF_EFORMAT, "%s: not a CacheFlow kv buffer (bad magic or version %u)", path, h.version);
    goto out;
  }
  cf_kv_layout_t l = {.n_layers = h.n_layers, .num_blocks = h.num_blocks, .block_size = h.block_size,
                      .n_kv_heads = h.n_kv_heads, .head_dim = h.head_dim, .dtype = (cf_dtype_t)h.dtype,
                      .stride_plane = h.stride_plane, .stride_block = h.stride_block,
                      .stride_token = h.stride_token, .stride_head = h.stride_head,
                      .layer_bytes = h.layer_bytes};
  if (h.dtype < 0 || h.dtype >= CF_DT__COUNT) {
    rc = cf_seterr(CF_EFORMAT, "%s: header dtype %d unknown", path, h.dtype);
    goto out;
  }
  if ((rc = cf_kv_layout_check(&l, NULL))) { cf_err_prefix(rc, "%s: ", path); goto out; }
  if (expect) {
#define CF__CMP(f)                                                                            \
  if ((uint64_t)l.f != (uint64_t)expect->f) {                                                 \
    rc = cf_seterr(CF_EMISMATCH, "%s: layout field " #f " is %llu, expected %llu", path,      \
                   (unsigned long long)l.f, (unsigned long long)expect->f);                   \
    goto out;                                                                                 \
  }
    CF__CMP(n_layers) CF__CMP(num_blocks) CF__CMP(block_size) CF__CMP(n_kv_heads)
    CF__CMP(head_dim) CF__CMP(dtype) CF__CMP(stride_plane) CF__CMP(stride_block)
    CF__CMP(stride_token) CF__CMP(stride_head) CF__CMP(layer_bytes)
#undef CF__CMP
  }
  size_t bytes = cf_kv_layout_file_bytes(&l);
  if ((size_t)st.st_size < bytes) {
    rc = cf_seterr(CF_EFORMAT, "%s: file is %lld bytes, layout needs %zu", path,
                   (long long)st.st_size, bytes);
    goto out;
  }
  b->layout = l;
  rc = cf__map(b, fd, bytes);
out:
  close(fd);
  return rc;
}

void cf_kvbuf_close(cf_kvbuf_t *b) {
  if (b->map) munmap(b->map, b->map_bytes);
  if (b->owner && b->path[0]) unlink(b->path);
  memset(b, 0, sizeof *b);
}

int cf_kvbuf_check_blocks(const cf_kv_layout_t *lay, const int32_t *blocks, int n) {
  /* A bitmap finds repeats in O(n + num_blocks) without sorting the caller's array. */
  size_t words = ((size_t)lay->num_blocks + 63) / 64;
  uint64_t stackbits[64], *seen = words <= 64 ? stackbits : calloc(words, 8);
  if (!seen) return cf_seterr(CF_ENOMEM, "block check: %zu words", words);
  memset(seen, 0, (words <= 64 ? words : 0) * 8);
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

/* One memcpy per (block, plane) run: a block's rows are contiguous in both layouts. */
static void cf__copy(cf_kvbuf_t *b, int layer, const int32_t *blocks, int t0, int t1, float *k,
                     float *v, int to_paged) {
  const cf_kv_layout_t *L = &b->layout;
  size_t row = (size_t)L->stride_token;
  for (int t = t0; t < t1;) {
    int bi = t / L->block_size, slot = t % L->block_size;
    int n = L->block_size - slot;
    if (n > t1 - t) n = t1 - t;
    size_t off = (size_t)(t - t0) * row, bytes = (size_t)n * row * sizeof(float);
    float *pk = cf_kvbuf_row(b, layer, 0, blocks[bi], slot);
    float *pv = cf_kvbuf_row(b, layer, 1, blocks[bi], slot);
    if (to_paged) { memcpy(pk, k + off, bytes); memcpy(pv, v + off, bytes); }
    else { memcpy(k + off, pk, bytes); memcpy(v + off, pv, bytes); }
    t += n;
  }
}

void cf_kvbuf_scatter(cf_kvbuf_t *b, int layer, const int32_t *blocks, int t0, int t1,
                      const float *k, const float *v) {
  cf__copy(b, layer, blocks, t0, t1, (float *)k, (float *)v, 1);
}

void cf_kvbuf_gather(const cf_kvbuf_t *b, int layer, const int32_t *blocks, int t0, int t1,
                     float *k, float *v) {
  cf__copy((cf_kvbuf_t *)b, layer, blocks, t0, t1, k, v, 0);
}
