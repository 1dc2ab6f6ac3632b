/* Trace-driven evaluation of the store's eviction policies (issue 15.3): lru, s3fifo and cost.
 *
 * Generates a workload (seeded, sizes on the command line) of one of three families:
 *   chat     multi-turn sessions over a few shared system prompts: each turn's prompt is the
 *            whole history plus a new user message (heavy-tailed: now and then a pasted document),
 *            the answer joins the history; think times between turns; sessions up to 128k tokens;
 *   agentic  runs over a long shared tool/system prompt (8-24k tokens): each step appends a tool
 *            output (heavy-tailed) and an action, seconds apart, up to 128k tokens;
 *   rag      questions over shared documents (Zipf popularity, heavy-tailed lengths up to 96k):
 *            system prompt + one or two documents + the question;
 * and replays it, request by request in time order, against a real cf_store (lib/store: the real
 * index, heaps, write-back and SSD journal; one layer of one 4 KiB cell per chunk stands for the
 * chunk, the capacities are counted in chunks) with CPU and SSD caps at a fraction of the
 * working set (the distinct chunks the trace saves). For each request:
 *   1. which chunks of its prompt the store holds and where (per chunk; --lookup prefix stops at
 *      the first missing one, as cf_store_lookup does: the rest is prefilled);
 *   2. an `optimal` plan on the H100 profile (conf/hw/h100-nvme.json: CPU DRAM over PCIe 48 GB/s,
 *      SSD 6.8 GB/s, llama-3.1-8b, chunks of 512 tokens), absent chunks computed at every layer
 *      (--lookup holes); with --remote a 10 Gbit/s remote tier holds every chunk ever saved
 *      (write-through, unbounded), so a chunk missing locally loads from there when that is
 *      faster than computing it;
 *   3. the simulator's TTFT of that plan (restore + prefill of the new tokens);
 *   4. the chunks the plan loads are read from the store (a use, as the daemon's restores are),
 *      then every full chunk of prompt + answer is saved back at its index (cf_store_save_at).
 * Output: one line per (capacity, policy): mean and p99 TTFT, chunk hit ratio (prompt chunks
 * present locally), and the ratio of the best other policy's mean TTFT to cost's; then each
 * tier's evictions and the SSD write-backs the cost policy refused (counted in ev_ssd too).
 *
 * Absent chunks are holes (CF_SCHED_TIER_NONE, issue 15.1): every policy computes them at every
 * layer; the run also checks that no plan loads one (counted as `bad`, must be 0).
 *
 * Usage: bench_eval_evict [--workload chat|agentic|rag|mixed] [--seed N] [--scale X]
 *                         [--caps 0.05,0.1,0.25,0.5 (or 5%,10%,...)] [--lookup holes|prefix] [--remote]
 *                         [--policies lru,s3fifo,cost,ssd-all,belady,vbelady,bayes,lru+promote,s3fifo+promote]
 *                         [--dir DIR]
 *                         [--hw NAME] [--vbelady best|flow|live|exp:TAU] [--dump DIR]
 *                         [--bayes full|nolive|nocont|nopop|nostruct|nostruct-aged|exact|nopop-exact[:TAU]]
 * ssd-all is a reference, not a policy: LRU with the SSD tier holding every chunk ever saved
 * and the CPU tier at the capacity's cap, i.e. what an SSD-tier policy could reach at most with
 * the CPU tier run by recency (cost's CPU tier in front of an SSD tier is LRU). belady is the
 * clairvoyant reference: both tiers evict the chunk needed furthest in the future (oracle_rank);
 * vbelady the clairvoyant value-weighted one (vbelady_rank), with a `#` line per capacity: each
 * row's value of local hits against the most any eviction choice could keep (flow_select).
 * bayes is the online reference: it knows the generator's model and the past, not the future
 * (bayes_rank: each chunk's expected discounted saving; --bayes picks a form or an ablation).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "exec/cf_evict_cost.h"
#include "sched/cf_hw.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "store/cf_store.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

#define C_TOK 512
#define MAX_TOK 131072
#define TIER_NONE CF_SCHED_TIER_NONE /* absent chunk: a hole, computed at every layer */

/* ------------------------------------------------------------------ random */

static uint64_t rng_s;
static uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
static double urand(void) { rng_s = mix64(rng_s); return ((rng_s >> 11) + 0.5) / 9007199254740992.0; }
static double nrand(void) { return sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand()); }
static double lognorm(double median, double sigma) { return median * exp(sigma * nrand()); }
static double expo(double mean) { return -mean * log(urand()); }
static int geom(double mean, int max) {
  int n = 1;
  while (n < max && urand() > 1.0 / mean) n++;
  return n;
}
static int clampi(double x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : (int)x; }

/* ------------------------------------------------------------------ sequences and requests */

/* A token sequence is a list of segments (content id, length): two prompts share a chunk's key
 * exactly when the same segments cover the same tokens of it and of every chunk before it. */
typedef struct { uint64_t id; int len; } seg_t;
typedef struct { seg_t *s; int n, cap, tokens; } seq_t;

static void seq_add(seq_t *q, uint64_t id, int len) {
  if (len <= 0) return;
  if (q->n == q->cap) { q->cap = q->cap ? 2 * q->cap : 16; q->s = realloc(q->s, sizeof(seg_t) * (size_t)q->cap); }
  q->s[q->n++] = (seg_t){id, len};
  q->tokens += len;
}
static seq_t seq_copy(const seq_t *q) {
  seq_t r = {malloc(sizeof(seg_t) * (size_t)(q->n + 1)), q->n, q->n + 1, q->tokens};
  memcpy(r.s, q->s, sizeof(seg_t) * (size_t)q->n);
  return r;
}

/* Chained keys of the first `tokens / C` full chunks of q. */
static int seq_keys(const seq_t *q, int tokens, cf_store_key_t *keys) {
  int nch = tokens / C_TOK, si = 0, off = 0;
  uint64_t h1 = 0, h2 = 0;
  for (int c = 0; c < nch; c++) {
    uint64_t a = mix64(h1 ^ 0x1234), b = mix64(h2 ^ 0x5678);
    int need = C_TOK;
    while (need > 0) {
      int take = q->s[si].len - off < need ? q->s[si].len - off : need;
      uint64_t piece = mix64(q->s[si].id * 1000003ULL + (uint64_t)off * 7919ULL + (uint64_t)take);
      a = mix64(a ^ piece);
      b = mix64(b + piece * 31);
      need -= take;
      off += take;
      if (off == q->s[si].len) { si++; off = 0; }
    }
    h1 = a; h2 = b;
    memcpy(keys[c].b, &h1, 8);
    memcpy(keys[c].b + 8, &h2, 8);
  }
  return nch;
}

typedef struct {
  double t;
  seq_t prompt;   /* what the engine prefills: the cached prefix candidate + new tokens */
  int answer;     /* tokens generated after it (saved with the prompt) */
  uint64_t ans_id;
  int owner, step; /* bayes' metadata: chat session / agentic run (-1: RAG), its turn or step (1-based) */
  int fam;         /* --workload mixed: the family that made it (0 chat, 1 agentic, 2 rag) */
} req_t;

typedef struct { req_t *r; int n, cap; } trace_t;

static void trace_add(trace_t *T, double t, const seq_t *prompt, int answer, uint64_t ans_id, int owner, int step) {
  if (T->n == T->cap) { T->cap = T->cap ? 2 * T->cap : 256; T->r = realloc(T->r, sizeof(req_t) * (size_t)T->cap); }
  T->r[T->n++] = (req_t){t, seq_copy(prompt), answer, ans_id, owner, step, 0};
}
static int cmp_req(const void *a, const void *b) {
  double x = ((const req_t *)a)->t, y = ((const req_t *)b)->t;
  return x < y ? -1 : x > y;
}

static uint64_t next_id = 1ull << 40; /* unique content (user text, answers, tool output) */

/* The generator's model as bayes (below) knows it: the parameters each generator draws from,
 * set by the generator itself next to the literals it uses. Chat: a session goes on after each
 * turn with probability p_step (turns geom mean 6, at most 40) unless the next user message
 * would pass the 128k cap, the next turn expo(60 s) later; agentic alike (steps geom mean 12, at
 * most 60, gaps expo(4 s) + tool time, the cap checked on the tool output); a system prompt's
 * chunks come back with any turn over it (shared_rate per system prompt, per second). RAG:
 * requests 1 a second, system prompt 0 with 0.7, a second document with 0.3, document d with
 * pi[d]. Content ids: system prompts 100+ (chat), 200+ (agentic), 300+ (RAG), documents 1000+,
 * unique text from next_id's start. */
typedef enum { GM_CHAT, GM_AGENTIC, GM_RAG } gm_family_t;
typedef struct {
  gm_family_t fam;
  int n_owner;        /* sessions or runs */
  double gap;         /* mean seconds between a session's turns / a run's steps */
  double p_step;      /* chance of one more turn / step, caps aside */
  int max_step;
  double shared_rate; /* turns over one system prompt, per second */
  int ndocs;
  double *pi;         /* RAG: document popularity */
} genmodel_t;
static genmodel_t gm;

