/* cf_weights_digest — a digest of a checkpoint's weight bytes (see cf_model_weights_digest in
 * cf_model.h): the store records it, so KV saved under other weights of the same shapes is never
 * served (the fingerprint covers the config and tensor headers, not the values). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "model/cf_model.h"
#include "util/cf_err.h"

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

int cf_model_weights_digest(const char *dir, uint8_t out[16]) {
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
  /* no weights there (the files went away after the load, or no checkpoint at all): a digest of
   * nothing would match any other empty directory's, so it is an error, not a value (and qsort
   * must not be handed names == NULL: UBSan's nonnull check, test_model_loader) */
  if (!rc && !n) rc = cf_seterr(CF_ENOENT, "%s: no *.safetensors file to digest", dir);
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
