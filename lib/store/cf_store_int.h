/* cf_store_int — internals shared by the store's .c files (not a public API).
 * Files: cf_store.c (open/close, config defaults, stats, lookup), cf_store_index.c (the chunk
 * index and its intrusive lists), cf_store_cpu.c (CPU tier: slots, LRU / S3-FIFO, eviction,
 * fill), cf_store_ssd.c (SSD slots: detach, release, allocate/evict), cf_store_spill.c (write-back
 * and the spiller thread), cf_store_save.c (save, flush, remove), cf_store_journal.c (header,
 * journal records, replay, compaction), cf_store_io.c (io_uring wrapper, data files),
 * cf_store_read.c (sync and async reads), cf_store_key.c (chained keys), cf_store_verify.c,
 * cf_store_remote.c (the hooks to the remote tier, cf_remote.c over cf_redis.c), cf_store_cost.c
 * (the cost policy's heaps). */
#ifndef CF_STORE_INT_H
#define CF_STORE_INT_H

#include <liburing.h>
#include <pthread.h>
#include <stdint.h>

#include "store/cf_store.h"

#define CF__ALIGN 4096u
#define CF__HDR_BYTES 4096u
#define CF__HDR_MAGIC "CFSTORE"
#define CF__HDR_VERSION 2u /* 2: records the KV dtype; 1 (read only) did not */
#define CF__JREC_MAGIC 0x524a4643u /* "CFJR" */

/* entry flags */
enum {
  CF__F_CPU = 1,      /* cpu_slot holds the chunk's bytes (visible) */
  CF__F_SSD = 2,      /* ssd_slot holds the chunk and its journal record committed (visible) */
  CF__F_FILL = 4,     /* a CPU slot is being filled (invisible until CF__F_CPU) */
  CF__F_SPILL = 8,    /* being written to SSD (the CPU slot is pinned for it) */
  CF__F_GHOST = 16,   /* S3-FIFO ghost: recently evicted from the small queue */
  CF__F_SSDSAVE = 32, /* a save without CPU tier is writing this key straight to SSD */
  CF__F_REFUSED = 64, /* COST: clean in the CPU tier only, its write-back refused by the full SSD
                       * tier; admission is decided again when the CPU tier evicts it */
};

/* CPU queues (an entry is in at most one, linked through cprev/cnext) */
enum { CF__Q_NONE = 0, CF__Q_LRU, CF__Q_SMALL, CF__Q_MAIN, CF__Q_GHOST, CF__Q__N };

typedef struct {
  int32_t head, tail; /* head = most recent */
  uint32_t n;
} cf__list_t;

typedef struct {
  cf_store_key_t key;
  int32_t cpu_slot, ssd_slot;
  uint32_t n_tokens;
  uint32_t pins; /* readers + spill holding the CPU slot */
  uint8_t flags, queue, freq, in_dirty;
  uint8_t sfreq; /* SSD tier, S3-FIFO: reads since the chunk last passed the eviction point (<= 3) */
  uint8_t uses;  /* COST: uses (a read at the last layer, a pin) since it entered the store (<= 255) */
  uint16_t pos;  /* COST: chunk index in its prefix (CF__POS_UNKNOWN: not told; saturates) */
  int32_t cprev, cnext; /* CPU queue or ghost list */
  int32_t sprev, snext; /* SSD LRU */
  int32_t dprev, dnext; /* dirty FIFO (in the CPU tier, not yet on SSD) */
  /* COST: place in the CPU [0] / SSD [1] heap, -1 when not in it: (index << 1) | class, the
   * class (0 unread, 1 read since it came in) naming which of the tier's two heaps */
  int32_t hpos[2];
} cf__ent_t;

#define CF__POS_UNKNOWN 0xffffu
#define CF__POS_KEEP 0xffffffffu /* cf__cpu_fill: leave the entry's index as it is */

/* COST: one heap node; the heap is a binary min-heap on pri (cf_store_cost.c) */
typedef struct {
  double pri;
  int32_t e;
} cf__hnode_t;

typedef struct {
  cf__hnode_t *n;
  int32_t len, cap;
} cf__heap_t;

