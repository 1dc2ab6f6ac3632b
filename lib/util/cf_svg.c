/* cf_svg — see cf_svg.h. */
#include "util/cf_svg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

static void cf__grow(cf_svg_t *s, size_t more) {
  if (s->err || s->len + more + 1 <= s->cap) return;
  size_t cap = s->cap ? s->cap : 4096;
  while (cap < s->len + more + 1) cap *= 2;
  char *b = realloc(s->buf, cap);
  if (!b) { s->err = CF_ENOMEM; return; }
  s->buf = b;
  s->cap = cap;
}

static void cf__put(cf_svg_t *s, const char *str, size_t n) {
  cf__grow(s, n);
  if (s->err) return;
  memcpy(s->buf + s->len, str, n);
  s->len += n;
  s->buf[s->len] = 0;
}

static void cf__vputf(cf_svg_t *s, const char *fmt, va_list ap) {
  char tmp[512];
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap2);
  va_end(ap2);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) { cf__put(s, tmp, (size_t)n); return; }
  cf__grow(s, (size_t)n);
  if (s->err) return;
  vsnprintf(s->buf + s->len, (size_t)n + 1, fmt, ap);
  s->len += (size_t)n;
}

static void cf__putf(cf_svg_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cf__putf(cf_svg_t *s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cf__vputf(s, fmt, ap);
  va_end(ap);
}

/* The entity of byte c, or NULL when it is written as is; "" when it is dropped. */
static const char *cf__entity(unsigned char c) {
  switch (c) {
  case '&': return "&amp;";
  case '<': return "&lt;";
  case '>': return "&gt;";
  case '"': return "&quot;";
  case '\'': return "&apos;";
  case '\t': case '\n': return NULL;
  default: return c < 0x20 || c == 0x7f ? "" : NULL; /* not allowed in XML 1.0 */
  }
}

/* Bytes of the well-formed UTF-8 character XML 1.0 allows at p (2..4; 0: not one). Text from
 * input (a model's path, a daemon's error) may be Latin-1 or cut mid-character by a caller's
 * snprintf: such bytes would make the whole file ill-formed, so they are written as U+FFFD. */
static size_t cf__utf8_len(const unsigned char *p) {
  unsigned char c = p[0];
  size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  for (size_t k = 1; k < n; k++)
    if ((p[k] & 0xc0) != 0x80) return 0;
  if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
      (c == 0xf4 && p[1] > 0x8f))
    return 0; /* overlong, a surrogate, past U+10FFFF */
  if (c == 0xef && p[1] == 0xbf && p[2] >= 0xbe) return 0; /* U+FFFE, U+FFFF */
  return n;
}
static const char cf__fffd[] = "\xef\xbf\xbd";

/* The escaped form of the character at *src: sets *out (NULL: the bytes as they are) and
 * returns how many bytes of src it covers; *m is the length written. */
static size_t cf__esc_next(const char *src, const char **out, size_t *m) {
  unsigned char c = (unsigned char)*src;
  if (c < 0x80) {
    *out = cf__entity(c);
    *m = *out ? strlen(*out) : 1;
    return 1;
  }
  size_t n = cf__utf8_len((const unsigned char *)src);
  if (!n) { *out = cf__fffd; *m = 3; return 1; }
  *out = NULL;
  *m = n;
  return n;
}

size_t cf_svg_escape(char *dst, size_t cap, const char *src) {
  size_t n = 0;
  if (!cap) return 0;
  while (src && *src) {
    const char *e;
    size_t m, used = cf__esc_next(src, &e, &m);
    if (n + m + 1 > cap) break; /* whole characters only */
    memcpy(dst + n, e ? e : src, m);
    n += m;
    src += used;
  }
  dst[n] = 0;
  return n;
}

static void cf__put_esc(cf_svg_t *s, const char *src) {
  while (src && *src) {
    const char *e;
    size_t m, used = cf__esc_next(src, &e, &m);
    cf__put(s, e ? e : src, m);
    src += used;
  }
}

/* A number SVG can read. */
static double cf__num(double v) { return isfinite(v) ? v : 0; }

void cf_svg_begin(cf_svg_t *s, double w, double h, const char *title) {
  memset(s, 0, sizeof *s);
  cf__putf(s, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
              "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%.6g\" height=\"%.6g\" "
              "viewBox=\"0 0 %.6g %.6g\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n",
           cf__num(w), cf__num(h), cf__num(w), cf__num(h));
  cf__put(s, "<title>", 7);
  cf__put_esc(s, title);
  cf__put(s, "</title>\n", 9);
  cf__putf(s, "<rect x=\"0\" y=\"0\" width=\"%.6g\" height=\"%.6g\" fill=\"#ffffff\"/>\n", cf__num(w), cf__num(h));
}

