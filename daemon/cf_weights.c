/* cf_weights — see cf_weights.h. */
#include "cf_weights.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gpu/cf_gpu.h"
#include "gpu/cf_gpu_kv.h"
#include "model/cf_borrow.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

typedef struct {
  char *path;
  void *base;
  size_t len;
} cf__map_t;

typedef struct {
  cf_gpu_ipc_handle_t h;
  void *base;
  uint64_t bytes;
} cf__ipc_t;

struct cf_weights_s {
  cf_model_t *own;
  cf_backend_t *be;
  cf_executor_t *x;
  cf_model_t *view;          /* cpu backend: the borrowed model (views into maps), NULL when not borrowing */
  cf__map_t *maps;
  int n_maps;
  int on_device;             /* cuda backend: computing on the engine's device tensors */
  cf_borrow_dev_t dev;       /* their addresses (cf_borrow_device) */
  cf__ipc_t *ipcs;           /* the engine's allocations opened with CUDA IPC */
  int n_ipcs;
  pthread_mutex_t mu;        /* guards st */
  cf_weights_stats_t st;
};

int cf_weights_init(cf_weights_t **out, cf_model_t *own, cf_backend_t *be, cf_executor_t *x) {
  cf_weights_t *w = calloc(1, sizeof *w);
  if (!w) return cf_seterr(CF_ENOMEM, "weights");
  w->own = own;
  w->be = be;
  w->x = x;
  pthread_mutex_init(&w->mu, NULL);
  w->st.own_bytes = cf_model_weight_bytes(own);
  *out = w;
  return 0;
}

static void cf__unmap_all(cf_weights_t *w) {
  for (int i = 0; i < w->n_maps; i++) {
    if (w->maps[i].base) munmap(w->maps[i].base, w->maps[i].len);
    free(w->maps[i].path);
  }
  free(w->maps);
  w->maps = NULL;
  w->n_maps = 0;
}

/* The mapping of `path` (mapped now if new), read-only and shared: the engine's own pages. */
static int cf__map(cf_weights_t *w, const char *path, const char *tensor, const cf__map_t **out) {
  for (int i = 0; i < w->n_maps; i++)
    if (!strcmp(w->maps[i].path, path)) { *out = &w->maps[i]; return 0; }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return cf_seterr(errno == ENOENT ? CF_ENOENT : CF_EIO, "tensor '%s': shm_path %s: %s", tensor, path, strerror(errno));
  struct stat sb;
  void *base = MAP_FAILED;
  if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0)
    base = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (base == MAP_FAILED)
    return cf_seterr(CF_EIO, "tensor '%s': shm_path %s: not a non-empty regular file that maps (%s)", tensor, path,
                     strerror(e));
  cf__map_t *nm = realloc(w->maps, (size_t)(w->n_maps + 1) * sizeof *nm);
  char *p = strdup(path);
  if (!nm || !p) {
    munmap(base, (size_t)sb.st_size);
    free(p);
    if (nm) w->maps = nm;
    return cf_seterr(CF_ENOMEM, "weights: mappings");
  }
  w->maps = nm;
  w->maps[w->n_maps] = (cf__map_t){p, base, (size_t)sb.st_size};
  *out = &w->maps[w->n_maps++];
  return 0;
}

static cf_dtype_t cf__dtype(int dt) {
  return dt == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? CF_DT_BF16 : dt == CACHEFLOW__V1__DTYPE__DTYPE_F16 ? CF_DT_F16
                                                                                                  : CF_DT_F32;
}

/* Offered tensor q as cf_borrow's, at `base` + its offset inside a region of `len` bytes (0: size
 * unknown, not checked). 0 or CF_ERANGE. */
static int cf__tensor_at(const Cacheflow__V1__WeightTensor *q, const uint8_t *base, uint64_t len, const char *where,
                         cf_borrow_tensor_t *t) {
  cf_dtype_t dt = cf__dtype(q->dtype);
  uint64_t bytes = cf_dtype_size(dt); /* 1 to 3 dimensions (cf_reqcheck) */
  for (size_t d = 0; d < q->n_shape && d < 3; d++) bytes *= q->shape[d];
  if (len && (q->offset > len || bytes > len - q->offset))
    return cf_seterr(CF_ERANGE, "tensor '%s': bytes [%llu, %llu) past the end of %s (%llu bytes)", q->name,
                     (unsigned long long)q->offset, (unsigned long long)(q->offset + bytes), where,
                     (unsigned long long)len);
  *t = (cf_borrow_tensor_t){.name = q->name, .ndim = (int)q->n_shape,
                            .shape = {(int64_t)q->shape[0], q->n_shape > 1 ? (int64_t)q->shape[1] : 0,
                                      q->n_shape > 2 ? (int64_t)q->shape[2] : 0},
                            .dtype = dt, .data = base + q->offset,
                            .tp_rank = (int)q->tp_rank, .tp_size = q->tp_size ? (int)q->tp_size : 1};
  return 0;
}