/* COST: one ghost, a recent victim of the value-ranked tier (cf_store_cost.c) */
typedef struct {
  uint64_t fp; /* the key's first 8 bytes (keys are XXH3-128 hashes) */
  float v;     /* its value when it left */
  uint8_t read, live; /* read since it came in; 0: came back, or the ring slot is unused */
  uint8_t freq;       /* frequent (the sketch's CF__FREQ_HI) when it left */
} cf__ghost_t;

typedef struct {
  cf__ghost_t *ring; /* FIFO of the last `cap` victims */
  int32_t *tab;      /* open addressing (linear probing) of ring indices, -1 empty */
  uint32_t mask;
  int32_t cap, head, n_live, n_read; /* live ghosts; of them, read ones */
  double vsum; /* sum of the live ghosts' values */
  /* victims that left frequent / not ([1] / [0]) and those of them that came back, decayed */
  double left[2], back[2];
  double freq_w;  /* the frequent class's learnt weight, from the four above */
  uint32_t freq_n; /* victims and returns counted (freq_w is recomputed every 16th) */
} cf__ghosts_t;

/* COST: a count-min sketch of the value-ranked tier's keys' arrivals and uses, kept across
 * evictions (TinyLFU's): 4-bit counters, 4 per key in one 64-bit word, all halved every
 * `period` increments */
typedef struct {
  uint64_t *c;        /* mask + 1 words of 16 counters */
  uint32_t mask;      /* words - 1 */
  uint32_t n, period; /* increments since the last halving; the halving interval */
} cf__sketch_t;

/* io_uring wrapper; falls back to pread/pwrite when the kernel refuses io_uring. */
typedef struct {
  struct io_uring ring;
  int ok;
  unsigned depth;
} cf__ring_t;

typedef struct {
  int fd;
  void *buf;
  size_t len;
  uint64_t off;
  int write;
  int res; /* out: bytes or -errno */
} cf__io_t;

struct cf_store_s {
  char dir[1024];
  cf_store_geom_t g;
  cf_store_config_t cfg;
  size_t cell_bytes, cell_stride, slot_bytes, jrec_bytes;

  pthread_mutex_t mu; /* index, queues, slot maps, stats */
  pthread_cond_t cv;  /* spill state changes */
  /* SSD slots may have come usable: a write-back batch ended, an SSD read pin went to 0 (broadcast
   * only while ssd_waiters, see cf__cpu_evict_safe) */
  pthread_cond_t ssd_cv;
  int ssd_waiters;
  uint64_t ssd_read_pins; /* sum of ssd_reads[] */

  /* index: open addressing (linear probing, backward-shift delete) of entry ids */
  int32_t *tab;
  uint32_t tab_mask;
  cf__ent_t *ents;
  uint64_t *csum; /* n_layers per entry */
  int32_t ent_free, n_ents_max;

  /* CPU tier */
  uint8_t *cpu_base;
  size_t cpu_region;
  int cpu_huge, cpu_hooked;
  int32_t n_cpu_slots, *cpu_free, n_cpu_free;
  cf__list_t q[CF__Q__N];
  cf__list_t dirty;
  uint32_t small_target;

  /* SSD tier */
  int32_t n_ssd_slots, slots_per_file, n_files, files_ready;
  /* slots the configured cap holds; n_ssd_slots is larger from open until cf__ssd_shrink when
   * the data files hold more (a smaller cap than last time) */
  int32_t cap_slots;
  int ssd_order_dirty; /* reads reordered the SSD eviction order since the journal last recorded it */
  int *dfd;
  int direct;
  int32_t *ssd_owner;  /* slot -> entry id or -1 */
  uint16_t *ssd_reads; /* in-flight reads per slot */
  uint8_t *ssd_zombie; /* dropped while read: free when reads hit 0 */
  int32_t *ssd_free, n_ssd_free;
  cf__list_t ssd_lru; /* SSD eviction order (tail goes first): see cf__ssd_pick */
  pthread_mutex_t grow_mu;

  /* journal */
  pthread_mutex_t jmu;
  int jfd;
  int lock_fd; /* flock on DIR/lock (writers only; -1: none): see cf__dir_lock */
  uint64_t jseq, jrecords, jbytes;

