/* cf_redis_slots — CRC16 key slots, the slot map, MOVED/ASK parsing (see the header). */
#include "store/cf_redis_slots.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

/* CRC16-XMODEM, bitwise: keys are short (tens of bytes), and routing happens once per command, so
 * a table buys nothing measurable. */
uint16_t cf_redis_crc16(const void *buf, size_t n) {
  const uint8_t *p = buf;
  uint16_t crc = 0;
  for (size_t i = 0; i < n; i++) {
    crc ^= (uint16_t)(p[i] << 8);
    for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

unsigned cf_redis_key_slot(const void *key, size_t n) {
  const char *k = key;
  const char *open = memchr(k, '{', n);
  if (open) {
    size_t s = (size_t)(open - k) + 1;
    const char *close = memchr(k + s, '}', n - s);
    if (close && close > k + s) return cf_redis_crc16(k + s, (size_t)(close - (k + s))) & 16383u;
  }
  return cf_redis_crc16(k, n) & 16383u;
}

void cf_redis_slotmap_init(cf_redis_slotmap_t *m) {
  memset(m, 0, sizeof *m);
  cf_redis_slotmap_clear_slots(m);
}

void cf_redis_slotmap_clear_slots(cf_redis_slotmap_t *m) {
  for (unsigned i = 0; i < CF_REDIS_SLOTS; i++) m->slot[i] = -1;
}

int cf_redis_slotmap_node(cf_redis_slotmap_t *m, const char *host, int port) {
  if (strlen(host) >= CF_REDIS_HOST_MAX)
    return cf_seterr(CF_EINVAL, "redis node host '%.40s...' longer than %d bytes", host,
                     CF_REDIS_HOST_MAX - 1);
  if (port <= 0 || port > 65535) return cf_seterr(CF_EINVAL, "redis node %s: port %d out of range", host, port);
  for (int i = 0; i < m->n_nodes; i++)
    if (m->nodes[i].port == port && strcmp(m->nodes[i].host, host) == 0) return i;
  if (m->n_nodes == CF_REDIS_MAX_NODES)
    return cf_seterr(CF_ENOMEM, "redis cluster: more than %d nodes", CF_REDIS_MAX_NODES);
  snprintf(m->nodes[m->n_nodes].host, CF_REDIS_HOST_MAX, "%s", host);
  m->nodes[m->n_nodes].port = port;
  return m->n_nodes++;
}

int cf_redis_slotmap_assign(cf_redis_slotmap_t *m, unsigned first, unsigned last, const char *host,
                            int port) {
  if (first > last || last >= CF_REDIS_SLOTS)
    return cf_seterr(CF_ERANGE, "redis cluster: slot range %u-%u not within 0-16383", first, last);
  int ni = cf_redis_slotmap_node(m, host, port);
  if (ni < 0) return ni;
  for (unsigned s = first; s <= last; s++) m->slot[s] = (int16_t)ni;
  return 0;
}

unsigned cf_redis_slotmap_covered(const cf_redis_slotmap_t *m) {
  unsigned c = 0;
  for (unsigned i = 0; i < CF_REDIS_SLOTS; i++) c += m->slot[i] >= 0;
  return c;
}

int cf_redis_parse_redirect(const char *err, size_t n, const char *default_host, unsigned *slot,
                            cf_redis_addr_t *addr) {
  char buf[CF_REDIS_HOST_MAX + 64];
  if (n >= sizeof buf) return CF_REDIS_REDIR_NONE;
  memcpy(buf, err, n);
  buf[n] = 0;
  int kind;
  const char *p;
  if (strncmp(buf, "MOVED ", 6) == 0) kind = CF_REDIS_REDIR_MOVED, p = buf + 6;
  else if (strncmp(buf, "ASK ", 4) == 0) kind = CF_REDIS_REDIR_ASK, p = buf + 4;
  else return CF_REDIS_REDIR_NONE;
  char *end;
  unsigned long s = strtoul(p, &end, 10);
  if (end == p || *end != ' ' || s >= CF_REDIS_SLOTS) return CF_REDIS_REDIR_NONE;
  const char *hp = end + 1;
  const char *colon = strrchr(hp, ':');
  if (!colon) return CF_REDIS_REDIR_NONE;
  long port = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end || port <= 0 || port > 65535) return CF_REDIS_REDIR_NONE;
  size_t hl = (size_t)(colon - hp);
  if (hl >= 2 && hp[0] == '[' && hp[hl - 1] == ']') hp++, hl -= 2; /* [v6]:port */
  if (hl == 0) {
    if (!default_host || strlen(default_host) >= CF_REDIS_HOST_MAX) return CF_REDIS_REDIR_NONE;
    snprintf(addr->host, CF_REDIS_HOST_MAX, "%s", default_host);
  } else {
    if (hl >= CF_REDIS_HOST_MAX) return CF_REDIS_REDIR_NONE;
    memcpy(addr->host, hp, hl);
    addr->host[hl] = 0;
  }
  addr->port = (int)port;
  *slot = (unsigned)s;
  return kind;
}
