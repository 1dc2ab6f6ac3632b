/* cacheflowd — the per-node KV restore daemon: command line, start-up order, libuv loop.
 *
 *   cacheflowd [--config FILE] [--listen ADDR] [--model DIR] [--store-dir DIR] [--check-config]
 *
 * Runs in the foreground (systemd supervises). Start-up: config -> model -> store -> sockets,
 * with STATUS= lines, then READY=1. The loop thread owns signals (TERM/INT drain, HUP reload),
 * the watchdog timer, the drain timer and every gRPC send (cf_rpc). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "cf_calib.h"
#include "cf_planner.h"
#include "cf_config.h"
#include "cf_http.h"
#include "cf_model_info.h"
#include "cf_notify.h"
#include "cf_rpc.h"
#include "cf_service.h"
#include "cf_shmclean.h"
#include "cf_dataplane.h"
#include "cf_storage.h"
#include "cf_tls.h"
#include "ipc/cf_shmguard.h"
#include "model/cf_model.h"
#include "store/cf_remote.h"
#include "util/cf_err.h"
#include "util/cf_log.h"
#include "util/cf_mempool.h"

#define CF_DEFAULT_CONFIG "/etc/cacheflow/cacheflowd.conf"
#define CF_VERSION "0.1.0"

typedef struct {
  uv_loop_t *loop;
  cf_config_t cfg;
  const char *config_path;             /* NULL: defaults only */
  const char *o_listen, *o_model, *o_store; /* command-line overrides, re-applied on reload */
  cf_model_info_t model;
  int have_model;
  cf_model_t *weights;                 /* the loaded checkpoint (cf_model_load) */
  cf_backend_t *backend;               /* computes KV (calibration now; lib/exec's restores) */
  cf_exec_gpu_t gexec;                 /* gpu_executor = on: the GPU data path (device 0) */
  int have_gexec;
  cf_sched_cost_t cost;                /* measured at start; planning input */
  cf_planner_t planner;                /* plans restores (on the executor thread) with `cost`, re-fitted */
  cf_evict_refresh_t evict;            /* eviction = cost: the store's value table, following the planner's model */
  double measured_link_Bps;            /* memcpy rate, before any cpu_read_gbps limit */
  double measured_remote_Bps;          /* the remote tier's probed read rate (0: none / not reached) */
  cf_storage_t *storage;
  cf_service_t *svc;
  cf_dataplane_t *dp;                  /* the restore data path: NULL without a model */
  cf_rpc_server_t *rpc;
  cf_http_t *http;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t watchdog, drain;
  int draining, stopping;
  uint64_t drain_start_ms;
  uint64_t reloads, reload_failures;
  uint64_t tls_reloads, tls_reload_failures; /* SIGHUP re-reads of the TCP listener's certificates */
  uint64_t t_start;
} cf_daemon_t;

static void cf__usage(FILE *f) {
  fprintf(f,
          "usage: cacheflowd [--config FILE] [--listen unix:/PATH] [--model DIR] [--store-dir DIR]\n"
          "                  [--check-config] [--dump-config] [--version]\n"
          "  --config FILE    INI settings (default %s when it exists)\n"
          "  --listen ADDR    gRPC unix socket, overrides `listen`\n"
          "  --model DIR      Hugging Face checkpoint directory, overrides `model`\n"
          "  --store-dir DIR  SSD tier directory, overrides `store_dir`\n"
          "  --check-config   validate the settings (and the model directory) and exit: 0 ok, 1 bad\n"
          "  --dump-config    print the effective settings as a config file and exit\n",
          CF_DEFAULT_CONFIG);
}

static void cf__report_stderr(const char *line) { fprintf(stderr, "cacheflowd: %s\n", line); }

/* A relative path given on the command line means relative to the caller's working directory
 * (as any CLI user expects); the config table itself requires absolute paths, because a daemon's
 * working directory is not the operator's. Returns `p` or `buf` holding cwd/p (prefix kept). */
static const char *cf__cli_abs(const char *p, const char *prefix, char *buf, size_t cap) {
  size_t n = strlen(prefix);
  if (!p || strncmp(p, prefix, n) != 0 || p[n] == '/' || p[n] == 0) return p;
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) return p; /* validation then names the relative path */
  snprintf(buf, cap, "%s%s/%s", prefix, cwd, p + n);
  return buf;
}

/* defaults + file + command line into *c. Returns the number of bad settings (0 = ok). */
static int cf__build_config(const cf_daemon_t *d, cf_config_t *c, void (*report)(const char *)) {
  int nbad = 0;
  cf_config_defaults(c);
  if (d->config_path) {
    int rc = cf_config_load(c, d->config_path, report, &nbad);
    if (rc && !nbad) { /* could not open */
      char msg[1024];
      snprintf(msg, sizeof msg, "%s", cf_errmsg());
      report(msg);
      nbad = 1;
    }
  }
  char abs[3][8192];
  const char *keys[3] = {"listen", "model", "store_dir"};
  const char *vals[3] = {cf__cli_abs(d->o_listen, "unix:", abs[0], sizeof abs[0]),
                         cf__cli_abs(d->o_model, "", abs[1], sizeof abs[1]),
                         cf__cli_abs(d->o_store, "", abs[2], sizeof abs[2])};
  for (int i = 0; i < 3; i++) {
    if (!vals[i]) continue;
    if (cf_config_set(c, keys[i], vals[i])) {
      char msg[1024];
      snprintf(msg, sizeof msg, "command line: %s", cf_errmsg());
      report(msg);
      nbad++;
    }
  }
  return nbad;
}

static double cf__uptime(const cf_daemon_t *d) { return (uv_hrtime() - d->t_start) / 1e9; }

/* ---------------------------------------------------------------- /metrics */
#define CF__P(...) do { int k_ = snprintf(buf + n, n < cap ? cap - n : 0, __VA_ARGS__); if (k_ > 0) n += (size_t)k_; } while (0)

