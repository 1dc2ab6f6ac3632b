/* cf_worker — see cf_worker.h. */
#include "cf_worker.h"

#include <pthread.h>
#include <stdlib.h>

#include "util/cf_err.h"

struct cf_worker_s {
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  cf_worker_job_t *todo_head, *todo_tail;  /* submitted, not run */
  cf_worker_job_t *done_head, *done_tail;  /* run, `done` not called yet */
  int running, stopping;
  uv_async_t async;
};

static void *cf__thread(void *arg) {
  cf_worker_t *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->todo_head && !w->stopping) pthread_cond_wait(&w->cv, &w->mu);
    if (!w->todo_head) break;
    cf_worker_job_t *j = w->todo_head;
    w->todo_head = j->next_;
    if (!w->todo_head) w->todo_tail = NULL;
    w->running = 1;
    pthread_mutex_unlock(&w->mu);
    j->run(j);
    pthread_mutex_lock(&w->mu);
    w->running = 0;
    j->next_ = NULL;
    if (w->done_tail) w->done_tail->next_ = j;
    else w->done_head = j;
    w->done_tail = j;
    pthread_cond_broadcast(&w->cv);
    uv_async_send(&w->async);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static void cf__deliver(cf_worker_t *w) {
  pthread_mutex_lock(&w->mu);
  cf_worker_job_t *j = w->done_head;
  w->done_head = w->done_tail = NULL;
  pthread_mutex_unlock(&w->mu);
  while (j) {
    cf_worker_job_t *next = j->next_;
    j->done(j);
    j = next;
  }
}

static void cf__on_async(uv_async_t *a) { cf__deliver(a->data); }

int cf_worker_start(cf_worker_t **out, uv_loop_t *loop) {
  cf_worker_t *w = calloc(1, sizeof *w);
  if (!w) return cf_seterr(CF_ENOMEM, "worker");
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  if (pthread_create(&w->th, NULL, cf__thread, w)) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
    return cf_seterr(CF_ENOMEM, "worker: cannot start its thread");
  }
  uv_async_init(loop, &w->async, cf__on_async);
  w->async.data = w;
  *out = w;
  return 0;
}

void cf_worker_submit(cf_worker_t *w, cf_worker_job_t *j) {
  j->next_ = NULL;
  pthread_mutex_lock(&w->mu);
  if (w->todo_tail) w->todo_tail->next_ = j;
  else w->todo_head = j;
  w->todo_tail = j;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

void cf_worker_flush(cf_worker_t *w) {
  pthread_mutex_lock(&w->mu);
  while (w->todo_head || w->running) pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
  cf__deliver(w);
}

static void cf__closed(uv_handle_t *h) {
  cf_worker_t *w = h->data;
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  free(w);
}

void cf_worker_close(cf_worker_t *w) {
  if (!w) return;
  cf_worker_flush(w);
  pthread_mutex_lock(&w->mu);
  w->stopping = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->th, NULL);
  uv_close((uv_handle_t *)&w->async, cf__closed);
}
