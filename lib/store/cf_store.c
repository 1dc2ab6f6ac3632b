/* cf_store — open/close, configuration defaults, statistics and lookup. See cf_store.h; the
 * store's parts live in cf_store_*.c (file map in cf_store_int.h).
 *
 * Locks: `mu` guards the index, queues, slot maps and statistics and is never held across I/O;
 * `jmu` serialises journal appends (lock order jmu → mu); `grow_mu` serialises data-file
 * preallocation; `spill_mu` serialises users of the writer ring. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/cf_store_int.h"
#include "util/cf_clock.h"
#include "util/cf_err.h"
#include "util/cf_hex.h"
#include "util/cf_log.h"

size_t cf_store_cell_bytes_n(const cf_store_geom_t *g, uint32_t n_tokens) {
  return (size_t)2 * n_tokens * g->n_kv_heads * g->head_dim * g->dtype_size;
}
size_t cf_store_cell_bytes(const cf_store_geom_t *g) {
  return cf_store_cell_bytes_n(g, g->chunk_tokens);
}
const cf_store_geom_t *cf_store_geom(const cf_store_t *st) { return &st->g; }

void cf_store_config_default(cf_store_config_t *c) {
  memset(c, 0, sizeof *c);
  c->cpu_bytes = 1ull << 30;
  c->ssd_bytes = 4ull << 30;
  c->cpu_evict = CF_STORE_EVICT_LRU;
  c->spill = 1;
  c->file_bytes = 256ull << 20;
  c->journal_slack = 65536;
}

/* Rewrite the journal when dead records (evictions, re-adds) dominate it: bounded disk use. */
void cf__maybe_compact(cf_store_t *st) {
  pthread_mutex_lock(&st->mu);
  int want = __atomic_load_n(&st->jrecords, __ATOMIC_RELAXED) > 2 * st->st.ssd_chunks + st->cfg.journal_slack;
  pthread_mutex_unlock(&st->mu);
  if (!want) return;
  int rc = cf__journal_compact(st);
  if (rc) CF_WARN("store %s: journal compaction: %s", st->dir, cf_errmsg());
}

/* ---------------------------------------------------------------- open / close */

void cf_store_close(cf_store_t *st) {
  if (!st) return;
  cf__remote_close(st);
  if (st->spiller_on) {
    pthread_mutex_lock(&st->mu);
    st->stop = 1;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    pthread_join(st->spiller, NULL);
  }
  /* reads reordered the SSD eviction order since the journal last recorded it: record it, so
   * the next open (and a shrink there) evicts as this process would have */
  if (st->ssd_order_dirty && !st->cfg.readonly && st->jfd >= 0 && cf__journal_compact(st) != 0)
    CF_WARN("store %s: recording the SSD eviction order at close: %s", st->dir, cf_errmsg());
  cf__ring_exit(&st->wring);
  if (st->jfd >= 0) close(st->jfd);
  cf__data_close(st);
  if (st->lock_fd >= 0) close(st->lock_fd); /* last: the directory is free once everything is written */
  if (st->cpu_base) {
    if (st->cpu_hooked) { if (st->cfg.cpu_free) st->cfg.cpu_free(st->cpu_base, st->cpu_region, st->cfg.cpu_alloc_ud); }
    else munmap(st->cpu_base, st->cpu_region);
  }
  cf__cost_free(st);
  free(st->tab); free(st->ents); free(st->csum); free(st->cpu_free); free(st->dfd);
  free(st->ssd_owner); free(st->ssd_reads); free(st->ssd_zombie); free(st->ssd_free);
  pthread_mutex_destroy(&st->mu); pthread_mutex_destroy(&st->jmu);
  pthread_mutex_destroy(&st->grow_mu); pthread_mutex_destroy(&st->spill_mu);
  pthread_cond_destroy(&st->cv);
  pthread_cond_destroy(&st->ssd_cv);
  free(st);
}

/* One writer per store directory: two daemons (or a daemon and `cacheflowctl store fill`) on
 * the same directory would append to one journal and hand out each other's slots, so a chunk
 * one wrote could be served with the other's bytes. A writer holds an exclusive flock on
 * DIR/lock for as long as the store is open; the kernel drops it when the process dies (kill -9
 * included), so a crash never leaves the directory locked. The holder's pid is written into the
 * file only to name it in the refusal. Read-only opens (verify, inspection) take no lock.
 * Returns the lock's fd, or a CF_E* code (< 0) with the error set. */
