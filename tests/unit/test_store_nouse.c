/* The save path's store calls count no use (issue 15, the daemon's Save): lib/exec/cf_save.c asks
 * cf_store_lookup whether each chunk is stored, then saves it with cf_store_save_at, which
 * answers CF_EEXIST for a stored one. An engine saves its whole prompt after every restore, so a
 * lookup or a repeated save that moved a chunk in LRU order, set S3-FIFO's frequency bit, or
 * gave cost a use (t_e, uses, its frequency sketch, the CPU tier's shadow caches) would rank
 * every saved chunk as read. Checked by behaviour: for every policy, with and without an SSD
 * tier, the same saves with lookups and repeated saves of the oldest chunks in between evict
 * exactly the chunks the plain sequence evicts, and leave the learnt state (head starts, ghost
 * returns, frequency weight) as it was; reads of those chunks instead (a use) change the
 * victims, so the comparison can tell. */
#include "cf_test.h"
#include "store_testlib.h"

#define SLOT (2 * 8192) /* st_geom(16, 2, 64): two 8 KiB cells (4 KiB-aligned) */
#define EXTRA 3         /* chunks saved past the caps: 3 evictions from a full store */

enum { NONE, LOOKUP, RESAVE, READ };

typedef struct {
  uint32_t present; /* bit i: chunk i still stored at the end */
  cf_store_stats_t s;
} outcome_t;

static int save_at(cf_store_t *st, uint64_t id) {
  const cf_store_geom_t *g = cf_store_geom(st);
  const void *cells[8];
  uint8_t *buf = st_make_cells(g, id, 16, cells);
  cf_store_key_t k = st_key(g, id);
  int rc = cf_store_save_at(st, &k, (uint32_t)id, 16, cells, 0);
  free(buf);
  return rc;
}

/* Save chunks 0..cap-1 into a store of cpu / ssd slots, do `act` to chunks 0 and 1 (three times
 * each, as the saves after three restores would), then save EXTRA more chunks. */
static outcome_t run(cf_store_evict_t pol, int cpu, int ssd, int act) {
  outcome_t o;
  memset(&o, 0, sizeof o);
  cf_store_config_t c = st_config_slots(cpu, ssd, SLOT, pol); /* no spiller: deterministic */
  cf_store_geom_t g = st_geom(16, 2, 64);
  char dir[512];
  static int n_dirs;
  snprintf(dir, sizeof dir, "%s/s%d", cf_test_tmpdir(), n_dirs++);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return o;
  int n = cpu + ssd;
  for (int i = 0; i < n; i++) CF_CHECK_OK(save_at(st, (uint64_t)i));
  for (int rep = 0; rep < 3; rep++)
    for (uint64_t id = 0; id < 2; id++) {
      cf_store_key_t k = st_key(&g, id);
      int eq = 0, tier = 0;
      if (act == LOOKUP) CF_CHECK_EQ(cf_store_lookup(st, &k, 1, NULL), 1);
      if (act == RESAVE) CF_CHECK_ERR(save_at(st, id), CF_EEXIST);
      if (act == READ) {
        CF_CHECK_OK(st_check(st, id, 16, 0, 2, &eq, &tier));
        CF_CHECK(eq);
      }
    }
  for (int i = n; i < n + EXTRA; i++) CF_CHECK_OK(save_at(st, (uint64_t)i));
  for (int i = 0; i < n + EXTRA; i++) {
    cf_store_key_t k = st_key(&g, (uint64_t)i);
    if (cf_store_lookup(st, &k, 1, NULL) == 1) o.present |= 1u << i;
  }
  cf_store_get_stats(st, &o.s);
  cf_store_close(st);
  return o;
}

static const char *const names[] = {"lru", "s3fifo", "cost"};

static void same(const outcome_t *a, const outcome_t *b, const char *what, int pol, int ssd) {
  CF_CHECK_MSG(a->present == b->present, "%s, %s, %d SSD slots: stored chunks %#x, without it %#x", what,
               names[pol], ssd, a->present, b->present);
  CF_CHECK_MSG(a->s.cpu_evictions == b->s.cpu_evictions && a->s.ssd_evictions == b->s.ssd_evictions,
               "%s, %s: evictions %llu/%llu, without it %llu/%llu", what, names[pol],
               (unsigned long long)a->s.cpu_evictions, (unsigned long long)a->s.ssd_evictions,
               (unsigned long long)b->s.cpu_evictions, (unsigned long long)b->s.ssd_evictions);
  CF_CHECK_MSG(a->s.cost_read_bonus == b->s.cost_read_bonus && a->s.cost_cpu_head_start == b->s.cost_cpu_head_start &&
               a->s.cost_freq_w == b->s.cost_freq_w && a->s.cost_ghost_read == b->s.cost_ghost_read &&
               a->s.cost_ghost_unread == b->s.cost_ghost_unread && a->s.ssd_refused_read == b->s.ssd_refused_read,
               "%s, %s: the cost policy's learnt state moved", what, names[pol]);
}

CF_TEST(store_save_path_lookup_and_resave_count_no_use) {
  const int shapes[2][2] = {{4, 0}, {2, 4}}; /* CPU-only; CPU in front of SSD */
  for (int pol = 0; pol < 3; pol++)
    for (int s = 0; s < 2; s++) {
      int cpu = shapes[s][0], ssd = shapes[s][1];
      outcome_t none = run((cf_store_evict_t)pol, cpu, ssd, NONE);
      outcome_t look = run((cf_store_evict_t)pol, cpu, ssd, LOOKUP);
      outcome_t resave = run((cf_store_evict_t)pol, cpu, ssd, RESAVE);
      CF_CHECK_MSG(none.present != (1u << (cpu + ssd + EXTRA)) - 1, "%s: nothing evicted", names[pol]);
      same(&look, &none, "lookups", pol, ssd);
      same(&resave, &none, "saves of stored chunks", pol, ssd);
    }
}

/* The control: reads of the same chunks are uses, and the policies then keep something else
 * (LRU in front of SSD evicts the same chunks either way in this sequence: its CPU-only shape is
 * the control there). */
CF_TEST(store_reads_instead_change_the_victims) {
  const int shapes[2][2] = {{4, 0}, {2, 4}};
  for (int pol = 0; pol < 3; pol++)
    for (int s = 0; s < 2; s++) {
      int cpu = shapes[s][0], ssd = shapes[s][1];
      if (pol == CF_STORE_EVICT_LRU && ssd) continue;
      outcome_t none = run((cf_store_evict_t)pol, cpu, ssd, NONE);
      outcome_t read = run((cf_store_evict_t)pol, cpu, ssd, READ);
      CF_CHECK_MSG(read.present != none.present, "%s, %d SSD slots: reads of chunks 0 and 1 changed no victim (%#x)",
                   names[pol], ssd, none.present);
    }
}
