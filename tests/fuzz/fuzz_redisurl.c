/* libFuzzer target: the remote tier's text parsers. Byte 0 picks the parser, the rest is its input:
 *   even: remote_url through cf_redis_url_parse (config input); on success the URL must format
 *         back and parse again to the same kind and seeds;
 *   odd:  a server's error reply through cf_redis_parse_redirect (network input: MOVED/ASK); a
 *         redirection must name a slot below 16384, a port 1..65535 and a host that fits. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/cf_redis.h"
#include "store/cf_redis_slots.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *s = (const char *)data + 1;
  size_t n = size - 1;
  if ((data[0] & 1) == 0) {
    char *z = malloc(n + 1);
    memcpy(z, s, n);
    z[n] = 0;
    cf_redis_url_t u, v;
    if (cf_redis_url_parse(z, &u) == 0) {
      char back[4096];
      cf_redis_url_str(&u, back, sizeof back);
      if (cf_redis_url_parse(back, &v) != 0 || v.kind != u.kind || v.n_seeds != u.n_seeds || v.db != u.db ||
          strcmp(v.path, u.path))
        __builtin_trap();
      for (int i = 0; i < u.n_seeds; i++)
        if (v.seeds[i].port != u.seeds[i].port || strcmp(v.seeds[i].host, u.seeds[i].host)) __builtin_trap();
    }
    free(z);
    return 0;
  }
  unsigned slot = 0;
  cf_redis_addr_t a;
  int k = cf_redis_parse_redirect(s, n, "default", &slot, &a);
  if (k != CF_REDIS_REDIR_NONE &&
      (slot >= CF_REDIS_SLOTS || a.port < 1 || a.port > 65535 || strlen(a.host) >= CF_REDIS_HOST_MAX))
    __builtin_trap();
  (void)cf_redis_key_slot(s, n);
  return 0;
}
