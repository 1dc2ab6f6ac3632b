/* Remote tier: CRC16 slots, MOVED/ASK parsing, URLs (no server), then against real redis-server
 * processes started here: a standalone server (TCP, unix socket, requirepass, maxmemory), and a
 * three-master Redis Cluster (routing, slot migration with MOVED and ASK, a master killed with
 * SIGKILL and restarted). Values are checked bit for bit; damage is made behind the tier's back
 * with real commands (SETRANGE, DEL). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cf_test.h"
#include "store/cf_redis.h"
#include "store/cf_redis_slots.h"
#include "store/cf_remote.h"
#include "unit/redis_testlib.h"
#include "unit/store_testlib.h"

/* ---------------------------------------------------------------- pure */

CF_TEST(redis_crc16_and_slots) {
  CF_CHECK_EQ(cf_redis_crc16("123456789", 9), 0x31C3); /* the spec's check value */
  CF_CHECK_EQ(cf_redis_key_slot("foo", 3), 12182);
  CF_CHECK_EQ(cf_redis_key_slot("bar", 3), 5061);
  const char *a = "{user1000}.following", *b = "{user1000}.followers";
  CF_CHECK_EQ(cf_redis_key_slot(a, strlen(a)), cf_redis_key_slot(b, strlen(b)));
  CF_CHECK_EQ(cf_redis_key_slot(a, strlen(a)), cf_redis_key_slot("user1000", 8));
  /* "{}" is no tag: the whole key is hashed; "foo{{bar}}zap" hashes "{bar" */
  CF_CHECK_EQ(cf_redis_key_slot("foo{}{bar}", 10), cf_redis_crc16("foo{}{bar}", 10) & 16383);
  CF_CHECK_EQ(cf_redis_key_slot("foo{{bar}}zap", 13), cf_redis_crc16("{bar", 4) & 16383);
  CF_CHECK_EQ(cf_redis_key_slot("foo{bar}{zap}", 13), cf_redis_key_slot("bar", 3));
}