  /* spiller */
  pthread_t spiller;
  int spiller_on, stop;
  uint32_t spilling; /* entries with CF__F_SPILL */
  /* COST, the full SSD tier deferring write-backs: a save took the CPU tier's last free slot
   * since the spill thread last looked (it then writes the next victim back ahead of the next
   * save's eviction, cf__evict_ahead), and the CPU slots it freed so that no save took yet
   * (kept for saves: a promotion does not take them). cf_store_spill.c */
  int ahead_due;
  int32_t cpu_ahead;
  /* promotion on read of chunks read layer by layer (cf_store_promote.c): keys whose last
   * layer was read from SSD, for the spill thread to copy whole into the CPU tier; promo_busy
   * while it copies one */
#define CF__PROMO_Q 64
  cf_store_key_t promo_q[CF__PROMO_Q];
  uint32_t promo_head, promo_n;
  int promo_busy;
  int last_spill_err;
  /* dirty chunks the CPU tier dropped because their write-back failed, since the last flush
   * (which reports them as its error), and that write-back's error code */
  uint64_t lost_dirty;
  int lost_dirty_rc;
  cf__ring_t wring;  /* the spiller's ring (under spill_mu) */
  pthread_mutex_t spill_mu;
  unsigned kill_points; /* test hook: see cf__test_kill_point */

  int replaying;
  uint64_t n_enospc, n_io_errors, n_compactions; /* updated with atomics, outside mu */
  /* records the replay refused (bytes lost to a truncated file, slot beyond the cap): journaled
   * as DEL after the replay so a later, larger file or cap never revives them */
  struct { cf_store_key_t key; int32_t slot; } *drops;
  size_t n_drops, cap_drops;
  cf_store_stats_t st;
  struct cf_remote_s *remote; /* cf_store_remote.c */
  struct cf__promoter_s *promo; /* cf_store_remote.c: promotion of remote hits (NULL: off) */
  /* COST policy (cf_store_cost.c): two heaps per tier (unread / read chunks) over the same
   * members as q[CF__Q_LRU] (CPU) and ssd_lru (SSD), kept in step by cf__list_push_head /
   * cf__list_remove */
  int cost_on;
  cf__heap_t heap[2][2]; /* [tier][class] */
  double tau[2];         /* decay time in clock ticks: CF__COST_TAU_SLOTS x the tier's slots */
  double bonus[2];       /* the read class's head start in each tier, in priority units */
  int learn_tier;        /* the tier whose bonus learns from ghost hits (-1: none) */
  cf__ghosts_t ghosts;   /* that tier's recent victims */
  cf__sketch_t sketch;   /* that tier's keys' recent frequency, across evictions */
  double cost_clock; /* COST: arrivals + uses so far, the priorities' time */
  double *cost_t;    /* COST: [n_ents_max] the clock at each entry's arrival or last use */
  struct cf__cpush_s *cpush; /* COST: the CPU tier's shadows choosing bonus[0] (cf_store_cost_cpu.c) */
  struct cf__rate_s *rate;   /* COST: reuse counts and the rate order's state (cf_store_cost_rate.c) */
  double defer_rate; /* COST: share of first write-backs the full SSD tier would refuse (decayed) */
  int defer_on;      /* COST: first write-backs are deferred (cf_store_cost.c, cf__defer_learn) */
  double defer_n;    /* COST: first write-backs weighed so far, up to the rate's horizon */
};

#define CF__SPILL_BATCH 16 /* chunks per write-back batch (one journal append) */

/* ---- cf_store.c */
/* rewrite the journal when dead records dominate it (takes mu, then jmu) */
void cf__maybe_compact(cf_store_t *st);

/* ---- cf_store_index.c: index and lists (call with mu held) */
int32_t cf__idx_find(cf_store_t *st, const cf_store_key_t *k);
/* Every key's fastest local tier into tiers_out[i] (CF_STORE_TIER_NONE when absent); returns
 * how many are stored locally (cf_store_lookup_each without the remote tier). */
size_t cf__lookup_each_local(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out);
int32_t cf__idx_insert(cf_store_t *st, const cf_store_key_t *k); /* new entry or -1 when full */
void cf__ent_maybe_free(cf_store_t *st, int32_t e);
/* which: 0 CPU queue links, 1 SSD LRU links, 2 dirty links */
void cf__list_remove(cf_store_t *st, cf__list_t *l, int32_t e, int which);
void cf__list_push_head(cf_store_t *st, cf__list_t *l, int32_t e, int which);
void cf__q_set(cf_store_t *st, int32_t e, int q);       /* move e to CPU queue q (0: none) */
void cf__dirty_set(cf_store_t *st, int32_t e, int on);  /* on/off the dirty FIFO */

