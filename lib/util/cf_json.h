/* cf_json — a small, strict JSON reader (RFC 8259) for config.json, safetensors headers,
 * hardware profiles and workload lines. Untrusted input is expected: depth and size are
 * bounded, every error names line:column and what was expected, nothing is read past `len`.
 *
 * The tree is immutable after parsing and owned by the caller: free it with cf_json_free().
 */
#ifndef CF_JSON_H
#define CF_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  CF_JSON_NULL,
  CF_JSON_BOOL,
  CF_JSON_NUM,
  CF_JSON_STR,
  CF_JSON_ARR,
  CF_JSON_OBJ
} cf_json_type_t;

typedef struct cf_json_s cf_json_t;
struct cf_json_s {
  cf_json_type_t type;
  int boolean;       /* CF_JSON_BOOL */
  double num;        /* CF_JSON_NUM */
  int is_int;        /* CF_JSON_NUM written without fraction/exponent and fits int64 */
  int64_t i64;       /* exact value when is_int */
  char *str;         /* CF_JSON_STR: NUL-terminated UTF-8 (may contain \0 escapes: see len) */
  size_t len;        /* string bytes, or number of children for ARR/OBJ */
  char *key;         /* set when this value is a member of an object */
  cf_json_t *child;  /* first element/member */
  cf_json_t *next;   /* next sibling */
};

#define CF_JSON_MAX_DEPTH 64

/* Parse exactly one JSON value (surrounding whitespace allowed) from text[0..len).
 * Returns 0 and *out, or CF_EFORMAT with a detail "line L col C: expected ..." (or CF_ENOMEM). */
int cf_json_parse(const char *text, size_t len, cf_json_t **out);
void cf_json_free(cf_json_t *v);

/* Object member by key (first match) or NULL; NULL-safe on `obj`. */
const cf_json_t *cf_json_get(const cf_json_t *obj, const char *key);
/* Array element i or NULL. */
const cf_json_t *cf_json_at(const cf_json_t *arr, size_t i);
const char *cf_json_type_name(cf_json_type_t t);

/* Typed getters for required/optional members. Each returns 0, CF_ENOTFOUND when the key is
 * absent (or null), or CF_EFORMAT when it has the wrong type (detail names key and types). */
int cf_json_get_i64(const cf_json_t *obj, const char *key, int64_t *out);
int cf_json_get_f64(const cf_json_t *obj, const char *key, double *out);
int cf_json_get_bool(const cf_json_t *obj, const char *key, int *out);
int cf_json_get_str(const cf_json_t *obj, const char *key, const char **out);

/* Write `s` as a JSON string literal (with quotes) into buf; returns the length it needs. */
size_t cf_json_escape(char *buf, size_t cap, const char *s);

#endif
