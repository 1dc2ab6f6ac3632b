/* cf_shmguard — an engine that truncates (or frees) its shared-memory KV file while the daemon
 * has it mapped must not kill the daemon.
 *
 * Touching a page of a MAP_SHARED mapping past the file's end raises SIGBUS, whose default
 * action ended cacheflowd mid-Save or mid-Restore (every engine's work lost to one engine's
 * mistake). As compositors do with their clients' shm pools, the daemon registers each engine
 * mapping here; a SIGBUS inside one replaces that whole mapping with private zero pages
 * (mmap MAP_FIXED, async-signal-safe), marks it broken and returns, so the faulting copy
 * completes on the zeros. The code that copied then asks cf_shmguard_broken() and refuses to use
 * what it read: a Save never stores those zeros (wrong KV), it fails naming the buffer. A SIGBUS
 * anywhere else keeps its default action (a real crash, with its core). */
#ifndef CF_SHMGUARD_H
#define CF_SHMGUARD_H
#include <stddef.h>

/* The SIGBUS handler, once per process. 0, or CF_EINVAL with the error set. */
int cf_shmguard_install(void);
/* Watch [addr, addr + len) (an engine buffer's mapping). 0, or CF_ENOMEM when every slot is in
 * use (the mapping then keeps the default SIGBUS action). */
int cf_shmguard_add(void *addr, size_t len, const char *path);
/* Stop watching the mapping at addr (before munmap). */
void cf_shmguard_remove(void *addr);
/* 1 when p lies in a watched mapping that took a SIGBUS (its bytes are zeros now), else 0; the
 * mapping's path into *path when path is not NULL. */
int cf_shmguard_broken(const void *p, const char **path);
/* SIGBUS faults absorbed since start (for Stats / a test). */
unsigned long cf_shmguard_faults(void);
#endif