static int cf__dir_lock(const char *dir) {
  char p[1100];
  snprintf(p, sizeof p, "%s/lock", dir);
  int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    return cf_seterr(e == EACCES || e == EROFS || e == EPERM ? CF_EACCES : CF_EIO,
                     "store %s: cannot open its lock file: %s", dir, strerror(e));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    long pid = n > 0 ? strtol(buf, NULL, 10) : 0;
    close(fd);
    if (e == EWOULDBLOCK) {
      char who[48] = "another process";
      if (pid > 0) snprintf(who, sizeof who, "another process (pid %ld)", pid);
      return cf_seterr(CF_EBUSY, "store %s is in use by %s: one cacheflowd per store_dir (stop it, or give "
                       "this one another store_dir)", dir, who);
    }
    return cf_seterr(CF_EIO, "store %s: cannot lock %s: %s", dir, p, strerror(e));
  }
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) { /* only the message's pid: not fatal */ }
  return fd;
}

static int cf__dir_prepare(const char *dir, int readonly) {
  struct stat sb;
  if (stat(dir, &sb) == 0) {
    if (!S_ISDIR(sb.st_mode)) return cf_seterr(CF_EINVAL, "store %s: not a directory", dir);
    if (!readonly && access(dir, W_OK | X_OK) != 0)
      return cf_seterr(CF_EACCES, "store %s: directory not writable: %s", dir, strerror(errno));
    return 0;
  }
  if (readonly) return cf_seterr(CF_ENOENT, "store %s: %s", dir, strerror(errno));
  if (mkdir(dir, 0755) != 0) {
    int e = errno;
    return cf_seterr(e == EACCES || e == EROFS || e == EPERM ? CF_EACCES
                     : e == ENOENT || e == ENOTDIR ? CF_ENOENT : CF_EIO,
                     "store %s: cannot create directory: %s", dir, strerror(e));
  }
  return 0;
}

/* DIR/weights: the weights digest the store was first opened with (cf_store_geom_t.weights),
 * 32 hex digits and a newline. A writer with a digest records it when the file is absent (a new
 * store, or one made before digests were recorded, which adopts the weights it is opened with)
 * and refuses another; without a digest (library users, `store fill`) nothing is checked.
 * A read-only open takes the recorded digest into st->g, so the remote tier's keys match. */
static int cf__weights_settle(cf_store_t *st, const cf_store_geom_t *geom) {
  char p[1100], have_hex[33] = {0}, want_hex[33];
  static const uint8_t zero[16];
  snprintf(p, sizeof p, "%s/weights", st->dir);
  uint8_t have[16];
  int have_ok = 0;
  FILE *f = fopen(p, "re");
  if (f) {
    char line[64] = {0};
    if (fgets(line, sizeof line, f) && strlen(line) >= 32) {
      have_ok = 1;
      for (int i = 0; i < 16 && have_ok; i++) {
        unsigned v;
        if (sscanf(line + 2 * i, "%2x", &v) != 1) have_ok = 0;
        have[i] = (uint8_t)v;
      }
      memcpy(have_hex, line, 32);
    }
    fclose(f);
    if (!have_ok) return cf_seterr(CF_EFORMAT, "%s: damaged (expected 32 hex digits)", p);
  } else if (errno != ENOENT) {
    return cf_seterr(CF_EIO, "%s: %s", p, strerror(errno));
  }
  if (!geom || st->cfg.readonly) { /* read-only: take what is recorded, write nothing */
    if (have_ok) memcpy(st->g.weights, have, 16);
    return 0;
  }
  if (!memcmp(geom->weights, zero, 16)) return 0;
  cf_hex(geom->weights, 16, want_hex);
  if (have_ok) {
    if (memcmp(have, geom->weights, 16) != 0)
      return cf_seterr(CF_EMISMATCH, "store %s: made with other weights (weights digest %s) than this model's (%s): "
                       "the checkpoint changed since (a fine-tune or re-export with the same shapes has the same "
                       "fingerprint), so its KV would be wrong for this model; remove the directory or use another "
                       "store_dir", st->dir, have_hex, want_hex);
    return 0;
  }
  char line[34];
  snprintf(line, sizeof line, "%s\n", want_hex);
  return cf__file_put(st->dir, "weights", line, 33);
}

/* Settle the geometry (the header decides when it exists; a new store takes `geom`), the
 * derived sizes and the slots the existing data files hold (*file_slots; read-only, that is the
 * SSD cap). Sets *have_hdr. */
