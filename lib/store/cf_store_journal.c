/* The store header (written once) and the index journal (append-only, fixed-size records, each
 * with an xxh3-64 CRC), its replay at open and its compaction.
 *
 * Record (jrec_bytes = 48 + 8 * n_layers):
 *   u32 magic "CFJR" | u32 type (1 ADD, 2 DEL) | u64 seq | key[16] | i32 slot | u32 n_tokens |
 *   u64 cell checksum[n_layers] (ADD; zero for DEL) | u64 xxh3-64 of everything before it
 * Fixed-size records let replay step over a damaged record in the middle and still read the rest;
 * bad records after the last good one are a torn tail (a crash mid-append): ignored, counted,
 * and cut off so new records follow good ones.
 * Replay rules: ADD(k, s) maps k to s and unmaps whatever else s or k held; DEL(k, s) unmaps k
 * only when it still maps to s. Writers append DEL before reusing a slot, so a record is never
 * trusted for bytes it does not describe; the cell checksums catch anything else. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_hex.h"
#include "util/cf_log.h"

typedef struct {
  char magic[8];
  uint32_t version, header_bytes;
  uint8_t fingerprint[16];
  uint32_t dtype_size, chunk_tokens, n_layers, n_kv_heads, head_dim;
  int32_t slots_per_file;
  uint64_t cell_bytes, cell_stride, slot_bytes;
  uint32_t dtype, pad; /* version 2: CF_STORE_DT_*. Version 1 had its crc here (over the bytes
                        * before dtype) and no dtype: fp32 stores only, as the daemon made them */
  uint64_t crc; /* xxh3-64 of the bytes before it */
} cf__hdr_t;

const char *cf_store_dtype_name(uint32_t dtype, uint32_t dtype_size) {
  switch (dtype) {
    case CF_STORE_DT_F32: return "f32";
    case CF_STORE_DT_BF16: return "bf16";
    case CF_STORE_DT_F16: return "f16";
    case CF_STORE_DT_UNSET: return dtype_size == 4 ? "f32" : dtype_size == 2 ? "unrecorded 2-byte" : "?";
    default: return "?";
  }
}

int cf__hdr_write(cf_store_t *st) {
  uint8_t buf[CF__HDR_BYTES];
  memset(buf, 0, sizeof buf);
  cf__hdr_t h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, CF__HDR_MAGIC, sizeof CF__HDR_MAGIC);
  h.version = CF__HDR_VERSION;
  h.header_bytes = CF__HDR_BYTES;
  memcpy(h.fingerprint, st->g.fingerprint, 16);
  h.dtype_size = st->g.dtype_size;
  h.dtype = st->g.dtype;
  h.chunk_tokens = st->g.chunk_tokens;
  h.n_layers = st->g.n_layers;
  h.n_kv_heads = st->g.n_kv_heads;
  h.head_dim = st->g.head_dim;
  h.slots_per_file = st->slots_per_file;
  h.cell_bytes = st->cell_bytes;
  h.cell_stride = st->cell_stride;
  h.slot_bytes = st->slot_bytes;
  h.crc = XXH3_64bits(&h, offsetof(cf__hdr_t, crc));
  memcpy(buf, &h, sizeof h);
  return cf__file_put(st->dir, "header", buf, sizeof buf); /* written once, whole or not at all */
}

