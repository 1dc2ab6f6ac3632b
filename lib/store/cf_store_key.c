/* Chained chunk keys: a key names a whole prefix, never a chunk out of context. */
#include <string.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "store/cf_store.h"

static uint64_t cf__hashed; /* relaxed atomic: a count, ordered with nothing */

uint64_t cf_store_keys_hashed(void) { return __atomic_load_n(&cf__hashed, __ATOMIC_RELAXED); }

static void cf__key_one(const uint8_t fp[16], const cf_store_key_t *parent, const int32_t *tok,
                        uint32_t n, int partial, cf_store_key_t *out) {
  XXH3_state_t s;
  static const uint8_t zero[16];
  __atomic_fetch_add(&cf__hashed, 1, __ATOMIC_RELAXED);
  XXH3_128bits_reset(&s);
  XXH3_128bits_update(&s, fp, 16);
  XXH3_128bits_update(&s, parent ? parent->b : zero, 16);
  /* token ids as little-endian int32: the host order on every platform we build for */
  XXH3_128bits_update(&s, tok, (size_t)n * sizeof(int32_t));
  if (partial) {
    /* domain separation: a partial chunk never collides with a full one of another prefix */
    uint32_t cnt = n;
    XXH3_128bits_update(&s, "partial", 7);
    XXH3_128bits_update(&s, &cnt, sizeof cnt);
  }
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&s));
  memcpy(out->b, c.digest, 16);
}

size_t cf_store_chain_keys(const uint8_t fingerprint[16], const int32_t *tokens, size_t n,
                           uint32_t C, cf_store_key_t *keys_out) {
  if (C == 0) return 0;
  size_t nk = n / C;
  for (size_t i = 0; i < nk; i++)
    cf__key_one(fingerprint, i ? &keys_out[i - 1] : NULL, tokens + i * C, C, 0, &keys_out[i]);
  return nk;
}

size_t cf_store_chain_keys_partial(const uint8_t fingerprint[16], const int32_t *tokens, size_t n,
                                   uint32_t C, cf_store_key_t *keys_out) {
  if (C == 0) return 0;
  size_t nk = cf_store_chain_keys(fingerprint, tokens, n, C, keys_out);
  size_t rem = n - nk * C;
  if (!rem) return nk;
  cf__key_one(fingerprint, nk ? &keys_out[nk - 1] : NULL, tokens + nk * C, (uint32_t)rem, 1,
              &keys_out[nk]);
  return nk + 1;
}