static int cf__open_geom(cf_store_t *st, const cf_store_geom_t *geom, int *have_hdr,
                         uint64_t *file_slots) {
  int rc;
  int32_t spf = 0;
  char hp[1100];
  snprintf(hp, sizeof hp, "%s/header", st->dir);
  *have_hdr = access(hp, F_OK) == 0;
  if (*have_hdr) {
    rc = geom ? cf__hdr_check(st->dir, geom, &spf) : cf__hdr_read(st->dir, &st->g, &spf);
    if (rc) return rc;
    if (geom) st->g = *geom;
  } else {
    char jp[1100];
    snprintf(jp, sizeof jp, "%s/journal", st->dir);
    if (st->cfg.readonly || access(jp, F_OK) == 0) {
      return cf_seterr(st->cfg.readonly ? CF_ENOENT : CF_EFORMAT,
                     "store %s: header missing (not a store, or damaged)", st->dir);
    }
    st->g = *geom;
  }
  st->cell_bytes = cf_store_cell_bytes(&st->g);
  st->cell_stride = (st->cell_bytes + CF__ALIGN - 1) & ~(size_t)(CF__ALIGN - 1);
  st->slot_bytes = st->cell_stride * st->g.n_layers;
  st->jrec_bytes = 48 + 8 * (size_t)st->g.n_layers;
  if (!*have_hdr) {
    uint64_t fb = st->cfg.file_bytes ? st->cfg.file_bytes : (256ull << 20);
    spf = (int32_t)(fb / st->slot_bytes);
    if (spf < 1) spf = 1;
  }
  st->slots_per_file = spf;
  /* the slots the data files may hold: numbered file by file, a record past a file's end is
   * reported damaged */
  struct stat sb;
  for (int i = 0;; i++) {
    char p[1100];
    snprintf(p, sizeof p, "%s/data.%03d", st->dir, i);
    if (stat(p, &sb) != 0) break;
    *file_slots = (uint64_t)(i + 1) * (uint64_t)spf;
  }
  if (st->cfg.readonly) {
    st->cfg.cpu_bytes = 0;
    /* inspect every slot the files may hold */
    st->cfg.ssd_bytes = *file_slots * st->slot_bytes;
  }
  return 0;
}

/* Size the index and slot maps from the caps and carve the CPU region. Until cf__ssd_shrink the
 * SSD tier spans every slot the data files hold, even past a smaller cap, so the replay maps
 * every chunk and the policy, not the slot number, decides which go. */
static int cf__open_alloc(cf_store_t *st, uint64_t file_slots) {
  const int32_t spf = st->slots_per_file;
  /* slot counts are int32 and the index is sized from them: refuse absurd caps up front */
  if (st->cfg.cpu_bytes / st->slot_bytes > (1u << 28) || st->cfg.ssd_bytes / st->slot_bytes > (1u << 28)) {
    return cf_seterr(CF_ERANGE, "store %s: caps of %llu (CPU) / %llu (SSD) bytes hold more than 2^28 "
                   "chunks of %zu bytes", st->dir, (unsigned long long)st->cfg.cpu_bytes,
                   (unsigned long long)st->cfg.ssd_bytes, st->slot_bytes);
  }
  st->n_cpu_slots = (int32_t)(st->cfg.cpu_bytes / st->slot_bytes);
  st->cap_slots = (int32_t)(st->cfg.ssd_bytes / st->slot_bytes);
  st->n_ssd_slots = (uint64_t)st->cap_slots < file_slots && file_slots <= (1u << 28)
                        ? (int32_t)file_slots : st->cap_slots;
  st->n_files = (st->n_ssd_slots + spf - 1) / spf;
  st->n_ents_max = st->n_cpu_slots * 2 + st->n_ssd_slots + 64;
  uint32_t cap = 1;
  while (cap < (uint32_t)st->n_ents_max * 2) cap <<= 1;
  st->tab_mask = cap - 1;
  st->tab = malloc(sizeof(int32_t) * cap);
  st->ents = malloc(sizeof(cf__ent_t) * (size_t)st->n_ents_max);
  st->csum = malloc(8 * (size_t)st->g.n_layers * (size_t)st->n_ents_max);
  st->cpu_free = malloc(sizeof(int32_t) * ((size_t)st->n_cpu_slots + 1));
  st->dfd = malloc(sizeof(int) * ((size_t)st->n_files + 1));
  st->ssd_owner = malloc(sizeof(int32_t) * ((size_t)st->n_ssd_slots + 1));
  st->ssd_reads = calloc((size_t)st->n_ssd_slots + 1, sizeof(uint16_t));
  st->ssd_zombie = calloc((size_t)st->n_ssd_slots + 1, 1);
  st->ssd_free = malloc(sizeof(int32_t) * ((size_t)st->n_ssd_slots + 1));
  if (!st->tab || !st->ents || !st->csum || !st->cpu_free || !st->dfd || !st->ssd_owner ||
      !st->ssd_reads || !st->ssd_zombie || !st->ssd_free) {
    return cf_seterr(CF_ENOMEM, "store %s: index for %d entries", st->dir, st->n_ents_max);
  }
  memset(st->tab, 0xff, sizeof(int32_t) * cap);
  for (int32_t i = 0; i < st->n_ents_max; i++) st->ents[i].cnext = i + 1 < st->n_ents_max ? i + 1 : -1;
  st->ent_free = 0;
  for (int i = 0; i < st->n_files; i++) st->dfd[i] = -1;
  for (int32_t i = 0; i < st->n_ssd_slots; i++) st->ssd_owner[i] = -1;
  for (int q = 0; q < CF__Q__N; q++) st->q[q] = (cf__list_t){-1, -1, 0};
  st->dirty = st->ssd_lru = (cf__list_t){-1, -1, 0};
  st->small_target = (uint32_t)(st->n_cpu_slots / 10 > 0 ? st->n_cpu_slots / 10 : 1);
  if (st->cfg.cpu_evict == CF_STORE_EVICT_COST) {
    int rc = cf__cost_alloc(st);
    if (rc) return rc;
  }

  if (st->n_cpu_slots) {
    st->cpu_base = cf__cpu_region_alloc(st, (size_t)st->n_cpu_slots * st->slot_bytes);
    if (!st->cpu_base) {
      return cf_seterr(CF_ENOMEM, "store %s: CPU tier region of %zu bytes", st->dir,
                     (size_t)st->n_cpu_slots * st->slot_bytes);
    }
    if (st->cpu_hooked) st->cpu_region = (size_t)st->n_cpu_slots * st->slot_bytes;
    for (int32_t i = 0; i < st->n_cpu_slots; i++) st->cpu_free[i] = st->n_cpu_slots - 1 - i;
    st->n_cpu_free = st->n_cpu_slots;
  }
  return 0;
}

