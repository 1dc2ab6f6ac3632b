/* cf_model_info — model geometry for request checks, from config.json or a loaded model. */
#include "cf_model_info.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "model/cf_hfconfig.h"
#include "util/cf_err.h"

#define CF__MAX_CONFIG (4u << 20)

static void cf__from_config(const cf_model_config_t *c, const char *dir, cf_model_info_t *out) {
  memset(out, 0, sizeof *out);
  out->n_layers = c->n_layers;
  out->n_kv_heads = c->n_kv_heads;
  out->head_dim = c->head_dim;
  out->vocab = c->vocab;
  snprintf(out->dir, sizeof out->dir, "%s", dir);
}

int cf_model_info_check(const char *dir, cf_model_info_t *out) {
  char path[1024];
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "rb");
  if (!f) return cf_seterr(cf_err_from_errno(-errno), "%s: %s", path, strerror(errno));
  char *buf = malloc(CF__MAX_CONFIG + 1);
  size_t n = buf ? fread(buf, 1, CF__MAX_CONFIG + 1, f) : 0;
  fclose(f);
  if (!buf) return cf_seterr(CF_ENOMEM, "%s", path);
  if (n > CF__MAX_CONFIG) { free(buf); return cf_seterr(CF_EFORMAT, "%s: larger than %u bytes", path, CF__MAX_CONFIG); }
  cf_model_config_t c;
  int rc = cf_hfconfig_parse(buf, n, path, &c);
  free(buf);
  if (rc) return rc;
  char w1[1024], w2[1024];
  snprintf(w1, sizeof w1, "%s/model.safetensors", dir);
  snprintf(w2, sizeof w2, "%s/model.safetensors.index.json", dir);
  if (access(w1, R_OK) && access(w2, R_OK))
    return cf_seterr(CF_ENOENT, "%s: neither model.safetensors nor model.safetensors.index.json is readable", dir);
  cf__from_config(&c, dir, out);
  return 0;
}

void cf_model_info_from_model(const cf_model_t *m, cf_model_info_t *out) {
  cf__from_config(&m->cfg, m->dir ? m->dir : "", out);
  memcpy(out->fingerprint, m->fingerprint, 16);
}

static int cf__cmp_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Feed one file's name, size and sampled windows to h. */
static int cf__digest_file(XXH3_state_t *h, const char *dir, const char *name) {
  enum { WIN = 4096, NWIN = 64 };
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    return cf_seterr(cf_err_from_errno(-e), "%s: %s", path, strerror(e));
  }
  uint64_t size = (uint64_t)sb.st_size;
  XXH3_128bits_update(h, name, strlen(name) + 1);
  XXH3_128bits_update(h, &size, sizeof size);
  static __thread unsigned char buf[WIN];
  int rc = 0;
  for (int i = 0; i < NWIN && rc == 0; i++) {
    uint64_t off = size <= (uint64_t)WIN * NWIN ? (uint64_t)i * WIN : (size - WIN) * (uint64_t)i / (NWIN - 1);
    if (off >= size) break;
    size_t want = size - off < WIN ? (size_t)(size - off) : WIN;
    ssize_t k = pread(fd, buf, want, (off_t)off);
    if (k != (ssize_t)want) rc = cf_seterr(CF_EIO, "%s: read at %llu: %s", path, (unsigned long long)off,
                                          k < 0 ? strerror(errno) : "short read");
    else XXH3_128bits_update(h, buf, want);
  }
  close(fd);
  return rc;
}

int cf_model_info_weights_digest(const char *dir, uint8_t out[16]) {
  memset(out, 0, 16);
  DIR *dp = opendir(dir);
  if (!dp) return cf_seterr(cf_err_from_errno(-errno), "%s: %s", dir, strerror(errno));
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  for (struct dirent *e; (e = readdir(dp));) {
    size_t l = strlen(e->d_name);
    if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors") != 0) continue;
    if (n == cap) {
      char **nn = realloc(names, sizeof *names * (cap = cap ? 2 * cap : 8));
      if (!nn) { rc = cf_seterr(CF_ENOMEM, "%s: weights digest", dir); break; }
      names = nn;
    }
    if (!(names[n] = strdup(e->d_name))) { rc = cf_seterr(CF_ENOMEM, "%s: weights digest", dir); break; }
    n++;
  }
  closedir(dp);
  XXH3_state_t *h = rc ? NULL : XXH3_createState();
  if (!rc && !h) rc = cf_seterr(CF_ENOMEM, "%s: weights digest", dir);
  if (!rc) {
    qsort(names, n, sizeof *names, cf__cmp_name);
    XXH3_128bits_reset(h);
    XXH3_128bits_update(h, "cacheflow-weights-v1", 20);
    for (size_t i = 0; i < n && !rc; i++) rc = cf__digest_file(h, dir, names[i]);
  }
  if (!rc) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(h));
    memcpy(out, c.digest, 16);
  }
  if (h) XXH3_freeState(h);
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  return rc;
}
