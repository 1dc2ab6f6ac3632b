/* cf_remote — the remote tier over cf_redis (see the header). */
#include "store/cf_remote.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "util/cf_clock.h"
#include "util/cf_err.h"
#include "util/cf_hex.h"
#include "util/cf_log.h"

#define CF__RV_MAGIC 0x43524643u /* "CFRC" little-endian */
#define CF__RV_VERSION 1u
#define CF__RV_HDR 48u
#define CF__RV_MARKER 0xffffffffu
#define CF__KEY_MAX 200
/* writer: chunks and bytes per pipeline */
#define CF__W_CHUNKS 8
#define CF__W_BYTES (64u << 20)

typedef struct cf__qent_s {
  struct cf__qent_s *next;
  cf_store_key_t key;
  uint32_t n_tokens;
  size_t bytes; /* payload bytes of all cells */
  uint8_t *data;/* n_layers cells back to back */
} cf__qent_t;

struct cf_remote_s {
  cf_remote_config_t cfg;
  cf_redis_url_t url;
  cf_redis_opts_t ropts;
  char url_s[512], ns[64], password[256];
  cf_store_geom_t g;
  char prefix[160];
  size_t prefix_len;

  pthread_mutex_t pmu;
  pthread_cond_t pcv;
  cf_redis_t **pool;
  cf_redis_stats_t *snap; /* each pooled client's stats when last returned */
  int n_pool, n_made, n_free;
  int *free_ids;

  pthread_mutex_t qmu;
  pthread_cond_t qcv, qdone;
  cf__qent_t *qhead, *qtail;
  uint64_t qbytes, qchunks, enq_seq, done_seq;
  int stop, writer_on;
  pthread_t writer;

  pthread_mutex_t smu;
  cf_remote_stats_t st;
};

