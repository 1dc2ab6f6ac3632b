/* cf_shmguard — engine mappings survive their files being truncated (see cf_shmguard.h). The
 * registry is a fixed table read by the signal handler without locks: a slot is published by
 * storing its address last (release) and retired by clearing it first. A reader that loaded a
 * slot's address may still read its len and broken while a writer reuses the slot (remove,
 * then add of another mapping), so those two are atomics as well (test_ipc's
 * shmguard_slots_reused_while_read). */
#include "ipc/cf_shmguard.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "util/cf_err.h"

#define CF__SLOTS 1024

static struct {
  uintptr_t addr; /* 0: free */
  size_t len;
  int broken;
  char path[256];
} cf__slot[CF__SLOTS];
static unsigned long cf__faults;
static int cf__hw; /* slots [0, hw) may be in use: scans stop there */
static pthread_mutex_t cf__mu = PTHREAD_MUTEX_INITIALIZER; /* writers only */

static void cf__on_sigbus(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  int saved = errno; /* mmap may set it; the interrupted code must not see that */
  uintptr_t a = (uintptr_t)si->si_addr;
  int hw = __atomic_load_n(&cf__hw, __ATOMIC_ACQUIRE);
  for (int i = 0; i < hw; i++) {
    uintptr_t base = __atomic_load_n(&cf__slot[i].addr, __ATOMIC_ACQUIRE);
    size_t len = __atomic_load_n(&cf__slot[i].len, __ATOMIC_RELAXED);
    if (!base || a < base || a - base >= len) continue;
    void *p = mmap((void *)base, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == (void *)base) {
      __atomic_store_n(&cf__slot[i].broken, 1, __ATOMIC_RELEASE);
      __atomic_add_fetch(&cf__faults, 1, __ATOMIC_RELAXED);
      errno = saved;
      return; /* the faulting access runs again, on zeros */
    }
    break;
  }
  /* not ours (or the remap failed): the default action, as if no handler were installed */
  signal(sig, SIG_DFL);
  raise(sig);
}

int cf_shmguard_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = cf__on_sigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, NULL) != 0) return cf_seterr(CF_EINVAL, "shmguard: sigaction(SIGBUS) failed");
  return 0;
}

int cf_shmguard_add(void *addr, size_t len, const char *path) {
  pthread_mutex_lock(&cf__mu);
  for (int i = 0; i < CF__SLOTS; i++) {
    if (__atomic_load_n(&cf__slot[i].addr, __ATOMIC_RELAXED)) continue;
    __atomic_store_n(&cf__slot[i].len, len, __ATOMIC_RELAXED);
    __atomic_store_n(&cf__slot[i].broken, 0, __ATOMIC_RELAXED);
    snprintf(cf__slot[i].path, sizeof cf__slot[i].path, "%s", path ? path : "");
    __atomic_store_n(&cf__slot[i].addr, (uintptr_t)addr, __ATOMIC_RELEASE);
    if (i + 1 > cf__hw) __atomic_store_n(&cf__hw, i + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&cf__mu);
    return 0;
  }
  pthread_mutex_unlock(&cf__mu);
  return cf_seterr(CF_ENOMEM, "shmguard: more than %d engine mappings watched", CF__SLOTS);
}

void cf_shmguard_remove(void *addr) {
  pthread_mutex_lock(&cf__mu);
  for (int i = 0; i < CF__SLOTS; i++)
    if (__atomic_load_n(&cf__slot[i].addr, __ATOMIC_RELAXED) == (uintptr_t)addr)
      __atomic_store_n(&cf__slot[i].addr, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&cf__mu);
}

int cf_shmguard_broken(const void *p, const char **path) {
  uintptr_t a = (uintptr_t)p;
  int hw = __atomic_load_n(&cf__hw, __ATOMIC_ACQUIRE);
  for (int i = 0; i < hw; i++) {
    uintptr_t base = __atomic_load_n(&cf__slot[i].addr, __ATOMIC_ACQUIRE);
    if (!base || a < base || a - base >= __atomic_load_n(&cf__slot[i].len, __ATOMIC_RELAXED)) continue;
    if (!__atomic_load_n(&cf__slot[i].broken, __ATOMIC_ACQUIRE)) return 0;
    if (path) *path = cf__slot[i].path;
    return 1;
  }
  return 0;
}

unsigned long cf_shmguard_faults(void) { return __atomic_load_n(&cf__faults, __ATOMIC_RELAXED); }