static void gen_chat(trace_t *T, double scale) {
  int sessions = clampi(400 * scale, 4, 1000000);
  int nsys = 4, sys_len[4];
  for (int i = 0; i < nsys; i++) sys_len[i] = clampi(lognorm(1500, 0.5), 200, 6000);
  double horizon = 3600;
  /* what bayes knows of this generator (its parameters, never the draws) */
  gm = (genmodel_t){GM_CHAT, sessions, 60, 1 - 1.0 / 6, 40, sessions * 6.0 / horizon / nsys};
  for (int s = 0; s < sessions; s++) {
    double t = urand() * horizon;
    seq_t h = {0};
    int sys = (int)(urand() * nsys);
    seq_add(&h, 100 + (uint64_t)sys, sys_len[sys]);
    int turns = geom(6, 40);
    for (int k = 0; k < turns; k++) {
      int user = urand() < 0.06 ? clampi(lognorm(8000, 1.2), 1000, 100000) : clampi(lognorm(150, 1.0), 5, 4000);
      if (h.tokens + user > MAX_TOK - 2048) break;
      seq_add(&h, next_id++, user);
      int ans = clampi(lognorm(300, 0.7), 10, 2000);
      uint64_t aid = next_id++;
      trace_add(T, t, &h, ans, aid, s, k + 1);
      seq_add(&h, aid, ans);
      t += expo(60);
    }
    free(h.s);
  }
}

static void gen_agentic(trace_t *T, double scale) {
  int runs = clampi(150 * scale, 2, 1000000);
  int nsys = 3, sys_len[3];
  for (int i = 0; i < nsys; i++) sys_len[i] = clampi(lognorm(12000, 0.4), 8000, 24000);
  double horizon = 3600;
  /* the gap: expo(4) + the mean tool output (lognorm(1500, 1.3): 3.5k tokens) x 2e-5 s */
  gm = (genmodel_t){GM_AGENTIC, runs, 4.07, 1 - 1.0 / 12, 60, runs * 12.0 / horizon / nsys};
  for (int r = 0; r < runs; r++) {
    double t = urand() * horizon;
    seq_t h = {0};
    int sys = (int)(urand() * nsys);
    seq_add(&h, 200 + (uint64_t)sys, sys_len[sys]);
    seq_add(&h, next_id++, clampi(lognorm(600, 0.8), 50, 4000)); /* the task */
    int steps = geom(12, 60);
    for (int k = 0; k < steps; k++) {
      int ans = clampi(lognorm(150, 0.6), 10, 1000);
      uint64_t aid = next_id++;
      trace_add(T, t, &h, ans, aid, r, k + 1);
      seq_add(&h, aid, ans);
      int tool = clampi(lognorm(1500, 1.3), 20, 60000);
      if (h.tokens + tool > MAX_TOK - 2048) break;
      seq_add(&h, next_id++, tool);
      t += expo(4) + tool * 2e-5;
    }
    free(h.s);
  }
}

static void gen_rag(trace_t *T, double scale) {
  int ndocs = clampi(300 * scale, 4, 1000000), nreq = clampi(3000 * scale, 10, 10000000);
  int *dlen = malloc(sizeof(int) * (size_t)ndocs);
  double *cdf = malloc(sizeof(double) * (size_t)ndocs), z = 0;
  for (int d = 0; d < ndocs; d++) {
    dlen[d] = clampi(lognorm(4000, 1.0), 300, 96000);
    z += 1.0 / pow(d + 1, 0.9);
    cdf[d] = z;
  }
  int sys_len[2] = {clampi(lognorm(800, 0.3), 200, 3000), clampi(lognorm(800, 0.3), 200, 3000)};
  gm = (genmodel_t){GM_RAG, 0, 0, 0, 0, 0};
  gm.ndocs = ndocs;
  gm.pi = malloc(sizeof(double) * (size_t)ndocs); /* each document's Zipf(0.9) popularity */
  for (int d = 0; d < ndocs; d++) gm.pi[d] = (cdf[d] - (d ? cdf[d - 1] : 0)) / z;
  double t = 0;
  for (int q = 0; q < nreq; q++) {
    t += expo(1.0);
    seq_t h = {0};
    int sys = urand() < 0.7 ? 0 : 1;
    seq_add(&h, 300 + (uint64_t)sys, sys_len[sys]);
    int k = urand() < 0.7 ? 1 : 2;
    for (int i = 0; i < k; i++) {
      double u = urand() * z;
      int lo = 0, hi = ndocs - 1;
      while (lo < hi) { int m = (lo + hi) / 2; if (cdf[m] < u) lo = m + 1; else hi = m; }
      if (h.tokens + dlen[lo] > MAX_TOK - 1024) break;
      seq_add(&h, 1000 + (uint64_t)lo, dlen[lo]);
    }
    seq_add(&h, next_id++, clampi(lognorm(80, 0.6), 10, 600));
    trace_add(T, t, &h, clampi(lognorm(250, 0.6), 10, 1500), next_id++, -1, 0);
    free(h.s);
  }
  free(dlen);
  free(cdf);
}

/* --workload mixed (a reference workload, as the daemon's evaluation trace is): the three
 * families back to back in ONE store, chat, then agentic, then rag, each at --scale, each
 * starting a minute after the last request of the one before: what a store meets when its
 * workload changes (the population it holds stops being read). */
static void gen_mixed(trace_t *T, double scale) {
  void (*gen[3])(trace_t *, double) = {gen_chat, gen_agentic, gen_rag};
  double t0 = 0;
  for (int f = 0; f < 3; f++) {
    int from = T->n;
    double end = t0;
    gen[f](T, scale);
    for (int i = from; i < T->n; i++) {
      T->r[i].t += t0;
      T->r[i].fam = f;
      if (T->r[i].t > end) end = T->r[i].t;
    }
    t0 = end + 60;
  }
}

/* ------------------------------------------------------------------ replay */

typedef struct {
  double mean, p99, hit, cpu_hit;
  double vhit;          /* value of the local hits: sum of vssd over prompt chunks held locally, s */
  long bad;             /* plans that loaded an absent chunk (must be 0) */
  double wall_s;
  uint64_t ev_cpu, ev_ssd, refused; /* evictions per tier; SSD write-backs refused (cost) */
  double fmean[3];      /* --workload mixed: mean TTFT of each family's requests */
} result_t;

typedef struct {
  const trace_t *T;
  cf_sched_cost_t cost;
  cf_store_cost_t table;
  const char *dir;
  int holes, remote;
  const char *dump;  /* --dump DIR: per replay, each prompt chunk's state and the tiers' contents */
  long ws; /* working set, chunks */
  int promote; /* lru+promote, s3fifo+promote: whole-chunk SSD reads also go to the CPU tier */
} ctx_t;

/* The clairvoyant reference rows, through the evaluation-only hook cf_store_config_t.rank (the
 * cost policy's heaps ranked by the trace's future instead of by value):
 * `belady`: a chunk's priority is minus the index of the next request whose prompt holds it
 * (never again: lowest), so each tier gives up the chunk needed furthest in the future and the
 * SSD tier refuses a write-back needed later than all it holds: Belady's MIN per tier,
 * hit-optimal, value-blind but for ties (chunks next needed by the same request: the deeper
 * stays). A reference for the headroom, not a bound on TTFT.
 * `vbelady`: value-weighted: in the SSD tier a chunk's priority is ln(v) - D / tau, v the seconds
 * it saves there at its next use (recompute at its position - SSD load), D the chunks saved
 * before that use (a clock of cache traffic), tau VB_TAU SSD tier-fulls: the value discounted by
 * exp(-distance / tau), weighted-paging style (a large tau: dear chunks stay however far their
 * next use, those never used again leave first); the CPU tier, where every chunk is worth the
 * same SSD read, is Belady. Form `flow` first gives up the chunks that the weighted-paging
 * optimum over the SSD + CPU slots (flow_select) does not keep, then the same order. The row is
 * the lowest mean TTFT of the forms in VB_FORMS (--vbelady picks one). Measured and not kept:
 * the optimum over the SSD slots only, and v / D (every rank asked again each request): 1-4%
 * above the kept forms on chat and RAG, never lowest. */