int cf__hdr_read(const char *dir, cf_store_geom_t *g, int32_t *spf) {
  char p[1100];
  snprintf(p, sizeof p, "%s/header", dir);
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return cf_seterr(e == ENOENT ? CF_ENOENT : e == EACCES ? CF_EACCES : CF_EIO, "%s: %s", p,
                     strerror(e));
  }
  uint8_t buf[CF__HDR_BYTES];
  ssize_t k = read(fd, buf, sizeof buf);
  close(fd);
  if (k < 0) return cf_seterr(CF_EIO, "%s: %s", p, strerror(errno));
  if (k < (ssize_t)sizeof(cf__hdr_t) || k < (ssize_t)CF__HDR_BYTES)
    return cf_seterr(CF_EFORMAT, "%s: truncated: %zd bytes, expected %u", p, k, CF__HDR_BYTES);
  cf__hdr_t h;
  memcpy(&h, buf, sizeof h);
  if (memcmp(h.magic, CF__HDR_MAGIC, sizeof CF__HDR_MAGIC) != 0)
    return cf_seterr(CF_EFORMAT, "%s: not a CacheFlow store header (bad magic)", p);
  if (h.version == 1) { /* see cf__hdr_t.dtype */
    uint64_t crc1;
    memcpy(&crc1, buf + offsetof(cf__hdr_t, dtype), 8);
    if (crc1 != XXH3_64bits(buf, offsetof(cf__hdr_t, dtype)))
      return cf_seterr(CF_EFORMAT, "%s: header checksum mismatch (damaged)", p);
    h.dtype = h.dtype_size == 4 ? CF_STORE_DT_F32 : CF_STORE_DT_UNSET;
  } else {
    if (h.crc != XXH3_64bits(&h, offsetof(cf__hdr_t, crc)))
      return cf_seterr(CF_EFORMAT, "%s: header checksum mismatch (damaged)", p);
    if (h.version != CF__HDR_VERSION)
      return cf_seterr(CF_EFORMAT, "%s: version %u, this build reads 1 and %u", p, h.version,
                       CF__HDR_VERSION);
    if (h.dtype > CF_STORE_DT_F16)
      return cf_seterr(CF_EFORMAT, "%s: header dtype code %u unknown", p, h.dtype);
  }
  memcpy(g->fingerprint, h.fingerprint, 16);
  g->dtype_size = h.dtype_size;
  g->dtype = h.dtype;
  g->chunk_tokens = h.chunk_tokens;
  g->n_layers = h.n_layers;
  g->n_kv_heads = h.n_kv_heads;
  g->head_dim = h.head_dim;
  *spf = h.slots_per_file;
  if (!g->dtype_size || !g->chunk_tokens || !g->n_layers || !g->n_kv_heads || !g->head_dim ||
      h.slots_per_file <= 0)
    return cf_seterr(CF_EFORMAT, "%s: header holds a zero dimension", p);
  return 0;
}

int cf__hdr_check(const char *dir, const cf_store_geom_t *want, int32_t *spf) {
  cf_store_geom_t have;
  int rc = cf__hdr_read(dir, &have, spf);
  if (rc) return rc;
  if (memcmp(have.fingerprint, want->fingerprint, 16) != 0) {
    char a[33], b[33];
    cf_hex(have.fingerprint, 16, a);
    cf_hex(want->fingerprint, 16, b);
    return cf_seterr(CF_EMISMATCH, "store %s: made for model fingerprint %s, asked for %s", dir, a,
                     b);
  }
  if (have.dtype != want->dtype)
    return cf_seterr(CF_EMISMATCH, "store %s: holds %s KV cells, asked for %s (a store keeps one KV dtype: "
                     "use a store of that dtype or another directory)", dir,
                     cf_store_dtype_name(have.dtype, have.dtype_size), cf_store_dtype_name(want->dtype, want->dtype_size));
#define CF__CMP(f, what)                                                                      \
  if (have.f != want->f)                                                                      \
    return cf_seterr(CF_EMISMATCH, "store %s: made for %s %u, asked for %u", dir, what, have.f, \
                     want->f);
  CF__CMP(dtype_size, "dtype size")
  CF__CMP(chunk_tokens, "chunk size (tokens)")
  CF__CMP(n_layers, "n_layers")
  CF__CMP(n_kv_heads, "n_kv_heads")
  CF__CMP(head_dim, "head_dim")
#undef CF__CMP
  return 0;
}

/* ---------------------------------------------------------------- records */

#define CF__J_OFF_KEY 16
#define CF__J_OFF_SLOT 32
#define CF__J_OFF_NTOK 36
#define CF__J_OFF_CSUM 40

