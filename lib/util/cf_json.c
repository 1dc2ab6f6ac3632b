#include "util/cf_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

typedef struct {
  const char *s;
  size_t len, pos;
} cf__jp;

static int cf__jerr(const cf__jp *p, const char *what) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < p->pos && i < p->len; i++) {
    if (p->s[i] == '\n') { line++; col = 1; } else col++;
  }
  if (p->pos >= p->len)
    return cf_seterr(CF_EFORMAT, "JSON line %zu col %zu: %s, found end of input", line, col, what);
  unsigned char c = (unsigned char)p->s[p->pos];
  if (c >= 0x20 && c < 0x7f)
    return cf_seterr(CF_EFORMAT, "JSON line %zu col %zu: %s, found '%c'", line, col, what, c);
  return cf_seterr(CF_EFORMAT, "JSON line %zu col %zu: %s, found byte 0x%02x", line, col, what, c);
}

static void cf__ws(cf__jp *p) {
  while (p->pos < p->len) {
    char c = p->s[p->pos];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') p->pos++;
    else break;
  }
}

static int cf__lit(cf__jp *p, const char *lit) {
  size_t n = strlen(lit);
  if (p->len - p->pos < n || memcmp(p->s + p->pos, lit, n) != 0) return 0;
  p->pos += n;
  return 1;
}

static int cf__hex4(cf__jp *p, unsigned *out) {
  if (p->len - p->pos < 4) return cf__jerr(p, "expected 4 hex digits");
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p->s[p->pos];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return cf__jerr(p, "expected hex digit");
    p->pos++;
  }
  *out = v;
  return 0;
}

static size_t cf__utf8(char *o, unsigned cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xc0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xe0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f)); return 3;
  }
  o[0] = (char)(0xf0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[3] = (char)(0x80 | (cp & 0x3f)); return 4;
}

/* Parses a string at p->pos (which is at '"'); *out is malloc'd, *outlen its byte length. */
static int cf__str(cf__jp *p, char **out, size_t *outlen) {
  p->pos++; /* opening quote */
  size_t start = p->pos, n = 0;
  /* First pass bounds the output: escapes never expand (\uXXXX = 6 in, <= 4 out). */
  while (p->pos < p->len && p->s[p->pos] != '"') {
    if (p->s[p->pos] == '\\') p->pos++;
    p->pos++;
  }
  if (p->pos >= p->len) return cf__jerr(p, "unterminated string");
  size_t cap = p->pos - start + 1;
  char *buf = malloc(cap);
  if (!buf) return cf_seterr(CF_ENOMEM, "JSON string of %zu bytes", cap);
  p->pos = start;
  while (p->s[p->pos] != '"') {
    unsigned char c = (unsigned char)p->s[p->pos];
    if (c < 0x20) { free(buf); return cf__jerr(p, "control character in string"); }
    if (c != '\\') { buf[n++] = (char)c; p->pos++; continue; }
    p->pos++;
    char e = p->s[p->pos++];
    switch (e) {
    case '"': buf[n++] = '"'; break;
    case '\\': buf[n++] = '\\'; break;
    case '/': buf[n++] = '/'; break;
    case 'b': buf[n++] = '\b'; break;
    case 'f': buf[n++] = '\f'; break;
    case 'n': buf[n++] = '\n'; break;
    case 'r': buf[n++] = '\r'; break;
    case 't': buf[n++] = '\t'; break;
    case 'u': {
      unsigned cp;
      int rc = cf__hex4(p, &cp);
      if (rc) { free(buf); return rc; }
      if (cp >= 0xd800 && cp < 0xdc00) {
        unsigned lo;
        if (!cf__lit(p, "\\u") || cf__hex4(p, &lo) || lo < 0xdc00 || lo > 0xdfff) {
          free(buf);
          return cf__jerr(p, "expected low surrogate after high surrogate");
        }
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      } else if (cp >= 0xdc00 && cp < 0xe000) {
        free(buf);
        return cf__jerr(p, "unpaired low surrogate");
      }
      n += cf__utf8(buf + n, cp);
      break;
    }
    default:
      p->pos--;
      free(buf);
      return cf__jerr(p, "invalid escape");
    }
  }
  p->pos++; /* closing quote */
  buf[n] = 0;
  *out = buf;
  *outlen = n;
  return 0;
}