static size_t cf__metrics(void *arg, char *buf, size_t cap) {
  cf_daemon_t *d = arg;
  size_t n = 0;
  cf_service_stats_t ss;
  cf_service_stats(d->svc, &ss);
  CF__P("# HELP cacheflow_up 1 while serving, 0 while draining.\n# TYPE cacheflow_up gauge\ncacheflow_up %d\n", !ss.draining);
  CF__P("# HELP cacheflow_uptime_seconds Seconds since start.\n# TYPE cacheflow_uptime_seconds gauge\ncacheflow_uptime_seconds %.3f\n", cf__uptime(d));
  CF__P("# HELP cacheflow_engines Registered engines.\n# TYPE cacheflow_engines gauge\ncacheflow_engines %u\n", ss.engines);
  /* the counters GetStats reports too, from cf_service's one table */
  cf_service_metric_t sm[CF_SERVICE_METRICS_MAX];
  int nsm = cf_service_metrics(d->svc, sm);
  for (int i = 0; i < nsm; i++) {
    if (sm[i].help) CF__P("# HELP %s %s\n# TYPE %s %s\n", sm[i].family, sm[i].help, sm[i].family, sm[i].type);
    if (sm[i].label_key) CF__P("%s{%s=\"%s\"} %.9g\n", sm[i].family, sm[i].label_key, sm[i].label_value, sm[i].value);
    else CF__P("%s %.9g\n", sm[i].family, sm[i].value);
  }
  CF__P("# HELP cacheflow_tier_bytes_used Bytes held per tier.\n# TYPE cacheflow_tier_bytes_used gauge\n"
        "cacheflow_tier_bytes_used{tier=\"cpu\"} %llu\ncacheflow_tier_bytes_used{tier=\"ssd\"} %llu\n",
        (unsigned long long)ss.cpu_bytes, (unsigned long long)ss.ssd_bytes);
  CF__P("# HELP cacheflow_config_reloads_total SIGHUP reloads (result=ok|error).\n# TYPE cacheflow_config_reloads_total counter\n"
        "cacheflow_config_reloads_total{result=\"ok\"} %llu\ncacheflow_config_reloads_total{result=\"error\"} %llu\n",
        (unsigned long long)__atomic_load_n(&d->reloads, __ATOMIC_RELAXED),
        (unsigned long long)__atomic_load_n(&d->reload_failures, __ATOMIC_RELAXED));
  CF__P("# HELP cacheflow_tls_reloads_total SIGHUP re-reads of the TCP listener's certificates (result=ok|error).\n"
        "# TYPE cacheflow_tls_reloads_total counter\n"
        "cacheflow_tls_reloads_total{result=\"ok\"} %llu\ncacheflow_tls_reloads_total{result=\"error\"} %llu\n",
        (unsigned long long)__atomic_load_n(&d->tls_reloads, __ATOMIC_RELAXED),
        (unsigned long long)__atomic_load_n(&d->tls_reload_failures, __ATOMIC_RELAXED));
  cf_remote_t *rt = d->storage ? cf_store_remote(cf_storage_store(d->storage)) : NULL;
  if (rt) {
    cf_remote_stats_t r;
    cf_remote_get_stats(rt, &r);
    CF__P("# HELP cacheflow_remote_read_seconds Time in remote GET pipelines (sum and count: mean latency of one pipeline).\n# TYPE cacheflow_remote_read_seconds summary\n"
          "cacheflow_remote_read_seconds_sum %.6f\ncacheflow_remote_read_seconds_count %llu\n", r.read_ns / 1e9,
          (unsigned long long)r.read_batches);
    CF__P("# HELP cacheflow_remote_queue_bytes Bytes waiting in the write-back queue.\n# TYPE cacheflow_remote_queue_bytes gauge\ncacheflow_remote_queue_bytes %llu\n",
          (unsigned long long)r.queue_bytes);
    CF__P("# HELP cacheflow_remote_connections_total Connects and failures of the remote tier's clients; cluster redirections.\n# TYPE cacheflow_remote_connections_total counter\n"
          "cacheflow_remote_connections_total{event=\"connect\"} %llu\ncacheflow_remote_connections_total{event=\"connect_error\"} %llu\n"
          "cacheflow_remote_connections_total{event=\"io_error\"} %llu\ncacheflow_remote_connections_total{event=\"moved\"} %llu\n"
          "cacheflow_remote_connections_total{event=\"ask\"} %llu\n",
          (unsigned long long)r.redis.connects, (unsigned long long)r.redis.connect_errors,
          (unsigned long long)r.redis.io_errors, (unsigned long long)r.redis.moved, (unsigned long long)r.redis.ask);
  }
  if (d->storage) {
    cf_store_stats_t t;
    cf_store_get_stats(cf_storage_store(d->storage), &t);
    CF__P("# HELP cacheflow_store_chunks Chunks held per tier.\n# TYPE cacheflow_store_chunks gauge\n"
          "cacheflow_store_chunks{tier=\"cpu\"} %llu\ncacheflow_store_chunks{tier=\"ssd\"} %llu\n",
          (unsigned long long)t.cpu_chunks, (unsigned long long)t.ssd_chunks);
    CF__P("# HELP cacheflow_store_reads_total Chunk/cell reads by the tier that served them (miss: none).\n# TYPE cacheflow_store_reads_total counter\n"
          "cacheflow_store_reads_total{tier=\"cpu\"} %llu\ncacheflow_store_reads_total{tier=\"ssd\"} %llu\ncacheflow_store_reads_total{tier=\"miss\"} %llu\n",
          (unsigned long long)t.cpu_hits, (unsigned long long)t.ssd_hits, (unsigned long long)t.misses);
    CF__P("# HELP cacheflow_store_saves_total Chunks saved (exists: already stored).\n# TYPE cacheflow_store_saves_total counter\n"
          "cacheflow_store_saves_total{result=\"new\"} %llu\ncacheflow_store_saves_total{result=\"exists\"} %llu\n",
          (unsigned long long)t.saves, (unsigned long long)t.save_exists);
    CF__P("# HELP cacheflow_store_evictions_total Chunks evicted per tier.\n# TYPE cacheflow_store_evictions_total counter\n"
          "cacheflow_store_evictions_total{tier=\"cpu\"} %llu\ncacheflow_store_evictions_total{tier=\"ssd\"} %llu\n",
          (unsigned long long)t.cpu_evictions, (unsigned long long)t.ssd_evictions);
    CF__P("# HELP cacheflow_store_ssd_refusals_total eviction = cost: write-backs the full SSD tier refused (in the ssd evictions too); "
          "unread: of chunks not read since they came in; read_after: later uses of refused chunks while in the CPU tier.\n"
          "# TYPE cacheflow_store_ssd_refusals_total counter\n"
          "cacheflow_store_ssd_refusals_total{kind=\"all\"} %llu\ncacheflow_store_ssd_refusals_total{kind=\"unread\"} %llu\n"
          "cacheflow_store_ssd_refusals_total{kind=\"read_after\"} %llu\n",
          (unsigned long long)t.ssd_refusals, (unsigned long long)t.ssd_refusals_unread,
          (unsigned long long)t.ssd_refused_read);
    CF__P("# HELP cacheflow_store_ssd_evictions_unread_total eviction = cost: SSD evictions (refused chunks included) of chunks not read since they came in.\n"
          "# TYPE cacheflow_store_ssd_evictions_unread_total counter\ncacheflow_store_ssd_evictions_unread_total %llu\n",
          (unsigned long long)t.ssd_evict_unread);
    /* the cost policy's learning (lib/store/cf_store_cost.c): ghosts of its value tier's victims
     * saved again, and the read class's head start they moved (0: LRU order, ln 4: the fixed
     * f = 1/2 vs 2, 2 ln 4 at most); 0 under the other policies */
    CF__P("# HELP cacheflow_store_cost_ghost_returns_total eviction = cost: chunks saved again while the ghost of their eviction was remembered, "
          "by whether they had been read before they left.\n# TYPE cacheflow_store_cost_ghost_returns_total counter\n"
          "cacheflow_store_cost_ghost_returns_total{kind=\"unread\"} %llu\ncacheflow_store_cost_ghost_returns_total{kind=\"read\"} %llu\n",
          (unsigned long long)t.cost_ghost_unread, (unsigned long long)t.cost_ghost_read);
    CF__P("# HELP cacheflow_store_cost_read_head_start eviction = cost: the learnt head start of chunks read since they came in over unread ones "
          "(ln of the frequency factors' ratio; starts at ln 4).\n# TYPE cacheflow_store_cost_read_head_start gauge\n"
          "cacheflow_store_cost_read_head_start %.4f\n", t.cost_read_bonus);
    /* the CPU tier in front of SSD (lib/store/cf_store_cost_cpu.c): the head start of its read
     * class, the best of its shadow caches' (0: LRU order), and how often the choice changed */
    CF__P("# HELP cacheflow_store_cost_cpu_read_head_start eviction = cost: the head start of chunks read since they came in over unread ones "
          "in the CPU tier before SSD, in units of its decay time, chosen by the shadow cache with the most hits (0: LRU order; starts at 0.35).\n"
          "# TYPE cacheflow_store_cost_cpu_read_head_start gauge\ncacheflow_store_cost_cpu_read_head_start %.4f\n", t.cost_cpu_head_start);
    CF__P("# HELP cacheflow_store_cost_cpu_head_start_switches_total eviction = cost: changes of the CPU tier's head start to another shadow's.\n"
          "# TYPE cacheflow_store_cost_cpu_head_start_switches_total counter\ncacheflow_store_cost_cpu_head_start_switches_total %llu\n",
          (unsigned long long)t.cost_cpu_switches);
    /* lib/store/cf_store_cost_rate.c: the CPU tier ranked by reuse rate (while the ln 4 shadow leads) */
    CF__P("# HELP cacheflow_store_cost_cpu_rate_order eviction = cost: 1 while the CPU tier before SSD ranks by reuse rate since first seen "
          "(its frequency-minded shadow, ln 4, in charge), 0 while by recency.\n"
          "# TYPE cacheflow_store_cost_cpu_rate_order gauge\ncacheflow_store_cost_cpu_rate_order %d\n", t.cost_cpu_rate_order);
    /* the value tier's frequency (cf__freq_*): the learnt weight of chunks counted twice or more,
     * and the write-backs into the full SSD tier deferred to the CPU tier's eviction */
    CF__P("# HELP cacheflow_store_cost_freq_weight eviction = cost: the learnt weight w of chunks the value tier's frequency sketch "
          "counted twice or more (ln of the rate at which frequent victims come back over the others'; within [0, 3]).\n"
          "# TYPE cacheflow_store_cost_freq_weight gauge\ncacheflow_store_cost_freq_weight %.4f\n", t.cost_freq_w);
    CF__P("# HELP cacheflow_store_cost_deferred_writebacks_total eviction = cost: write-backs the full SSD tier deferred to the CPU "
          "tier's eviction (in the refusals too; weighed again when the CPU tier gives the chunk up).\n"
          "# TYPE cacheflow_store_cost_deferred_writebacks_total counter\ncacheflow_store_cost_deferred_writebacks_total %llu\n",
          (unsigned long long)t.cost_deferred);
    /* whether the store defers at all now (cf__defer_learn: only while the full SSD tier refuses many) */
    CF__P("# HELP cacheflow_store_cost_defer_on eviction = cost: 1 while write-backs into the full SSD tier are deferred to the CPU "
          "tier's eviction (the SSD tier refuses many first write-backs), 0 while they are written back at once.\n"
          "# TYPE cacheflow_store_cost_defer_on gauge\ncacheflow_store_cost_defer_on %d\n"
          "# HELP cacheflow_store_cost_defer_switches_total eviction = cost: changes of cacheflow_store_cost_defer_on.\n"
          "# TYPE cacheflow_store_cost_defer_switches_total counter\ncacheflow_store_cost_defer_switches_total %llu\n",
          t.cost_defer_on, (unsigned long long)t.cost_defer_switches);
    /* who wrote those back once admitted: a save waits only on its own (cf_store_spill.c) */
    CF__P("# HELP cacheflow_store_cost_deferred_writes_total eviction = cost: deferred write-backs the SSD tier admitted, by who wrote "
          "them: the spill thread ahead of a save's eviction, the spill thread handed one by a save that took a clean victim, "
          "or the evicting save itself.\n# TYPE cacheflow_store_cost_deferred_writes_total counter\n"
          "cacheflow_store_cost_deferred_writes_total{by=\"ahead\"} %llu\ncacheflow_store_cost_deferred_writes_total{by=\"handoff\"} %llu\n"
          "cacheflow_store_cost_deferred_writes_total{by=\"save\"} %llu\n",
          (unsigned long long)t.cpu_evict_ahead, (unsigned long long)t.cpu_evict_handoffs,
          (unsigned long long)t.cpu_evict_writebacks);
    CF__P("# HELP cacheflow_store_promotions_total SSD chunks copied into the CPU tier on a read (eviction = cost: promotion on read).\n"
          "# TYPE cacheflow_store_promotions_total counter\ncacheflow_store_promotions_total %llu\n", (unsigned long long)t.promotions);
    CF__P("# HELP cacheflow_store_spills_total Chunks written back from the CPU tier to SSD.\n# TYPE cacheflow_store_spills_total counter\ncacheflow_store_spills_total %llu\n",
          (unsigned long long)t.spills);
    CF__P("# HELP cacheflow_store_corrupt_cells_total Cells that failed their checksum on read (recomputed, never served).\n# TYPE cacheflow_store_corrupt_cells_total counter\ncacheflow_store_corrupt_cells_total %llu\n",
          (unsigned long long)t.corrupt_cells);
    CF__P("# HELP cacheflow_store_io_errors_total Store I/O errors.\n# TYPE cacheflow_store_io_errors_total counter\ncacheflow_store_io_errors_total %llu\n",
          (unsigned long long)t.io_errors);
    /* what the journal replay at start-up did not trust: an operator sees a damaged store here */
    CF__P("# HELP cacheflow_store_journal_skipped_total Journal records not trusted at start-up (torn: a tail cut "
          "mid-append; damaged: a bad record between good ones; dropped: chunks past a missing or short data file).\n"
          "# TYPE cacheflow_store_journal_skipped_total counter\ncacheflow_store_journal_skipped_total{kind=\"torn\"} %llu\n"
          "cacheflow_store_journal_skipped_total{kind=\"damaged\"} %llu\ncacheflow_store_journal_skipped_total{kind=\"dropped\"} %llu\n",
          (unsigned long long)t.journal_torn, (unsigned long long)t.journal_damaged, (unsigned long long)t.journal_dropped);
    if (d->cfg.eviction == CF_EVICT_COST) {
      cf_evict_refresh_stats_t e;
      cf_evict_refresh_stats(&d->evict, &e);
      CF__P("# HELP cacheflow_evict_cost_tables_total Value tables of eviction = cost handed to the store (start-up, reload, "
            "and each time the online re-fit moved the planner's model by over %.0f%%).\n# TYPE cacheflow_evict_cost_tables_total counter\n"
            "cacheflow_evict_cost_tables_total %llu\n", CF_EVICT_REFRESH_TOL * 100, (unsigned long long)e.installs);
      CF__P("# HELP cacheflow_evict_cost_saved_seconds What one chunk in the deepest bucket (126k-128k tokens) saves a restore "
            "by being in the tier, per the installed table.\n# TYPE cacheflow_evict_cost_saved_seconds gauge\n"
            "cacheflow_evict_cost_saved_seconds{tier=\"cpu\"} %.9g\ncacheflow_evict_cost_saved_seconds{tier=\"ssd\"} %.9g\n",
            e.saved_s[0], e.saved_s[1]);
    }
  }
  if (d->rpc) {
    cf_rpc_stats_t rs;
    cf_rpc_stats(d->rpc, &rs);
    CF__P("# HELP cacheflow_rpc_status_total Ended gRPC calls by status code.\n# TYPE cacheflow_rpc_status_total counter\n");
    for (int i = 0; i < CF_RPC__NSTATUS; i++)
      CF__P("cacheflow_rpc_status_total{code=\"%s\"} %llu\n", cf_rpc_status_name(i), (unsigned long long)rs.status_total[i]);
    int nm;
    const cf_rpc_method_t *ms = cf_service_methods(&nm);
    CF__P("# HELP cacheflow_rpc_calls_total gRPC calls by method.\n# TYPE cacheflow_rpc_calls_total counter\n");
    for (int i = 0; i < nm; i++) {
      uint64_t calls;
      double sec;
      cf_rpc_method_stats(d->rpc, i, &calls, &sec);
      CF__P("cacheflow_rpc_calls_total{method=\"%s\"} %llu\n", ms[i].path, (unsigned long long)calls);
    }
    CF__P("# HELP cacheflow_rpc_handling_seconds_total Seconds from request received to call ended, by method.\n# TYPE cacheflow_rpc_handling_seconds_total counter\n");
    for (int i = 0; i < nm; i++) {
      uint64_t calls;
      double sec;
      cf_rpc_method_stats(d->rpc, i, &calls, &sec);
      CF__P("cacheflow_rpc_handling_seconds_total{method=\"%s\"} %.9f\n", ms[i].path, sec);
    }
  }
  return n < cap ? n : cap;
}

