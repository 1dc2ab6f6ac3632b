/* The raw-disk baseline of the benchmarks (header-only: each bench is one translation unit):
 * a sequential O_DIRECT read of a file through io_uring, no page cache on the way. */
#ifndef CF_BENCH_RAW_H
#define CF_BENCH_RAW_H

#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* Seconds to read the first `total` bytes of `path` in blocks of `bs` (a multiple of 4096),
 * `qd` reads in flight, into buf (qd * bs bytes, 4096-aligned). Exits on any error. */
static inline double cf_bench_raw_read(const char *path, size_t total, size_t bs, unsigned qd, uint8_t *buf) {
  int fd = open(path, O_RDONLY | O_DIRECT);
  if (fd < 0) { perror(path); exit(1); }
  struct io_uring ring;
  if (io_uring_queue_init(qd, &ring, 0)) { fprintf(stderr, "io_uring\n"); exit(1); }
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  size_t sub = 0, done = 0, nblk = total / bs;
  unsigned inflight = 0;
  while (done < nblk) {
    while (sub < nblk && inflight < qd) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
      io_uring_prep_read(sqe, fd, buf + (sub % qd) * bs, (unsigned)bs, (uint64_t)sub * bs);
      sub++;
      inflight++;
    }
    io_uring_submit(&ring);
    struct io_uring_cqe *cqe;
    io_uring_wait_cqe(&ring, &cqe);
    do {
      if (cqe->res != (int)bs) { fprintf(stderr, "raw read of %s: %d\n", path, cqe->res); exit(1); }
      io_uring_cqe_seen(&ring, cqe);
      inflight--;
      done++;
    } while (io_uring_peek_cqe(&ring, &cqe) == 0);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  io_uring_queue_exit(&ring);
  close(fd);
  return (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
}

#endif