void cf__jrec_encode(const cf_store_t *st, uint8_t *buf, int type, uint64_t seq,
                     const cf_store_key_t *k, int32_t slot, uint32_t n_tokens, const uint64_t *csum) {
  uint32_t magic = CF__JREC_MAGIC, t = (uint32_t)type;
  memset(buf, 0, st->jrec_bytes);
  memcpy(buf, &magic, 4);
  memcpy(buf + 4, &t, 4);
  memcpy(buf + 8, &seq, 8);
  memcpy(buf + CF__J_OFF_KEY, k->b, 16);
  memcpy(buf + CF__J_OFF_SLOT, &slot, 4);
  memcpy(buf + CF__J_OFF_NTOK, &n_tokens, 4);
  if (csum) memcpy(buf + CF__J_OFF_CSUM, csum, 8 * (size_t)st->g.n_layers);
  uint64_t crc = XXH3_64bits(buf, st->jrec_bytes - 8);
  memcpy(buf + st->jrec_bytes - 8, &crc, 8);
}

static int cf__jrec_ok(const cf_store_t *st, const uint8_t *buf) {
  uint32_t magic, t;
  uint64_t crc;
  memcpy(&magic, buf, 4);
  memcpy(&t, buf + 4, 4);
  memcpy(&crc, buf + st->jrec_bytes - 8, 8);
  return magic == CF__JREC_MAGIC && (t == 1 || t == 2) &&
         crc == XXH3_64bits(buf, st->jrec_bytes - 8);
}

int cf__journal_append(cf_store_t *st, const uint8_t *recs, size_t n, int sync) {
  return cf__journal_append_pub(st, recs, n, sync, NULL, NULL);
}

int cf__journal_append_pub(cf_store_t *st, const uint8_t *recs, size_t n, int sync,
                           void (*pub)(cf_store_t *, void *), void *arg) {
  int rc = 0;
  size_t len = n * st->jrec_bytes;
  pthread_mutex_lock(&st->jmu);
  size_t off = 0;
  while (off < len) {
    ssize_t k = write(st->jfd, recs + off, len - off);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      int e = k < 0 ? errno : ENOSPC;
      /* cut a partial record so the next append starts on a record boundary */
      if (off && ftruncate(st->jfd, (off_t)st->jbytes) != 0) { /* replay treats it as torn */ }
      if (e == ENOSPC || e == EDQUOT) {
        __atomic_add_fetch(&st->n_enospc, 1, __ATOMIC_RELAXED);
        rc = cf_seterr(CF_ENOSPC, "store %s: appending to journal: %s", st->dir, strerror(e));
      } else {
        __atomic_add_fetch(&st->n_io_errors, 1, __ATOMIC_RELAXED);
        rc = cf_seterr(CF_EIO, "store %s: appending to journal: %s", st->dir, strerror(e));
      }
      goto out;
    }
    off += (size_t)k;
  }
  st->jbytes += len;
  __atomic_add_fetch(&st->jrecords, n, __ATOMIC_RELAXED);
  if (sync && fdatasync(st->jfd) != 0) {
    __atomic_add_fetch(&st->n_io_errors, 1, __ATOMIC_RELAXED);
    rc = cf_seterr(CF_EIO, "store %s: fdatasync journal: %s", st->dir, strerror(errno));
  }
  /* publish while jmu is held: a compaction (which takes jmu) sees the chunk either in the
   * index or not yet in the journal, never in the old journal only */
  if (!rc && pub) pub(st, arg);
out:
  pthread_mutex_unlock(&st->jmu);
  return rc;
}

int cf__journal_add(cf_store_t *st, int type, const cf_store_key_t *k, int32_t slot,
                    uint32_t n_tokens, const uint64_t *csum, int sync) {
  uint8_t stackbuf[4096];
  uint8_t *buf = st->jrec_bytes <= sizeof stackbuf ? stackbuf : malloc(st->jrec_bytes);
  if (!buf) return cf_seterr(CF_ENOMEM, "journal record");
  cf__jrec_encode(st, buf, type, __atomic_add_fetch(&st->jseq, 1, __ATOMIC_RELAXED), k, slot,
                  n_tokens, csum);
  int rc = cf__journal_append(st, buf, 1, sync);
  if (buf != stackbuf) free(buf);
  return rc;
}