/* ---- cf_store_cpu.c: CPU tier (mu held unless said) */
void cf__cpu_touch(cf_store_t *st, int32_t e);
uint8_t *cf__cpu_slot_ptr(const cf_store_t *st, int32_t slot);
void cf__cpu_drop(cf_store_t *st, int32_t e, int to_ghost);
int cf__evictable(const cf__ent_t *en);
int cf__cpu_evict_safe(cf_store_t *st, int write_back);
/* COST: the spill thread's write-back ahead of a save's eviction (cf_store_spill.c; mu held, may
 * release it): clears ahead_due; 1 when it wrote a victim back */
int cf__evict_ahead(cf_store_t *st);
/* ---- cf_store_promote.c: promotion on read when the chunk is read a layer at a time (the
 * daemon's restores): mu held. cf__promote_later queues chunk e (its last layer just read from
 * SSD); cf__promote_queued, on the spill thread, copies the oldest queued chunk (releases mu) */
void cf__promote_later(cf_store_t *st, int32_t e);
void cf__promote_queued(cf_store_t *st);
/* cf_store_read.c: release a read reference on SSD slot s (takes mu) */
void cf__slot_unref(cf_store_t *st, int32_t s);
/* SSD read pins: take one on slot s / count the calling thread's (mu held) */
void cf__ssd_read_pin(cf_store_t *st, int32_t s);
long cf__ssd_read_pins_mine(void);
void cf__ssd_wake(cf_store_t *st); /* mu held: wake evictions waiting for an SSD slot */
/* takes mu itself */
int cf__cpu_fill(cf_store_t *st, const cf_store_key_t *key, uint32_t n_tokens,
                 const void *const *cells, const void *packed, int keep_pin, int32_t *e_out,
                 uint32_t pos);
void *cf__cpu_region_alloc(cf_store_t *st, size_t bytes);

/* ---- cf_store_ssd.c: SSD slots */
/* drop SSD presence of entry e whose slot is s (mu held); the caller then journals DEL and calls
 * cf__ssd_release(s) */
void cf__ssd_detach(cf_store_t *st, int32_t e);
void cf__ssd_release(cf_store_t *st, int32_t slot); /* mu held */
/* drop a chunk found corrupt in slot s; takes mu itself, journals a DEL */
void cf__ssd_drop_corrupt(cf_store_t *st, const cf_store_key_t *k, int32_t slot, uint32_t cells);
int32_t cf__ssd_alloc(cf_store_t *st); /* a free slot or a CF error (takes mu itself) */
/* runs under mu before cf__ssd_alloc_prep chooses a slot; nonzero declines it */
typedef int (*cf__ssd_prep_fn)(cf_store_t *st, void *arg);
#define CF__SSD_DECLINED INT32_MAX /* from cf__ssd_alloc_prep: neither a slot nor an error */
int32_t cf__ssd_alloc_prep(cf_store_t *st, cf__ssd_prep_fn prep, void *arg);
/* The chunk the SSD eviction policy gives up next (mu held), among those no reader holds; -1
 * when none. LRU: the least recently saved or read. S3-FIFO: FIFO by save with reinsertion —
 * a chunk read since it last reached the tail goes back to the head with one read less. */
int32_t cf__ssd_pick(cf_store_t *st);
/* a read or pin of entry e (mu held): refreshes its place in the SSD eviction order */
void cf__ssd_touch(cf_store_t *st, int32_t e);

/* ---- cf_store_shrink.c */
/* After the replay at open, when the data files hold more slots than the cap (st->cap_slots):
 * drop the chunks the policy gives up (journaled), move the kept ones that lie past the cap into
 * free slots below it, rewrite the journal, and set n_ssd_slots to the cap. The files are cut
 * afterwards by cf__data_offer_all. */
int cf__ssd_shrink(cf_store_t *st);
/* Test hook: when the environment names CF_STORE_TEST_KILL_AT=N, the N-th call in this store
 * (counted from open) SIGKILLs the process, so crash tests can stop the shrink at each step. */
void cf__test_kill_point(cf_store_t *st);
void cf__test_delay_point(const char *env); /* test hook: usleep($env) when set */

