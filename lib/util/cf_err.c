#include "util/cf_err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char cf__errbuf[1024];

const char *cf_strerror(int err) {
  switch (err) {
  case CF_OK: return "success";
#define CF__ERR_STR(name, msg) case CF_##name: return msg;
  CF_ERRNO_MAP(CF__ERR_STR)
#undef CF__ERR_STR
  default: return "unknown error";
  }
}

const char *cf_err_name(int err) {
  switch (err) {
  case CF_OK: return "CF_OK";
#define CF__ERR_NAME(name, msg) case CF_##name: return "CF_" #name;
  CF_ERRNO_MAP(CF__ERR_NAME)
#undef CF__ERR_NAME
  default: return "CF_EUNKNOWN";
  }
}

int cf_vseterr(int err, const char *fmt, va_list ap) {
  vsnprintf(cf__errbuf, sizeof cf__errbuf, fmt, ap);
  return err;
}

int cf_seterr(int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cf_vseterr(err, fmt, ap);
  va_end(ap);
  return err;
}

int cf_err_prefix(int err, const char *fmt, ...) {
  char old[sizeof cf__errbuf];
  memcpy(old, cf__errbuf, sizeof old);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(cf__errbuf, sizeof cf__errbuf, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < sizeof cf__errbuf)
    snprintf(cf__errbuf + n, sizeof cf__errbuf - (size_t)n, "%s", old);
  return err;
}

const char *cf_errmsg(void) { return cf__errbuf; }

void cf_errclear(void) { cf__errbuf[0] = 0; }

int cf_err_from_errno(int e) {
  if (e < 0) e = -e;
  switch (e) {
  case 0: return CF_OK;
  case ENOENT: return CF_ENOENT;
  case EACCES: case EPERM: case EROFS: return CF_EACCES;
  case ENOMEM: return CF_ENOMEM;
  case ENOSPC: case EDQUOT: case EFBIG: return CF_ENOSPC;
  case EEXIST: return CF_EEXIST;
  case EINVAL: return CF_EINVAL;
  case EBUSY: return CF_EBUSY;
  case EAGAIN: return CF_EAGAIN;
  case ECANCELED: return CF_ECANCELED;
  case ETIMEDOUT: return CF_ETIMEDOUT;
  case ERANGE: case EOVERFLOW: return CF_ERANGE;
  default: return CF_EIO;
  }
}