typedef struct { cf_store_key_t k; int req, pos; } occ_t;
typedef enum { OR_NONE, OR_BELADY, OR_VBELADY, OR_BAYES } oracle_mode_t;
typedef enum { VB_EXP, VB_FLOW, VB_LIVE } vb_mode_t;
#define VB_FORMS "exp:16,exp:32,flow" /* --vbelady best: the row is the lowest of these */
#define VB_FLOW_TAU 32.0
static struct {
  occ_t *o; size_t n;   /* prompt occurrences (the uses), sorted by key, then request */
  occ_t *sv; size_t nsv;/* saves (prompt + answer of each request), sorted alike */
  uint8_t *sel;         /* per use: the optimum keeps the chunk from its last save to this use */
  long *cum;            /* chunks saved by the requests before request i: the distance unit */
  double vssd[MAX_TOK / C_TOK + 8]; /* seconds a chunk at index c on SSD saves: recompute - load */
  int cur;
  vb_mode_t vb;         /* which value-weighted form the vbelady row runs (--vbelady) */
  double vb_tau;        /* decay in SSD tier-fulls of saved chunks */
  long ssd_slots;
} oracle;
static int cmp_occ(const void *a, const void *b) {
  const occ_t *x = a, *y = b;
  int c = memcmp(x->k.b, y->k.b, 16);
  return c ? c : (x->req > y->req) - (x->req < y->req);
}
/* first entry of a (sorted) with this key and req > after, or -1 */
static long occ_next(const occ_t *a, size_t n, const cf_store_key_t *key, int after) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t m = (lo + hi) / 2;
    int c = memcmp(a[m].k.b, key->b, 16);
    if (c < 0 || (c == 0 && a[m].req <= after)) lo = m + 1; else hi = m;
  }
  return lo < n && !memcmp(a[lo].k.b, key->b, 16) ? (long)lo : -1;
}
static double oracle_rank(void *ud, const cf_store_key_t *key, uint32_t pos, int tier) {
  (void)ud; (void)tier;
  long j = occ_next(oracle.o, oracle.n, key, oracle.cur);
  /* among chunks next needed by the same request (a whole prompt), the deeper, dearer one stays */
  double tie = pos * 1e-6;
  return j >= 0 ? -(double)oracle.o[j].req + tie : -1e18 + tie;
}
static double vbelady_rank(void *ud, const cf_store_key_t *key, uint32_t pos, int tier) {
  (void)ud;
  long j = occ_next(oracle.o, oracle.n, key, oracle.cur);
  double tie = pos * 1e-6;
  if (j < 0) return -1e9 + tie; /* never needed again */
  int b = oracle.o[j].req;
  double v = oracle.vssd[pos < MAX_TOK / C_TOK ? pos : MAX_TOK / C_TOK - 1];
  /* `live` (diagnostic, not in VB_FORMS): knows only which chunks are dead; otherwise cost's shape
   * (CPU tier by recency, SSD tier ln(v) decayed over 2 tier-fulls of saved chunks since the chunk
   * arrived or was used): what cost would gain from a perfect dead-chunk predictor */
  if (oracle.vb == VB_LIVE) return tier == 0 ? oracle.cur : log(v) + oracle.cum[oracle.cur] / (2.0 * (double)oracle.ssd_slots);
  double pri = tier == 0 ? -b + tie : log(v) - oracle.cum[b] / (oracle.vb_tau * (double)oracle.ssd_slots);
  return oracle.vb == VB_FLOW && !oracle.sel[j] ? pri - 1e6 : pri;
}

/* The weighted-paging optimum (equal sizes, a miss cost per chunk and use, bypass allowed), as
 * a maximum-weight K-colourable set of intervals: an interval is a chunk kept from a request
 * that saved it (a) to the next one whose prompt holds it (b), worth vssd at its position; at
 * most K intervals may cover any point between two requests. Min-cost flow on the requests'
 * line 0 -> 1 -> ... -> N (capacity K, cost 0) plus an edge a -> b (capacity 1, cost -value) per
 * interval; successive shortest paths with potentials (the graph is a DAG: first potentials in
 * index order), stopping when a path no longer gains. Exact for one tier of K slots counted
 * between requests; the replay's store has two tiers and fills within a request, hence only a
 * reference. Sets oracle.sel; returns the optimum's value (seconds), an upper bound on the value
 * of the local hits (sum of vssd over the prompt chunks held locally) of any eviction choice in a
 * store of K slots. O(K (E log V)): a second or two at --scale 0.25. */
typedef struct { int to, cap; int64_t cost; } fedge_t;
static double flow_select(int N, long K) {
  size_t ni = 0;
  long *iv = malloc(sizeof(long) * (oracle.n + 1)); /* use index of each interval */
  int *ia = malloc(sizeof(int) * (oracle.n + 1));
  for (size_t j = 0; j < oracle.n; j++) {
    oracle.sel[j] = 0;
    /* the last save of this chunk before its use: the first save after req - 1 is >= req */
    size_t lo = 0, hi = oracle.nsv;
    while (lo < hi) {
      size_t m = (lo + hi) / 2;
      int c = memcmp(oracle.sv[m].k.b, oracle.o[j].k.b, 16);
      if (c < 0 || (c == 0 && oracle.sv[m].req < oracle.o[j].req)) lo = m + 1; else hi = m;
    }
    if (lo == 0 || memcmp(oracle.sv[lo - 1].k.b, oracle.o[j].k.b, 16)) continue; /* never saved before */
    ia[ni] = oracle.sv[lo - 1].req;
    iv[ni++] = (long)j;
  }
  size_t V = (size_t)N + 1, E = 2 * ((size_t)N + ni);
  fedge_t *e = malloc(sizeof *e * E);
  int *head = malloc(sizeof(int) * V), *next = malloc(sizeof(int) * E), *prev = malloc(sizeof(int) * V);
  int64_t *pot = calloc(V, sizeof *pot), *dist = malloc(sizeof(int64_t) * V);
  for (size_t v = 0; v < V; v++) head[v] = -1;
  size_t ne = 0;
#define ADD_EDGE(u, w, c, k)                                                                         \
  do {                                                                                               \
    e[ne] = (fedge_t){(w), (c), (k)}; next[ne] = head[u]; head[u] = (int)ne++;                        \
    e[ne] = (fedge_t){(u), 0, -(k)}; next[ne] = head[w]; head[w] = (int)ne++;                         \
  } while (0)
  for (int v = 0; v < N; v++) ADD_EDGE(v, v + 1, (int)(K < 1 << 30 ? K : 1 << 30), 0);
  size_t first_iv = ne;
  for (size_t i = 0; i < ni; i++) {
    const occ_t *u = &oracle.o[iv[i]];
    double v = oracle.vssd[u->pos < MAX_TOK / C_TOK ? u->pos : MAX_TOK / C_TOK - 1];
    ADD_EDGE(ia[i], u->req, 1, -(int64_t)llround(v * 1e9));
  }
#undef ADD_EDGE
  /* potentials: shortest distances in the DAG (every edge goes forward, the line reaches all) */
  for (size_t v = 1; v < V; v++) pot[v] = INT64_MAX / 4;
  for (size_t v = 0; v < V; v++)
    for (int k = head[v]; k >= 0; k = next[k])
      if (e[k].cap > 0 && pot[v] + e[k].cost < pot[e[k].to]) pot[e[k].to] = pot[v] + e[k].cost;
  /* a binary heap of (distance, node), stale entries skipped */
  typedef struct { int64_t d; int v; } hn_t;
  hn_t *hp = malloc(sizeof(hn_t) * (E + V));
  long flow = 0;
  while (flow < K) {
    for (size_t v = 0; v < V; v++) { dist[v] = INT64_MAX; prev[v] = -1; }
    size_t hn = 0;
    dist[0] = 0;
    hp[hn++] = (hn_t){0, 0};
    while (hn) {
      hn_t top = hp[0], last = hp[--hn];
      size_t i = 0;
      for (;;) { /* sift last down from the root */
        size_t c = 2 * i + 1;
        if (c >= hn) break;
        if (c + 1 < hn && hp[c + 1].d < hp[c].d) c++;
        if (hp[c].d >= last.d) break;
        hp[i] = hp[c];
        i = c;
      }
      if (hn) hp[i] = last;
      if (top.d > dist[top.v]) continue;
      for (int k = head[top.v]; k >= 0; k = next[k]) {
        if (e[k].cap <= 0) continue;
        int w = e[k].to;
        int64_t nd = top.d + e[k].cost + pot[top.v] - pot[w];
        if (nd >= dist[w]) continue;
        dist[w] = nd;
        prev[w] = k;
        size_t c = hn++;
        while (c > 0 && hp[(c - 1) / 2].d > nd) { hp[c] = hp[(c - 1) / 2]; c = (c - 1) / 2; }
        hp[c] = (hn_t){nd, w};
      }
    }
    if (dist[N] == INT64_MAX || dist[N] + pot[N] - pot[0] >= 0) break; /* no gaining path left */
    int64_t dmax = 0;
    for (size_t v = 0; v < V; v++) if (dist[v] != INT64_MAX && dist[v] > dmax) dmax = dist[v];
    for (size_t v = 0; v < V; v++) pot[v] += dist[v] != INT64_MAX ? dist[v] : dmax;
    long push = K - flow;
    for (int v = N; v != 0; v = e[prev[v] ^ 1].to) if (e[prev[v]].cap < push) push = e[prev[v]].cap;
    for (int v = N; v != 0; v = e[prev[v] ^ 1].to) { e[prev[v]].cap -= (int)push; e[prev[v] ^ 1].cap += (int)push; }
    flow += push;
  }
  double value = 0;
  for (size_t i = 0; i < ni; i++) {
    oracle.sel[iv[i]] = e[first_iv + 2 * i].cap == 0;
    if (oracle.sel[iv[i]]) value -= e[first_iv + 2 * i].cost * 1e-9;
  }
  free(iv); free(ia); free(e); free(head); free(next); free(prev); free(pot); free(dist); free(hp);
  return value;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* a 128-bit key set (open addressing) for the working set and the remote tier's contents */
typedef struct { cf_store_key_t *k; uint8_t *used; size_t cap, n; } kset_t;
static int kset_add(kset_t *s, const cf_store_key_t *k) { /* 1 when new */
  if (2 * (s->n + 1) > s->cap) {
    kset_t o = *s;
    s->cap = o.cap ? 2 * o.cap : 1 << 16;
    s->k = calloc(s->cap, sizeof *s->k);
    s->used = calloc(s->cap, 1);
    s->n = 0;
    for (size_t i = 0; i < o.cap; i++) if (o.used[i]) kset_add(s, &o.k[i]);
    free(o.k); free(o.used);
  }
  uint64_t h;
  memcpy(&h, k->b, 8);
  for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
    if (!s->used[i]) { s->used[i] = 1; s->k[i] = *k; s->n++; return 1; }
    if (!memcmp(s->k[i].b, k->b, 16)) return 0;
  }
}
static int kset_has(const kset_t *s, const cf_store_key_t *k) {
  if (!s->cap) return 0;
  uint64_t h;
  memcpy(&h, k->b, 8);
  for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
    if (!s->used[i]) return 0;
    if (!memcmp(s->k[i].b, k->b, 16)) return 1;
  }
}