static void cf__drop_note(cf_store_t *st, const cf_store_key_t *k, int32_t slot) {
  if (st->n_drops == st->cap_drops) {
    size_t nc = st->cap_drops ? 2 * st->cap_drops : 64;
    void *p = realloc(st->drops, nc * sizeof *st->drops);
    if (!p) return; /* the checksums still catch a revived record */
    st->drops = p;
    st->cap_drops = nc;
  }
  st->drops[st->n_drops].key = *k;
  st->drops[st->n_drops].slot = slot;
  st->n_drops++;
}

/* Apply one good record to the index (mu held). Whether the data files still hold the bytes is
 * judged once every record is applied (cf__replay_check_files): a record that a later one
 * supersedes (a chunk moved by a shrink, a DEL) says nothing about the files. */
static void cf__jrec_apply(cf_store_t *st, const uint8_t *buf) {
  uint32_t t, ntok;
  int32_t slot;
  cf_store_key_t k;
  memcpy(&t, buf + 4, 4);
  memcpy(k.b, buf + CF__J_OFF_KEY, 16);
  memcpy(&slot, buf + CF__J_OFF_SLOT, 4);
  memcpy(&ntok, buf + CF__J_OFF_NTOK, 4);
  int32_t e = cf__idx_find(st, &k);
  if (t == 2) {
    if (e >= 0 && st->ents[e].ssd_slot == slot) {
      cf__ssd_detach(st, e);
      cf__ssd_release(st, slot);
      cf__ent_maybe_free(st, e);
    }
    return;
  }
  if (slot < 0 || slot >= st->n_ssd_slots || ntok == 0 || ntok > st->g.chunk_tokens) {
    /* the SSD cap shrank since the record was written (or the record is nonsense) */
    st->st.journal_dropped++;
    cf__drop_note(st, &k, slot);
    return;
  }
  int32_t owner = st->ssd_owner[slot];
  if (owner >= 0 && owner != e) {
    cf__ssd_detach(st, owner);
    cf__ssd_release(st, slot);
    cf__ent_maybe_free(st, owner);
  }
  if (e < 0) {
    e = cf__idx_insert(st, &k);
    if (e < 0) { st->st.journal_dropped++; return; }
  } else if (st->ents[e].ssd_slot >= 0 && st->ents[e].ssd_slot != slot) {
    int32_t old = st->ents[e].ssd_slot;
    cf__ssd_detach(st, e);
    cf__ssd_release(st, old);
  }
  cf__ent_t *en = &st->ents[e];
  en->n_tokens = ntok;
  if (en->ssd_slot != slot) {
    en->ssd_slot = slot;
    en->flags |= CF__F_SSD;
    st->ssd_owner[slot] = e;
    cf__list_push_head(st, &st->ssd_lru, e, 1);
    st->st.ssd_chunks++;
  }
  en->n_tokens = ntok;
  memcpy(&st->csum[(size_t)e * st->g.n_layers], buf + CF__J_OFF_CSUM, 8 * (size_t)st->g.n_layers);
}

/* After the replay (mu held): a chunk whose slot lies past the end of its data file (missing or
 * truncated behind the store's back) lost its bytes: dropped, counted as damage, and its DEL
 * journaled after the replay so a later, longer file never revives it. */
static void cf__replay_check_files(cf_store_t *st, const uint64_t *file_bytes) {
  uint64_t lost = 0;
  int first_file = -1;
  for (int32_t s = 0; s < st->n_ssd_slots; s++) {
    int32_t e = st->ssd_owner[s];
    if (e < 0) continue;
    int fi = s / st->slots_per_file;
    uint64_t end = (uint64_t)(s % st->slots_per_file + 1) * st->slot_bytes;
    if (file_bytes[fi] >= end) continue;
    st->st.journal_dropped++;
    st->st.corrupt_chunks++;
    cf__drop_note(st, &st->ents[e].key, s);
    cf__ssd_detach(st, e);
    cf__ent_maybe_free(st, e);
    if (!lost++) first_file = fi;
  }
  if (lost && !st->cfg.readonly)
    CF_WARN("store %s: %llu chunk(s) lie past the end of a missing or truncated data file "
            "(first: data.%03d holds %llu bytes): dropped", st->dir, (unsigned long long)lost,
            first_file, (unsigned long long)file_bytes[first_file]);
}