int cf_store_open(const char *dir, const cf_store_geom_t *geom, const cf_store_config_t *cfg,
                  cf_store_t **out) {
  *out = NULL;
  cf_store_config_t defc;
  if (!cfg) { cf_store_config_default(&defc); cfg = &defc; }
  if (!dir || strlen(dir) >= 1000) return cf_seterr(CF_EINVAL, "store: directory path missing or too long");
  if (!geom && !cfg->readonly) return cf_seterr(CF_EINVAL, "store %s: geometry required", dir);
  if (geom && (!geom->dtype_size || !geom->chunk_tokens || !geom->n_layers || !geom->n_kv_heads ||
               !geom->head_dim))
    return cf_seterr(CF_EINVAL, "store %s: geometry has a zero dimension", dir);
  cf_store_geom_t gn; /* the geometry with its dtype resolved (see cf_store_geom_t.dtype) */
  if (geom) {
    gn = *geom;
    if (gn.dtype == CF_STORE_DT_UNSET && gn.dtype_size == 4) gn.dtype = CF_STORE_DT_F32;
    uint32_t want = gn.dtype == CF_STORE_DT_F32 ? 4 : gn.dtype == CF_STORE_DT_UNSET ? gn.dtype_size : 2;
    if (gn.dtype > CF_STORE_DT_F16 || gn.dtype_size != want)
      return cf_seterr(CF_EINVAL, "store %s: geometry dtype code %u with dtype_size %u", dir, gn.dtype, gn.dtype_size);
    geom = &gn;
  }
  int rc = cf__dir_prepare(dir, cfg->readonly);
  if (rc) return rc;
  int lock_fd = -1;
  if (!cfg->readonly && (lock_fd = cf__dir_lock(dir)) < 0) return lock_fd;

  cf_store_t *st = calloc(1, sizeof *st);
  if (!st) { if (lock_fd >= 0) close(lock_fd); return cf_seterr(CF_ENOMEM, "store"); }
  snprintf(st->dir, sizeof st->dir, "%s", dir);
  st->cfg = *cfg;
  st->jfd = -1;
  st->lock_fd = lock_fd;
  pthread_mutex_init(&st->mu, NULL);
  pthread_mutex_init(&st->jmu, NULL);
  pthread_mutex_init(&st->grow_mu, NULL);
  pthread_mutex_init(&st->spill_mu, NULL);
  cf_cond_init_mono(&st->cv); /* timed waits (spiller, evictions): see util/cf_clock.h */
  cf_cond_init_mono(&st->ssd_cv);

  int have_hdr = 0;
  uint64_t file_slots = 0;
  if ((rc = cf__open_geom(st, geom, &have_hdr, &file_slots)) ||
      (rc = cf__open_alloc(st, file_slots)))
    goto fail;
  if (!have_hdr && (rc = cf__hdr_write(st))) goto fail;
  if ((rc = cf__weights_settle(st, geom))) goto fail;
  if ((rc = cf__data_open_existing(st))) goto fail;
  st->replaying = 1;
  rc = cf__journal_replay(st, cfg->readonly);
  st->replaying = 0;
  if (rc) goto fail;
  if (!cfg->readonly) {
    cf__fsync_dir(dir); /* the journal may have just been created */
    if ((rc = cf__ssd_shrink(st))) goto fail;
    cf__data_offer_all(st);
    if (st->jrecords > 2 * (uint64_t)st->st.ssd_chunks + st->cfg.journal_slack &&
        (rc = cf__journal_compact(st)))
      goto fail;
    cf__ring_init(&st->wring, CF__SPILL_BATCH);
    if (st->cfg.spill && st->n_cpu_slots && st->n_ssd_slots) {
      if (pthread_create(&st->spiller, NULL, cf__spiller_main, st) != 0) {
        rc = cf_seterr(CF_ENOMEM, "store %s: cannot start the spill thread", dir);
        goto fail;
      }
      st->spiller_on = 1;
    }
    if ((rc = cf__remote_open(st))) goto fail;
  }
  *out = st;
  return 0;
fail:
  st->ssd_order_dirty = 0; /* nothing to record for a store that never opened */
  cf_store_close(st);
  return rc;
}