/* ------------------------------------------------------------------ bayes: the online reference */

/* `bayes` (evaluation only, through the same rank hook as belady): an online reference that knows
 * the generator's model (gm: its parameters, never its draws) and the past of the replay, never
 * the future. Each chunk is ranked by the log of its expected discounted saving,
 *   ln v + ln E[exp(-(time to its next use) / Ts)]
 * (v: what it saves at its next use, recompute - SSD load at its index in the SSD tier, the same
 * SSD read for every chunk in the CPU tier; Ts: the discount horizon, tau SSD-tier turnovers in
 * the SSD tier, one CPU-tier turnover in the CPU tier; a turnover: the seconds in which the trace
 * brings a tier-full of new chunks). A small Ts ranks by v x rate of reuse (the A0 rule, optimal
 * for independent references of known rates), a large one by v x chance of any reuse. Per kind:
 *   a system prompt's chunks (chat, agentic): reused at a Poisson rate (gm.shared_rate):
 *     ln(l / (l + 1/Ts));
 *   a session's or run's chunks: its next turn comes expo(gap) after its last one, if it comes:
 *     after its last turn the session goes on with p (the generator's p_step, 0 at its turn cap,
 *     times the chance that the next user message / tool output still fits under 128k), and
 *     after s idle seconds with P(alive | s) = p e^(-s/gap) / (p e^(-s/gap) + 1 - p); then
 *     E[...] = P(alive | s) / (1 + gap / Ts);
 *   RAG: a chunk whose prefix ends in the system prompt comes back with that prompt's share
 *     (0.7, 0.3), one ending in the first document with P(sys) pi[doc], in the second with
 *     P(sys) pi[doc1] 0.3 pi[doc2]; requests arrive at 1/s (memoryless): ln(q / (q + 1/Ts));
 *     a question's or answer's chunk never comes back (first out, as a dead chunk under belady).
 * The hook's priority is fixed when the chunk is touched (saved, read, held by a prompt, written
 * back), so the one term that moves while a chunk is left alone, ln P(alive | s), is linearised at
 * s* = gap, the age by which a live session's next turn is due: ln P(alive | s*; p) - h (s - s*),
 * with one slope h = (1 - P(alive | s*; p_step)) / gap for all chunks, so the order of untouched
 * chunks stays that of the linear form (chosen on seed 1: linearised at s* = 0, i.e. the slope of
 * a live session, (1 - p) / gap, chat at 5-10% was 2-3% and agentic at 5% 2% worse; at the SSD
 * tier's turnover age, where chunks leave (4-90 gaps at 5-10%), chat 4-5% and agentic 17% worse,
 * dead runs' slope making the runs still alive look older than they are); a system prompt's chunks
 * carry h x (their last use's time), so they age against the sessions' chunks only between uses.
 * RAG's keys do not move (stationary, memoryless). Forms (--bayes FORM[:TAU]): full; nolive (no
 * think-time model: a session's chunks keep ln p and age by the cost policy's clock, 2 tier
 * turnovers, as a recency policy would); nocont (p = p_step: no turn count, no 128k cap); nopop
 * (RAG: a document's rate learnt from the prompts seen so far, a Gamma prior of one request at the
 * mean document's rate, in place of its true popularity; frozen between touches like every key);
 * nostruct (RAG: nopop, and a question's tail or an answer is not known to be one-shot: every
 * chunk past the system prompt learns its rate from the same prior); nostruct-aged (nostruct whose
 * keys also age as the cost policy's do, 2 tier turnovers: what recency costs a frequency count on
 * a stationary trace); and two diagnostics that leave the hook's static keys: exact (every stored
 * chunk re-ranked at each request, cf_store_set_cost, O(n) a request: ln P(alive | s) at the true
 * idle time, no linearisation) and nopop-exact (RAG: the learnt rates brought up to date at each
 * request). */
typedef enum { BK_NONE, BK_SHARED, BK_OWN, BK_DOC } bkind_t;
typedef struct {
  cf_store_key_t k;
  uint8_t used, kind;
  int32_t owner;        /* BK_OWN: session / run */
  double q, q0;         /* BK_SHARED (RAG), BK_DOC: requests holding it, true and nopop's prior */
  int32_t seen;         /* prompts that held it so far in this replay */
  double t_first, t_last; /* first and last held by a prompt in this replay (-1: not yet) */
} bent_t;
typedef struct { bent_t *e; size_t cap, n; } bmap_t;
typedef struct { double t; int step, tokens; } bowner_t;
typedef enum {
  BF_FULL, BF_NOLIVE, BF_NOCONT, BF_NOPOP, BF_EXACT, BF_NOPOP_EXACT, BF_NOSTRUCT, BF_NOSTRUCT_AGED
} bform_t;
static const char *bform_names[] = {"full", "nolive", "nocont", "nopop", "exact", "nopop-exact", "nostruct",
                                    "nostruct-aged"};
#define BF_N 8
#define BAYES_TAU 4.0 /* the default SSD discount horizon, tier turnovers */
static struct {
  bmap_t m;
  bowner_t *own;
  bform_t form;
  double tau;
  double rate;          /* new chunks per second over the trace (the turnover's pace) */
  double now;           /* the current request's time */
  int exact, nopop;     /* forms exact, nopop-exact: every stored chunk re-ranked each request */
  int nostruct;
  long ssd_slots, cpu_slots;
} bay = {.tau = BAYES_TAU};

static bent_t *bmap_get(bmap_t *m, const cf_store_key_t *k, int create) {
  if (create && 2 * (m->n + 1) > m->cap) {
    bmap_t o = *m;
    m->cap = o.cap ? 2 * o.cap : 1 << 14;
    m->e = calloc(m->cap, sizeof *m->e);
    m->n = 0;
    for (size_t i = 0; i < o.cap; i++)
      if (o.e[i].used) *bmap_get(m, &o.e[i].k, 1) = o.e[i];
    free(o.e);
  }
  if (!m->cap) return NULL;
  uint64_t h;
  memcpy(&h, k->b, 8);
  for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    bent_t *e = &m->e[i];
    if (!e->used) {
      if (!create) return NULL;
      memset(e, 0, sizeof *e);
      e->used = 1;
      e->k = *k;
      m->n++;
      return e;
    }
    if (!memcmp(e->k.b, k->b, 16)) return e;
  }
}

/* the side map: each chunk of a request's prompt + answer, by the segment its last token is in */
static void bayes_note(const req_t *q, const seq_t *full, const cf_store_key_t *keys, int n) {
  int j = 0, end = full->n ? full->s[0].len : 0;
  for (int c = 0; c < n; c++) {
    while ((c + 1) * C_TOK > end && j + 1 < full->n) end += full->s[++j].len;
    bent_t *e = bmap_get(&bay.m, &keys[c], 1);
    if (e->used == 2) continue; /* noted already (the same in every request that holds it) */
    e->used = 2;
    uint64_t id = full->s[j].id, sys = full->s[0].id % 100;
    double psys = sys == 0 ? 0.7 : 0.3;
    if (j == 0) {
      e->kind = BK_SHARED;
      e->q = e->q0 = psys;
    } else if (gm.fam == GM_RAG && id >= 1000 && id < (1ull << 40) && j <= 2) {
      e->kind = BK_DOC;
      double p1 = gm.pi[full->s[1].id - 1000];
      e->q = j == 1 ? psys * p1 : psys * p1 * 0.3 * gm.pi[id - 1000];
      e->q0 = j == 1 ? psys / gm.ndocs : psys * 0.3 / ((double)gm.ndocs * gm.ndocs);
    } else if (gm.fam != GM_RAG) {
      e->kind = BK_OWN;
      e->owner = q->owner;
    } else {
      e->q0 = psys / gm.ndocs; /* a question's tail or an answer: nostruct's prior, a document's */
    }
  }
}