static int cf__healthy(void *arg) {
  cf_daemon_t *d = arg;
  return !__atomic_load_n(&d->draining, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- signals, drain */
static void cf__close_cb(uv_handle_t *h) { (void)h; }

static void cf__rpc_gone(void *arg) {
  cf_daemon_t *d = arg;
  d->rpc = NULL;
  cf_service_close(d->svc);
  d->svc = NULL;
  cf_dataplane_close(d->dp); /* after the service dropped its engines */
  d->dp = NULL;
  uv_close((uv_handle_t *)&d->sig_term, cf__close_cb);
  uv_close((uv_handle_t *)&d->sig_int, cf__close_cb);
  uv_close((uv_handle_t *)&d->sig_hup, cf__close_cb);
  uv_close((uv_handle_t *)&d->watchdog, cf__close_cb);
  uv_close((uv_handle_t *)&d->drain, cf__close_cb);
  CF_INFO("stopped after %.1f s", cf__uptime(d));
}

/* The statuses cf__stop just queued are handed to the transport before grpc cancels every
 * call: shutting down at once let grpc_server_cancel_all_calls overtake them, so a restore
 * cancelled by the drain timeout reached its client as "Cancelling all calls" instead of
 * naming the drain timeout (seen under `make tsan`, where everything runs slower). Bounded:
 * at most CF__STOP_FLUSH_MS, then shutdown regardless. */
#define CF__STOP_FLUSH_MS 2000
static void cf__on_stop_tick(uv_timer_t *t) {
  cf_daemon_t *d = t->data;
  if (cf_rpc_sending(d->rpc) > 0 && uv_now(d->loop) - d->drain_start_ms < CF__STOP_FLUSH_MS) return;
  uv_timer_stop(&d->drain);
  cf_rpc_shutdown(d->rpc, cf__rpc_gone, d);
}

/* Drain done (or timed out): end what is left, stop HTTP, then the gRPC server. */
static void cf__stop(cf_daemon_t *d, const char *why) {
  if (d->stopping) return;
  d->stopping = 1;
  uv_timer_stop(&d->drain);
  cf_dataplane_quiesce(d->dp); /* running restores end (cancelled) before the service aborts calls */
  cf_service_abort_all(d->svc, why);
  cf_http_stop(d->http); /* joins its thread before the rpc counters it reads go away */
  d->http = NULL;
  d->drain_start_ms = uv_now(d->loop);
  uv_timer_start(&d->drain, cf__on_stop_tick, 0, 5);
}

static void cf__on_drain_tick(uv_timer_t *t) {
  cf_daemon_t *d = t->data;
  int left = cf_service_restores_in_flight(d->svc);
  uint64_t waited = uv_now(d->loop) - d->drain_start_ms;
  /* a restore that just ended may still be sending its final status: shutdown cancels every
   * call, so give those sends a moment (bounded by the drain timeout) */
  if (left == 0 && cf_rpc_sending(d->rpc) > 0 && waited < (uint64_t)d->cfg.drain_timeout_s * 1000) return;
  if (left == 0) {
    CF_INFO("drain: no restore in flight after %llu ms; stopping", (unsigned long long)waited);
    cf__stop(d, "cacheflowd is shutting down");
  } else if (waited >= (uint64_t)d->cfg.drain_timeout_s * 1000) {
    CF_WARN("drain: %d restore(s) still in flight after %lld s (drain_timeout_s); cancelling them", left, (long long)d->cfg.drain_timeout_s);
    cf__stop(d, "cacheflowd drain timeout: restore cancelled");
  }
}

static void cf__begin_drain(cf_daemon_t *d, int signum) {
  if (d->draining) {
    CF_WARN("second %s while draining: stopping now", strsignal(signum));
    cf__stop(d, "cacheflowd is shutting down (second signal)");
    return;
  }
  __atomic_store_n(&d->draining, 1, __ATOMIC_RELAXED);
  int n = cf_service_restores_in_flight(d->svc);
  CF_INFO("%s: draining: %d restore(s) in flight, new requests get UNAVAILABLE", strsignal(signum), n);
  cf_notifyf("STOPPING=1\nSTATUS=draining: %d restore(s) in flight", n);
  cf_rpc_drain(d->rpc);
  cf_service_drain(d->svc);
  d->drain_start_ms = uv_now(d->loop);
  uv_timer_start(&d->drain, cf__on_drain_tick, 0, 20);
}

static void cf__on_term(uv_signal_t *h, int signum) { cf__begin_drain(h->data, signum); }

static void cf__apply_link(cf_daemon_t *d);

/* SIGHUP: re-read the files the running tls_* keys name (their paths need a restart) and hand
 * them to the next handshakes; on any problem the running certificates stay. */
static void cf__reload_tls(cf_daemon_t *d) {
  if (!d->rpc || !cf_tls_enabled(&d->cfg)) return;
  cf_tls_pem_t p;
  int rc = cf_tls_load(&d->cfg, &p);
  if (!rc) {
    cf_rpc_tls_t t = {.cert_pem = p.cert, .key_pem = p.key, .client_ca_pem = p.ca};
    rc = cf_rpc_tls_update(d->rpc, &t);
    if (!rc) CF_INFO("reload: tls: new connections get %s", p.desc);
    cf_tls_free(&p);
  }
  if (rc) {
    __atomic_fetch_add(&d->tls_reload_failures, 1, __ATOMIC_RELAXED); /* /metrics reads it on the HTTP thread */
    CF_ERROR("reload: tls: %s; new connections keep the running certificates", cf_errmsg());
  } else {
    __atomic_fetch_add(&d->tls_reloads, 1, __ATOMIC_RELAXED);
  }
}

static void cf__on_hup(uv_signal_t *h, int signum) {
  cf_daemon_t *d = h->data;
  (void)signum;
  cf_notify("RELOADING=1");
  cf__reload_tls(d); /* certificate rotation does not depend on the rest of the file parsing */
  cf_config_t fresh;
  int nbad = cf__build_config(d, &fresh, cf__report_stderr);
  if (nbad) {
    __atomic_add_fetch(&d->reload_failures, 1, __ATOMIC_RELAXED); /* /metrics reads it on the HTTP thread */
    CF_ERROR("reload: %s has %d bad setting(s); keeping the running configuration", d->config_path ? d->config_path : "(none)", nbad);
    cf_notifyf("READY=1\nSTATUS=reload failed: %d bad setting(s); serving with the old configuration", nbad);
    return;
  }
  int applied, restart;
  cf_config_apply_reload(&d->cfg, &fresh, &applied, &restart);
  cf_log_set_level(d->cfg.log_level);
  if (d->backend) cf__apply_link(d); /* cpu_read_gbps is reloadable */
  cf_dataplane_reload(d->dp); /* the executor's read-rate limits */
  __atomic_add_fetch(&d->reloads, 1, __ATOMIC_RELAXED);
  CF_INFO("reload: %d setting(s) applied, %d need a restart", applied, restart);
  cf_notifyf("READY=1\nSTATUS=serving (reloaded: %d applied, %d need a restart)", applied, restart);
}

static void cf__on_watchdog(uv_timer_t *t) { (void)t; cf_notify("WATCHDOG=1"); }

/* ---------------------------------------------------------------- start-up */
static int cf__prepare_store_dir(const char *dir) {
  struct stat st;
  if (stat(dir, &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return cf_seterr(CF_EINVAL, "store_dir %s is not a directory", dir);
    if (access(dir, R_OK | W_OK | X_OK)) return cf_seterr(CF_EACCES, "store_dir %s: %s", dir, strerror(errno));
    return 0;
  }
  if (mkdir(dir, 0750) != 0) return cf_seterr(CF_EIO, "store_dir %s: cannot create: %s", dir, strerror(errno));
  return 0;
}

/* The configured backend: cuda when asked (or, with auto, when a GPU is usable), else the CPU
 * backend with `threads` workers. */
static int cf__make_backend(cf_daemon_t *d) {
  int rc = CF_ENODEV;
  if (d->cfg.backend != CF_BACKEND_CPU) {
    rc = cf_backend_cuda_create(d->weights, 0, &d->backend);
    if (rc && d->cfg.backend == CF_BACKEND_CUDA) return cf_err_prefix(rc, "backend cuda: ");
  }
  if (rc) rc = cf_backend_cpu_create(d->weights, (int)d->cfg.threads, &d->backend);
  return rc;
}

/* The KV dtype of the store and the engines: kv_dtype, with auto = bf16 when the backend in use
 * is cuda (what real engines keep and the GPU path moves: half the bytes of f32), else f32
 * (what the CPU backend computes). */
static cf_dtype_t cf__kv_dtype(const cf_daemon_t *d) {
  switch (d->cfg.kv_dtype) {
    case CF_KVDT_F32: return CF_DT_F32;
    case CF_KVDT_BF16: return CF_DT_BF16;
    case CF_KVDT_F16: return CF_DT_F16;
    default: return d->backend && !strcmp(d->backend->name, "cuda") ? CF_DT_BF16 : CF_DT_F32;
  }
}

/* The tiers' read rates the planner assumes: the CPU tier's configured limit, never above
 * memcpy; the SSD tier's configured limit, never above the CPU tier's (its reads end in the
 * same memory), else (no limit) the CPU tier's rate, as before tiers were told apart. */
static void cf__apply_link(cf_daemon_t *d) {
  double lim = d->cfg.cpu_read_gbps * 1e9 / 8, ssd = d->cfg.ssd_read_gbps * 1e9 / 8;
  d->cost.link_Bps = lim > 0 && lim < d->measured_link_Bps ? lim : d->measured_link_Bps;
  d->cost.tier_Bps[CF_PLAN_TIER_SSD] = ssd > 0 && ssd < d->measured_link_Bps ? ssd : 0;
  /* the remote tier: its configured rate, else the start-up probe's, else 10 Gbit/s (DESIGN: a
   * remote tier reads at 1-10 GB/s) until the re-fit measures restores; never above memcpy */
  double rem = d->cfg.remote_read_gbps * 1e9 / 8;
  if (!(rem > 0)) rem = d->measured_remote_Bps > 0 ? d->measured_remote_Bps : 10e9 / 8;
  /* only with a remote tier: lib/sched reads every tier's rate (the bound's fastest-tier
   * fallback), so a rate for a tier that does not exist would change plans that have none */
  int have_remote = d->storage && cf_store_remote(cf_storage_store(d->storage));
  d->cost.tier_Bps[CF_PLAN_TIER_REMOTE] = !have_remote ? 0 : rem < d->measured_link_Bps ? rem : d->measured_link_Bps;
  cf_planner_set_cost(&d->planner, &d->cost, (int)d->cfg.cost_refit);
  /* the store's cost eviction policy values chunks with the model the planner uses now (the
   * re-fitted one); later rounds refresh it as the re-fit moves (cf_planner_set_evict) */
  cf_sched_cost_t now;
  if (!cf_planner_cost_now(&d->planner, &now)) cf_evict_refresh_offer(&d->evict, &now, 1);
}

/* Plans that fit the memory budget (issue 18): the planner gets what a restore's compute may
 * hold (cf_memfit) — the arena (host_memory_bytes, or the GPU path's restore arena out of
 * gpu_memory_bytes) less what the executor takes from it outside requests: the loaders' cell
 * buffers (2 x one cell in fp32, the largest KV element) and its bookkeeping (64 KiB: tasks,
 * per-chunk flags; well above the demo's and an 8B model's at 128k) — and per token of a
 * request's computed extent: fp32 hidden states (2 x hidden) and one layer's fp32 K/V staging
 * (2 x kv row), as lib/exec's CPU and GPU data paths allocate them. */
static void cf__apply_memory(cf_daemon_t *d) {
  const cf_model_config_t *mc = &d->backend->model->cfg;
  double row = (double)mc->n_kv_heads * mc->head_dim, bpt = 2.0 * ((double)mc->hidden + row) * sizeof(float);
  double arena = d->cfg.host_memory_bytes > 0 ? (double)d->cfg.host_memory_bytes : 0;
  if (d->have_gexec && d->gexec.dpool) {
    cf_mempool_stats_t st;
    cf_mempool_stats(d->gexec.dpool, &st);
    arena = (double)st.budget;
  }
  if (!(arena > 0)) return;
  double loaders = 2.0 * 2.0 * row * (double)d->cfg.chunk_tokens * sizeof(float);
  double budget = arena - loaders - 65536.0;
  if (budget < bpt) budget = bpt; /* nothing fits: every plan computes as little as it can */
  cf_planner_set_memory(&d->planner, budget, bpt);
  CF_INFO("plans fit the memory budget: %.0f of the %.0f byte arena for restores' compute, %.0f bytes per token",
          budget, arena, bpt);
}

/* The command line into d (and *check / *dump). Returns -1 to go on, else the exit code. */
static int cf__parse_args(cf_daemon_t *d, int argc, char **argv, int *check, int *dump) {
  static const struct option opts[] = {
      {"config", required_argument, 0, 'c'}, {"listen", required_argument, 0, 'l'},
      {"model", required_argument, 0, 'm'},  {"store-dir", required_argument, 0, 's'},
      {"check-config", no_argument, 0, 'C'}, {"dump-config", no_argument, 0, 'D'},
      {"version", no_argument, 0, 'V'},      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "c:l:m:s:h", opts, NULL)) != -1) {
    switch (o) {
      case 'c': d->config_path = optarg; break;
      case 'l': d->o_listen = optarg; break;
      case 'm': d->o_model = optarg; break;
      case 's': d->o_store = optarg; break;
      case 'C': *check = 1; break;
      case 'D': *dump = 1; break;
      case 'V': printf("cacheflowd %s\n", CF_VERSION); return 0;
      case 'h': cf__usage(stdout); return 0;
      default: cf__usage(stderr); return 2;
    }
  }
  if (optind < argc) { fprintf(stderr, "cacheflowd: unexpected argument '%s'\n", argv[optind]); cf__usage(stderr); return 2; }
  if (!d->config_path && access(CF_DEFAULT_CONFIG, R_OK) == 0) d->config_path = CF_DEFAULT_CONFIG;
  return -1;
}

/* The configuration (defaults, file, command line) and the checks that need more than the
 * table: the model directory, gpu_executor against backend. Handles --check-config and
 * --dump-config. Returns -1 to go on, else the exit code. */
static int cf__configure(cf_daemon_t *d, int check, int dump) {
  int nbad = cf__build_config(d, &d->cfg, cf__report_stderr);
  if (!nbad && d->cfg.model[0]) { /* the model directory is part of a valid configuration */
    int rc = cf_model_info_check(d->cfg.model, &d->model);
    if (rc) {
      fprintf(stderr, "cacheflowd: key 'model': %s: %s\n", cf_strerror(rc), cf_errmsg());
      nbad++;
    }
  }
  if (!nbad) nbad += cf_tls_check_config(&d->cfg, cf__report_stderr); /* TLS keys, files, plaintext TCP */
  if (!nbad && d->cfg.gpu_executor && d->cfg.backend == CF_BACKEND_CPU) {
    fprintf(stderr, "cacheflowd: key 'gpu_executor': on needs backend = cuda (backend = cpu); "
                    "set backend = cuda or gpu_executor = off\n");
    nbad++;
  }
  if (check) {
    if (nbad) { fprintf(stderr, "cacheflowd: configuration has %d error(s)\n", nbad); return 1; }
    printf("cacheflowd: configuration OK (%s)\n", d->config_path ? d->config_path : "defaults");
    return 0;
  }
  if (nbad) { fprintf(stderr, "cacheflowd: configuration has %d error(s); not starting\n", nbad); return 1; }
  if (dump) { cf_config_dump(&d->cfg, stdout); return 0; }
  return -1;
}

/* With a model configured: load it, make the backend (and the GPU executor), open the store
 * and measure the cost model; the store's hooks go into *be. 0, or 1 (logged). */
static int cf__open_model_and_store(cf_daemon_t *d, cf_service_backend_t *be) {
  char hex[33];
  cf_notifyf("STATUS=loading model %s", d->cfg.model);
  int rc = cf_model_load(d->cfg.model, &d->weights);
  if (rc) { CF_ERROR("model %s: %s: %s", d->cfg.model, cf_strerror(rc), cf_errmsg()); return 1; }
  cf_model_info_from_model(d->weights, &d->model);
  if ((rc = cf_model_weights_digest(d->cfg.model, d->model.weights))) {
    CF_ERROR("model %s: weights digest: %s: %s", d->cfg.model, cf_strerror(rc), cf_errmsg());
    return 1;
  }
  d->have_model = 1;
  char whex[33];
  CF_INFO("model %s: layers=%d kv_heads=%d head_dim=%d vocab=%d fingerprint=%s weights=%s", d->cfg.model,
          d->model.n_layers, d->model.n_kv_heads, d->model.head_dim, d->model.vocab,
          cf_model_fingerprint_hex(d->model.fingerprint, hex), cf_model_fingerprint_hex(d->model.weights, whex));
  cf_notifyf("STATUS=model loaded: %s", d->cfg.model);
  cf_notifyf("STATUS=recovering store %s", d->cfg.store_dir);
  if (cf__prepare_store_dir(d->cfg.store_dir)) { CF_ERROR("%s", cf_errmsg()); return 1; }
  /* the backend first: kv_dtype = auto depends on which one runs */
  if ((rc = cf__make_backend(d))) { CF_ERROR("backend: %s: %s", cf_strerror(rc), cf_errmsg()); return 1; }
  if (d->cfg.gpu_executor && strcmp(d->backend->name, "cuda") != 0) {
    CF_ERROR("gpu_executor = on needs the cuda backend, but backend %s is in use (backend = auto found no "
             "usable GPU?); set backend = cuda or gpu_executor = off", d->backend->name);
    return 1;
  }
  if (d->cfg.gpu_executor) {
    CF_WARN("gpu_executor = on: the GPU restore path is not yet verified on hardware (tests/device/run.sh)");
    if ((rc = cf_exec_gpu_init(&d->gexec, d->backend, 0, (cf_gpu_load_mode_t)d->cfg.gpu_load_mode))) {
      CF_ERROR("gpu_executor: %s: %s", cf_strerror(rc), cf_errmsg());
      return 1;
    }
    d->have_gexec = 1;
    if (d->cfg.gpu_memory_bytes > 0) {
      /* the budget holds the backend's own copy of the weights (and its scratch), the loaders'
       * staging rings (n_loaders = 2, default ring), the rest is the restore arena */
      size_t held = cf_backend_cuda_device_bytes(d->backend), rings = 2 * (size_t)16 << 20;
      size_t budget = (size_t)d->cfg.gpu_memory_bytes;
      if (budget <= held + rings) {
        CF_ERROR("gpu_memory_bytes = %zu: the cuda backend already holds %zu bytes (its own weights and scratch) "
                 "and the loaders' rings need %zu; nothing is left for restores", budget, held, rings);
        return 1;
      }
      if ((rc = cf_exec_gpu_set_budget(&d->gexec, budget - held - rings))) {
        CF_ERROR("gpu_memory_bytes: %s: %s", cf_strerror(rc), cf_errmsg());
        return 1;
      }
      CF_INFO("gpu_memory_bytes: %zu bytes: backend %zu, loader rings %zu, restore arena %zu", budget, held, rings,
              budget - held - rings);
    }
  }
  cf_dtype_t kvdt = cf__kv_dtype(d);
  CF_INFO("kv_dtype %s (configured %s, backend %s)", cf_dtype_name(kvdt),
          cf_config_format(&d->cfg, cf_config_find("kv_dtype"), hex, sizeof hex), d->backend->name);
  if (d->have_gexec && kvdt != CF_DT_BF16) { /* the CUDA backend computes bf16 KV */
    CF_ERROR("gpu_executor = on needs bf16 KV (kv_dtype = auto or bf16), kv_dtype resolves to %s", cf_dtype_name(kvdt));
    return 1;
  }
  rc = cf_storage_open(&d->storage, &d->cfg, &d->model, kvdt, d->have_gexec ? &d->gexec : NULL);
  if (rc) { CF_ERROR("%s: %s", cf_strerror(rc), cf_errmsg()); return 1; }
  cf_storage_backend(d->storage, be);
  if (d->cfg.eviction == CF_EVICT_COST) { /* (the policy is fixed at start: the store is opened with it) */
    cf_evict_refresh_bind(&d->evict, cf_storage_store(d->storage), (uint32_t)d->cfg.chunk_tokens);
    cf_planner_set_evict(&d->planner, &d->evict);
  }
  cf_notify("STATUS=measuring the cost model");
  if ((rc = cf_calib_cost(d->backend, d->weights, (int)d->cfg.chunk_tokens, 0, &d->cost))) {
    CF_ERROR("backend/calibration: %s: %s", cf_strerror(rc), cf_errmsg());
    return 1;
  }
  double fixed[3];
  if (d->cfg.cost_model[0] && cf_config_parse_cost_model(d->cfg.cost_model, fixed) == 0) {
    /* the operator's compute terms instead of the measured ones (the rest of the model, layers,
     * bytes and windows, is the model's own): daemons compared side by side on a busy machine
     * plan and value chunks with one model, not each with its own noisy measurement */
    CF_INFO("cost model: cost_model = %s replaces the measured gamma=%.3g s alpha=%.3g s/token beta=%.3g s/token^2",
            d->cfg.cost_model, d->cost.gamma_s, d->cost.alpha_s, d->cost.beta_s);
    d->cost.gamma_s = fixed[0];
    d->cost.alpha_s = fixed[1];
    d->cost.beta_s = fixed[2];
  }
  d->measured_link_Bps = d->cost.link_Bps;
  cf_remote_t *rt = cf_store_remote(cf_storage_store(d->storage));
  if (rt && !(d->cfg.remote_read_gbps > 0)) {
    cf_notify("STATUS=measuring the remote tier");
    if (cf_remote_probe(rt, 16, 4, &d->measured_remote_Bps) == 0)
      CF_INFO("remote tier %s: cell reads at %.3g GB/s (probe)", cf_remote_url(rt), d->measured_remote_Bps / 1e9);
    else
      CF_WARN("remote tier %s not reachable at start-up (%s): serving; planning its reads at 10 Gbit/s until "
              "restores measure it, and retrying with backoff", cf_remote_url(rt), cf_errmsg());
  } else if (rt)
    CF_INFO("remote tier %s (remote_read_gbps %g)", cf_remote_url(rt), d->cfg.remote_read_gbps);
  CF_INFO("cost model (backend %s): gamma=%.3g s alpha=%.3g s/token beta=%.3g s/token^2 link=%.3g GB/s",
          d->backend->name, d->cost.gamma_s, d->cost.alpha_s, d->cost.beta_s, d->cost.link_Bps / 1e9);
  cf_store_stats_t ss;
  cf_store_get_stats(cf_storage_store(d->storage), &ss);
  CF_INFO("store %s recovered: %llu chunk(s) on SSD, %llu journal record(s), %llu torn, %llu damaged, %llu dropped",
          d->cfg.store_dir, (unsigned long long)ss.ssd_chunks, (unsigned long long)ss.journal_records,
          (unsigned long long)ss.journal_torn, (unsigned long long)ss.journal_damaged,
          (unsigned long long)ss.journal_dropped);
  return 0;
}

/* The restore data path (when there is a store), the service and its sockets: gRPC, and HTTP
 * for /metrics. 0, or 1 (logged). */
static int cf__open_service(cf_daemon_t *d, cf_service_backend_t *be) {
  /* readiness files that daemons killed before they could unlink them (SIGKILL) left behind:
   * only dead pids' files with our name and magic (cf_shmclean.h) */
  if (d->storage && d->backend) {
    int removed = 0, kept = 0;
    if (cf_shmclean_stale("/dev/shm", &removed, &kept)) CF_DEBUG("%s", cf_errmsg()); /* no /dev/shm: nothing left there */
    else if (removed) CF_INFO("removed %d stale readiness file(s) of dead daemons from /dev/shm", removed);
  }
  /* the restore data path (the executor thread, readiness files) wraps the storage hooks in `be` */
  if (d->storage && d->backend &&
      cf_dataplane_open(&d->dp, d->loop, &d->cfg, d->backend, cf_storage_store(d->storage), &d->planner, be,
                        d->have_gexec ? &d->gexec : NULL, d->weights)) {
    CF_ERROR("%s", cf_errmsg());
    return 1;
  }
  if (cf_service_init(&d->svc, d->loop, &d->cfg, d->have_model ? &d->model : NULL, be, &d->planner)) { CF_ERROR("%s", cf_errmsg()); return 1; }
  if (d->backend) cf__apply_link(d);
  if (d->backend) cf__apply_memory(d);
  int nm;
  cf_rpc_opts_t ro = {.listen = d->cfg.listen, .tcp_listen = d->cfg.tcp_listen, .max_message_bytes = d->cfg.max_message_bytes,
                      .methods = cf_service_methods(&nm), .user = d->svc};
  ro.n_methods = nm;
  cf_tls_pem_t pem = {0};
  cf_rpc_tls_t tls;
  if (d->cfg.tcp_listen[0] && cf_tls_enabled(&d->cfg)) {
    if (cf_tls_load(&d->cfg, &pem)) { CF_ERROR("tls: %s", cf_errmsg()); return 1; }
    tls = (cf_rpc_tls_t){.cert_pem = pem.cert, .key_pem = pem.key, .client_ca_pem = pem.ca};
    ro.tls = &tls;
    CF_INFO("tls on %s: %s; client certificates %s", d->cfg.tcp_listen, pem.desc,
            pem.ca ? "required (mutual TLS)" : "not asked");
  } else if (d->cfg.tcp_listen[0]) {
    CF_WARN("tcp_listen %s is plaintext (no tls_cert_file): %s", d->cfg.tcp_listen,
            cf_tls_addr_is_loopback(d->cfg.tcp_listen) ? "loopback only" : "tcp_insecure = yes");
  }
  cf_notify("STATUS=binding sockets");
  int rrc = cf_rpc_start(&d->rpc, d->loop, &ro);
  cf_tls_free(&pem);
  if (rrc) { CF_ERROR("rpc: %s", cf_errmsg()); return 1; }
  cf_service_set_rpc(d->svc, d->rpc);
  if (d->cfg.metrics_listen[0] && cf_http_start(&d->http, d->cfg.metrics_listen, cf__metrics, cf__healthy, d)) {
    CF_ERROR("metrics: %s", cf_errmsg());
    return 1;
  }
  return 0;
}

/* Signals (TERM/INT drain, HUP reload) and the systemd watchdog, on the loop. */
static void cf__start_signals(cf_daemon_t *d) {
  uv_signal_init(d->loop, &d->sig_term);
  uv_signal_init(d->loop, &d->sig_int);
  uv_signal_init(d->loop, &d->sig_hup);
  d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
  uv_signal_start(&d->sig_term, cf__on_term, SIGTERM);
  uv_signal_start(&d->sig_int, cf__on_term, SIGINT);
  uv_signal_start(&d->sig_hup, cf__on_hup, SIGHUP);
  uv_timer_init(d->loop, &d->watchdog);
  uv_timer_init(d->loop, &d->drain);
  d->drain.data = d;
  uint64_t wd = cf_notify_watchdog_usec();
  if (wd) {
    uint64_t ms = wd / 2000 ? wd / 2000 : 1; /* ping at half the interval systemd asked for */
    uv_timer_start(&d->watchdog, cf__on_watchdog, ms, ms);
    CF_INFO("watchdog: ping every %llu ms", (unsigned long long)ms);
  }
}

/* After the loop ended (every handle closed by the drain): the store, GPU, backend, model. */
static void cf__teardown(cf_daemon_t *d) {
  int rc = uv_loop_close(d->loop);
  if (rc) CF_WARN("loop closed with handles open: %s", uv_strerror(rc));
  cf_storage_close(d->storage); /* after the engines (their mappings) are gone */
  if (d->have_gexec) cf_exec_gpu_close(&d->gexec); /* after the executor thread and the saves */
  cf_backend_free(d->backend);
  cf_model_free(d->weights);
  cf_planner_close(&d->planner);
  cf_evict_refresh_close(&d->evict);
}

int main(int argc, char **argv) {
  static cf_daemon_t D;
  cf_daemon_t *d = &D;
  int check = 0, dump = 0, rc;
  if ((rc = cf__parse_args(d, argc, argv, &check, &dump)) >= 0) return rc;
  if ((rc = cf__configure(d, check, dump)) >= 0) return rc;
  cf_log_set_level(d->cfg.log_level);
  signal(SIGPIPE, SIG_IGN);
  cf_shmguard_install(); /* an engine truncating its KV file must not kill the daemon: cf_shmguard.h */

  d->loop = uv_default_loop();
  cf_planner_init(&d->planner, d->cfg.cost_refit_weight);
  cf_evict_refresh_init(&d->evict, 0); /* inert until a cost-evicting store is bound */
  d->t_start = uv_hrtime();
  CF_INFO("starting cacheflowd %s config=%s listen=%s", CF_VERSION, d->config_path ? d->config_path : "(defaults)", d->cfg.listen);
  cf_service_backend_t be;
  memset(&be, 0, sizeof be);
  if (d->cfg.model[0]) {
    if (cf__open_model_and_store(d, &be)) return 1;
  } else {
    CF_WARN("no model configured: RegisterEngine, Lookup, Save, Restore and Evict will fail until `model` is set (restart needed)");
  }
  if (cf__open_service(d, &be)) return 1;
  cf__start_signals(d);
  CF_INFO("serving: listen=%s%s%s metrics=%s", d->cfg.listen, d->cfg.tcp_listen[0] ? " tcp=" : "", d->cfg.tcp_listen,
          d->cfg.metrics_listen[0] ? d->cfg.metrics_listen : "off");
  cf_notifyf("READY=1\nSTATUS=serving on %s", d->cfg.listen);
  uv_run(d->loop, UV_RUN_DEFAULT);
  cf__teardown(d);
  return 0;
}