void cf_store_get_stats(cf_store_t *st, cf_store_stats_t *o) {
  pthread_mutex_lock(&st->mu);
  *o = st->st;
  o->cpu_bytes_cap = st->cfg.cpu_bytes;
  o->cpu_bytes_used = (uint64_t)(st->n_cpu_slots - st->n_cpu_free) * st->slot_bytes;
  o->cpu_dirty = st->dirty.n;
  /* a write-back ahead still to weigh, promotions queued or in progress: not quiet yet */
  o->cpu_spilling = st->spilling + (st->ahead_due != 0) + st->promo_n + (st->promo_busy != 0);
  if (st->cost_on && st->learn_tier >= 0) o->cost_read_bonus = st->bonus[st->learn_tier];
  if (st->cost_on && st->learn_tier == 1) o->cost_cpu_head_start = st->bonus[0];
  o->cost_cpu_rate_order = st->cost_on && cf__rate_on(st, 0);
  if (st->cost_on && st->sketch.c) o->cost_freq_w = st->ghosts.freq_w;
  if (st->cost_on && st->learn_tier == 1) o->cost_defer_on = st->defer_on;
  o->ssd_bytes_cap = st->cfg.ssd_bytes;
  o->ssd_bytes_used = o->ssd_chunks * st->slot_bytes;
  o->journal_records = __atomic_load_n(&st->jrecords, __ATOMIC_RELAXED);
  o->enospc = __atomic_load_n(&st->n_enospc, __ATOMIC_RELAXED);
  o->io_errors = __atomic_load_n(&st->n_io_errors, __ATOMIC_RELAXED);
  o->journal_compactions = __atomic_load_n(&st->n_compactions, __ATOMIC_RELAXED);
  o->ssd_direct = st->direct;
  o->cpu_hugepages = st->cpu_huge;
  pthread_mutex_unlock(&st->mu);
}

size_t cf__lookup_each_local(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out) {
  size_t k = 0;
  pthread_mutex_lock(&st->mu);
  for (size_t i = 0; i < n; i++) {
    int32_t e = cf__idx_find(st, &keys[i]);
    uint8_t f = e < 0 ? 0 : st->ents[e].flags;
    int t = (f & CF__F_CPU) ? CF_STORE_TIER_CPU : (f & CF__F_SSD) ? CF_STORE_TIER_SSD : CF_STORE_TIER_NONE;
    tiers_out[i] = (uint8_t)t;
    k += t != CF_STORE_TIER_NONE;
  }
  pthread_mutex_unlock(&st->mu);
  return k;
}

size_t cf_store_lookup(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out) {
  size_t i = 0;
  pthread_mutex_lock(&st->mu);
  for (; i < n; i++) {
    int32_t e = cf__idx_find(st, &keys[i]);
    if (e < 0) break;
    uint8_t f = st->ents[e].flags;
    int t = (f & CF__F_CPU) ? CF_STORE_TIER_CPU : (f & CF__F_SSD) ? CF_STORE_TIER_SSD : 0;
    if (!t) break;
    if (tiers_out) tiers_out[i] = (uint8_t)t;
  }
  pthread_mutex_unlock(&st->mu);
  return i;
}