static int cf__num(cf__jp *p, cf_json_t *v) {
  size_t start = p->pos;
  int is_int = 1;
  if (p->pos < p->len && p->s[p->pos] == '-') p->pos++;
  if (p->pos >= p->len) return cf__jerr(p, "expected digit");
  if (p->s[p->pos] == '0') p->pos++;
  else if (p->s[p->pos] >= '1' && p->s[p->pos] <= '9')
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
  else return cf__jerr(p, "expected digit");
  if (p->pos < p->len && p->s[p->pos] == '.') {
    is_int = 0;
    p->pos++;
    if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
      return cf__jerr(p, "expected digit after '.'");
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
  }
  if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
    is_int = 0;
    p->pos++;
    if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
    if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
      return cf__jerr(p, "expected digit in exponent");
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
  }
  size_t n = p->pos - start;
  char tmp[128];
  if (n >= sizeof tmp) { p->pos = start; return cf__jerr(p, "number too long"); }
  memcpy(tmp, p->s + start, n);
  tmp[n] = 0;
  v->type = CF_JSON_NUM;
  v->num = strtod(tmp, NULL);
  if (is_int) {
    errno = 0;
    long long ll = strtoll(tmp, NULL, 10);
    if (errno == 0) { v->is_int = 1; v->i64 = ll; }
  }
  return 0;
}

static int cf__value(cf__jp *p, cf_json_t *v, int depth);