/* ---- cf_store_cost.c: the COST policy's heaps (mu held) */
int cf__cost_alloc(cf_store_t *st);  /* at open, when cfg.cpu_evict is COST */
void cf__cost_free(cf_store_t *st);
/* membership follows the lists: tier 0 = q[CF__Q_LRU], tier 1 = ssd_lru */
void cf__heap_add(cf_store_t *st, int tier, int32_t e);
void cf__heap_del(cf_store_t *st, int tier, int32_t e);
/* a use of e (read at its last layer, pin, re-save): one more use, both priorities refreshed */
void cf__cost_use(cf_store_t *st, int32_t e);
/* record e's chunk index (pos < CF__POS_KEEP), refreshing its priorities when it changes */
void cf__cost_set_pos(cf_store_t *st, int32_t e, uint32_t pos);
/* 1 when the SSD tier is full and entry e, about to be written back, has a lower priority
 * there than every chunk it holds: the SSD tier's victim would be e itself */
int cf__cost_refuse(cf_store_t *st, int32_t e);
/* 1 when cf__cost_refuse(st, e) would refuse e by deferring its write-back to the CPU tier's
 * eviction (the SSD tier full: cf__cost_refuse checks that first) rather than weighing it (the
 * store's cost_deferred statistic). mu held. */
int cf__cost_defer(const cf_store_t *st, int32_t e);
/* 1 when a chunk at index pos (CF__POS_KEEP / unknown: index 0) of n_tokens is worth at least
 * the table's average SSD value (no table: every chunk is) */
int cf__cost_dear(const cf_store_t *st, uint32_t pos, uint32_t n_tokens);
/* the member of tier's heaps with the lowest priority that ok(st, e) accepts (ok NULL: any).
 * -1 when none. O(log n) plus the refused ones. */
int32_t cf__heap_pick(cf_store_t *st, int tier, int (*ok)(cf_store_t *, int32_t));
/* e is leaving the store by eviction (mu held, before it is freed): a ghost of the learning tier
 * remembers it */
void cf__cost_evicted(cf_store_t *st, int32_t e);

/* Open addressing with linear probing over int32 indices (-1: empty), each entry's home slot its
 * 64-bit fingerprint & mask (the cost policy's ghosts and the CPU tier's shadows): empty slot i,
 * keeping every probe chain whole (backward shift). fp(ctx, idx): entry idx's fingerprint. */
static inline void cf__probe_unlink(int32_t *tab, uint32_t mask, uint32_t i, const void *ctx,
                                    uint64_t (*fp)(const void *ctx, int32_t idx)) {
  for (uint32_t j = (i + 1) & mask; tab[j] >= 0; j = (j + 1) & mask) {
    uint32_t home = (uint32_t)fp(ctx, tab[j]) & mask;
    if (((j - home) & mask) >= ((j - i) & mask)) {
      tab[i] = tab[j];
      i = j;
    }
  }
  tab[i] = -1;
}

/* ---- cf_store_cost_cpu.c: the cost policy's CPU tier in front of SSD, its read class's head
 * start (bonus[0]) chosen by the best of CF__CPUSH_N shadow caches */
#define CF__CPUSH_N 3
int cf__cpush_alloc(cf_store_t *st); /* no-op unless the CPU tier is in front of an SSD tier */
void cf__cpush_free(cf_store_t *st);
void cf__cpush_arrive(cf_store_t *st, int32_t e); /* e enters the CPU tier (mu held) */
void cf__cpush_use(cf_store_t *st, int32_t e);    /* e was used (mu held, cost_t[e] updated) */
size_t cf__cpush_bytes(int32_t slots); /* the shadows' memory for a CPU tier of `slots` */
/* 1 while the shadow with the largest head start (ln 4 tau, S3-FIFO-like) is in charge: the
 * reuse-rate order's gate (cf_store_cost_rate.c) */
int cf__cpush_filter(const cf_store_t *st);