CF_TEST(redis_redirect_parse) {
  unsigned slot = 0;
  cf_redis_addr_t a;
  const char *m = "MOVED 3999 127.0.0.1:6381";
  CF_CHECK_EQ(cf_redis_parse_redirect(m, strlen(m), "x", &slot, &a), CF_REDIS_REDIR_MOVED);
  CF_CHECK_EQ(slot, 3999);
  CF_CHECK_STR(a.host, "127.0.0.1");
  CF_CHECK_EQ(a.port, 6381);
  m = "ASK 12 [::1]:7000";
  CF_CHECK_EQ(cf_redis_parse_redirect(m, strlen(m), "x", &slot, &a), CF_REDIS_REDIR_ASK);
  CF_CHECK_STR(a.host, "::1");
  CF_CHECK_EQ(a.port, 7000);
  m = "MOVED 7 :6380"; /* a node that does not know its own address */
  CF_CHECK_EQ(cf_redis_parse_redirect(m, strlen(m), "10.0.0.9", &slot, &a), CF_REDIS_REDIR_MOVED);
  CF_CHECK_STR(a.host, "10.0.0.9");
  const char *bad[] = {"MOVED 16384 h:1", "MOVED x h:1", "MOVED 1 h", "MOVED 1 h:0", "ERR wrong", "ASK 1 h:99999",
                       "OOM command not allowed"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    CF_CHECK_MSG(cf_redis_parse_redirect(bad[i], strlen(bad[i]), "x", &slot, &a) == CF_REDIS_REDIR_NONE,
                 "'%s' parsed as a redirection", bad[i]);
  cf_redis_slotmap_t *sm = malloc(sizeof *sm);
  cf_redis_slotmap_init(sm);
  CF_CHECK_EQ(cf_redis_slotmap_covered(sm), 0);
  CF_CHECK_EQ(cf_redis_slotmap_assign(sm, 0, 5460, "a", 1), 0);
  CF_CHECK_EQ(cf_redis_slotmap_assign(sm, 5461, 16383, "b", 2), 0);
  CF_CHECK_EQ(cf_redis_slotmap_assign(sm, 5, 16384, "b", 2), CF_ERANGE);
  CF_CHECK_EQ(cf_redis_slotmap_covered(sm), 16384);
  CF_CHECK_EQ(sm->slot[5460], 0);
  CF_CHECK_EQ(sm->slot[5461], 1);
  CF_CHECK_EQ(cf_redis_slotmap_node(sm, "a", 1), 0); /* known nodes keep their index */
  free(sm);
}

CF_TEST(redis_url_parse) {
  cf_redis_url_t u;
  char s[512];
  CF_CHECK_EQ(cf_redis_url_parse("redis://10.1.2.3:7000", &u), 0);
  CF_CHECK_EQ(u.kind, CF_REDIS_TCP);
  CF_CHECK_STR(u.seeds[0].host, "10.1.2.3");
  CF_CHECK_EQ(u.seeds[0].port, 7000);
  CF_CHECK_EQ(cf_redis_url_parse("redis://cache/3", &u), 0);
  CF_CHECK_EQ(u.seeds[0].port, 6379);
  CF_CHECK_EQ(u.db, 3);
  CF_CHECK_EQ(cf_redis_url_parse("redis://[::1]:6380", &u), 0);
  CF_CHECK_STR(u.seeds[0].host, "::1");
  cf_redis_url_str(&u, s, sizeof s);
  CF_CHECK_STR(s, "redis://[::1]:6380");
  CF_CHECK_EQ(cf_redis_url_parse("redis+cluster://h1:1,h2:2,h3", &u), 0);
  CF_CHECK_EQ(u.kind, CF_REDIS_CLUSTER);
  CF_CHECK_EQ(u.n_seeds, 3);
  CF_CHECK_EQ(u.seeds[2].port, 6379);
  cf_redis_url_str(&u, s, sizeof s);
  CF_CHECK_STR(s, "redis+cluster://h1:1,h2:2,h3:6379");
  CF_CHECK_EQ(cf_redis_url_parse("unix:/run/redis/r.sock", &u), 0);
  CF_CHECK_EQ(u.kind, CF_REDIS_UNIX);
  CF_CHECK_STR(u.path, "/run/redis/r.sock");
  CF_CHECK_EQ(cf_redis_url_parse("redis+unix:///tmp/r.sock?db=2", &u), 0);
  CF_CHECK_STR(u.path, "/tmp/r.sock");
  CF_CHECK_EQ(u.db, 2);
  struct { const char *url, *msg; } bad[] = {
      {"", "empty"},
      {"http://x:1", "scheme must be"},
      {"rediss://x:1", "TLS"},
      {"redis://:secret@x:1", "remote_password"},
      {"redis://x:0", "port '0'"},
      {"redis://x:70000", "port '70000'"},
      {"redis://x:12ab", "port '12ab'"},
      {"redis://", "empty host"},
      {"redis://a:1,b:2", "redis+cluster"},
      {"redis+cluster://a:1,", "empty host"},
      {"redis+cluster://a:1/2", "no database"},
      {"redis://x/99", "database '99'"},
      {"unix:relative.sock", "absolute"},
      {"redis://::1:6379", "brackets"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int rc = cf_redis_url_parse(bad[i].url, &u);
    CF_CHECK_MSG(rc == CF_EINVAL, "'%s' accepted", bad[i].url);
    CF_CHECK_MSG(strstr(cf_errmsg(), bad[i].msg) != NULL, "'%s': message '%s' lacks '%s'", bad[i].url,
                 cf_errmsg(), bad[i].msg);
  }
}

/* ---------------------------------------------------------------- helpers */

#define NEED_REDIS()                                                   \
  do {                                                                 \
    if (!rt_have_redis()) {                                            \
      cf_test_skip("redis-server / redis-cli not installed (make deps)"); \
      return;                                                          \
    }                                                                  \
  } while (0)

static cf_remote_t *open_remote(const char *url, const cf_store_geom_t *g, const char *pw, int writer) {
  cf_remote_config_t c;
  cf_remote_config_default(&c);
  c.url = url;
  c.password = pw;
  c.writer = writer;
  c.timeout_ms = 2000;
  cf_remote_t *r = NULL;
  int rc = cf_remote_open(&c, g, &r);
  CF_CHECK_MSG(rc == 0, "open %s: %s", url, cf_errmsg());
  return r;
}

/* Put chunk id (generated cells) with n_tokens tokens. */
static int put_chunk(cf_remote_t *r, const cf_store_geom_t *g, uint64_t id, uint32_t n_tokens, int async) {
  const void *cells[64];
  uint8_t *buf = st_make_cells(g, id, n_tokens, cells);
  cf_store_key_t k = st_key(g, id);
  int rc = async ? cf_remote_put_async(r, &k, n_tokens, cells) : cf_remote_put(r, &k, n_tokens, cells);
  free(buf);
  return rc;
}

/* Read every layer of chunk id; 0 when all are bit-exact, else the first status (or CF_ECORRUPT for
 * wrong bytes: which must never happen). */
static int check_chunk(cf_remote_t *r, const cf_store_geom_t *g, uint64_t id, uint32_t n_tokens) {
  size_t cb = cf_store_cell_bytes_n(g, n_tokens);
  uint8_t *want = malloc(cb), *got = malloc(cf_store_cell_bytes(g));
  cf_store_key_t k = st_key(g, id);
  int out = 0;
  for (uint32_t l = 0; l < g->n_layers && !out; l++) {
    uint32_t nt = 0;
    int rc = cf_remote_read(r, &k, l, got, cf_store_cell_bytes(g), &nt);
    if (rc) { out = rc; break; }
    st_fill_cell(g, id, l, n_tokens, want);
    if (nt != n_tokens || memcmp(want, got, cb)) {
      cf_test_fail(__FILE__, __LINE__, "chunk %llu layer %u: WRONG BYTES served", (unsigned long long)id, l);
      out = CF_EINTERNAL;
    }
  }
  free(want), free(got);
  return out;
}

static char *url_of(const rt_server_t *s) {
  static char buf[4][700];
  static int i;
  char *p = buf[i++ % 4];
  if (s->sock[0]) snprintf(p, 700, "unix:%s", s->sock);
  else snprintf(p, 700, "redis://127.0.0.1:%d", s->port);
  return p;
}

/* ---------------------------------------------------------------- standalone */

CF_TEST(remote_standalone_roundtrip) {
  NEED_REDIS();
  rt_server_t s;
  CF_CHECK_EQ(rt_standalone(&s, cf_test_tmpdir(), "r1", NULL), 0);
  cf_store_geom_t g = st_geom(16, 4, 8);
  g.dtype = CF_STORE_DT_BF16;
  cf_remote_t *r = open_remote(url_of(&s), &g, NULL, 1);
  for (uint64_t id = 0; id < 10; id++) CF_CHECK_EQ(put_chunk(r, &g, id, 16, 0), 0);
  CF_CHECK_EQ(put_chunk(r, &g, 100, 5, 0), 0); /* a partial last chunk */
  cf_store_key_t keys[12];
  for (int i = 0; i < 10; i++) keys[i] = st_key(&g, (uint64_t)i);
  keys[10] = st_key(&g, 555); /* never saved */
  keys[11] = st_key(&g, 1);
  CF_CHECK_EQ(cf_remote_lookup(r, keys, 12), 10);
  uint8_t hit[12]; /* every key: the one past the miss too */
  CF_CHECK_EQ(cf_remote_lookup_each(r, keys, 12, hit), 11);
  CF_CHECK(hit[0] && hit[9] && !hit[10] && hit[11]);
  for (uint64_t id = 0; id < 10; id++) CF_CHECK_EQ(check_chunk(r, &g, id, 16), 0);
  CF_CHECK_EQ(check_chunk(r, &g, 100, 5), 0);
  CF_CHECK_EQ(check_chunk(r, &g, 555, 16), CF_ENOTFOUND);
  /* a pipeline of many cells at once, zero copy */
  cf_remote_cell_t cells[40];
  for (int i = 0; i < 40; i++) cells[i] = (cf_remote_cell_t){.key = keys[i / 4], .layer = (uint32_t)(i % 4)};
  cf_remote_batch_t *b;
  CF_CHECK_EQ(cf_remote_get(r, cells, 40, &b), 0);
  uint8_t *want = malloc(cf_store_cell_bytes(&g));
  for (int i = 0; i < 40; i++) {
    CF_CHECK_EQ(cells[i].status, 0);
    st_fill_cell(&g, (uint64_t)(i / 4), (uint32_t)(i % 4), 16, want);
    CF_CHECK(cells[i].bytes == cf_store_cell_bytes(&g) && memcmp(cells[i].data, want, cells[i].bytes) == 0);
  }
  cf_remote_get_release(r, b);
  /* async write-back, then flush */
  for (uint64_t id = 20; id < 30; id++) CF_CHECK_EQ(put_chunk(r, &g, id, 16, 1), 0);
  CF_CHECK_EQ(cf_remote_flush(r, 10000), 0);
  for (uint64_t id = 20; id < 30; id++) CF_CHECK_EQ(check_chunk(r, &g, id, 16), 0);
  /* another model (fingerprint), chunk size or dtype never sees these keys */
  cf_store_geom_t g2 = g;
  g2.fingerprint[0] ^= 1;
  cf_remote_t *r2 = open_remote(url_of(&s), &g2, NULL, 0);
  CF_CHECK_EQ(cf_remote_lookup(r2, keys, 10), 0);
  CF_CHECK_EQ(cf_remote_read(r2, &keys[0], 0, want, cf_store_cell_bytes(&g), NULL), CF_ENOTFOUND);
  cf_remote_close(r2);
  g2 = g;
  g2.dtype = CF_STORE_DT_F16;
  r2 = open_remote(url_of(&s), &g2, NULL, 0);
  CF_CHECK_EQ(cf_remote_lookup(r2, keys, 10), 0);
  cf_remote_close(r2);
  char k1[200], k2[200];
  g2 = g;
  g2.chunk_tokens = 32;
  r2 = open_remote(url_of(&s), &g2, NULL, 0);
  cf_remote_key(r, &keys[0], 0, k1, sizeof k1);
  cf_remote_key(r2, &keys[0], 0, k2, sizeof k2);
  CF_CHECK(strcmp(k1, k2) != 0);
  cf_remote_close(r2);
  /* verify scans every marker */
  cf_remote_verify_t v;
  CF_CHECK_EQ(cf_remote_verify(r, &v), 0);
  CF_CHECK_EQ(v.chunks_ok, 21);
  CF_CHECK_EQ(v.chunks_damaged, 0);
  CF_CHECK_EQ(v.cells_checked, 21 * 4);
  cf_remote_stats_t st;
  cf_remote_get_stats(r, &st);
  CF_CHECK_EQ(st.chunks_written, 21);
  CF_CHECK_EQ(st.cells_corrupt, 0);
  CF_CHECK_EQ(st.connected, 1);
  free(want);
  cf_remote_close(r);
  rt_stop(&s);
}

CF_TEST(remote_damage_detected) {
  NEED_REDIS();
  rt_server_t s;
  CF_CHECK_EQ(rt_standalone(&s, cf_test_tmpdir(), "r2", NULL), 0);
  cf_store_geom_t g = st_geom(16, 3, 8);
  g.dtype = CF_STORE_DT_F32, g.dtype_size = 4;
  cf_remote_t *r = open_remote(url_of(&s), &g, NULL, 0);
  for (uint64_t id = 0; id < 6; id++) CF_CHECK_EQ(put_chunk(r, &g, id, 16, 0), 0);
  char key[200];
  cf_store_key_t k;
  /* a flipped payload byte */
  k = st_key(&g, 0);
  size_t kl = cf_remote_key(r, &k, 1, key, sizeof key);
  redisReply *x = rt_cmd(&s, "SETRANGE %b 100 %b", key, kl, "\xff\xfe", (size_t)2);
  CF_CHECK(x && x->type == REDIS_REPLY_INTEGER);
  freeReplyObject(x);
  /* a cell deleted */
  k = st_key(&g, 1);
  kl = cf_remote_key(r, &k, 2, key, sizeof key);
  x = rt_cmd(&s, "DEL %b", key, kl);
  freeReplyObject(x);
  /* a value copied under another key (right checksum, wrong cell) */
  cf_store_key_t k2 = st_key(&g, 2), k3 = st_key(&g, 3);
  char key2[200], key3[200];
  size_t kl2 = cf_remote_key(r, &k2, 0, key2, sizeof key2), kl3 = cf_remote_key(r, &k3, 0, key3, sizeof key3);
  x = rt_cmd(&s, "COPY %b %b REPLACE", key2, kl2, key3, kl3);
  CF_CHECK(x && x->type == REDIS_REPLY_INTEGER && x->integer == 1);
  freeReplyObject(x);
  /* a truncated value */
  cf_store_key_t k4 = st_key(&g, 4);
  kl = cf_remote_key(r, &k4, 0, key, sizeof key);
  x = rt_cmd(&s, "SET %b %b", key, kl, "short", (size_t)5);
  freeReplyObject(x);

  cf_remote_verify_t v;
  CF_CHECK_EQ(cf_remote_verify(r, &v), 0);
  CF_CHECK_EQ(v.chunks_ok, 2);
  CF_CHECK_EQ(v.chunks_damaged, 4);
  CF_CHECK_EQ(v.cells_missing, 1);
  CF_CHECK_EQ(v.cells_corrupt, 3);
  CF_CHECK(v.first_damage[0] != 0);

  CF_CHECK_EQ(check_chunk(r, &g, 0, 16), CF_ECORRUPT);
  CF_CHECK_EQ(check_chunk(r, &g, 1, 16) == CF_ENOTFOUND || check_chunk(r, &g, 1, 16) == 0, 1);
  CF_CHECK_EQ(check_chunk(r, &g, 3, 16), CF_ECORRUPT);
  CF_CHECK_EQ(check_chunk(r, &g, 4, 16), CF_ECORRUPT);
  CF_CHECK_EQ(check_chunk(r, &g, 5, 16), 0);
  /* corrupt chunks lost their marker: lookups no longer offer them */
  cf_store_key_t keys[6];
  for (int i = 0; i < 6; i++) keys[i] = st_key(&g, (uint64_t)i);
  CF_CHECK_EQ(cf_remote_lookup(r, &keys[0], 1), 0);
  CF_CHECK_EQ(cf_remote_lookup(r, &keys[3], 1), 0);
  CF_CHECK_EQ(cf_remote_lookup(r, &keys[5], 1), 1);
  cf_remote_stats_t st;
  cf_remote_get_stats(r, &st);
  CF_CHECK_GE(st.cells_corrupt, 3);
  CF_CHECK_GE(st.cells_missing, 1);
  cf_remote_close(r);
  rt_stop(&s);
}

CF_TEST(remote_password_and_unix_socket) {
  NEED_REDIS();
  rt_server_t s;
  memset(&s, 0, sizeof s);
  snprintf(s.dir, sizeof s.dir, "%s/r3", cf_test_tmpdir());
  snprintf(s.sock, sizeof s.sock, "%s/r3/redis.sock", cf_test_tmpdir());
  snprintf(s.extra, sizeof s.extra, "--requirepass s3cret");
  mkdir(s.dir, 0755);
  /* start without the readiness ping: wait for the socket file */
  s.port = rt_free_port();
  pid_t pid = fork();
  if (pid == 0) {
    char port[16];
    snprintf(port, sizeof port, "%d", s.port);
    execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", s.dir, "--save", "",
           "--unixsocket", s.sock, "--requirepass", "s3cret", "--logfile", "redis.log", (char *)NULL);
    _exit(127);
  }
  s.pid = pid;
  /* rt_start's PING would get NOAUTH: wait for the socket to accept instead */
  for (int i = 0; i < 200; i++) {
    redisContext *c = redisConnectUnix(s.sock);
    int up = c && !c->err;
    if (c) redisFree(c);
    if (up) break;
    rt_sleep_ms(25);
  }
  cf_store_geom_t g = st_geom(8, 2, 8);
  g.dtype = CF_STORE_DT_BF16;
  char url[700];
  snprintf(url, sizeof url, "unix:%s", s.sock);
  cf_remote_t *r = open_remote(url, &g, "s3cret", 0);
  CF_CHECK_EQ(put_chunk(r, &g, 1, 8, 0), 0);
  CF_CHECK_EQ(check_chunk(r, &g, 1, 8), 0);
  cf_remote_close(r);
  /* a wrong password: every read is a miss (EIO), never a hang or wrong bytes */
  r = open_remote(url, &g, "wrong", 0);
  CF_CHECK_EQ(check_chunk(r, &g, 1, 8), CF_EIO);
  cf_store_key_t k = st_key(&g, 1);
  CF_CHECK_EQ(cf_remote_lookup(r, &k, 1), 0);
  cf_remote_stats_t st;
  cf_remote_get_stats(r, &st);
  CF_CHECK_GE(st.redis.connect_errors, 1);
  CF_CHECK_EQ(st.connected, 0);
  cf_remote_close(r);
  /* no password at all on a server that needs one */
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", s.port);
  r = open_remote(url, &g, NULL, 0);
  CF_CHECK_NE(check_chunk(r, &g, 1, 8), 0);
  cf_remote_close(r);
  rt_stop(&s);
}

CF_TEST(remote_server_down_then_back) {
  NEED_REDIS();
  rt_server_t s;
  CF_CHECK_EQ(rt_standalone(&s, cf_test_tmpdir(), "r4", NULL), 0);
  int port = s.port;
  rt_stop(&s); /* the port is known, nothing listens */
  cf_store_geom_t g = st_geom(8, 2, 8);
  g.dtype = CF_STORE_DT_BF16;
  cf_remote_t *r = open_remote(url_of(&s), &g, NULL, 1); /* opens while the server is down */
  cf_store_key_t k = st_key(&g, 7);
  CF_CHECK_EQ(cf_remote_lookup(r, &k, 1), 0);
  CF_CHECK_EQ(check_chunk(r, &g, 7, 8), CF_EIO);
  CF_CHECK_NE(put_chunk(r, &g, 7, 8, 0), 0);
  CF_CHECK_EQ(put_chunk(r, &g, 8, 8, 1), 0); /* queued; the writer drops it */
  CF_CHECK_EQ(cf_remote_flush(r, 10000), 0);
  cf_remote_stats_t st;
  cf_remote_get_stats(r, &st);
  CF_CHECK_EQ(st.connected, 0);
  CF_CHECK_GE(st.put_errors, 1);
  /* back on the same port: the client reconnects after its backoff */
  s.port = port;
  CF_CHECK_EQ(rt_start(&s), 0);
  int ok = 0;
  for (int i = 0; i < 600 && !ok; i++) { /* 60 s: a limit for a client that never comes back */
    ok = put_chunk(r, &g, 7, 8, 0) == 0;
    if (!ok) rt_sleep_ms(100);
  }
  CF_CHECK(ok);
  CF_CHECK_EQ(cf_remote_lookup(r, &k, 1), 1);
  CF_CHECK_EQ(check_chunk(r, &g, 7, 8), 0);
  cf_remote_get_stats(r, &st);
  CF_CHECK_EQ(st.connected, 1);
  /* restarted while the client sat idle: its pooled connections are stale; the very next
   * command goes through on a fresh one (no failure, no backoff wait) */
  rt_stop(&s);
  s.port = port;
  CF_CHECK_EQ(rt_start(&s), 0);
  CF_CHECK_EQ(put_chunk(r, &g, 9, 8, 0), 0);
  CF_CHECK_EQ(check_chunk(r, &g, 9, 8), 0);
  cf_remote_close(r);
  rt_stop(&s);
}

CF_TEST(remote_maxmemory_degrades) {
  NEED_REDIS();
  rt_server_t s;
  CF_CHECK_EQ(rt_standalone(&s, cf_test_tmpdir(), "r5", "--maxmemory 3mb --maxmemory-policy noeviction"), 0);
  cf_store_geom_t g = st_geom(64, 8, 64); /* 32 KiB cells, 256 KiB chunks */
  g.dtype = CF_STORE_DT_BF16;
  cf_remote_t *r = open_remote(url_of(&s), &g, NULL, 1);
  int n_ok = 0, n_full = 0;
  for (uint64_t id = 0; id < 40; id++) {
    int rc = put_chunk(r, &g, id, 64, 0);
    if (rc == 0) n_ok++;
    else if (rc == CF_ENOSPC) n_full++;
    else CF_CHECK_MSG(0, "put %llu: %s", (unsigned long long)id, cf_strerror(rc));
  }
  CF_CHECK_GT(n_ok, 0);
  CF_CHECK_GT(n_full, 0);
  /* every chunk the lookup offers reads bit-exact; refused ones are absent */
  int offered = 0;
  for (uint64_t id = 0; id < 40; id++) {
    cf_store_key_t k = st_key(&g, id);
    if (cf_remote_lookup(r, &k, 1) == 1) {
      offered++;
      CF_CHECK_EQ(check_chunk(r, &g, id, 64), 0);
    }
  }
  CF_CHECK_EQ(offered, n_ok);
  cf_remote_stats_t st;
  cf_remote_get_stats(r, &st);
  CF_CHECK_EQ(st.put_oom, (uint64_t)n_full);
  cf_remote_close(r);
  /* an evicting policy: cells of offered chunks may vanish; reads miss, never lie */
  redisReply *x = rt_cmd(&s, "CONFIG SET maxmemory-policy allkeys-random");
  freeReplyObject(x);
  r = open_remote(url_of(&s), &g, NULL, 1);
  for (uint64_t id = 100; id < 140; id++) put_chunk(r, &g, id, 64, 0);
  for (uint64_t id = 0; id < 140; id++) {
    int rc = check_chunk(r, &g, id, 64);
    CF_CHECK_MSG(rc == 0 || rc == CF_ENOTFOUND, "chunk %llu: %s", (unsigned long long)id, cf_strerror(rc));
  }
  cf_remote_close(r);
  rt_stop(&s);
}

CF_TEST(remote_queue_bounded) {
  NEED_REDIS();
  rt_server_t s;
  CF_CHECK_EQ(rt_standalone(&s, cf_test_tmpdir(), "r6", NULL), 0);
  cf_store_geom_t g = st_geom(64, 4, 64);
  g.dtype = CF_STORE_DT_BF16;
  cf_remote_config_t c;
  cf_remote_config_default(&c);
  c.url = url_of(&s);
  c.queue_bytes = 3 * 4 * cf_store_cell_bytes(&g); /* three chunks */
  cf_remote_t *r;
  CF_CHECK_EQ(cf_remote_open(&c, &g, &r), 0);
  /* stop the server so the writer cannot drain (SIGSTOP: the writer blocks in its timeout) */
  kill(s.pid, SIGSTOP);
  int dropped = 0;
  for (uint64_t id = 0; id < 10; id++) dropped += put_chunk(r, &g, id, 64, 1) == CF_ENOSPC;
  CF_CHECK_GE(dropped, 6); /* the queue holds at most 3 (+1 the writer took) */
  kill(s.pid, SIGCONT);
  CF_CHECK_EQ(cf_remote_flush(r, 20000), 0);
  cf_remote_stats_t st;
  cf_remote_get_stats(r, &st);
  CF_CHECK_EQ(st.put_dropped, (uint64_t)dropped);
  CF_CHECK_EQ(st.queue_bytes, 0);
  cf_remote_close(r);
  rt_stop(&s);
}

/* A wall-clock step must not stretch a bounded wait. This binary's clock_gettime (it interposes
 * libc's for every caller in the process) reads CLOCK_REALTIME `clock_shift_s` ahead, as after an
 * NTP step: a deadline taken on the wall clock then lies an hour past the kernel's, so a flush
 * bounded at 200 ms waited for as long as the writer stayed blocked (30 s here, an hour of
 * shift in all) instead of timing out. Waits now run on CLOCK_MONOTONIC (util/cf_clock.h). */
static volatile long clock_shift_s;
int clock_gettime(clockid_t id, struct timespec *ts) {
  int rc = (int)syscall(SYS_clock_gettime, id, ts);
  if (rc == 0 && id == CLOCK_REALTIME) ts->tv_sec += clock_shift_s;
  return rc;
}

typedef struct {
  cf_remote_t *r;
  int rc, done;
} flush_arg_t;

static void *flush_main(void *p) {
  flush_arg_t *a = p;
  a->rc = cf_remote_flush(a->r, 200);
  __atomic_store_n(&a->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

CF_TEST(remote_flush_bound_holds_across_a_clock_step) {
  NEED_REDIS();
  rt_server_t s;
  CF_CHECK_EQ(rt_standalone(&s, cf_test_tmpdir(), "r7", NULL), 0);
  cf_store_geom_t g = st_geom(64, 4, 64);
  g.dtype = CF_STORE_DT_BF16;
  cf_remote_config_t c;
  cf_remote_config_default(&c);
  c.url = url_of(&s);
  c.timeout_ms = 30000; /* the writer stays blocked on the stopped server far past the flush's bound */
  cf_remote_t *r;
  CF_CHECK_EQ(cf_remote_open(&c, &g, &r), 0);
  kill(s.pid, SIGSTOP);
  CF_CHECK_EQ(put_chunk(r, &g, 1, 64, 1), 0);
  clock_shift_s = 3600;
  flush_arg_t a = {r, 0, 0};
  pthread_t th;
  CF_CHECK_EQ(pthread_create(&th, NULL, flush_main, &a), 0);
  /* a limit for a wedged flush (its bound is 200 ms; the writer's block lasts 30 s) */
  for (int i = 0; i < 2000 && !__atomic_load_n(&a.done, __ATOMIC_ACQUIRE); i++) {
    struct timespec ms10 = {0, 10 * 1000 * 1000};
    nanosleep(&ms10, NULL);
  }
  int returned = __atomic_load_n(&a.done, __ATOMIC_ACQUIRE);
  clock_shift_s = 0;
  kill(s.pid, SIGCONT);
  pthread_join(th, NULL);
  CF_CHECK_MSG(returned, "cf_remote_flush(200 ms) still waiting 20 s later with the wall clock an hour ahead");
  CF_CHECK_EQ(a.rc, CF_ETIMEDOUT);
  CF_CHECK_EQ(cf_remote_flush(r, 60000), 0);
  cf_remote_close(r);
  rt_stop(&s);
}

/* ---------------------------------------------------------------- cluster */

typedef struct {
  cf_remote_t *r;
  const cf_store_geom_t *g;
  int n, rounds;
  int wrong, ok, failed;
} reader_arg_t;

static void *reader_main(void *p) {
  reader_arg_t *a = p;
  for (int round = 0; round < a->rounds; round++)
    for (int id = 0; id < a->n; id++) {
      int rc = check_chunk(a->r, a->g, (uint64_t)id, a->g->chunk_tokens);
      if (rc == 0) a->ok++;
      else if (rc == CF_EINTERNAL) a->wrong++;
      else a->failed++;
    }
  return NULL;
}

typedef struct {
  const cf_store_geom_t *g;
  size_t next;
  int bad;
} each_t;

static void each_cb(void *ud, size_t i, const cf_remote_cell_t *c) {
  each_t *e = ud;
  uint8_t want[4096];
  if (i != e->next++ || c->status || c->bytes > sizeof want) { e->bad++; return; }
  st_fill_cell(e->g, (uint64_t)(i / 4), (uint32_t)(i % 4), 16, want);
  if (memcmp(c->data, want, c->bytes)) e->bad++;
}

CF_TEST(remote_cluster) {
  NEED_REDIS();
  rt_server_t s[3];
  char base[600];
  snprintf(base, sizeof base, "%s/cluster", cf_test_tmpdir());
  mkdir(base, 0755);
  if (rt_cluster(s, base)) {
    CF_CHECK_MSG(0, "cluster did not form (see %s)", base);
    for (int i = 0; i < 3; i++) rt_stop(&s[i]);
    return;
  }
  cf_store_geom_t g = st_geom(16, 4, 16);
  g.dtype = CF_STORE_DT_BF16;
  char url[256];
  snprintf(url, sizeof url, "redis+cluster://127.0.0.1:%d", s[1].port); /* one seed is enough */
  cf_remote_t *r = open_remote(url, &g, NULL, 1);
  const int N = 60;
  for (int id = 0; id < N; id++) CF_CHECK_EQ(put_chunk(r, &g, (uint64_t)id, 16, id % 2), 0);
  CF_CHECK_EQ(cf_remote_flush(r, 20000), 0);
  cf_store_key_t keys[60];
  for (int i = 0; i < N; i++) keys[i] = st_key(&g, (uint64_t)i);
  CF_CHECK_EQ(cf_remote_lookup(r, keys, N), (size_t)N);
  int per_node[3] = {0};
  char key[200];
  for (int i = 0; i < N; i++) {
    size_t kl = cf_remote_key(r, &keys[i], -1, key, sizeof key);
    int o = rt_slot_owner(s, 3, cf_redis_key_slot(key, kl));
    if (o >= 0) per_node[o]++;
    CF_CHECK_EQ(check_chunk(r, &g, (uint64_t)i, 16), 0);
  }
  CF_CHECK_MSG(per_node[0] && per_node[1] && per_node[2], "chunks per node %d %d %d", per_node[0], per_node[1],
               per_node[2]);
  cf_remote_verify_t v;
  CF_CHECK_EQ(cf_remote_verify(r, &v), 0);
  CF_CHECK_EQ(v.chunks_ok, (uint64_t)N);
  /* streamed reads across the three masters: replies come node by node, cells are handed over in
   * order, each exactly once, bit-exact */
  cf_remote_cell_t cells[240];
  for (int i = 0; i < 240; i++) cells[i] = (cf_remote_cell_t){.key = keys[i / 4], .layer = (uint32_t)(i % 4)};
  each_t ea = {&g, 0, 0};
  CF_CHECK_EQ(cf_remote_get_each(r, cells, 240, each_cb, &ea), 0);
  CF_CHECK_EQ(ea.next, 240);
  CF_CHECK_EQ(ea.bad, 0);

  /* slot migration under reads: move chunk 0's slot to another master (the real resharding
   * sequence: IMPORTING / MIGRATING, MIGRATE the keys, SETSLOT NODE everywhere). Halfway, with
   * some keys moved, reads get ASK; after it, MOVED. */
  size_t kl = cf_remote_key(r, &keys[0], -1, key, sizeof key);
  unsigned slot = cf_redis_key_slot(key, kl);
  int src = rt_slot_owner(s, 3, slot), dst = (src + 1) % 3;
  char src_id[41], dst_id[41];
  CF_CHECK_EQ(rt_myid(&s[src], src_id), 0);
  CF_CHECK_EQ(rt_myid(&s[dst], dst_id), 0);
  redisReply *x;
  x = rt_cmd(&s[dst], "CLUSTER SETSLOT %u IMPORTING %s", slot, src_id); freeReplyObject(x);
  x = rt_cmd(&s[src], "CLUSTER SETSLOT %u MIGRATING %s", slot, dst_id); freeReplyObject(x);
  /* move the marker and layer 0 only: the rest stays on src for now */
  char k0[200];
  size_t k0l = cf_remote_key(r, &keys[0], 0, k0, sizeof k0);
  x = rt_cmd(&s[src], "MIGRATE 127.0.0.1 %d %s 0 5000 KEYS %b %b", s[dst].port, "", key, kl, k0, k0l);
  CF_CHECK_MSG(x && x->type == REDIS_REPLY_STATUS, "MIGRATE: %s", x ? x->str : "no reply");
  if (x) freeReplyObject(x);
  cf_remote_stats_t st0, st1;
  cf_remote_get_stats(r, &st0);
  CF_CHECK_EQ(cf_remote_lookup(r, keys, 1), 1);
  CF_CHECK_EQ(check_chunk(r, &g, 0, 16), 0); /* layer 0 via ASK, layers 1..3 still on src */
  cf_remote_get_stats(r, &st1);
  CF_CHECK_GT(st1.redis.ask, st0.redis.ask);
  /* finish: move the rest, assign the slot */
  for (int l = 1; l < 4; l++) {
    size_t ll = cf_remote_key(r, &keys[0], l, k0, sizeof k0);
    x = rt_cmd(&s[src], "MIGRATE 127.0.0.1 %d %b 0 5000", s[dst].port, k0, ll);
    if (x) freeReplyObject(x);
  }
  for (int i = 0; i < 3; i++) {
    x = rt_cmd(&s[i], "CLUSTER SETSLOT %u NODE %s", slot, dst_id);
    if (x) freeReplyObject(x);
  }
  CF_CHECK_EQ(check_chunk(r, &g, 0, 16), 0);
  cf_remote_get_stats(r, &st0);
  CF_CHECK_GT(st0.redis.moved, st1.redis.moved);
  for (int i = 0; i < N; i++) CF_CHECK_EQ(check_chunk(r, &g, (uint64_t)i, 16), 0);

  /* a master killed with SIGKILL while readers run: its chunks fail (EIO), others read exact,
   * nothing wrong is served; back with its nodes.conf, reads succeed again */
  int victim = 2;
  reader_arg_t ra[2] = {{r, &g, N, 3, 0, 0, 0}, {r, &g, N, 3, 0, 0, 0}};
  pthread_t th[2];
  /* ... and mid-save: 60 more chunks queued for the writer as the master dies */
  for (int id = 1000; id < 1060; id++) CF_CHECK_EQ(put_chunk(r, &g, (uint64_t)id, 16, 1), 0);
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, reader_main, &ra[i]);
  rt_sleep_ms(20);
  int vport = s[victim].port;
  rt_stop(&s[victim]);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  CF_CHECK_EQ(cf_remote_flush(r, 30000), 0);
  int offered = 0;
  for (int id = 1000; id < 1060; id++) { /* a chunk offered is whole and exact; the rest are misses */
    cf_store_key_t k = st_key(&g, (uint64_t)id);
    if (cf_remote_lookup(r, &k, 1) == 1) {
      offered++;
      CF_CHECK_EQ(check_chunk(r, &g, (uint64_t)id, 16), 0);
    }
  }
  CF_CHECK_GT(offered, 0);
  CF_CHECK_LT(offered, 60);
  CF_CHECK_EQ(ra[0].wrong + ra[1].wrong, 0);
  CF_CHECK_GT(ra[0].ok + ra[1].ok, 0);
  int on_victim = 0, elsewhere_ok = 1;
  for (int i = 0; i < N; i++) {
    size_t l2 = cf_remote_key(r, &keys[i], -1, key, sizeof key);
    int o = rt_slot_owner(s, 2, cf_redis_key_slot(key, l2)); /* ask a live node */
    int rc = check_chunk(r, &g, (uint64_t)i, 16);
    if (o < 0) { on_victim++; CF_CHECK_MSG(rc == CF_EIO, "chunk %d on the dead node: %s", i, cf_strerror(rc)); }
    else if (rc) elsewhere_ok = 0;
  }
  CF_CHECK_GT(on_victim, 0);
  CF_CHECK(elsewhere_ok);
  s[victim].port = vport;
  CF_CHECK_EQ(rt_start(&s[victim]), 0);
  /* its keys are gone (no persistence) but its slots come back: those chunks are misses now */
  int back = 0;
  for (int t = 0; t < 600 && !back; t++) { /* 60 s: a limit, the backoff runs up to 5 s */
    back = 1;
    for (int i = 0; i < N; i++) {
      int rc = check_chunk(r, &g, (uint64_t)i, 16);
      if (rc == CF_EIO) back = 0;
      CF_CHECK(rc == 0 || rc == CF_ENOTFOUND || rc == CF_EIO);
    }
    if (!back) rt_sleep_ms(100);
  }
  CF_CHECK_MSG(back, "the restarted master's slots never answered again");
  CF_CHECK_EQ(put_chunk(r, &g, 0, 16, 0), 0);
  for (int i = 0; i < N; i++) put_chunk(r, &g, (uint64_t)i, 16, 0);
  for (int i = 0; i < N; i++) CF_CHECK_EQ(check_chunk(r, &g, (uint64_t)i, 16), 0);
  cf_remote_close(r);
  for (int i = 0; i < 3; i++) rt_stop(&s[i]);
}