static int cf__container(cf__jp *p, cf_json_t *v, int depth, int is_obj) {
  if (depth >= CF_JSON_MAX_DEPTH) return cf__jerr(p, "nesting deeper than 64");
  v->type = is_obj ? CF_JSON_OBJ : CF_JSON_ARR;
  p->pos++;
  cf__ws(p);
  char close = is_obj ? '}' : ']';
  if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return 0; }
  cf_json_t **tail = &v->child;
  for (;;) {
    cf_json_t *c = calloc(1, sizeof *c);
    if (!c) return cf_seterr(CF_ENOMEM, "JSON node");
    *tail = c;
    tail = &c->next;
    v->len++;
    int rc;
    if (is_obj) {
      cf__ws(p);
      if (p->pos >= p->len || p->s[p->pos] != '"') return cf__jerr(p, "expected '\"' to start a key");
      size_t klen;
      if ((rc = cf__str(p, &c->key, &klen))) return rc;
      cf__ws(p);
      if (p->pos >= p->len || p->s[p->pos] != ':') return cf__jerr(p, "expected ':'");
      p->pos++;
    }
    if ((rc = cf__value(p, c, depth + 1))) return rc;
    cf__ws(p);
    if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
    if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return 0; }
    return cf__jerr(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

static int cf__value(cf__jp *p, cf_json_t *v, int depth) {
  cf__ws(p);
  if (p->pos >= p->len) return cf__jerr(p, "expected a value");
  char c = p->s[p->pos];
  switch (c) {
  case '{': return cf__container(p, v, depth, 1);
  case '[': return cf__container(p, v, depth, 0);
  case '"': v->type = CF_JSON_STR; return cf__str(p, &v->str, &v->len);
  case 't': if (cf__lit(p, "true")) { v->type = CF_JSON_BOOL; v->boolean = 1; return 0; } break;
  case 'f': if (cf__lit(p, "false")) { v->type = CF_JSON_BOOL; return 0; } break;
  case 'n': if (cf__lit(p, "null")) { v->type = CF_JSON_NULL; return 0; } break;
  default:
    if (c == '-' || (c >= '0' && c <= '9')) return cf__num(p, v);
    /* Python's json writes NaN/Infinity; accept them (config files from transformers do). */
    if (cf__lit(p, "NaN")) { v->type = CF_JSON_NUM; v->num = NAN; return 0; }
    if (cf__lit(p, "Infinity")) { v->type = CF_JSON_NUM; v->num = INFINITY; return 0; }
  }
  return cf__jerr(p, "expected a value");
}

int cf_json_parse(const char *text, size_t len, cf_json_t **out) {
  *out = NULL;
  cf__jp p = {text, len, 0};
  cf_json_t *v = calloc(1, sizeof *v);
  if (!v) return cf_seterr(CF_ENOMEM, "JSON node");
  int rc = cf__value(&p, v, 0);
  if (!rc) {
    cf__ws(&p);
    if (p.pos != p.len) rc = cf__jerr(&p, "expected end of input");
  }
  if (rc) { cf_json_free(v); return rc; }
  *out = v;
  return 0;
}

void cf_json_free(cf_json_t *v) {
  /* Iterative over siblings, recursive over depth (bounded by CF_JSON_MAX_DEPTH). */
  while (v) {
    cf_json_t *next = v->next;
    cf_json_free(v->child);
    free(v->str);
    free(v->key);
    free(v);
    v = next;
  }
}

const cf_json_t *cf_json_get(const cf_json_t *obj, const char *key) {
  if (!obj || obj->type != CF_JSON_OBJ) return NULL;
  for (const cf_json_t *c = obj->child; c; c = c->next)
    if (strcmp(c->key, key) == 0) return c;
  return NULL;
}

const cf_json_t *cf_json_at(const cf_json_t *arr, size_t i) {
  if (!arr || arr->type != CF_JSON_ARR) return NULL;
  const cf_json_t *c = arr->child;
  while (c && i--) c = c->next;
  return c;
}

const char *cf_json_type_name(cf_json_type_t t) {
  static const char *const n[] = {"null", "boolean", "number", "string", "array", "object"};
  return (unsigned)t < 6 ? n[t] : "?";
}

static const cf_json_t *cf__member(const cf_json_t *obj, const char *key, cf_json_type_t want,
                                   int *rc) {
  const cf_json_t *v = cf_json_get(obj, key);
  if (!v || v->type == CF_JSON_NULL) { *rc = CF_ENOTFOUND; cf_seterr(CF_ENOTFOUND, "key '%s' is missing", key); return NULL; }
  if (v->type != want) {
    *rc = cf_seterr(CF_EFORMAT, "key '%s': expected %s, found %s", key, cf_json_type_name(want),
                    cf_json_type_name(v->type));
    return NULL;
  }
  *rc = 0;
  return v;
}

int cf_json_get_i64(const cf_json_t *obj, const char *key, int64_t *out) {
  int rc;
  const cf_json_t *v = cf__member(obj, key, CF_JSON_NUM, &rc);
  if (!v) return rc;
  if (!v->is_int) {
    /* 1.0e3-style integers are accepted when exact. */
    if (isfinite(v->num) && v->num == floor(v->num) && fabs(v->num) < 9.0e15) { *out = (int64_t)v->num; return 0; }
    return cf_seterr(CF_EFORMAT, "key '%s': expected integer, found %g", key, v->num);
  }
  *out = v->i64;
  return 0;
}

int cf_json_get_f64(const cf_json_t *obj, const char *key, double *out) {
  int rc;
  const cf_json_t *v = cf__member(obj, key, CF_JSON_NUM, &rc);
  if (!v) return rc;
  *out = v->num;
  return 0;
}

int cf_json_get_bool(const cf_json_t *obj, const char *key, int *out) {
  int rc;
  const cf_json_t *v = cf__member(obj, key, CF_JSON_BOOL, &rc);
  if (!v) return rc;
  *out = v->boolean;
  return 0;
}

int cf_json_get_str(const cf_json_t *obj, const char *key, const char **out) {
  int rc;
  const cf_json_t *v = cf__member(obj, key, CF_JSON_STR, &rc);
  if (!v) return rc;
  *out = v->str;
  return 0;
}

size_t cf_json_escape(char *buf, size_t cap, const char *s) {
  size_t n = 0;
#define CF__PUT(ch) do { if (n + 1 < cap) buf[n] = (ch); n++; } while (0)
  CF__PUT('"');
  for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
    if (*q == '"' || *q == '\\') { CF__PUT('\\'); CF__PUT((char)*q); }
    else if (*q < 0x20) {
      char t[8];
      snprintf(t, sizeof t, "\\u%04x", *q);
      for (int i = 0; t[i]; i++) CF__PUT(t[i]);
    } else CF__PUT((char)*q);
  }
  CF__PUT('"');
#undef CF__PUT
  if (cap) buf[n < cap ? n : cap - 1] = 0;
  return n;
}