void cf_svg_group(cf_svg_t *s, const char *cls) {
  cf__put(s, "<g", 2);
  if (cls) { cf__put(s, " class=\"", 8); cf__put_esc(s, cls); cf__put(s, "\"", 1); }
  cf__put(s, ">\n", 2);
  s->depth++;
}

void cf_svg_group_end(cf_svg_t *s) {
  if (s->depth <= 0) return;
  cf__put(s, "</g>\n", 5);
  s->depth--;
}

void cf_svg_end(cf_svg_t *s) {
  while (s->depth > 0) cf_svg_group_end(s);
  cf__put(s, "</svg>\n", 7);
}

void cf_svg_free(cf_svg_t *s) {
  free(s->buf);
  memset(s, 0, sizeof *s);
}

int cf_svg_save(const cf_svg_t *s, const char *path) {
  if (s->err) return cf_seterr(s->err, "svg %s: out of memory while drawing", path);
  FILE *f = fopen(path, "w");
  if (!f) return cf_seterr(CF_EIO, "svg %s: cannot open for writing", path);
  size_t w = s->len ? fwrite(s->buf, 1, s->len, f) : 0;
  if (fclose(f) != 0 || w != s->len) return cf_seterr(CF_EIO, "svg %s: write failed", path);
  return 0;
}

static void cf__attr(cf_svg_t *s, const char *name, const char *v) {
  if (!v) return;
  cf__putf(s, " %s=\"", name);
  cf__put_esc(s, v);
  cf__put(s, "\"", 1);
}

void cf_svg_rect(cf_svg_t *s, double x, double y, double w, double h, const char *fill,
                 const char *stroke, const char *cls, const char *title, const char *data) {
  cf__putf(s, "<rect x=\"%.6g\" y=\"%.6g\" width=\"%.6g\" height=\"%.6g\"", cf__num(x), cf__num(y),
           cf__num(w > 0 ? w : 0), cf__num(h > 0 ? h : 0));
  cf__attr(s, "fill", fill ? fill : "none");
  cf__attr(s, "stroke", stroke);
  if (stroke) cf__put(s, " stroke-width=\"0.5\"", 19);
  cf__attr(s, "class", cls);
  if (data) cf__put(s, data, strlen(data)); /* formed (and escaped) by cf_svg_attr */
  if (!title) { cf__put(s, "/>\n", 3); return; }
  cf__put(s, "><title>", 8);
  cf__put_esc(s, title);
  cf__put(s, "</title></rect>\n", 16);
}

void cf_svg_line(cf_svg_t *s, double x1, double y1, double x2, double y2, const char *stroke,
                 double width, const char *dash, const char *cls) {
  cf__putf(s, "<line x1=\"%.6g\" y1=\"%.6g\" x2=\"%.6g\" y2=\"%.6g\" stroke-width=\"%.6g\"", cf__num(x1),
           cf__num(y1), cf__num(x2), cf__num(y2), cf__num(width));
  cf__attr(s, "stroke", stroke ? stroke : "#000000");
  cf__attr(s, "stroke-dasharray", dash);
  cf__attr(s, "class", cls);
  cf__put(s, "/>\n", 3);
}

void cf_svg_text(cf_svg_t *s, double x, double y, double size, const char *anchor,
                 const char *fill, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  cf__putf(s, "<text x=\"%.6g\" y=\"%.6g\" font-size=\"%.6g\"", cf__num(x), cf__num(y), cf__num(size));
  cf__attr(s, "text-anchor", anchor);
  cf__attr(s, "fill", fill ? fill : "#000000");
  cf__put(s, ">", 1);
  cf__put_esc(s, tmp);
  cf__put(s, "</text>\n", 8);
}

void cf_svg_attr(char *buf, size_t cap, const char *name, const char *fmt, ...) {
  char val[256], esc[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(val, sizeof val, fmt, ap);
  va_end(ap);
  cf_svg_escape(esc, sizeof esc, val);
  size_t n = strnlen(buf, cap), need = strlen(name) + strlen(esc) + 4;
  if (n + need < cap) snprintf(buf + n, cap - n, " %s=\"%s\"", name, esc); /* whole or not at all */
}