int cf__journal_replay(cf_store_t *st, int readonly) {
  char p[1100];
  snprintf(p, sizeof p, "%s/journal", st->dir);
  int fd = open(p, (readonly ? O_RDONLY : O_RDWR | O_CREAT | O_APPEND) | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    if (readonly && e == ENOENT) { st->jfd = -1; return 0; }
    return cf_seterr(e == EACCES || e == EROFS || e == EPERM ? CF_EACCES : CF_EIO, "%s: %s", p,
                     strerror(e));
  }
  uint64_t *fbytes = calloc((size_t)st->n_files + 1, sizeof *fbytes);
  if (!fbytes) { close(fd); return cf_seterr(CF_ENOMEM, "journal replay"); }
  for (int i = 0; i < st->files_ready; i++) {
    struct stat sb;
    if (st->dfd[i] >= 0 && fstat(st->dfd[i], &sb) == 0) fbytes[i] = (uint64_t)sb.st_size;
  }
  const size_t R = st->jrec_bytes, per = 4096;
  uint8_t *buf = malloc(R * per);
  if (!buf) { free(fbytes); close(fd); return cf_seterr(CF_ENOMEM, "journal replay"); }
  uint64_t off = 0, good_end = 0, bad_since_good = 0, n_good = 0;
  int rc = 0;
  for (;;) {
    ssize_t k = pread(fd, buf, R * per, (off_t)off);
    if (k < 0) { rc = cf_seterr(CF_EIO, "%s: read: %s", p, strerror(errno)); goto out; }
    if (k == 0) break;
    size_t nrec = (size_t)k / R;
    pthread_mutex_lock(&st->mu);
    for (size_t i = 0; i < nrec; i++) {
      const uint8_t *r = buf + i * R;
      if (cf__jrec_ok(st, r)) {
        /* bad records followed by a good one were damage, not a torn tail */
        st->st.journal_damaged += bad_since_good;
        bad_since_good = 0;
        cf__jrec_apply(st, r);
        n_good++;
        uint64_t seq;
        memcpy(&seq, r + 8, 8);
        if (seq > st->jseq) st->jseq = seq;
        good_end = off + (i + 1) * R;
      } else {
        bad_since_good++;
      }
    }
    pthread_mutex_unlock(&st->mu);
    off += nrec * R;
    if ((size_t)k % R) { bad_since_good++; off += (size_t)k % R; break; } /* partial record */
    if ((size_t)k < R * per) break;
  }
  pthread_mutex_lock(&st->mu);
  cf__replay_check_files(st, fbytes);
  pthread_mutex_unlock(&st->mu);
  st->st.journal_torn += bad_since_good;
  st->st.journal_records = n_good;
  st->jrecords = n_good;
  if (bad_since_good && !readonly) {
    CF_WARN("store %s: journal: torn tail of %llu record(s) after byte %llu ignored", st->dir,
            (unsigned long long)bad_since_good, (unsigned long long)good_end);
    if (ftruncate(fd, (off_t)good_end) != 0)
      CF_WARN("store %s: truncating torn journal tail: %s", st->dir, strerror(errno));
  }
  st->jbytes = readonly ? off : good_end;
  st->jfd = fd;
  if (!readonly && st->n_drops) {
    for (size_t i = 0; i < st->n_drops && !rc; i++)
      rc = cf__journal_add(st, 2, &st->drops[i].key, st->drops[i].slot, 0, NULL,
                           i + 1 == st->n_drops);
  }
  free(st->drops);
  st->drops = NULL;
  st->n_drops = st->cap_drops = 0;
  if (rc) st->jfd = -1;
out:
  free(buf);
  free(fbytes);
  if (rc) { close(fd); return rc; }
  st->jfd = fd;
  return 0;
}

