/* cf_redis_slots — Redis Cluster key routing: CRC16 key slots, the slot → node map, and the
 * MOVED / ASK redirections a node answers when a slot lives elsewhere.
 *
 * Pure functions and one table, no sockets: cf_redis (the client) feeds it the CLUSTER SLOTS
 * ranges it reads and the redirection errors it gets, and asks it where a key goes.
 *
 * Slot of a key (Redis Cluster spec, "Keys distribution model"): CRC16-XMODEM (poly 0x1021, init 0)
 * of the key, mod 16384; when the key holds a "{tag}" with at least one byte between the first '{'
 * and the next '}', only the tag is hashed (so keys sharing a tag share a slot and a node).
 */
#ifndef CF_REDIS_SLOTS_H
#define CF_REDIS_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#define CF_REDIS_SLOTS 16384
#define CF_REDIS_MAX_NODES 64
#define CF_REDIS_HOST_MAX 256

uint16_t cf_redis_crc16(const void *buf, size_t n);
/* Slot of a key (hash tags honoured). */
unsigned cf_redis_key_slot(const void *key, size_t n);

typedef struct {
  char host[CF_REDIS_HOST_MAX];
  int port;
} cf_redis_addr_t;

/* slot → node index into nodes[] (-1: no node known). Nodes are only added, never removed, so
 * an index stays valid for the client's connection table. */
typedef struct {
  int16_t slot[CF_REDIS_SLOTS];
  cf_redis_addr_t nodes[CF_REDIS_MAX_NODES];
  int n_nodes;
} cf_redis_slotmap_t;

void cf_redis_slotmap_init(cf_redis_slotmap_t *m);
/* Index of node host:port, adding it when new. Returns the index or CF_ENOMEM (table full) /
 * CF_EINVAL (host too long, port out of range). */
int cf_redis_slotmap_node(cf_redis_slotmap_t *m, const char *host, int port);
/* Slots [first, last] are served by host:port. Returns 0 or the error of cf_redis_slotmap_node,
 * CF_ERANGE when the range is not within 0..16383. */
int cf_redis_slotmap_assign(cf_redis_slotmap_t *m, unsigned first, unsigned last,
                            const char *host, int port);
/* Forget every slot (before re-reading CLUSTER SLOTS); nodes stay. */
void cf_redis_slotmap_clear_slots(cf_redis_slotmap_t *m);
/* Slots with a node. */
unsigned cf_redis_slotmap_covered(const cf_redis_slotmap_t *m);

/* A redirection error reply, "MOVED 3999 127.0.0.1:6381" or "ASK 3999 127.0.0.1:6381" (an IPv6
 * address is "[::1]:6381" or "::1:6381": the port is after the last ':'). Returns 1 for MOVED,
 * 2 for ASK, 0 for any other error text (also a malformed redirection); fills slot and addr on
 * 1 and 2. An empty host ("MOVED 1 :6380", a node that does not know its own address) becomes
 * `default_host`. */
enum { CF_REDIS_REDIR_NONE = 0, CF_REDIS_REDIR_MOVED = 1, CF_REDIS_REDIR_ASK = 2 };
int cf_redis_parse_redirect(const char *err, size_t n, const char *default_host, unsigned *slot,
                            cf_redis_addr_t *addr);

#endif