static double p_lognorm_le(double y, double med, double sigma, double lo, double hi) {
  return y < lo ? 0 : y >= hi ? 1 : 0.5 * erfc(-log(y / med) / (sigma * 1.4142135623730951));
}
/* the chance that an owner goes on after its last turn (the generator's loop conditions) */
static double bayes_pcont(const bowner_t *o) {
  if (o->step >= gm.max_step) return 0;
  if (bay.form == BF_NOCONT) return gm.p_step;
  double room = MAX_TOK - 2048 - o->tokens;
  double fit = gm.fam == GM_CHAT ? 0.06 * p_lognorm_le(room, 8000, 1.2, 1000, 100000) +
                                       0.94 * p_lognorm_le(room, 150, 1.0, 5, 4000)
                                 : p_lognorm_le(room, 1500, 1.3, 20, 60000);
  return gm.p_step * fit;
}
/* ln P(alive | s idle seconds), in logs: long-idle sessions stay ordered (e^(-s/gap) underflows) */
static double ln_alive(double p, double s) {
  double la = log(p) - s / gm.gap;
  return la - log(exp(la) + 1 - p);
}

static double bayes_rank(void *ud, const cf_store_key_t *key, uint32_t pos, int tier) {
  (void)ud;
  double tie = pos * 1e-6;
  const bent_t *e = bmap_get(&bay.m, key, 0);
  if (!e || (e->kind == BK_NONE && !(gm.fam == GM_RAG && bay.nostruct))) return -1e9 + tie;
  double lv = tier == 0 ? 0 : log(oracle.vssd[pos < MAX_TOK / C_TOK ? pos : MAX_TOK / C_TOK - 1]);
  double turn = (tier == 0 ? bay.cpu_slots : bay.ssd_slots) / bay.rate, sstar = gm.gap;
  double Ts = (tier == 0 ? 1 : bay.tau) * turn;
  if (gm.fam == GM_RAG) {
    double q = e->q;
    if (bay.nopop && e->kind != BK_SHARED) { /* the rate seen so far, from its first sight */
      double t = bay.exact ? bay.now : e->t_last; /* (re-ranked each request: up to now) */
      q = (e->seen > 1 ? e->seen : 1) / (1 / e->q0 + (e->t_first >= 0 && t > e->t_first ? t - e->t_first : 0));
    }
    /* nostruct-aged: as recency would, the key grows with the time it was set (cost's decay) */
    double age = bay.form == BF_NOSTRUCT_AGED ? bay.now / (2 * turn) : 0;
    return q > 0 ? lv + log(q / (q + 1 / Ts)) + age + tie : -1e9 + tie;
  }
  double h = bay.form == BF_NOLIVE ? 1 / (2 * turn) : (1 - exp(ln_alive(gm.p_step, sstar))) / gm.gap;
  if (e->kind == BK_SHARED) {
    double l = gm.shared_rate;
    return lv + log(l / (l + 1 / Ts)) + (bay.exact ? 0 : h * (e->t_last > 0 ? e->t_last : 0)) + tie;
  }
  const bowner_t *o = &bay.own[e->owner];
  double p = bayes_pcont(o);
  if (!(p > 0)) return -1e9 + tie; /* the session or run is over by its caps */
  if (bay.form == BF_NOLIVE) return lv + log(p) + h * o->t + tie;
  if (bay.exact) return lv + ln_alive(p, bay.now - o->t) - log(1 + gm.gap / Ts) + tie;
  return lv + ln_alive(p, sstar) + h * o->t - log(1 + gm.gap / Ts) + tie;
}

/* per replay: forget what the last one saw */
static void bayes_reset(long ssd_slots, long cpu_slots) {
  bay.ssd_slots = ssd_slots;
  bay.cpu_slots = cpu_slots;
  for (size_t i = 0; i < bay.m.cap; i++) {
    bay.m.e[i].seen = 0;
    bay.m.e[i].t_first = bay.m.e[i].t_last = -1;
  }
  for (int o = 0; o < gm.n_owner; o++) bay.own[o] = (bowner_t){-1, 0, 0};
}
/* request q arrives: its owner's turn, and its prompt's chunks seen (before any is read or saved) */
static void bayes_arrive(const req_t *q, const cf_store_key_t *keys, int nch) {
  bay.now = q->t;
  if (q->owner >= 0)
    bay.own[q->owner] = (bowner_t){q->t, q->step, q->prompt.tokens + (gm.fam == GM_CHAT ? 383 : 180)};
  for (int c = 0; c < nch; c++) {
    bent_t *e = bmap_get(&bay.m, &keys[c], 0);
    if (!e) continue;
    e->seen++;
    e->t_last = q->t;
    if (e->t_first < 0) e->t_first = q->t;
  }
}
/* its answer is known (the mean answer stood in until now): the owner's length, then the saves */
static void bayes_answered(const req_t *q) {
  if (q->owner >= 0) bay.own[q->owner].tokens = q->prompt.tokens + q->answer;
}

/* --dump: "P req chunk tier read_before value_ms": each prompt chunk (tier 0 CPU, 1 SSD, 2 not
 * local; read_before: a prompt between the chunk's first save and this one held it, i.e. it
 * has been read since it came in; value: vssd), and "O req tier class pos_bucket n": how many
 * chunks the tier holds, by class (0 never needed again, 1 needed again and read before, 2
 * needed again, never read since it came in) and index (0: < 8, 1: < 32, 2: < 128, 3: deeper), taken at
 * the request's lookup. Diagnostics for comparing what two rows keep (not part of the table). */
static int read_before(const cf_store_key_t *k, int i) {
  long s = occ_next(oracle.sv, oracle.nsv, k, -1);
  long j = s >= 0 ? occ_next(oracle.o, oracle.n, k, oracle.sv[s].req) : -1;
  return j >= 0 && oracle.o[j].req < i;
}
static void dump_request(FILE *f, cf_store_t *st, int i, const cf_store_key_t *keys, const uint8_t *tiers, int nch,
                         const occ_t *saved, size_t n) {
  for (int c = 0; c < nch; c++) {
    fprintf(f, "P %d %d %d %d %.3f\n", i, c, tiers[c] > 1 ? 2 : tiers[c], read_before(&keys[c], i),
            oracle.vssd[c] * 1e3);
  }
  long cnt[2][3][4] = {{{0}}};
  for (size_t k = 0; k < n; k++) {
    uint8_t t = 0;
    if (cf_store_lookup(st, &saved[k].k, 1, &t) != 1) continue;
    long nx = occ_next(oracle.o, oracle.n, &saved[k].k, i - 1);
    int cls = nx < 0 ? 0 : read_before(&saved[k].k, i) ? 1 : 2;
    int pb = saved[k].pos < 8 ? 0 : saved[k].pos < 32 ? 1 : saved[k].pos < 128 ? 2 : 3;
    cnt[t == CF_STORE_TIER_CPU ? 0 : 1][cls][pb]++;
  }
  for (int t = 0; t < 2; t++)
    for (int c = 0; c < 3; c++)
      for (int b = 0; b < 4; b++)
        if (cnt[t][c][b]) fprintf(f, "O %d %d %d %d %ld\n", i, t, c, b, cnt[t][c][b]);
}

/* ssd_all: the reference row: the SSD tier holds every chunk ever saved (its cap the whole
 * working set), the CPU tier keeps frac's cap and LRU */