int cf__journal_compact(cf_store_t *st) {
  char tmp[1100], fin[1100];
  snprintf(tmp, sizeof tmp, "%s/journal.tmp", st->dir);
  snprintf(fin, sizeof fin, "%s/journal", st->dir);
  int rc = 0;
  pthread_mutex_lock(&st->jmu); /* no append while rewriting (lock order: jmu, then mu) */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) { rc = cf_seterr(CF_EIO, "%s: %s", tmp, strerror(errno)); goto out; }
  const size_t R = st->jrec_bytes, per = 1024;
  uint8_t *buf = malloc(R * per);
  if (!buf) { close(fd); unlink(tmp); rc = cf_seterr(CF_ENOMEM, "journal compaction"); goto out; }
  /* Records go out in the SSD eviction order, the first to go first: the replay pushes each
   * ADD at the head, so the next open sees the order this process had (reads included). Under
   * S3-FIFO the chunks read since they last passed the tail follow the others (their read counts
   * are not recorded). A snapshot of the slots, taken under mu, is walked in batches: jmu keeps
   * every publication out meanwhile, and a chunk dropped since the snapshot is skipped. */
  pthread_mutex_lock(&st->mu);
  size_t cap_order = st->ssd_lru.n; /* cannot grow: publications need jmu */
  pthread_mutex_unlock(&st->mu);
  int32_t *order = malloc(sizeof(int32_t) * (cap_order + 1));
  size_t n_order = 0;
  if (!order) { free(buf); close(fd); unlink(tmp); rc = cf_seterr(CF_ENOMEM, "journal compaction"); goto out; }
  pthread_mutex_lock(&st->mu);
  int s3 = st->cfg.cpu_evict == CF_STORE_EVICT_S3FIFO;
  for (int pass = 0; pass < 1 + s3; pass++)
    for (int32_t e = st->ssd_lru.tail; e >= 0 && n_order < cap_order; e = st->ents[e].sprev)
      if (!s3 || (pass == 0) == (st->ents[e].sfreq == 0)) order[n_order++] = st->ents[e].ssd_slot;
  st->ssd_order_dirty = 0;
  pthread_mutex_unlock(&st->mu);
  uint64_t n = 0, total = 0;
  size_t i = 0;
  while (i < n_order) {
    size_t nb = 0;
    pthread_mutex_lock(&st->mu);
    for (; i < n_order && nb < per; i++) {
      int32_t s = order[i];
      int32_t e = st->ssd_owner[s];
      if (e < 0 || !(st->ents[e].flags & CF__F_SSD)) continue;
      cf__jrec_encode(st, buf + nb * R, 1, __atomic_add_fetch(&st->jseq, 1, __ATOMIC_RELAXED), &st->ents[e].key, s, st->ents[e].n_tokens,
                      &st->csum[(size_t)e * st->g.n_layers]);
      nb++;
    }
    pthread_mutex_unlock(&st->mu);
    if (nb && write(fd, buf, nb * R) != (ssize_t)(nb * R)) {
      rc = cf_seterr(errno == ENOSPC ? CF_ENOSPC : CF_EIO, "%s: write: %s", tmp, strerror(errno));
      break;
    }
    n += nb;
    total += nb * R;
  }
  free(order);
  free(buf);
  if (!rc && fdatasync(fd) != 0) rc = cf_seterr(CF_EIO, "%s: fdatasync: %s", tmp, strerror(errno));
  if (rc) { close(fd); unlink(tmp); st->ssd_order_dirty = 1; goto out; }
  cf__test_kill_point(st); /* the new journal is complete but not in place yet */
  if (rename(tmp, fin) != 0) {
    rc = cf_seterr(CF_EIO, "rename %s: %s", tmp, strerror(errno));
    close(fd);
    unlink(tmp);
    goto out;
  }
  cf__fsync_dir(st->dir);
  close(st->jfd);
  close(fd);
  st->jfd = open(fin, O_RDWR | O_APPEND | O_CLOEXEC);
  if (st->jfd < 0) rc = cf_seterr(CF_EIO, "%s: reopen: %s", fin, strerror(errno));
  __atomic_store_n(&st->jrecords, n, __ATOMIC_RELAXED);
  st->jbytes = total;
  __atomic_add_fetch(&st->n_compactions, 1, __ATOMIC_RELAXED);
out:
  pthread_mutex_unlock(&st->jmu);
  return rc;
}
