/* fsck for a store directory: replay the journal read-only and check every cell's checksum. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"

int cf_store_verify_dir(const char *dir, cf_store_verify_t *out) {
  memset(out, 0, sizeof *out);
  cf_store_config_t cfg;
  cf_store_config_default(&cfg);
  cfg.readonly = 1;
  cfg.spill = 0;
  cf_store_t *st;
  int rc = cf_store_open(dir, NULL, &cfg, &st);
  if (rc) return rc;
  out->geom = st->g;
  out->torn_tail = st->st.journal_torn;
  out->journal_damaged = st->st.journal_damaged;
  /* chunks whose data file lost their bytes were dropped during replay */
  out->chunks_damaged = st->st.corrupt_chunks;
  if (out->chunks_damaged)
    snprintf(out->first_damage, sizeof out->first_damage,
             "%llu chunk(s) point past the end of a truncated or missing data file",
             (unsigned long long)out->chunks_damaged);
  else if (out->journal_damaged)
    snprintf(out->first_damage, sizeof out->first_damage,
             "%llu journal record(s) failed their CRC before the last good record",
             (unsigned long long)out->journal_damaged);
  uint8_t *buf = cf__aligned_alloc(st->slot_bytes);
  if (!buf) { cf_store_close(st); return cf_seterr(CF_ENOMEM, "verify buffer"); }
  for (int32_t s = 0; s < st->n_ssd_slots; s++) {
    int32_t e = st->ssd_owner[s];
    if (e < 0) continue;
    cf_store_key_t k = st->ents[e].key;
    int tier;
    rc = cf_store_read(st, &k, 0, st->g.n_layers, buf, st->slot_bytes, &tier);
    out->cells_checked += st->g.n_layers;
    if (rc == 0) {
      out->chunks_ok++;
    } else if (rc == CF_ECORRUPT || rc == CF_EIO) {
      if (!out->chunks_damaged && !out->first_damage[0])
        snprintf(out->first_damage, sizeof out->first_damage, "%s", cf_errmsg());
      out->chunks_damaged++;
    } else {
      free(buf);
      cf_store_close(st);
      return rc;
    }
  }
  free(buf);
  cf_store_close(st);
  return 0;
}
