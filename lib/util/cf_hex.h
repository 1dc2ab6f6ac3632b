/* cf_hex — bytes as lower-case hex digits (fingerprints, digests, chunk keys in messages, file
 * contents and Redis keys). Header-only, like cf_clock.h: every module can use it. */
#ifndef CF_HEX_H
#define CF_HEX_H
#include <stddef.h>
#include <stdint.h>

/* Writes 2n digits and a NUL to out (2n + 1 bytes); returns out. */
static inline char *cf_hex(const uint8_t *b, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) out[2 * i] = d[b[i] >> 4], out[2 * i + 1] = d[b[i] & 15];
  out[2 * n] = 0;
  return out;
}
#endif