static int replay(const ctx_t *X, cf_store_evict_t pol, double frac, int ssd_all, oracle_mode_t om, result_t *out) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  cf_store_geom_t g;
  memset(&g, 0, sizeof g);
  for (int i = 0; i < 16; i++) g.fingerprint[i] = (uint8_t)(0x51 + i);
  g.dtype_size = 2;
  g.dtype = CF_STORE_DT_BF16;
  g.chunk_tokens = C_TOK;
  g.n_layers = 1;
  g.n_kv_heads = 1;
  g.head_dim = 1; /* 2 KiB cells in 4 KiB slots: the slot is what the caps count */
  long ssd_slots = (long)(frac * X->ws), cpu_slots = ssd_slots / 4;
  if (cpu_slots < 1) cpu_slots = 1;
  if (ssd_all) ssd_slots = X->ws + 64;
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = (uint64_t)cpu_slots * 4096;
  sc.ssd_bytes = (uint64_t)ssd_slots * 4096;
  sc.cpu_evict = pol;
  sc.cost = X->table;
  sc.promote_on_read = X->promote;
  if (om != OR_NONE) {
    sc.rank = om == OR_BELADY ? oracle_rank : om == OR_BAYES ? bayes_rank : vbelady_rank;
    sc.cpu_evict = CF_STORE_EVICT_COST;
  }
  if (om == OR_BAYES) bayes_reset(ssd_slots, cpu_slots);
  oracle.ssd_slots = ssd_slots; /* (vbelady's oracle.sel: set by the caller, flow_select) */
  sc.spill = 0;        /* deterministic: write-back when an eviction needs it */
  sc.buffered_io = 1;  /* page cache: the replay measures policies, not the disk */
  sc.journal_slack = 1u << 20;
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/%s%s_%g", X->dir, pol == CF_STORE_EVICT_LRU ? "lru" : pol == CF_STORE_EVICT_S3FIFO ? "s3fifo" : "cost",
           X->promote ? "_promote" : ssd_all ? "_ssdall" : om == OR_BELADY ? "_belady" : om == OR_VBELADY ? "_vbelady" : om == OR_BAYES ? "_bayes" : "", frac);
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) return cf_seterr(CF_EIO, "cannot clear %s", dir);
  cf_store_t *st;
  int rc = cf_store_open(dir, &g, &sc, &st);
  if (rc) return rc;

  const trace_t *T = X->T;
  FILE *df = NULL;
  kset_t dseen = {0};
  occ_t *dsaved = NULL; /* the chunks saved so far (key, index), for the contents census */
  size_t dn = 0;
  if (X->dump) {
    char fn[1200], form[32] = "";
    if (om == OR_VBELADY)
      snprintf(form, sizeof form, oracle.vb == VB_FLOW ? "-flow" : oracle.vb == VB_LIVE ? "-live" : "-exp%g", oracle.vb_tau);
    snprintf(fn, sizeof fn, "%s/%s%s%s_%g.txt", X->dump, om == OR_VBELADY ? "vbelady" : om == OR_BELADY ? "belady" : om == OR_BAYES ? "bayes" : ssd_all ? "ssd-all"
             : pol == CF_STORE_EVICT_LRU ? "lru" : pol == CF_STORE_EVICT_S3FIFO ? "s3fifo" : "cost", X->promote ? "+promote" : "", form, frac);
    if (!(df = fopen(fn, "w"))) {
      cf_store_close(st);
      if (system(cmd) != 0) {} /* the store just made: no leftover in the caller's directory */
      return cf_seterr(CF_EIO, "cannot write %s", fn);
    }
  }
  double *ttft = malloc(sizeof(double) * (size_t)T->n);
  cf_store_key_t *keys = malloc(sizeof(cf_store_key_t) * (MAX_TOK / C_TOK + 8));
  uint8_t *tiers = malloc(MAX_TOK / C_TOK + 8);
  uint8_t cell[4096] __attribute__((aligned(4096)));
  memset(cell, 0x5a, sizeof cell);
  const void *cells[1] = {cell};
  kset_t remote = {0};
  cf_sched_plan_t plan;
  cf_sched_plan_init(&plan);
  cf_sim_result_t res;
  cf_sim_result_init(&res);
  long chunks_req = 0, chunks_hit = 0, chunks_cpu = 0, bad = 0;
  double vhit = 0;
  const int L = X->cost.n_layers;
  for (int i = 0; i < T->n && !rc; i++) {
    const req_t *q = &T->r[i];
    int P = q->prompt.tokens;
    oracle.cur = i;
    int nch = seq_keys(&q->prompt, P, keys);
    if (om == OR_BAYES) bayes_arrive(q, keys, nch);
    if (om == OR_BAYES && bay.exact) cf_store_set_cost(st, &sc.cost); /* every stored chunk re-ranked */
    int run = 0, present = 0;
    for (int c = 0; c < nch; c++) {
      uint8_t t = 0;
      int has = cf_store_lookup(st, &keys[c], 1, &t) == 1;
      tiers[c] = has ? (uint8_t)(t == CF_STORE_TIER_CPU ? 0 : 1)
                     : X->remote && kset_has(&remote, &keys[c]) ? 2 : TIER_NONE;
      if (has) { present++; if (t == CF_STORE_TIER_CPU) chunks_cpu++; vhit += oracle.vssd[c]; }
      if (run == c && tiers[c] != TIER_NONE) run++;
    }
    chunks_req += nch;
    chunks_hit += present;
    if (df) dump_request(df, st, i, keys, tiers, nch, dsaved, dn);
    /* holes: every chunk up to the last one held anywhere (absent ones after it are plain new
     * tokens); prefix: the unbroken run from the first chunk, as cf_store_lookup reports it */
    int last = nch;
    while (last > 0 && tiers[last - 1] == TIER_NONE) last--;
    int restore = X->holes ? last : run;
    cf_sched_req_t r = {0};
    r.prefix_tokens = (int64_t)restore * C_TOK;
    r.new_tokens = P - r.prefix_tokens;
    r.device = 0;
    r.chunk_tier = tiers;
    cf_sched_input_t in = {0};
    in.cost = X->cost;
    in.reqs = &r;
    in.n_reqs = 1;
    if (restore > 0) {
      if ((rc = cf_sched_plan(&in, CF_POLICY_OPTIMAL, &plan)) || (rc = cf_sim_run(&in, &plan, &res))) break;
      ttft[i] = res.ttft_s[0];
      for (int c = 0; c < restore; c++) {
        int h = plan.h[plan.h_off[0] + c];
        if (tiers[c] == TIER_NONE && h < L) bad++;
        /* a chunk the plan loads from a local tier is read (a use, as a restore's reads are) */
        if (h < L && tiers[c] <= 1) {
          uint8_t buf[4096] __attribute__((aligned(4096)));
          int rrc = cf_store_read(st, &keys[c], 0, 1, buf, sizeof buf, NULL);
          if (rrc && rrc != CF_ENOTFOUND) { rc = rrc; break; }
        }
      }
    } else {
      ttft[i] = cf_cost_prefill(&X->cost, 0, P);
    }
    /* belady, vbelady: every stored chunk of the prompt learns its next use (one the plan
     * computed anyway is not read otherwise, and would keep the request index it was ranked by);
     * bayes: every stored chunk of the prompt is ranked again as just used */
    for (int c = 0; om != OR_NONE && c < nch && !rc; c++) {
      if (tiers[c] > 1 || (restore > 0 && c < restore && plan.h[plan.h_off[0] + c] < L)) continue;
      uint8_t buf[4096] __attribute__((aligned(4096)));
      int rrc = cf_store_read(st, &keys[c], 0, 1, buf, sizeof buf, NULL);
      if (rrc && rrc != CF_ENOTFOUND) rc = rrc;
    }
    /* the engine's KV after the turn: prompt + answer, saved back chunk by chunk */
    if (om == OR_BAYES) bayes_answered(q);
    seq_t full = seq_copy(&q->prompt);
    seq_add(&full, q->ans_id, q->answer);
    int nfull = seq_keys(&full, full.tokens, keys);
    for (int c = 0; c < nfull && !rc; c++) {
      int src = cf_store_save_at(st, &keys[c], (uint32_t)c, C_TOK, cells, 0);
      if (src && src != CF_EEXIST) rc = src;
      if (X->remote) kset_add(&remote, &keys[c]);
      if (df && kset_add(&dseen, &keys[c])) {
        dsaved = realloc(dsaved, sizeof *dsaved * (dn + 1));
        dsaved[dn++] = (occ_t){keys[c], i, c};
      }
    }
    free(full.s);
  }
  if (!rc) {
    double sum = 0, fs[3] = {0};
    int fn[3] = {0};
    for (int i = 0; i < T->n; i++) { sum += ttft[i]; fs[T->r[i].fam] += ttft[i]; fn[T->r[i].fam]++; }
    for (int f = 0; f < 3; f++) out->fmean[f] = fn[f] ? fs[f] / fn[f] : 0;
    qsort(ttft, (size_t)T->n, sizeof *ttft, cmp_d);
    out->mean = sum / T->n;
    out->p99 = ttft[(int)(0.99 * (T->n - 1))];
    out->hit = chunks_req ? (double)chunks_hit / chunks_req : 0;
    out->cpu_hit = chunks_req ? (double)chunks_cpu / chunks_req : 0;
    out->bad = bad;
    out->vhit = vhit;
  }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  out->ev_cpu = s.cpu_evictions;
  out->ev_ssd = s.ssd_evictions;
  out->refused = s.ssd_refusals;
  if (!rc && (s.cpu_bytes_used > s.cpu_bytes_cap || s.ssd_bytes_used > s.ssd_bytes_cap))
    rc = cf_seterr(CF_EINVAL, "store over its caps");
  cf_store_close(st);
  if (system(cmd) != 0) {}
  cf_sched_plan_free(&plan);
  cf_sim_result_free(&res);
  free(ttft); free(keys); free(tiers); free(remote.k); free(remote.used);
  if (df) fclose(df);
  free(dseen.k); free(dseen.used); free(dsaved);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  out->wall_s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  return rc;
}

/* ------------------------------------------------------------------ main */

/* lru+promote, s3fifo+promote: references, not defaults (issue 15's "never worse" against the
 * other policies with cost's promotion on read too: cfg.promote_on_read set for them) */