/* The offered tensors as cf_borrow's, their data pointing into this process's mappings. */
static int cf__tensors(cf_weights_t *w, const Cacheflow__V1__OfferWeightsRequest *r, cf_borrow_tensor_t *t) {
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Cacheflow__V1__WeightTensor *q = r->tensors[i];
    if (q->location_case != CACHEFLOW__V1__WEIGHT_TENSOR__LOCATION_SHM_PATH)
      return cf_seterr(CF_EUNSUPPORTED, "tensor '%s': the cpu backend borrows shared-memory tensors; CUDA IPC ones "
                       "need backend = cuda", q->name);
    const cf__map_t *m = NULL;
    int rc = cf__map(w, q->shm_path, q->name, &m);
    if (!rc) rc = cf__tensor_at(q, m->base, m->len, q->shm_path, &t[i]);
    if (rc) return rc;
  }
  return 0;
}

static void cf__refused(cf_weights_t *w) {
  pthread_mutex_lock(&w->mu);
  w->st.refusals++;
  pthread_mutex_unlock(&w->mu);
}

/* ---------------------------------------------------------------- cuda backend (written, not run on a GPU) */
static void cf__ipc_close_all(cf_weights_t *w) {
  for (int i = 0; i < w->n_ipcs; i++) cf_gpu_ipc_close(w->ipcs[i].base);
  free(w->ipcs);
  w->ipcs = NULL;
  w->n_ipcs = 0;
}

/* The engine's allocation behind handle h, opened once. */
static int cf__ipc(cf_weights_t *w, const Cacheflow__V1__WeightTensor *q, const cf__ipc_t **out) {
  cf_gpu_ipc_handle_t h;
  memcpy(h.b, q->cuda_ipc->ipc_handle.data, sizeof h.b);
  for (int i = 0; i < w->n_ipcs; i++)
    if (!memcmp(w->ipcs[i].h.b, h.b, sizeof h.b)) { *out = &w->ipcs[i]; return 0; }
  uint8_t want[CF_GPU_UUID_BYTES], mine[CF_GPU_UUID_BYTES];
  if (cf_gpu_uuid_parse(q->cuda_ipc->gpu_uuid, want) || cf_gpu_device_uuid(0, mine) || memcmp(want, mine, sizeof mine))
    return cf_seterr(CF_EUNSUPPORTED, "tensor '%s': on GPU %s, not the daemon's device 0", q->name, q->cuda_ipc->gpu_uuid);
  cf__ipc_t *n = realloc(w->ipcs, (size_t)(w->n_ipcs + 1) * sizeof *n);
  if (!n) return cf_seterr(CF_ENOMEM, "weights: ipc handles");
  w->ipcs = n;
  cf__ipc_t *e = &w->ipcs[w->n_ipcs];
  e->h = h;
  int rc = cf_gpu_ipc_open(&h, &e->base, &e->bytes);
  if (rc) return cf_err_prefix(rc, "tensor '%s': ", q->name);
  *out = &w->ipcs[w->n_ipcs++];
  return 0;
}

typedef struct { cf_weights_t *w; int rc; size_t released; char why[256]; } cf__cuda_swap_t;
static void cf__cuda_borrow_swap(void *arg) {
  cf__cuda_swap_t *s = arg;
  s->rc = cf_backend_cuda_borrow(s->w->be, &s->w->dev, &s->released);
  if (s->rc) snprintf(s->why, sizeof s->why, "%s", cf_errmsg());
}
static void cf__cuda_unborrow_swap(void *arg) {
  cf__cuda_swap_t *s = arg;
  s->rc = cf_backend_cuda_unborrow(s->w->be);
  if (s->rc) snprintf(s->why, sizeof s->why, "%s", cf_errmsg());
}

/* The cuda backend: every tensor a CUDA IPC one on this GPU, checked through device copies of
 * sampled elements, then the backend's matrices pointed at them between rounds. */
static int cf__borrow_cuda(cf_weights_t *w, const Cacheflow__V1__OfferWeightsRequest *r, cf_borrow_tensor_t *t,
                           cf_borrow_report_t *br, size_t *released) {
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Cacheflow__V1__WeightTensor *q = r->tensors[i];
    if (q->location_case != CACHEFLOW__V1__WEIGHT_TENSOR__LOCATION_CUDA_IPC)
      return cf_seterr(CF_EUNSUPPORTED, "tensor '%s': the cuda backend borrows device tensors (cuda_ipc), not "
                       "shared memory", q->name);
    const cf__ipc_t *m = NULL;
    int rc = cf__ipc(w, q, &m);
    if (!rc) rc = cf__tensor_at(q, m->base, m->bytes, "its allocation", &t[i]);
    if (rc) return rc;
  }
  int rc = cf_borrow_device(w->own, t, (int)r->n_tensors, r->samples ? (int)r->samples : 64, cf_gpu_copy_to_host,
                            NULL, &w->dev, br);
  if (rc) return rc;
  cf__cuda_swap_t s = {.w = w};
  cf_executor_between_rounds(w->x, cf__cuda_borrow_swap, &s);
  if (s.rc) {
    cf_borrow_device_free(&w->dev);
    return cf_seterr(s.rc, "%s", s.why);
  }
  *released = s.released;
  w->on_device = 1;
  return 0;
}