struct cf_remote_batch_s {
  size_t n;
  cf_redis_cmd_t *cmds;
  char *keys;
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void cf_remote_config_default(cf_remote_config_t *c) {
  memset(c, 0, sizeof *c);
  c->ns = "cf";
  c->timeout_ms = 1000;
  c->queue_bytes = 256ull << 20;
  c->pool = 8;
  c->writer = 1;
}

static size_t cell_bytes_n(const cf_remote_t *r, uint32_t n_tokens) { return cf_store_cell_bytes_n(&r->g, n_tokens); }

size_t cf_remote_key(const cf_remote_t *r, const cf_store_key_t *key, int layer, char *buf, size_t n) {
  char kh[33];
  cf_hex(key->b, 16, kh);
  int m = layer < 0 ? snprintf(buf, n, "%s{%s}:m", r->prefix, kh)
                    : snprintf(buf, n, "%s{%s}:%d", r->prefix, kh, layer);
  return m < 0 ? 0 : (size_t)m;
}

/* ---------------------------------------------------------------- values */

static void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* xxh3-64 of the payload seeded with xxh3-64 of the header's first 40 bytes: one pass, and the
 * header fields (key, layer, tokens) are covered as well as the bytes. */
static uint64_t value_csum(const uint8_t *hdr, const void *payload, size_t n) {
  return XXH3_64bits_withSeed(payload, n, XXH3_64bits(hdr, 40));
}

static void value_hdr(const cf_remote_t *r, uint8_t *h, const cf_store_key_t *key, uint32_t layer,
                      uint32_t n_tokens, const void *payload, size_t n) {
  memset(h, 0, CF__RV_HDR);
  put_u32(h, CF__RV_MAGIC);
  put_u16(h + 4, CF__RV_VERSION);
  put_u16(h + 6, (uint16_t)r->g.dtype);
  put_u32(h + 8, layer);
  put_u32(h + 12, n_tokens);
  memcpy(h + 16, key->b, 16);
  put_u64(h + 32, n);
  put_u64(h + 40, value_csum(h, payload, n));
}

/* Check a cell value read for (key, layer). Returns 0 (n_tokens set) or CF_ECORRUPT (message). */
static int value_check(const cf_remote_t *r, const uint8_t *v, size_t len, const cf_store_key_t *key,
                       uint32_t layer, uint32_t *n_tokens) {
  if (len < CF__RV_HDR) return cf_seterr(CF_ECORRUPT, "remote cell: %zu bytes, shorter than its header", len);
  if (get_u32(v) != CF__RV_MAGIC || get_u16(v + 4) != CF__RV_VERSION)
    return cf_seterr(CF_ECORRUPT, "remote cell: bad magic or version");
  if (get_u16(v + 6) != r->g.dtype || memcmp(v + 16, key->b, 16) || get_u32(v + 8) != layer)
    return cf_seterr(CF_ECORRUPT, "remote cell: value of another chunk, layer or dtype");
  uint32_t nt = get_u32(v + 12);
  size_t n = len - CF__RV_HDR;
  if (nt == 0 || nt > r->g.chunk_tokens || get_u64(v + 32) != n ||
      (layer != CF__RV_MARKER && n != cell_bytes_n(r, nt)))
    return cf_seterr(CF_ECORRUPT, "remote cell: %zu payload bytes for %u tokens", n, nt);
  if (value_csum(v, v + CF__RV_HDR, n) != get_u64(v + 40))
    return cf_seterr(CF_ECORRUPT, "remote cell: layer %u: checksum mismatch", layer);
  *n_tokens = nt;
  return 0;
}

/* ---------------------------------------------------------------- pool */

static int pool_take(cf_remote_t *r, cf_redis_t **out) {
  pthread_mutex_lock(&r->pmu);
  for (;;) {
    if (r->n_free) {
      int id = r->free_ids[--r->n_free];
      pthread_mutex_unlock(&r->pmu);
      *out = r->pool[id];
      return id;
    }
    if (r->n_made < r->n_pool) {
      int id = r->n_made++;
      pthread_mutex_unlock(&r->pmu);
      int rc = cf_redis_open(&r->url, &r->ropts, &r->pool[id]);
      if (rc) {
        pthread_mutex_lock(&r->pmu);
        r->n_made--;
        pthread_mutex_unlock(&r->pmu);
        return rc;
      }
      *out = r->pool[id];
      return id;
    }
    pthread_cond_wait(&r->pcv, &r->pmu);
  }
}

static void pool_give(cf_remote_t *r, int id, int nio) {
  cf_redis_stats_t s;
  cf_redis_get_stats(r->pool[id], &s);
  pthread_mutex_lock(&r->pmu);
  r->snap[id] = s;
  r->free_ids[r->n_free++] = id;
  pthread_cond_signal(&r->pcv);
  pthread_mutex_unlock(&r->pmu);
  pthread_mutex_lock(&r->smu);
  if (nio >= 0) r->st.connected = nio == 0;
  pthread_mutex_unlock(&r->smu);
}

/* ---------------------------------------------------------------- open / close */

static void *writer_main(void *arg);

int cf_remote_open(const cf_remote_config_t *cfg, const cf_store_geom_t *g, cf_remote_t **out) {
  cf_remote_config_t c;
  if (cfg) c = *cfg;
  else cf_remote_config_default(&c);
  cf_redis_url_t u;
  int rc = cf_redis_url_parse(c.url, &u);
  if (rc) return rc;
  if (!c.ns || !*c.ns) c.ns = "cf";
  if (strlen(c.ns) >= 64 || strpbrk(c.ns, "{}: \t\r\n"))
    return cf_seterr(CF_EINVAL, "remote namespace '%s': at most 63 bytes, without '{', '}', ':' or spaces", c.ns);
  if (c.pool <= 0) c.pool = 8;
  if (c.timeout_ms <= 0) c.timeout_ms = 1000;
  cf_remote_t *r = calloc(1, sizeof *r);
  if (!r) return cf_seterr(CF_ENOMEM, "remote tier");
  r->cfg = c;
  r->url = u;
  r->g = *g;
  snprintf(r->ns, sizeof r->ns, "%s", c.ns);
  snprintf(r->password, sizeof r->password, "%s", c.password ? c.password : "");
  cf_redis_url_str(&u, r->url_s, sizeof r->url_s);
  cf_redis_opts_default(&r->ropts);
  r->ropts.timeout_ms = c.timeout_ms;
  r->ropts.password = r->password;
  char fp[33 + 17];
  cf_hex(g->fingerprint, 16, fp);
  static const uint8_t zero[16];
  if (memcmp(g->weights, zero, 16) != 0) { /* other weights of the same shapes: other keys */
    fp[32] = '-';
    cf_hex(g->weights, 8, fp + 33);
  }
  r->prefix_len = (size_t)snprintf(r->prefix, sizeof r->prefix, "%s:%s:%u:%s:", r->ns, fp, g->chunk_tokens,
                                   cf_store_dtype_name(g->dtype, g->dtype_size));
  for (char *p = r->prefix; *p; p++) if (*p == ' ') *p = '_'; /* "unrecorded 2-byte" */
  r->pool = calloc((size_t)c.pool, sizeof *r->pool);
  r->snap = calloc((size_t)c.pool, sizeof *r->snap);
  r->free_ids = calloc((size_t)c.pool, sizeof *r->free_ids);
  if (!r->pool || !r->snap || !r->free_ids) {
    free(r->pool), free(r->snap), free(r->free_ids), free(r);
    return cf_seterr(CF_ENOMEM, "remote tier pool");
  }
  r->n_pool = c.pool;
  pthread_mutex_init(&r->pmu, NULL);
  pthread_cond_init(&r->pcv, NULL);
  pthread_mutex_init(&r->qmu, NULL);
  pthread_cond_init(&r->qcv, NULL);
  cf_cond_init_mono(&r->qdone); /* timed waits: see util/cf_clock.h */
  pthread_mutex_init(&r->smu, NULL);
  if (c.writer) {
    if (pthread_create(&r->writer, NULL, writer_main, r)) {
      cf_remote_close(r);
      return cf_seterr(CF_ENOMEM, "remote tier: writer thread");
    }
    r->writer_on = 1;
  }
  *out = r;
  return 0;
}

void cf_remote_close(cf_remote_t *r) {
  if (!r) return;
  pthread_mutex_lock(&r->qmu);
  r->stop = 1;
  pthread_cond_broadcast(&r->qcv);
  pthread_mutex_unlock(&r->qmu);
  if (r->writer_on) pthread_join(r->writer, NULL);
  while (r->qhead) {
    cf__qent_t *q = r->qhead;
    r->qhead = q->next;
    free(q->data);
    free(q);
  }
  for (int i = 0; i < r->n_made; i++) cf_redis_close(r->pool[i]);
  pthread_mutex_destroy(&r->pmu);
  pthread_cond_destroy(&r->pcv);
  pthread_mutex_destroy(&r->qmu);
  pthread_cond_destroy(&r->qcv);
  pthread_cond_destroy(&r->qdone);
  pthread_mutex_destroy(&r->smu);
  free(r->pool), free(r->snap), free(r->free_ids);
  free(r);
}

const char *cf_remote_url(const cf_remote_t *r) { return r->url_s; }

/* ---------------------------------------------------------------- lookup */

/* EXISTS of every key's marker in one pipeline; hit[i] (may be NULL) set for each one present.
 * Returns how many leading keys are present. */
static size_t cf__remote_exists(cf_remote_t *r, const cf_store_key_t *keys, size_t n, uint8_t *hit_out) {
  if (hit_out) memset(hit_out, 0, n);
  if (!n) return 0;
  cf_redis_cmd_t *cmds = calloc(n, sizeof *cmds);
  char *kb = malloc(n * CF__KEY_MAX);
  if (!cmds || !kb) {
    free(cmds), free(kb);
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    size_t kl = cf_remote_key(r, &keys[i], -1, kb + i * CF__KEY_MAX, CF__KEY_MAX);
    cf_redis_cmd(&cmds[i], 2, "EXISTS", (size_t)6, kb + i * CF__KEY_MAX, kl);
  }
  cf_redis_t *c;
  int id = pool_take(r, &c);
  size_t hit = 0;
  if (id >= 0) {
    int nio = cf_redis_exec(c, cmds, n);
    while (hit < n && cmds[hit].status == 0 && cmds[hit].type == CF_REDIS_R_INTEGER && cmds[hit].integer == 1) hit++;
    for (size_t i = 0; hit_out && i < n; i++)
      hit_out[i] = cmds[i].status == 0 && cmds[i].type == CF_REDIS_R_INTEGER && cmds[i].integer == 1;
    cf_redis_cmds_release(cmds, n);
    pool_give(r, id, nio);
  }
  pthread_mutex_lock(&r->smu);
  r->st.lookups += n;
  r->st.lookup_hits += hit;
  pthread_mutex_unlock(&r->smu);
  free(cmds), free(kb);
  cf_errclear();
  return hit;
}

size_t cf_remote_lookup(cf_remote_t *r, const cf_store_key_t *keys, size_t n) {
  return cf__remote_exists(r, keys, n, NULL);
}

size_t cf_remote_lookup_each(cf_remote_t *r, const cf_store_key_t *keys, size_t n, uint8_t *hit) {
  cf__remote_exists(r, keys, n, hit);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += hit[i];
  return k;
}

/* ---------------------------------------------------------------- writes */

/* Write chunks q[0..n) through client c: every cell (one pipeline), then the markers of the chunks
 * whose cells all got OK (a second one). Returns how many chunks were written; counts the rest. */
static size_t put_chunks(cf_remote_t *r, cf_redis_t *c, cf__qent_t **q, size_t n, int *err) {
  uint32_t L = r->g.n_layers;
  size_t nc = n * L;
  cf_redis_cmd_t *cmds = calloc(nc + n, sizeof *cmds);
  char *kb = malloc((nc + n) * CF__KEY_MAX);
  uint8_t *hdrs = malloc((nc + n) * CF__RV_HDR);
  struct iovec_s { uint8_t *buf; } *vals = calloc(nc, sizeof *vals);
  int *ok = calloc(n, sizeof *ok);
  char ex[24];
  int exl = snprintf(ex, sizeof ex, "%d", r->cfg.ttl_s);
  size_t written = 0;
  *err = 0;
  if (!cmds || !kb || !hdrs || !vals || !ok) {
    *err = cf_seterr(CF_ENOMEM, "remote write pipeline");
    goto out;
  }
  /* a value is header + payload in one buffer: hiredis sends each argument as one bulk string */
  for (size_t i = 0; i < n; i++) {
    size_t cb = cell_bytes_n(r, q[i]->n_tokens);
    for (uint32_t l = 0; l < L; l++) {
      size_t k = i * L + l;
      vals[k].buf = malloc(CF__RV_HDR + cb);
      if (!vals[k].buf) {
        *err = cf_seterr(CF_ENOMEM, "remote write value");
        goto out;
      }
      const uint8_t *payload = q[i]->data + (size_t)l * cb;
      value_hdr(r, vals[k].buf, &q[i]->key, l, q[i]->n_tokens, payload, cb);
      memcpy(vals[k].buf + CF__RV_HDR, payload, cb);
      size_t kl = cf_remote_key(r, &q[i]->key, (int)l, kb + k * CF__KEY_MAX, CF__KEY_MAX);
      if (r->cfg.ttl_s > 0)
        cf_redis_cmd(&cmds[k], 5, "SET", (size_t)3, kb + k * CF__KEY_MAX, kl, (const char *)vals[k].buf,
                     CF__RV_HDR + cb, "EX", (size_t)2, ex, (size_t)exl);
      else
        cf_redis_cmd(&cmds[k], 3, "SET", (size_t)3, kb + k * CF__KEY_MAX, kl, (const char *)vals[k].buf,
                     CF__RV_HDR + cb);
    }
  }
  uint64_t t0 = now_ns();
  int nio = cf_redis_exec(c, cmds, nc);
  size_t n_oom = 0, n_err = 0, n_mark = 0;
  for (size_t i = 0; i < n; i++) {
    ok[i] = 1;
    for (uint32_t l = 0; l < L; l++) {
      cf_redis_cmd_t *cm = &cmds[i * L + l];
      if (cm->status == 0 && cm->type == CF_REDIS_R_STATUS) continue;
      if (ok[i]) { /* count once per chunk */
        if (cm->status == CF_EPROTO && cm->len >= 3 && strncmp(cm->str, "OOM", 3) == 0) n_oom++;
        else n_err++;
        if (!*err)
          *err = cm->status == CF_EPROTO && cm->len >= 3 && strncmp(cm->str, "OOM", 3) == 0
                     ? cf_seterr(CF_ENOSPC, "remote tier full: %.*s", (int)cm->len, cm->str)
                 : cm->status == CF_EPROTO ? cf_seterr(CF_EPROTO, "remote SET: %.*s", (int)cm->len, cm->str)
                                           : CF_EIO;
      }
      ok[i] = 0;
    }
  }
  cf_redis_cmds_release(cmds, nc);
  for (size_t i = 0; i < n; i++) {
    if (!ok[i]) continue;
    uint8_t *h = hdrs + (nc + n_mark) * CF__RV_HDR;
    value_hdr(r, h, &q[i]->key, CF__RV_MARKER, q[i]->n_tokens, NULL, 0);
    size_t kl = cf_remote_key(r, &q[i]->key, -1, kb + (nc + n_mark) * CF__KEY_MAX, CF__KEY_MAX);
    cf_redis_cmd_t *cm = &cmds[nc + n_mark];
    if (r->cfg.ttl_s > 0)
      cf_redis_cmd(cm, 5, "SET", (size_t)3, kb + (nc + n_mark) * CF__KEY_MAX, kl, (const char *)h,
                   (size_t)CF__RV_HDR, "EX", (size_t)2, ex, (size_t)exl);
    else
      cf_redis_cmd(cm, 3, "SET", (size_t)3, kb + (nc + n_mark) * CF__KEY_MAX, kl, (const char *)h, (size_t)CF__RV_HDR);
    n_mark++;
  }
  int nio2 = n_mark ? cf_redis_exec(c, cmds + nc, n_mark) : 0;
  uint64_t bytes = 0;
  for (size_t i = 0, m = 0; i < n; i++) {
    if (!ok[i]) continue;
    cf_redis_cmd_t *cm = &cmds[nc + m++];
    if (cm->status == 0) {
      written++;
      bytes += q[i]->bytes;
    } else {
      if (cm->status == CF_EPROTO && cm->len >= 3 && strncmp(cm->str, "OOM", 3) == 0) n_oom++;
      else n_err++;
      if (!*err) *err = cm->status == CF_EPROTO ? CF_ENOSPC : CF_EIO;
    }
  }
  cf_redis_cmds_release(cmds + nc, n_mark);
  uint64_t dt = now_ns() - t0;
  if (*err == CF_EIO) cf_seterr(CF_EIO, "remote %s: a node did not answer", r->url_s);
  pthread_mutex_lock(&r->smu);
  r->st.chunks_written += written;
  r->st.bytes_written += bytes;
  r->st.put_oom += n_oom;
  r->st.put_errors += n_err;
  r->st.write_ns += dt;
  r->st.write_batches++;
  r->st.connected = (nio + nio2) == 0;
  pthread_mutex_unlock(&r->smu);
out:
  if (vals)
    for (size_t k = 0; k < nc; k++) free(vals[k].buf);
  free(cmds), free(kb), free(hdrs), free(vals), free(ok);
  return written;
}

static cf__qent_t *qent_make(cf_remote_t *r, const cf_store_key_t *key, uint32_t n_tokens,
                             const void *const *cells) {
  size_t cb = cell_bytes_n(r, n_tokens);
  cf__qent_t *q = malloc(sizeof *q);
  if (!q) return NULL;
  q->data = malloc(cb * r->g.n_layers);
  if (!q->data) {
    free(q);
    return NULL;
  }
  for (uint32_t l = 0; l < r->g.n_layers; l++) memcpy(q->data + (size_t)l * cb, cells[l], cb);
  q->key = *key;
  q->n_tokens = n_tokens;
  q->bytes = cb * r->g.n_layers;
  q->next = NULL;
  return q;
}

int cf_remote_put(cf_remote_t *r, const cf_store_key_t *key, uint32_t n_tokens, const void *const *cells) {
  if (n_tokens == 0 || n_tokens > r->g.chunk_tokens)
    return cf_seterr(CF_EINVAL, "remote put: %u tokens, chunk is %u", n_tokens, r->g.chunk_tokens);
  cf__qent_t *q = qent_make(r, key, n_tokens, cells);
  if (!q) return cf_seterr(CF_ENOMEM, "remote put");
  cf_redis_t *c;
  int id = pool_take(r, &c), err = 0;
  if (id < 0) err = id;
  else {
    put_chunks(r, c, &q, 1, &err);
    pool_give(r, id, -1);
  }
  free(q->data);
  free(q);
  return err;
}

int cf_remote_put_async(cf_remote_t *r, const cf_store_key_t *key, uint32_t n_tokens, const void *const *cells) {
  if (n_tokens == 0 || n_tokens > r->g.chunk_tokens)
    return cf_seterr(CF_EINVAL, "remote put: %u tokens, chunk is %u", n_tokens, r->g.chunk_tokens);
  size_t bytes = cell_bytes_n(r, n_tokens) * r->g.n_layers;
  pthread_mutex_lock(&r->qmu);
  int full = r->qbytes + bytes > r->cfg.queue_bytes, stop = r->stop || !r->writer_on;
  pthread_mutex_unlock(&r->qmu);
  if (stop) return cf_seterr(CF_ESHUTDOWN, "remote tier: no writer");
  if (full) {
    pthread_mutex_lock(&r->smu);
    r->st.put_dropped++;
    pthread_mutex_unlock(&r->smu);
    return cf_seterr(CF_ENOSPC, "remote write-back queue full (%llu bytes)", (unsigned long long)r->cfg.queue_bytes);
  }
  cf__qent_t *q = qent_make(r, key, n_tokens, cells); /* copied outside the lock */
  if (!q) return cf_seterr(CF_ENOMEM, "remote put");
  pthread_mutex_lock(&r->qmu);
  if (r->qtail) r->qtail->next = q;
  else r->qhead = q;
  r->qtail = q;
  r->qbytes += bytes;
  r->qchunks++;
  r->enq_seq++;
  pthread_cond_signal(&r->qcv);
  pthread_mutex_unlock(&r->qmu);
  return 0;
}

static void *writer_main(void *arg) {
  cf_remote_t *r = arg;
  cf__qent_t *batch[CF__W_CHUNKS];
  for (;;) {
    pthread_mutex_lock(&r->qmu);
    while (!r->qhead && !r->stop) pthread_cond_wait(&r->qcv, &r->qmu);
    if (r->stop) {
      pthread_mutex_unlock(&r->qmu);
      return NULL;
    }
    size_t n = 0, bytes = 0;
    while (r->qhead && n < CF__W_CHUNKS && (n == 0 || bytes + r->qhead->bytes <= CF__W_BYTES)) {
      batch[n] = r->qhead;
      bytes += r->qhead->bytes;
      r->qhead = r->qhead->next;
      n++;
    }
    if (!r->qhead) r->qtail = NULL;
    pthread_mutex_unlock(&r->qmu);
    cf_redis_t *c;
    int id = pool_take(r, &c), err = 0;
    if (id >= 0) {
      /* chunks another node (or an earlier save) already wrote: skip them after one EXISTS each */
      cf_redis_cmd_t ex[CF__W_CHUNKS];
      char kb[CF__W_CHUNKS][CF__KEY_MAX];
      for (size_t i = 0; i < n; i++) {
        size_t kl = cf_remote_key(r, &batch[i]->key, -1, kb[i], CF__KEY_MAX);
        cf_redis_cmd(&ex[i], 2, "EXISTS", (size_t)6, kb[i], kl);
      }
      cf_redis_exec(c, ex, n);
      cf__qent_t *todo[CF__W_CHUNKS];
      size_t nt = 0, skipped = 0;
      for (size_t i = 0; i < n; i++) {
        if (ex[i].status == 0 && ex[i].type == CF_REDIS_R_INTEGER && ex[i].integer == 1) skipped++;
        else todo[nt++] = batch[i];
      }
      cf_redis_cmds_release(ex, n);
      if (skipped) {
        pthread_mutex_lock(&r->smu);
        r->st.put_skipped += skipped;
        pthread_mutex_unlock(&r->smu);
      }
      if (nt) put_chunks(r, c, todo, nt, &err);
      pool_give(r, id, -1);
    }
    if (err && err != CF_ENOSPC) CF_DEBUG("remote write-back: %s: %s", cf_strerror(err), cf_errmsg());
    pthread_mutex_lock(&r->qmu);
    for (size_t i = 0; i < n; i++) {
      r->qbytes -= batch[i]->bytes;
      r->qchunks--;
      free(batch[i]->data);
      free(batch[i]);
    }
    r->done_seq += n;
    pthread_cond_broadcast(&r->qdone);
    pthread_mutex_unlock(&r->qmu);
  }
}

int cf_remote_flush(cf_remote_t *r, int timeout_ms) {
  struct timespec dl = cf_deadline_ms(timeout_ms >= 0 ? timeout_ms : 0);
  pthread_mutex_lock(&r->qmu);
  uint64_t want = r->enq_seq;
  int rc = 0;
  while (r->done_seq < want && !r->stop && r->writer_on) {
    if (timeout_ms < 0) pthread_cond_wait(&r->qdone, &r->qmu);
    else if (pthread_cond_timedwait(&r->qdone, &r->qmu, &dl) == ETIMEDOUT) {
      rc = cf_seterr(CF_ETIMEDOUT, "remote write-back: %llu chunks still queued",
                     (unsigned long long)(want - r->done_seq));
      break;
    }
  }
  pthread_mutex_unlock(&r->qmu);
  return rc;
}

/* ---------------------------------------------------------------- reads */

/* One GET pipeline and what came of it. */
typedef struct {
  cf_remote_t *r;
  cf_remote_cell_t *cells;
  cf_redis_cmd_t *cmds;
  size_t n, next;          /* in-order delivery: cells before `next` were handed to fn */
  uint8_t *ready;          /* classified (status and data set) */
  cf_remote_cell_fn fn;
  void *ud;
  uint64_t ok, bytes, miss, bad, eio;
  cf_store_key_t *drop;    /* chunks with a corrupt cell: their markers go */
  size_t n_drop;
} cf__get_t;

/* Set cell i's status and data from its command's reply (verified). */
static void cell_classify(cf__get_t *g, size_t i) {
  cf_remote_t *r = g->r;
  cf_remote_cell_t *x = &g->cells[i];
  cf_redis_cmd_t *cm = &g->cmds[i];
  x->data = NULL;
  x->bytes = 0;
  if (cm->status == CF_ENOTFOUND) x->status = CF_ENOTFOUND, g->miss++;
  else if (cm->status) x->status = CF_EIO, g->eio++;
  else if (cm->type != CF_REDIS_R_STRING ||
           value_check(r, (const uint8_t *)cm->str, cm->len, &x->key, x->layer, &x->n_tokens)) {
    x->status = CF_ECORRUPT;
    g->bad++;
    CF_WARN("remote %s: chunk cell %u dropped: %s", r->url_s, x->layer,
            cm->type == CF_REDIS_R_STRING ? cf_errmsg() : "not a string");
    if (!g->drop) g->drop = calloc(g->n, sizeof *g->drop);
    if (g->drop) g->drop[g->n_drop++] = x->key;
  } else {
    x->status = 0;
    x->data = (const uint8_t *)cm->str + CF__RV_HDR;
    x->bytes = cm->len - CF__RV_HDR;
    g->ok++;
    g->bytes += x->bytes;
  }
  g->ready[i] = 1;
}

/* Hand cells over in order from g->next while they are classified; each one's reply is freed
 * after fn (except `keep`, which the caller frees). */
static void deliver_ready(cf__get_t *g, size_t keep) {
  while (g->next < g->n && g->ready[g->next]) {
    size_t i = g->next++;
    g->fn(g->ud, i, &g->cells[i]);
    g->cells[i].data = NULL;
    if (i != keep) cf_redis_cmds_release(&g->cmds[i], 1);
  }
}

static int on_get_reply(void *ud, size_t i, cf_redis_cmd_t *c) {
  cf__get_t *g = ud;
  (void)c;
  cell_classify(g, i);
  if (i != g->next) return 0; /* an earlier cell is still on the way: keep this reply */
  deliver_ready(g, i);
  return 1;
}

/* The GET pipeline of cells[0..n) into b (commands, keys); with fn, every cell is handed to fn in
 * order as soon as it and the cells before it are in, and its reply freed right after. */
static int get_core(cf_remote_t *r, cf_remote_cell_t *cells, size_t n, cf_remote_batch_t *b,
                    cf_remote_cell_fn fn, void *ud) {
  b->cmds = calloc(n ? n : 1, sizeof *b->cmds);
  b->keys = malloc((n ? n : 1) * CF__KEY_MAX);
  cf__get_t g = {.r = r, .cells = cells, .n = n, .fn = fn, .ud = ud, .ready = calloc(n ? n : 1, 1)};
  if (!b->cmds || !b->keys || !g.ready) {
    free(b->cmds), free(b->keys), free(g.ready);
    b->cmds = NULL, b->keys = NULL;
    return cf_seterr(CF_ENOMEM, "remote read of %zu cells", n);
  }
  g.cmds = b->cmds;
  b->n = n;
  for (size_t i = 0; i < n; i++) {
    size_t kl = cf_remote_key(r, &cells[i].key, (int)cells[i].layer, b->keys + i * CF__KEY_MAX, CF__KEY_MAX);
    cf_redis_cmd(&b->cmds[i], 2, "GET", (size_t)3, b->keys + i * CF__KEY_MAX, kl);
  }
  cf_redis_t *c;
  int id = pool_take(r, &c), nio = (int)n;
  uint64_t t0 = now_ns();
  if (id >= 0) nio = fn ? cf_redis_exec_each(c, b->cmds, n, on_get_reply, &g) : cf_redis_exec(c, b->cmds, n);
  else
    for (size_t i = 0; i < n; i++) b->cmds[i].status = CF_EIO;
  uint64_t dt = now_ns() - t0;
  for (size_t i = 0; i < n; i++) /* the rest: no reply (a node down), or kept without fn */
    if (!g.ready[i]) cell_classify(&g, i);
  if (fn) deliver_ready(&g, n);
  if (id >= 0) {
    /* a corrupt cell: delete the chunk's marker so lookups stop offering it (best effort) */
    if (g.n_drop) {
      cf_redis_cmd_t *dc = calloc(g.n_drop, sizeof *dc);
      char *dk = malloc(g.n_drop * CF__KEY_MAX);
      if (dc && dk) {
        for (size_t i = 0; i < g.n_drop; i++) {
          size_t kl = cf_remote_key(r, &g.drop[i], -1, dk + i * CF__KEY_MAX, CF__KEY_MAX);
          cf_redis_cmd(&dc[i], 2, "DEL", (size_t)3, dk + i * CF__KEY_MAX, kl);
        }
        cf_redis_exec(c, dc, g.n_drop);
        cf_redis_cmds_release(dc, g.n_drop);
      }
      free(dc), free(dk);
    }
    pool_give(r, id, nio);
  }
  free(g.drop);
  free(g.ready);
  pthread_mutex_lock(&r->smu);
  r->st.cells_read += g.ok;
  r->st.bytes_read += g.bytes;
  r->st.cells_missing += g.miss;
  r->st.cells_corrupt += g.bad;
  r->st.read_errors += g.eio;
  r->st.read_ns += dt;
  r->st.read_batches++;
  pthread_mutex_unlock(&r->smu);
  return 0;
}

int cf_remote_get(cf_remote_t *r, cf_remote_cell_t *cells, size_t n, cf_remote_batch_t **h) {
  cf_remote_batch_t *b = calloc(1, sizeof *b);
  if (!b) return cf_seterr(CF_ENOMEM, "remote read of %zu cells", n);
  int rc = get_core(r, cells, n, b, NULL, NULL);
  if (rc) {
    free(b);
    return rc;
  }
  *h = b;
  return 0;
}

int cf_remote_get_each(cf_remote_t *r, cf_remote_cell_t *cells, size_t n, cf_remote_cell_fn fn, void *ud) {
  cf_remote_batch_t b = {0};
  int rc = get_core(r, cells, n, &b, fn, ud);
  if (rc) return rc;
  cf_redis_cmds_release(b.cmds, b.n);
  free(b.cmds), free(b.keys);
  return 0;
}

void cf_remote_get_release(cf_remote_t *r, cf_remote_batch_t *b) {
  (void)r;
  if (!b) return;
  cf_redis_cmds_release(b->cmds, b->n);
  free(b->cmds), free(b->keys), free(b);
}

int cf_remote_read(cf_remote_t *r, const cf_store_key_t *key, uint32_t layer, void *dst, size_t dst_bytes,
                   uint32_t *n_tokens) {
  cf_remote_cell_t c = {.key = *key, .layer = layer};
  cf_remote_batch_t *b;
  int rc = cf_remote_get(r, &c, 1, &b);
  if (rc) return rc;
  rc = c.status;
  if (!rc && c.bytes > dst_bytes) rc = cf_seterr(CF_EINVAL, "remote read: cell of %zu bytes, buffer %zu", c.bytes, dst_bytes);
  if (!rc) {
    memcpy(dst, c.data, c.bytes);
    if (n_tokens) *n_tokens = c.n_tokens;
  }
  cf_remote_get_release(r, b);
  return rc;
}

int cf_remote_remove(cf_remote_t *r, const cf_store_key_t *key) {
  uint32_t L = r->g.n_layers;
  cf_redis_cmd_t *cmds = calloc(L + 1, sizeof *cmds);
  char *kb = malloc((L + 1) * CF__KEY_MAX);
  if (!cmds || !kb) {
    free(cmds), free(kb);
    return cf_seterr(CF_ENOMEM, "remote remove");
  }
  for (uint32_t i = 0; i <= L; i++) { /* the marker first */
    size_t kl = cf_remote_key(r, key, i == 0 ? -1 : (int)i - 1, kb + i * CF__KEY_MAX, CF__KEY_MAX);
    cf_redis_cmd(&cmds[i], 2, "DEL", (size_t)3, kb + i * CF__KEY_MAX, kl);
  }
  cf_redis_t *c;
  int id = pool_take(r, &c), nio = 1;
  if (id >= 0) {
    nio = cf_redis_exec(c, cmds, L + 1);
    cf_redis_cmds_release(cmds, L + 1);
    pool_give(r, id, nio);
  }
  free(cmds), free(kb);
  return nio ? cf_seterr(CF_EIO, "remote %s: remove: a node did not answer", r->url_s) : 0;
}

/* ---------------------------------------------------------------- verify */

static int unhex(const char *s, uint8_t *out, size_t n) {
  for (size_t i = 0; i < 2 * n; i++) {
    char ch = s[i];
    int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
    if (v < 0) return -1;
    if (i & 1) out[i / 2] = (uint8_t)(out[i / 2] << 4 | v);
    else out[i / 2] = (uint8_t)v;
  }
  return 0;
}

static void verify_chunk(cf_remote_t *r, const cf_store_key_t *key, cf_remote_verify_t *out) {
  uint32_t L = r->g.n_layers;
  cf_remote_cell_t *cells = calloc(L, sizeof *cells);
  if (!cells) return;
  for (uint32_t l = 0; l < L; l++) cells[l] = (cf_remote_cell_t){.key = *key, .layer = l};
  cf_remote_batch_t *b;
  if (cf_remote_get(r, cells, L, &b) == 0) {
    int bad = 0;
    for (uint32_t l = 0; l < L; l++) {
      out->cells_checked++;
      if (cells[l].status == CF_ENOTFOUND) out->cells_missing++;
      else if (cells[l].status == CF_ECORRUPT) out->cells_corrupt++;
      if (cells[l].status && !bad) {
        bad = 1;
        if (!out->first_damage[0]) {
          char kh[33];
          cf_hex(key->b, 16, kh);
          snprintf(out->first_damage, sizeof out->first_damage, "chunk %s layer %u: %s", kh, l,
                   cf_strerror(cells[l].status));
        }
      }
    }
    if (bad) out->chunks_damaged++;
    else out->chunks_ok++;
    cf_remote_get_release(r, b);
  }
  free(cells);
}

int cf_remote_verify(cf_remote_t *r, cf_remote_verify_t *out) {
  memset(out, 0, sizeof *out);
  cf_redis_t *c;
  int id = pool_take(r, &c);
  if (id < 0) return id;
  int ids[CF_REDIS_MAX_NODES];
  int nm = cf_redis_masters(c, ids, CF_REDIS_MAX_NODES), rc = 0;
  char match[200];
  int ml = snprintf(match, sizeof match, "%s*:m", r->prefix);
  cf_store_key_t *keys = malloc(1024 * sizeof *keys);
  if (!keys) rc = cf_seterr(CF_ENOMEM, "remote verify");
  for (int m = 0; m < nm && !rc; m++) {
    char cursor[32] = "0";
    do {
      cf_redis_cmd_t cm;
      /* SCAN cursor MATCH pattern COUNT 1000 would need 6 arguments: 4 it is (the default COUNT) */
      cf_redis_cmd(&cm, 4, "SCAN", (size_t)4, cursor, strlen(cursor), "MATCH", (size_t)5, match, (size_t)ml);
      cf_redis_val_t v, cur, arr, k;
      if (cf_redis_exec_node(c, ids[m], &cm, 1) || cm.status || cf_redis_val(&cm, &v) ||
          v.type != CF_REDIS_R_ARRAY || cf_redis_val_elem(&v, 0, &cur) || cf_redis_val_elem(&v, 1, &arr) ||
          cur.type != CF_REDIS_R_STRING || cur.len >= sizeof cursor || arr.type != CF_REDIS_R_ARRAY) {
        rc = cf_seterr(CF_EIO, "remote %s: SCAN failed on a node", r->url_s);
        cf_redis_cmds_release(&cm, 1);
        break;
      }
      memcpy(cursor, cur.str, cur.len);
      cursor[cur.len] = 0;
      size_t nk = 0;
      for (size_t i = 0; i < arr.elements && nk < 1024; i++) {
        /* <prefix>{<32 hex>}:m */
        if (cf_redis_val_elem(&arr, i, &k) || k.len != r->prefix_len + 36 || k.str[r->prefix_len] != '{' ||
            unhex(k.str + r->prefix_len + 1, keys[nk].b, 16))
          continue;
        nk++;
      }
      cf_redis_cmds_release(&cm, 1);
      pool_give(r, id, -1); /* verify_chunk takes a client of its own */
      for (size_t i = 0; i < nk; i++) verify_chunk(r, &keys[i], out);
      id = pool_take(r, &c);
      if (id < 0) {
        free(keys);
        return id;
      }
    } while (strcmp(cursor, "0") != 0);
  }
  free(keys);
  pool_give(r, id, -1);
  return rc;
}

void cf_remote_get_stats(cf_remote_t *r, cf_remote_stats_t *out) {
  pthread_mutex_lock(&r->smu);
  *out = r->st;
  pthread_mutex_unlock(&r->smu);
  pthread_mutex_lock(&r->qmu);
  out->queue_bytes = r->qbytes;
  out->queue_chunks = r->qchunks;
  pthread_mutex_unlock(&r->qmu);
  memset(&out->redis, 0, sizeof out->redis);
  pthread_mutex_lock(&r->pmu);
  for (int i = 0; i < r->n_made; i++) {
    const cf_redis_stats_t *s = &r->snap[i];
    out->redis.connects += s->connects;
    out->redis.connect_errors += s->connect_errors;
    out->redis.io_errors += s->io_errors;
    out->redis.moved += s->moved;
    out->redis.ask += s->ask;
    out->redis.slot_refreshes += s->slot_refreshes;
    if (s->nodes_known > out->redis.nodes_known) out->redis.nodes_known = s->nodes_known;
    if (s->nodes_up > out->redis.nodes_up) out->redis.nodes_up = s->nodes_up;
  }
  pthread_mutex_unlock(&r->pmu);
}

void cf_remote_count_promotion(cf_remote_t *r, int result) {
  pthread_mutex_lock(&r->smu);
  if (result == CF_REMOTE_PROMOTED) r->st.promoted++;
  else if (result == CF_REMOTE_PROMOTE_SKIPPED) r->st.promote_skipped++;
  else r->st.promote_failed++;
  pthread_mutex_unlock(&r->smu);
}

int cf_remote_probe(cf_remote_t *r, int depth, int rounds, double *Bps) {
  size_t cb = cell_bytes_n(r, r->g.chunk_tokens);
  uint8_t *v = malloc(CF__RV_HDR + cb);
  cf_redis_cmd_t *cmds = calloc((size_t)depth + 1, sizeof *cmds);
  if (!v || !cmds) {
    free(v), free(cmds);
    return cf_seterr(CF_ENOMEM, "remote probe");
  }
  for (size_t i = 0; i < CF__RV_HDR + cb; i++) v[i] = (uint8_t)(i * 131 + 7);
  char key[CF__KEY_MAX];
  int kl = snprintf(key, sizeof key, "%sprobe:%d", r->prefix, (int)getpid());
  cf_redis_t *c;
  int id = pool_take(r, &c), rc = 0;
  if (id < 0) {
    free(v), free(cmds);
    return id;
  }
  cf_redis_cmd(&cmds[0], 3, "SET", (size_t)3, key, (size_t)kl, (const char *)v, CF__RV_HDR + cb);
  if (cf_redis_exec(c, cmds, 1) || cmds[0].status) rc = cf_seterr(CF_EIO, "remote %s: probe write failed", r->url_s);
  cf_redis_cmds_release(cmds, 1);
  uint64_t t = 0, bytes = 0;
  for (int k = 0; k < rounds && !rc; k++) {
    for (int i = 0; i < depth; i++) cf_redis_cmd(&cmds[i], 2, "GET", (size_t)3, key, (size_t)kl);
    uint64_t t0 = now_ns();
    if (cf_redis_exec(c, cmds, (size_t)depth)) rc = cf_seterr(CF_EIO, "remote %s: probe read failed", r->url_s);
    t += now_ns() - t0;
    for (int i = 0; i < depth; i++) bytes += cmds[i].status == 0 ? cmds[i].len : 0;
    cf_redis_cmds_release(cmds, (size_t)depth);
  }
  cf_redis_cmd(&cmds[0], 2, "DEL", (size_t)3, key, (size_t)kl);
  cf_redis_exec(c, cmds, 1);
  cf_redis_cmds_release(cmds, 1);
  pool_give(r, id, rc ? 1 : 0);
  free(v), free(cmds);
  if (!rc) *Bps = t ? (double)bytes / ((double)t / 1e9) : 0;
  return rc;
}