#define NPOL 9
static const char *names[NPOL] = {"lru", "s3fifo", "cost", "ssd-all", "belady", "vbelady", "bayes", "lru+promote", "s3fifo+promote"};
/* name is one of the comma-separated entries of list (belady is not vbelady) */
static int has_name(const char *list, const char *name) {
  size_t n = strlen(name);
  for (const char *p = list; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
    if (!strncmp(p, name, n) && (p[n] == ',' || p[n] == 0)) return 1;
  return 0;
}

/* --caps LIST: fractions of the working set in (0, 10], or percentages ("5%" = 0.05); all of them
 * checked before any replay runs. Returns how many, or -1 after one line naming the bad entry. */
static int parse_caps(const char *caps, double *out, int max) {
  char *cl = strdup(caps), *sv = NULL;
  int n = 0;
  for (char *c = strtok_r(cl, ",", &sv); c; c = strtok_r(NULL, ",", &sv)) {
    char *end;
    double frac = strtod(c, &end);
    if (end != c && *end == '%' && end[1] == 0) { frac /= 100; end++; }
    if (end == c || *end || !(frac > 0) || frac > 10 || n == max) {
      fprintf(stderr, "eval_evict: --caps '%s': %s\n", c, n == max ? "too many capacities (64 at most)"
              : "expected fractions of the working set in (0, 10] (0.05) or percentages (5%)");
      free(cl);
      return -1;
    }
    out[n++] = frac;
  }
  free(cl);
  if (!n) fprintf(stderr, "eval_evict: --caps '%s': no capacity named\n", caps);
  return n ? n : -1;
}

int main(int argc, char **argv) {
  const char *work = "chat", *caps = "0.05,0.1,0.25,0.5", *lookup = "holes", *pols = "lru,s3fifo,cost,ssd-all,belady,vbelady,bayes";
  const char *vbm = "best", *dump = NULL, *bym = "full";
  const char *dir = NULL, *hwname = "h100-nvme";
  uint64_t seed = 1;
  double scale = 1.0;
  int remote = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--remote")) { remote = 1; continue; }
    if (!v) { fprintf(stderr, "eval_evict: %s needs a value\n", a); return 2; }
    if (!strcmp(a, "--workload")) work = v;
    else if (!strcmp(a, "--seed")) {
      char *end;
      errno = 0;
      seed = strtoull(v, &end, 10);
      if (*v < '0' || *v > '9' || *end || errno) { /* strtoull takes "-1" and "abc" silently */
        fprintf(stderr, "eval_evict: --seed '%s': expected a whole number 0..2^64-1\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--scale")) {
      char *end;
      scale = strtod(v, &end);
      if (end == v || *end || !(scale > 0) || scale > 100) { /* inf would generate ~1e6 sessions */
        fprintf(stderr, "eval_evict: --scale must be a number in (0, 100] (1 = the full traces), not '%s'\n", v);
        return 2;
      }
    }
    else if (!strcmp(a, "--caps")) caps = v;
    else if (!strcmp(a, "--lookup")) lookup = v;
    else if (!strcmp(a, "--policies")) pols = v;
    else if (!strcmp(a, "--dir")) dir = v;
    else if (!strcmp(a, "--hw")) hwname = v;
    else if (!strcmp(a, "--vbelady")) vbm = v;
    else if (!strcmp(a, "--dump")) dump = v;
    else if (!strcmp(a, "--bayes")) bym = v;
    else { fprintf(stderr, "eval_evict: unknown option %s\n", a); return 2; }
    i++;
  }
  if (!strcmp(work, "mixed") && has_name(pols, "bayes")) { /* its model is one generator's */
    fprintf(stderr, "eval_evict: --workload mixed: bayes knows one family's generator; drop it from --policies\n");
    return 2;
  }
  if (strcmp(lookup, "holes") && strcmp(lookup, "prefix")) {
    fprintf(stderr, "eval_evict: --lookup %s: expected holes or prefix\n", lookup);
    return 2;
  }
  if (!(scale > 0)) { fprintf(stderr, "eval_evict: --scale must be > 0\n"); return 2; }
  { /* every --policies entry named (a misspelt one would silently drop its row) */
    char *pl = strdup(pols), *sv = NULL;
    int n = 0;
    for (char *p = strtok_r(pl, ",", &sv); p; p = strtok_r(NULL, ",", &sv), n++) {
      int known = 0;
      for (int k = 0; k < NPOL; k++) known |= !strcmp(p, names[k]);
      if (!known) {
        fprintf(stderr, "eval_evict: --policies: unknown policy '%s': expected lru, s3fifo, cost, ssd-all, belady, "
                "vbelady, bayes, lru+promote or s3fifo+promote\n", p);
        free(pl);
        return 2;
      }
    }
    free(pl);
    if (!n) { fprintf(stderr, "eval_evict: --policies '%s': no policy named\n", pols); return 2; }
  }
  double capv[64];
  int ncap = parse_caps(caps, capv, 64);
  if (ncap < 0) return 2;
  if (strcmp(vbm, "best") && strcmp(vbm, "flow") && strcmp(vbm, "live") && !(strncmp(vbm, "exp:", 4) == 0 && atof(vbm + 4) > 0)) {
    fprintf(stderr, "eval_evict: --vbelady %s: expected best, flow, live or exp:TAU (TAU > 0)\n", vbm);
    return 2;
  }
  {
    const char *colon = strchr(bym, ':');
    size_t n = colon ? (size_t)(colon - bym) : strlen(bym);
    int f = -1;
    for (int k = 0; k < BF_N; k++)
      if (strlen(bform_names[k]) == n && !strncmp(bym, bform_names[k], n)) f = k;
    if (colon) bay.tau = atof(colon + 1);
    if (f < 0 || !(bay.tau > 0)) {
      fprintf(stderr, "eval_evict: --bayes %s: expected full, nolive, nocont, nopop, exact, nopop-exact, nostruct "
              "or nostruct-aged, then optionally :TAU (TAU > 0)\n", bym);
      return 2;
    }
    bay.form = (bform_t)f;
    bay.exact = bay.form == BF_EXACT || bay.form == BF_NOPOP_EXACT;
    bay.nostruct = bay.form == BF_NOSTRUCT || bay.form == BF_NOSTRUCT_AGED;
    bay.nopop = bay.form == BF_NOPOP || bay.form == BF_NOPOP_EXACT || bay.nostruct;
  }
  cf_log_level = CF_LOG_WARN;
  rng_s = mix64(seed * 0x100000001b3ULL + 7);
  trace_t T = {0};
  int mixed = !strcmp(work, "mixed");
  if (!strcmp(work, "chat")) gen_chat(&T, scale);
  else if (!strcmp(work, "agentic")) gen_agentic(&T, scale);
  else if (!strcmp(work, "rag")) gen_rag(&T, scale);
  else if (mixed) gen_mixed(&T, scale);
  else { fprintf(stderr, "eval_evict: --workload %s: expected chat, agentic, rag or mixed\n", work); return 2; }
  qsort(T.r, (size_t)T.n, sizeof *T.r, cmp_req);

  ctx_t X = {0};
  X.T = &T;
  X.dump = dump;
  X.holes = !strcmp(lookup, "holes");
  X.remote = remote;
  cf_hw_t hw;
  cf_model_shape_t model;
  if (cf_hw_load(hwname, &hw) || cf_model_shape_load("llama-3.1-8b", &model) ||
      cf_hw_cost(&hw, &model, 1, CF_TIER_DRAM, 0, C_TOK, &X.cost)) {
    fprintf(stderr, "eval_evict: profile %s: %s\n", hwname, cf_errmsg());
    return 1;
  }
  for (int t = CF_TIER_SSD; t <= CF_TIER_NET; t++) {
    cf_sched_cost_t alt;
    if (hw.tier_Bps[t] > 0 && cf_hw_cost(&hw, &model, 1, t, 0, C_TOK, &alt) == 0) X.cost.tier_Bps[t] = alt.link_Bps;
  }
  if (!(X.cost.tier_Bps[1] > 0) || (remote && !(X.cost.tier_Bps[2] > 0))) {
    fprintf(stderr, "eval_evict: profile %s lacks an ssd (or net) tier\n", hwname);
    return 1;
  }
  cf_evict_cost_table(&X.cost, C_TOK, &X.table);
  /* vbelady's values: the table's formula per chunk index rather than per bucket */
  for (int c = 0; c < MAX_TOK / C_TOK + 8; c++) {
    double rec = X.cost.n_layers * cf_cost_step(&X.cost, (double)c * C_TOK, C_TOK);
    double v = rec - X.cost.n_layers * C_TOK * X.cost.kv_bytes_per_token / cf_cost_tier_Bps(&X.cost, 1);
    oracle.vssd[c] = v > 0.01 * rec ? v : 0.01 * rec;
  }

  /* working set: the distinct chunks the trace saves */
  {
    kset_t ws = {0};
    cf_store_key_t *keys = malloc(sizeof(cf_store_key_t) * (MAX_TOK / C_TOK + 8));
    long tok = 0, maxp = 0;
    for (int i = 0; i < T.n; i++) {
      seq_t full = seq_copy(&T.r[i].prompt);
      seq_add(&full, T.r[i].ans_id, T.r[i].answer);
      int n = seq_keys(&full, full.tokens, keys);
      for (int c = 0; c < n; c++) kset_add(&ws, &keys[c]);
      bayes_note(&T.r[i], &full, keys, n);
      /* the clairvoyant rows' future: which requests' prompts hold each key (uses), which
       * requests save it, and how many chunks were saved before each request */
      int np = T.r[i].prompt.tokens / C_TOK;
      oracle.o = realloc(oracle.o, sizeof(occ_t) * (oracle.n + (size_t)np + 1));
      for (int c = 0; c < np; c++) oracle.o[oracle.n++] = (occ_t){keys[c], i, c};
      oracle.sv = realloc(oracle.sv, sizeof(occ_t) * (oracle.nsv + (size_t)n + 1));
      for (int c = 0; c < n; c++) oracle.sv[oracle.nsv++] = (occ_t){keys[c], i, c};
      oracle.cum = realloc(oracle.cum, sizeof(long) * (size_t)(i + 2));
      oracle.cum[i + 1] = (i ? oracle.cum[i] : 0) + n;
      if (!i) oracle.cum[0] = 0;
      tok += T.r[i].prompt.tokens;
      if (T.r[i].prompt.tokens > maxp) maxp = T.r[i].prompt.tokens;
      free(full.s);
    }
    X.ws = (long)ws.n;
    /* bayes: the pace of new chunks (a generator-level constant: the working set over the
     * trace's span) sets each tier's turnover time; an owner table for its sessions / runs */
    bay.rate = X.ws / (T.n > 1 && T.r[T.n - 1].t > T.r[0].t ? T.r[T.n - 1].t - T.r[0].t : 1.0);
    bay.own = calloc((size_t)gm.n_owner + 1, sizeof *bay.own);
    qsort(oracle.o, oracle.n, sizeof(occ_t), cmp_occ);
    qsort(oracle.sv, oracle.nsv, sizeof(occ_t), cmp_occ);
    oracle.sel = calloc(oracle.n + 1, 1);
    printf("# workload %s seed %llu scale %g: %d requests, %ld distinct chunks (working set, %.1f GiB of "
           "llama-3.1-8b bf16 KV), prompts mean %ld max %ld tokens; lookup %s%s; profile %s (CPU %.0f GB/s, "
           "SSD %.1f GB/s%s)\n",
           work, (unsigned long long)seed, scale, T.n, X.ws,
           X.ws * (double)C_TOK * X.cost.kv_bytes_per_token * X.cost.n_layers / (1u << 30), tok / T.n, maxp,
           lookup, remote ? ", remote tier 10 Gbit/s holding every saved chunk" : "", hwname,
           X.cost.link_Bps / 1e9, X.cost.tier_Bps[1] / 1e9, remote ? ", remote 1.25 GB/s" : "");
    free(ws.k); free(ws.used); free(keys);
  }
  char tmpl[1024]; /* under $TMPDIR (as mktemp), /tmp without it */
  const char *td = getenv("TMPDIR");
  snprintf(tmpl, sizeof tmpl, "%s/eval_evict.XXXXXX", td && *td ? td : "/tmp");
  if (!dir) {
    if (!mkdtemp(tmpl)) { perror("mkdtemp"); return 1; }
    dir = tmpl;
  }
  X.dir = dir;
  if (has_name(pols, "bayes"))
    printf("# bayes: form %s, SSD discount horizon %g tier turnovers (%.0f s at 10%%), %.2f new chunks/s\n",
           bform_names[bay.form], bay.tau, 0.1 * X.ws / bay.rate * bay.tau,
           bay.rate);
  printf("%-8s %-7s %12s %12s %8s %8s %8s %8s %8s %8s\n", "capacity", "policy", "mean_ttft_ms", "p99_ttft_ms", "hit",
         "cpu_hit", "gain", "ev_cpu", "ev_ssd", "refused");
  int rc = 0;
  for (int ci = 0; ci < ncap && !rc; ci++) {
    double frac = capv[ci];
    if ((long)(frac * X.ws) < 1) {
      fprintf(stderr, "eval_evict: --caps %g: %g of the working set (%ld chunks) holds no chunk\n", frac, frac, X.ws);
      rc = 2;
      break;
    }
    result_t r[NPOL];
    int have[NPOL] = {0};
    char vb_form[32] = "";
    double bound = 0;
    for (int p = 0; p < NPOL && !rc; p++) {
      if (!has_name(pols, names[p])) continue;
      if (p == 5) { /* vbelady: the lowest mean TTFT of its forms */
        long ssd = (long)(frac * X.ws), cpu = ssd / 4 > 1 ? ssd / 4 : 1;
        bound = flow_select(T.n, ssd + cpu);
        char forms[128], *sv2 = NULL;
        snprintf(forms, sizeof forms, "%s", strcmp(vbm, "best") ? vbm : VB_FORMS);
        for (char *f = strtok_r(forms, ",", &sv2); f && !rc; f = strtok_r(NULL, ",", &sv2)) {
          result_t one;
          oracle.vb = !strcmp(f, "flow") ? VB_FLOW : !strcmp(f, "live") ? VB_LIVE : VB_EXP;
          oracle.vb_tau = oracle.vb == VB_FLOW ? VB_FLOW_TAU : atof(f + 4);
          if ((rc = replay(&X, CF_STORE_EVICT_LRU, frac, 0, OR_VBELADY, &one))) break;
          if (!vb_form[0] || one.mean < r[p].mean) { r[p] = one; snprintf(vb_form, sizeof vb_form, "%s", f); }
        }
      } else if (p >= 7) {
        X.promote = 1;
        rc = replay(&X, p == 7 ? CF_STORE_EVICT_LRU : CF_STORE_EVICT_S3FIFO, frac, 0, OR_NONE, &r[p]);
        X.promote = 0;
      } else {
        rc = replay(&X, p >= 3 ? CF_STORE_EVICT_LRU : (cf_store_evict_t)p, frac, p == 3,
                    p == 4 ? OR_BELADY : p == 6 ? OR_BAYES : OR_NONE, &r[p]);
      }
      if (rc) {
        fprintf(stderr, "eval_evict: %s at %g: %s\n", names[p], frac, cf_errmsg());
        break;
      }
      have[p] = 1;
    }
    double best_other = 0;
    for (int p = 0; p < 2; p++)
      if (have[p] && (best_other == 0 || r[p].mean < best_other)) best_other = r[p].mean;
    for (int p = 0; p < NPOL && !rc; p++) {
      if (!have[p]) continue;
      char gain[32] = "";
      if (p == 2 && best_other > 0) snprintf(gain, sizeof gain, "%.2fx", best_other / r[p].mean);
      if (p >= 3 && best_other > 0) snprintf(gain, sizeof gain, "(%.2fx)", best_other / r[p].mean);
      char capn[32];
      snprintf(capn, sizeof capn, "%g%%", frac * 100);
      printf("%-8s %-7s %12.1f %12.1f %7.1f%% %7.1f%% %8s %8llu %8llu %8llu%s\n", capn, names[p], r[p].mean * 1e3,
             r[p].p99 * 1e3, r[p].hit * 100, r[p].cpu_hit * 100, gain, (unsigned long long)r[p].ev_cpu,
             (unsigned long long)r[p].ev_ssd, (unsigned long long)r[p].refused,
             r[p].bad ? "  (plans loaded absent chunks!)" : "");
      if (r[p].bad) rc = 1;
    }
    if (mixed && have[2] && !rc) { /* each family's requests: cost against the best of lru / s3fifo */
      static const char *fam[3] = {"chat", "agentic", "rag"};
      printf("# %g%%: per family mean TTFT ms", frac * 100);
      for (int f = 0; f < 3; f++) {
        double b = 0;
        for (int p = 0; p < 2; p++)
          if (have[p] && (b == 0 || r[p].fmean[f] < b)) b = r[p].fmean[f];
        printf("%s %s", f ? ";" : ":", fam[f]);
        for (int p = 0; p < NPOL; p++)
          if (have[p]) printf(" %s %.1f", names[p], r[p].fmean[f] * 1e3);
        if (b > 0) printf(" (cost %.3fx)", b / r[2].fmean[f]);
      }
      printf("\n");
    }
    if ((have[7] || have[8]) && have[2] && !rc) { /* cost against the best of all four lru / s3fifo rows */
      double b = best_other;
      for (int p = 7; p < NPOL; p++)
        if (have[p] && (b == 0 || r[p].mean < b)) b = r[p].mean;
      printf("# %g%%: cost against the best of lru / s3fifo with and without promotion on read: %.3fx\n", frac * 100,
             b / r[2].mean);
    }
    if (have[5] && !rc) { /* which form, and how much of the keepable value each row kept */
      printf("# %g%%: vbelady is %s; value of the local hits (s, recompute - SSD load summed over prompt chunks "
             "held locally):", frac * 100, vb_form);
      for (int p = 0; p < NPOL; p++)
        if (have[p] && p != 3) printf(" %s %.1f (%.0f%%)", names[p], r[p].vhit, bound > 0 ? 100 * r[p].vhit / bound : 0);
      printf("; at most %.1f with any eviction choice (weighted-paging optimum over SSD + CPU slots)\n", bound);
    }
    fflush(stdout);
  }
  if (dir == tmpl) { /* the replays remove their stores; whatever a failed one left goes too */
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    if (system(cmd) != 0) {}
  }
  for (int i = 0; i < T.n; i++) free(T.r[i].prompt.s); /* on a bad --caps too (make asan: LeakSanitizer) */
  free(T.r);
  free(oracle.o); free(oracle.sv); free(oracle.sel); free(oracle.cum);
  free(bay.m.e); free(bay.own); free(gm.pi);
  return rc == 2 ? 2 : rc ? 1 : 0;
}
