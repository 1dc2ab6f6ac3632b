/* cf_svg — a small SVG 1.1 writer: text into a growing buffer, no dependency.
 *
 * Every string that reaches the document (text, titles, class names, colours) is escaped for
 * XML (& < > " ' and control characters other than tab/newline dropped), so names taken from
 * input (a model, a hardware profile, a workload file) cannot break the document. Numbers are
 * written with %.6g (NaN and infinities as 0: SVG has no spelling for them).
 *
 * A write that runs out of memory sets `err` (CF_ENOMEM) and turns the following calls into
 * no-ops; cf_svg_save reports it. Typical use:
 *   cf_svg_t s; cf_svg_begin(&s, 800, 600, "title");
 *   cf_svg_rect(&s, 10, 10, 50, 20, "#1f77b4", NULL, "op", "restore 3: compute", NULL);
 *   cf_svg_end(&s); cf_svg_save(&s, "out.svg"); cf_svg_free(&s);
 */
#ifndef CF_SVG_H
#define CF_SVG_H

#include <stddef.h>

typedef struct {
  char *buf;
  size_t len, cap;
  int err;      /* 0 or CF_ENOMEM (sticky) */
  int depth;    /* open groups */
} cf_svg_t;

/* Start a document of w x h user units (pixels) with a white background and <title>. */
void cf_svg_begin(cf_svg_t *s, double w, double h, const char *title);
/* Close open groups and the document. */
void cf_svg_end(cf_svg_t *s);
void cf_svg_free(cf_svg_t *s);
/* Write the document to `path`. 0, CF_ENOMEM (a write ran out of memory) or CF_EIO naming it. */
int cf_svg_save(const cf_svg_t *s, const char *path);

/* <g class=cls>: NULL cls = none. */
void cf_svg_group(cf_svg_t *s, const char *cls);
void cf_svg_group_end(cf_svg_t *s);
/* A rectangle. fill/stroke NULL: none. cls NULL: no class. title (a tooltip) NULL: none.
 * data: NULL or extra attributes already formed as name="value" pairs by cf_svg_attr. */
void cf_svg_rect(cf_svg_t *s, double x, double y, double w, double h, const char *fill,
                 const char *stroke, const char *cls, const char *title, const char *data);
void cf_svg_line(cf_svg_t *s, double x1, double y1, double x2, double y2, const char *stroke,
                 double width, const char *dash, const char *cls);
/* Text at (x, y) (baseline); anchor "start", "middle" or "end"; printf-style, escaped. */
void cf_svg_text(cf_svg_t *s, double x, double y, double size, const char *anchor,
                 const char *fill, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* Append ` name="value"` (value escaped) to the attribute string buf[0..cap) (NUL-terminated;
 * an attribute that does not fit whole is left out): builds the `data` argument of cf_svg_rect. */
void cf_svg_attr(char *buf, size_t cap, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Escape src for XML text or attribute values into dst[0..cap) (NUL-terminated, truncated at a
 * whole entity). Returns the length written. */
size_t cf_svg_escape(char *dst, size_t cap, const char *src);

#endif
