/* cf_worker — one thread that runs the loop's slow work (Save's copy, which may wait for SSD
 * writes) so that the libuv loop keeps answering: a job's `run` executes on the worker thread,
 * jobs one at a time in submission order, and its `done` then runs on the loop thread (through
 * a uv_async), where the gRPC reply is sent. Submit, flush and close: loop thread only.
 */
#ifndef CF_WORKER_H
#define CF_WORKER_H

#include <uv.h>

typedef struct cf_worker_job_s cf_worker_job_t;
struct cf_worker_job_s {
  void (*run)(cf_worker_job_t *j);  /* worker thread */
  void (*done)(cf_worker_job_t *j); /* loop thread, after run; may free j */
  cf_worker_job_t *next_;
};

typedef struct cf_worker_s cf_worker_t;

/* Start the thread. 0 or CF_ENOMEM. */
int cf_worker_start(cf_worker_t **out, uv_loop_t *loop);
void cf_worker_submit(cf_worker_t *w, cf_worker_job_t *j);
/* Wait until every submitted job has run, then run their `done` now (shutdown). */
void cf_worker_flush(cf_worker_t *w);
/* Flush, join the thread, close the async (the worker frees itself on the loop). NULL ok. */
void cf_worker_close(cf_worker_t *w);

#endif
