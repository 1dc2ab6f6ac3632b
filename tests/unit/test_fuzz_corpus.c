/* Replays the committed fuzz corpus (every file in tests/fuzz/corpus/<target>/) through the parsers the
 * fuzzers target, so crash reproducers stay fixed under `make test` and `make asan` without
 * running a fuzzer. File names carry the expectation: valid_* must parse, bad_* must be
 * refused with a detail message, anything else (crash-*, minimised fuzzer finds) only has to
 * return cleanly. Runs from the repository root (tests/run.sh does). */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>

#include "cf_test.h"
#include "model/cf_hfconfig.h"
#include "model/cf_safetensors.h"
#include "store/cf_redis.h"
#include "store/cf_redis_slots.h"
/* the wire target itself (its checks and invariants), without libFuzzer's entry point */
#define CF_FUZZ_WIRE_NO_MAIN
#include "fuzz/fuzz_wire.c"

#define CORPUS "tests/fuzz/corpus"

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
  *len = n > 0 ? fread(b, 1, (size_t)n, f) : 0;
  fclose(f);
  return b;
}

typedef int (*parse_fn)(const unsigned char *buf, size_t len);

static int parse_st(const unsigned char *buf, size_t len) {
  cf_st_file_t f;
  int rc = cf_st_open_mem(buf, len, "corpus.safetensors", &f);
  if (rc == 0) cf_st_close(&f);
  return rc;
}

static int parse_cfg(const unsigned char *buf, size_t len) {
  cf_model_config_t c;
  return cf_hfconfig_parse((const char *)buf, len, "corpus/config.json", &c);
}

static int parse_index(const unsigned char *buf, size_t len) {
  cf_st_index_t ix;
  int rc = cf_st_index_parse((const char *)buf, len, "corpus/index.json", &ix);
  if (rc == 0) cf_st_index_free(&ix);
  return rc;
}

/* The remote tier's parsers: byte 0 even = remote_url, odd = a MOVED/ASK error reply (a reply
 * that is no redirection returns 0: it is an ordinary error, not a refusal). */
static int parse_redis(const unsigned char *buf, size_t len) {
  if (len < 1) return 0;
  if ((buf[0] & 1) == 0) {
    char z[1024];
    size_t n = len - 1 < sizeof z - 1 ? len - 1 : sizeof z - 1;
    memcpy(z, buf + 1, n);
    z[n] = 0;
    cf_redis_url_t u;
    return cf_redis_url_parse(z, &u);
  }
  unsigned slot;
  cf_redis_addr_t a;
  int k = cf_redis_parse_redirect((const char *)buf + 1, len - 1, "default", &slot, &a);
  return k == CF_REDIS_REDIR_NONE ? (cf_seterr(CF_EFORMAT, "not a redirection"), 0) : 0;
}

/* The request surface (fuzz_wire.c): 0 when every record was accepted, else the first refusal
 * with its detail (a broken invariant traps inside, failing the binary). */
static int parse_wire(const unsigned char *buf, size_t len) {
  int refused = 0;
  char first[512];
  cf_fuzz_wire_run(buf, len, &refused, first, sizeof first);
  return refused ? cf_seterr(CF_EINVAL, "%d refused; first: %s", refused, first) : 0;
}

/* Returns the number of files replayed. */
static int replay(const char *target, parse_fn fn) {
  char dir[256];
  snprintf(dir, sizeof dir, "%s/%s", CORPUS, target);
  DIR *d = opendir(dir);
  CF_CHECK_MSG(d != NULL, "%s: cannot open (run from the repository root)", dir);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    size_t len;
    unsigned char *b = slurp(path, &len);
    if (!b) continue;
    cf_errclear();
    int rc = fn(b, len);
    int is_bad = strncmp(e->d_name, "bad_", 4) == 0;
    int is_valid = strncmp(e->d_name, "valid_", 6) == 0 || (strstr(e->d_name, ".json") && !is_bad);
    if (is_valid)
      CF_CHECK_MSG(rc == 0, "%s: expected to parse, got %s: %s", path, cf_err_name(rc), cf_errmsg());
    else if (is_bad)
      CF_CHECK_MSG(rc < 0 && cf_errmsg()[0], "%s: expected a refusal with a message, got %d", path, rc);
    else
      CF_CHECK_MSG(rc == 0 || (rc < 0 && cf_errmsg()[0]), "%s: rc %d without a message", path, rc);
    free(b);
    n++;
  }
  closedir(d);
  return n;
}

CF_TEST(replay_safetensors_corpus) { CF_CHECK_GE(replay("safetensors", parse_st), 10); }
CF_TEST(replay_hfconfig_corpus) { CF_CHECK_GE(replay("hfconfig", parse_cfg), 10); }
CF_TEST(replay_stindex_corpus) { CF_CHECK_GE(replay("stindex", parse_index), 5); }
CF_TEST(replay_redisurl_corpus) { CF_CHECK_GE(replay("redisurl", parse_redis), 15); }
CF_TEST(replay_wire_corpus) { CF_CHECK_GE(replay("wire", parse_wire), 25); }