int cf_weights_borrow(cf_weights_t *w, const Cacheflow__V1__OfferWeightsRequest *r, cf_weights_report_t *rep) {
  memset(rep, 0, sizeof *rep);
  if (w->view || w->on_device)
    return cf_seterr(CF_EBUSY, "the daemon already computes on borrowed weights (one engine at a time)");
  int cuda = !strcmp(w->be->name, "cuda");
  if (!cuda && strcmp(w->be->name, "cpu") != 0) {
    cf__refused(w);
    return cf_seterr(CF_EUNSUPPORTED, "backend %s cannot compute on borrowed weights; the daemon keeps its own copy",
                     w->be->name);
  }
  cf_borrow_tensor_t *t = calloc(r->n_tensors ? r->n_tensors : 1, sizeof *t);
  if (!t) return cf_seterr(CF_ENOMEM, "weights: %zu tensors", r->n_tensors);
  cf_borrow_report_t br;
  cf_model_t *view = NULL;
  size_t dev_released = 0;
  int rc = cuda ? cf__borrow_cuda(w, r, t, &br, &dev_released) : cf__tensors(w, r, t);
  if (!rc && !cuda) rc = cf_borrow_model(w->own, t, (int)r->n_tensors, r->samples ? (int)r->samples : 64, &view, &br);
  free(t);
  if (rc) {
    cf__unmap_all(w);
    cf__ipc_close_all(w);
    cf__refused(w);
    return rc;
  }
  if (!cuda) {
    cf_executor_set_model(w->x, view);
    w->view = view;
  }
  /* the cuda backend read its device copy from these host weights: not needed while borrowing */
  size_t released = cf_model_release_weights(w->own) + dev_released;
  *rep = (cf_weights_report_t){.weights_checked = (uint32_t)br.weights, .tensors_used = (uint32_t)br.tensors_used,
                               .elements_checked = (uint64_t)br.elements_checked,
                               .bytes_borrowed = (uint64_t)br.bytes_viewed, .own_bytes_released = released};
  pthread_mutex_lock(&w->mu);
  w->st.borrowed = 1;
  w->st.borrowed_bytes = rep->bytes_borrowed;
  w->st.own_bytes = 0;
  w->st.borrows++;
  pthread_mutex_unlock(&w->mu);
  CF_INFO("borrowed weights: %u weights from %u tensors checked (%llu elements), %llu bytes read from the engine, "
          "own copy dropped (%zu bytes)", rep->weights_checked, rep->tensors_used,
          (unsigned long long)rep->elements_checked, (unsigned long long)rep->bytes_borrowed, released);
  return 0;
}

int cf_weights_give_back(cf_weights_t *w) {
  if (!w->view && !w->on_device) return 0;
  int rc = cf_model_reload_weights(w->own);
  if (!rc && w->on_device) { /* upload the own copy again, then let go of the engine's memory */
    cf__cuda_swap_t s = {.w = w};
    cf_executor_between_rounds(w->x, cf__cuda_unborrow_swap, &s);
    if ((rc = s.rc)) cf_seterr(rc, "%s", s.why);
  }
  if (rc) {
    CF_ERROR("borrowed weights: reloading the own copy failed (%s: %s); the engine's tensors stay in use",
             cf_strerror(rc), cf_errmsg());
    return rc;
  }
  if (w->on_device) {
    cf_borrow_device_free(&w->dev);
    cf__ipc_close_all(w);
    w->on_device = 0;
  } else {
    cf_executor_set_model(w->x, w->own);
    cf_borrow_free(w->view);
    w->view = NULL;
    cf__unmap_all(w);
  }
  pthread_mutex_lock(&w->mu);
  w->st.borrowed = 0;
  w->st.borrowed_bytes = 0;
  w->st.own_bytes = cf_model_weight_bytes(w->own);
  w->st.give_backs++;
  pthread_mutex_unlock(&w->mu);
  CF_INFO("borrowed weights given back: the own copy is reloaded (%llu bytes)", (unsigned long long)w->st.own_bytes);
  return 0;
}

void cf_weights_stats(cf_weights_t *w, cf_weights_stats_t *out) {
  pthread_mutex_lock(&w->mu);
  *out = w->st;
  pthread_mutex_unlock(&w->mu);
}

void cf_weights_close(cf_weights_t *w) {
  if (!w) return;
  cf_borrow_free(w->view); /* the executor has stopped: nothing computes on them any more */
  cf__unmap_all(w);
  /* the cuda backend may still point at the engine's memory: it is freed after this without
   * touching those pointers (cf_backend_cuda's free skips borrowed matrices) */
  cf_borrow_device_free(&w->dev);
  cf__ipc_close_all(w);
  pthread_mutex_destroy(&w->mu);
  free(w);
}