/* ---- cf_store_cost_rate.c: the cost policy's CPU tier in reuse-rate order (mu held) */
int cf__rate_alloc(cf_store_t *st); /* no-op unless the CPU tier is in front of an SSD tier */
void cf__rate_free(cf_store_t *st);
void cf__rate_touch(cf_store_t *st, int32_t e, int read); /* e arrives new (read 0) or is used (1) */
int cf__rate_on(const cf_store_t *st, int tier);          /* tier is ranked by reuse rate now */
double cf__rate_key(const cf_store_t *st, int32_t e);     /* e's CPU-tier key in that order */
/* one more arrival or use: into or out of the rate order, its keys taken again now and then */
void cf__rate_tick(cf_store_t *st);
size_t cf__rate_bytes(int64_t slots); /* the counts' memory for a store of `slots` (both tiers) */
/* cf_store_cost.c: every key of tier computed again, its heaps rebuilt (O(n)) */
void cf__cost_rekey(cf_store_t *st, int tier);

/* ---- cf_store_spill.c: write-back */
unsigned cf__take_dirty(cf_store_t *st, int32_t *out, unsigned max); /* mu held */
int cf__spill_batch(cf_store_t *st, const int32_t *ents, unsigned n, int durable);
void *cf__spiller_main(void *arg);

/* ---- cf_store_remote.c: hooks of the remote tier (no-ops without one) */
int cf__remote_open(cf_store_t *st);
void cf__remote_close(cf_store_t *st);
/* a save added chunk key (at chunk index pos, CF__POS_KEEP when not told): queue it for the
 * remote tier */
void cf__remote_saved(cf_store_t *st, const cf_store_key_t *key, uint32_t pos, uint32_t n_tokens,
                      const void *const *cells);
/* cf_store_read's last resort: CF_ENOTFOUND without a remote tier */
int cf__remote_read(cf_store_t *st, const cf_store_key_t *key, uint32_t layer0, uint32_t n_layers,
                    void *dst, size_t dst_bytes);

/* ---- cf_store_journal.c */
int cf__hdr_write(cf_store_t *st);
int cf__hdr_read(const char *dir, cf_store_geom_t *g, int32_t *slots_per_file);
int cf__hdr_check(const char *dir, const cf_store_geom_t *want, int32_t *slots_per_file);
/* encode one record (type 1 ADD, 2 DEL) into buf (jrec_bytes) */
void cf__jrec_encode(const cf_store_t *st, uint8_t *buf, int type, uint64_t seq,
                     const cf_store_key_t *k, int32_t slot, uint32_t n_tokens, const uint64_t *csum);
/* append n encoded records; sync: fdatasync after. jmu taken inside. */
int cf__journal_append(cf_store_t *st, const uint8_t *recs, size_t n, int sync);
/* the same, then pub(st, arg) with jmu still held when the records are written (and synced) */
int cf__journal_append_pub(cf_store_t *st, const uint8_t *recs, size_t n, int sync,
                           void (*pub)(cf_store_t *, void *), void *arg);
int cf__journal_add(cf_store_t *st, int type, const cf_store_key_t *k, int32_t slot,
                    uint32_t n_tokens, const uint64_t *csum, int sync);
/* replay the journal into the index (open): counts in st->st */
int cf__journal_replay(cf_store_t *st, int readonly);
int cf__journal_compact(cf_store_t *st);

/* ---- cf_store_io.c */
int cf__ring_init(cf__ring_t *r, unsigned depth);
void cf__ring_exit(cf__ring_t *r);
/* run n ops (any mix of reads/writes), wait for all; returns 0 or the first failure (CF code,
 * message names the file offset). A short transfer is an error (CF_EIO). */
int cf__ring_run(cf_store_t *st, cf__ring_t *r, cf__io_t *ops, unsigned n);
int cf__data_open_existing(cf_store_t *st);
int cf__data_grow(cf_store_t *st); /* preallocate the next data file; pushes its slots */
void cf__data_close(cf_store_t *st);
/* after the replay: drop files past the cap, size the rest, offer their unowned slots */
void cf__data_offer_all(cf_store_t *st);
int cf__data_sync(cf_store_t *st);
void cf__slot_pos(const cf_store_t *st, int32_t slot, int *fd, uint64_t *off);
void *cf__aligned_alloc(size_t bytes);
void cf__fsync_dir(const char *dir);
/* DIR/name written whole or not at all (a small file: the header, the weights digest): a temporary
 * file, fsync, rename, fsync of the directory. 0 or a CF_E* code with the error set. */
int cf__file_put(const char *dir, const char *name, const void *buf, size_t n);

#endif
