/* cf_err — CacheFlow's error codes.
 *
 * Every fallible function returns 0 (CF_OK) or a negative CF_E* code from the one list
 * below (libuv style). The code says what kind of failure; the thread-local detail string
 * set with cf_seterr() says exactly what was wrong ("config.json: key 'hidden_size':
 * expected integer, found string"). Callers print both: "%s: %s", cf_strerror(rc), cf_errmsg().
 */
#ifndef CF_ERR_H
#define CF_ERR_H

#include <stdarg.h>

#define CF_ERRNO_MAP(XX)                                                      \
  XX(EINVAL, "invalid argument")                                              \
  XX(ENOMEM, "out of memory")                                                 \
  XX(EIO, "i/o error")                                                        \
  XX(ENOENT, "no such file or directory")                                     \
  XX(EACCES, "permission denied")                                             \
  XX(EFORMAT, "malformed input")                                              \
  XX(ESHAPE, "tensor shape mismatch")                                         \
  XX(EDTYPE, "unsupported or mismatched dtype")                               \
  XX(EUNSUPPORTED, "unsupported model or feature")                            \
  XX(ERANGE, "value out of range")                                            \
  XX(ECORRUPT, "data failed its checksum")                                    \
  XX(ENOSPC, "no space left")                                                 \
  XX(EEXIST, "already exists")                                                \
  XX(ENOTFOUND, "not found")                                                  \
  XX(EBUSY, "resource busy")                                                  \
  XX(EAGAIN, "try again")                                                     \
  XX(ECANCELED, "operation canceled")                                         \
  XX(ETIMEDOUT, "timed out")                                                  \
  XX(EMISMATCH, "made for another model, dtype or chunk size")                \
  XX(ENODEV, "no usable device")                                              \
  XX(ECUDA, "CUDA error")                                                     \
  XX(EPROTO, "protocol error")                                                \
  XX(ESHUTDOWN, "shutting down")                                              \
  XX(EINTERNAL, "internal error")

typedef enum {
  CF_OK = 0,
#define CF__ERR_ENUM(name, msg) CF_##name,
  CF__ERR_FIRST = -1000,
  CF_ERRNO_MAP(CF__ERR_ENUM)
#undef CF__ERR_ENUM
  CF__ERR_END
} cf_errno_t;

/* Static description of code `err` ("invalid argument"); "unknown error" for anything else. */
const char *cf_strerror(int err);
/* Static name of code `err` ("CF_EINVAL"). */
const char *cf_err_name(int err);

/* Record a detail message for the calling thread and return `err` unchanged, so a failing
 * function can write `return cf_seterr(CF_EFORMAT, "%s: bad magic", path);`. */
int cf_seterr(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cf_vseterr(int err, const char *fmt, va_list ap);
/* Prefix the current detail with more context: "model.safetensors: " + old detail. */
int cf_err_prefix(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The calling thread's last detail message ("" when none). Valid until the next cf_seterr. */
const char *cf_errmsg(void);
/* Clear the calling thread's detail message. */
void cf_errclear(void);

/* Map a negative errno-style value (-errno) to the nearest CF_E* code. */
int cf_err_from_errno(int e);

#endif
