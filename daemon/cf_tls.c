/* cf_tls — read and check the TCP listener's PEM files (see cf_tls.h). */
#include "cf_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/cf_err.h"
#include "util/cf_log.h"

#define CF__PEM_MAX (4 << 20) /* a certificate bundle is kilobytes; refuse to slurp a wrong huge file */

/* The whole file as a NUL-terminated string. */
static int cf__slurp(const char *key, const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return cf_seterr(CF_EIO, "key '%s': cannot open %s: %s", key, path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > CF__PEM_MAX) {
    fclose(f);
    return cf_seterr(CF_EINVAL, "key '%s': %s is not a regular file of at most %d bytes", key, path, CF__PEM_MAX);
  }
  char *buf = malloc((size_t)st.st_size + 1);
  if (!buf) { fclose(f); return cf_seterr(CF_ENOMEM, "key '%s': %s", key, path); }
  size_t n = fread(buf, 1, (size_t)st.st_size, f);
  int err = ferror(f);
  fclose(f);
  if (err) { free(buf); return cf_seterr(CF_EIO, "key '%s': cannot read %s", key, path); }
  buf[n] = 0;
  *out = buf;
  return 0;
}

/* OpenSSL's last error as text (or `dflt`). */
static const char *cf__ossl(char *buf, size_t cap, const char *dflt) {
  unsigned long e = ERR_peek_last_error();
  if (e) ERR_error_string_n(e, buf, cap);
  else snprintf(buf, cap, "%s", dflt);
  ERR_clear_error();
  return buf;
}

/* Never prompt for a passphrase (a daemon has no terminal): an encrypted key fails to load. */
static int cf__no_pass(char *buf, int size, int rw, void *u) { (void)buf; (void)size; (void)rw; (void)u; return -1; }

static void cf__describe(X509 *x, char *out, size_t cap) {
  char subj[256] = "?", serial[80] = "?", fp[3 * EVP_MAX_MD_SIZE + 1] = "", na[64] = "?";
  X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof subj);
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  if (bn) {
    char *h = BN_bn2hex(bn);
    if (h) { snprintf(serial, sizeof serial, "%s", h); OPENSSL_free(h); }
    BN_free(bn);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(x, EVP_sha256(), md, &n))
    for (unsigned i = 0; i < n; i++) snprintf(fp + 3 * i, sizeof fp - 3 * i, "%02X%s", md[i], i + 1 < n ? ":" : "");
  BIO *b = BIO_new(BIO_s_mem());
  if (b && ASN1_TIME_print(b, X509_get0_notAfter(x))) {
    int k = BIO_read(b, na, sizeof na - 1);
    na[k > 0 ? k : 0] = 0;
  }
  BIO_free(b);
  snprintf(out, cap, "subject=%s serial=%s sha256=%s not_after=%s", subj, serial, fp, na);
}

int cf_tls_enabled(const cf_config_t *c) { return c->tls_cert_file[0] != 0; }

int cf_tls_load(const cf_config_t *c, cf_tls_pem_t *out) {
  memset(out, 0, sizeof *out);
  char why[256];
  X509 *cert = NULL;
  EVP_PKEY *key = NULL;
  BIO *b = NULL;
  int rc = cf__slurp("tls_cert_file", c->tls_cert_file, &out->cert);
  if (!rc) rc = cf__slurp("tls_key_file", c->tls_key_file, &out->key);
  if (!rc && c->tls_client_ca_file[0]) rc = cf__slurp("tls_client_ca_file", c->tls_client_ca_file, &out->ca);
  if (rc) goto fail;
  ERR_clear_error();
  b = BIO_new_mem_buf(out->cert, -1);
  cert = b ? PEM_read_bio_X509(b, NULL, cf__no_pass, NULL) : NULL;
  BIO_free(b);
  if (!cert) {
    rc = cf_seterr(CF_EINVAL, "key 'tls_cert_file': %s holds no PEM certificate (%s)", c->tls_cert_file,
                   cf__ossl(why, sizeof why, "no BEGIN CERTIFICATE block"));
    goto fail;
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
    cf__describe(cert, out->desc, sizeof out->desc);
    rc = cf_seterr(CF_EINVAL, "key 'tls_cert_file': the certificate in %s has expired (%s): every client would refuse it",
                   c->tls_cert_file, out->desc);
    goto fail;
  }
  b = BIO_new_mem_buf(out->key, -1);
  key = b ? PEM_read_bio_PrivateKey(b, NULL, cf__no_pass, NULL) : NULL;
  BIO_free(b);
  if (!key) {
    rc = cf_seterr(CF_EINVAL, "key 'tls_key_file': %s holds no unencrypted PEM private key (%s)", c->tls_key_file,
                   cf__ossl(why, sizeof why, "no BEGIN PRIVATE KEY block"));
    goto fail;
  }
  if (X509_check_private_key(cert, key) != 1) {
    ERR_clear_error();
    rc = cf_seterr(CF_EINVAL, "key 'tls_key_file': the key in %s does not match the certificate in %s", c->tls_key_file,
                   c->tls_cert_file);
    goto fail;
  }
  if (out->ca) { /* at least one certificate, and every block parses */
    b = BIO_new_mem_buf(out->ca, -1);
    STACK_OF(X509_INFO) *inf = b ? PEM_X509_INFO_read_bio(b, NULL, cf__no_pass, NULL) : NULL;
    BIO_free(b);
    int n = 0;
    for (int i = 0; inf && i < sk_X509_INFO_num(inf); i++) n += sk_X509_INFO_value(inf, i)->x509 != NULL;
    sk_X509_INFO_pop_free(inf, X509_INFO_free);
    if (!n) {
      rc = cf_seterr(CF_EINVAL, "key 'tls_client_ca_file': %s holds no PEM CA certificate (%s)", c->tls_client_ca_file,
                     cf__ossl(why, sizeof why, "no BEGIN CERTIFICATE block"));
      goto fail;
    }
  }
  struct stat st; /* the key file readable by anyone: say so, it is the server's identity */
  if (stat(c->tls_key_file, &st) == 0 && (st.st_mode & 0077))
    CF_WARN("tls: %s is readable by group or others (mode %03o): chmod 600 it", c->tls_key_file, st.st_mode & 0777);
  cf__describe(cert, out->desc, sizeof out->desc);
  X509_free(cert);
  EVP_PKEY_free(key);
  return 0;
fail:
  X509_free(cert);
  EVP_PKEY_free(key);
  ERR_clear_error();
  cf_tls_free(out);
  return rc;
}

void cf_tls_free(cf_tls_pem_t *p) {
  if (p->key) OPENSSL_cleanse(p->key, strlen(p->key));
  free(p->cert);
  free(p->key);
  free(p->ca);
  p->cert = p->key = p->ca = NULL;
}

int cf_tls_addr_is_loopback(const char *hostport) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  size_t n = colon ? (size_t)(colon - hostport) : strlen(hostport);
  if (n >= sizeof host) return 0;
  memcpy(host, hostport, n);
  host[n] = 0;
  if (host[0] == '[' && n >= 2 && host[n - 1] == ']') { /* [v6]:port */
    memmove(host, host + 1, n - 2);
    host[n - 2] = 0;
  }
  if (!strcmp(host, "localhost")) return 1;
  unsigned char a[16];
  if (inet_pton(AF_INET, host, a) == 1) return a[0] == 127;
  if (inet_pton(AF_INET6, host, a) == 1) {
    static const unsigned char lo[16] = {[15] = 1}, v4map[12] = {[10] = 0xff, [11] = 0xff};
    return !memcmp(a, lo, 16) || (!memcmp(a, v4map, 12) && a[12] == 127);
  }
  return 0; /* 0.0.0.0, [::], a public address, or a name we do not resolve */
}

int cf_tls_check_config(const cf_config_t *c, void (*report)(const char *line)) {
  char msg[1024];
  int nbad = 0;
#define CF__BAD(...) do { snprintf(msg, sizeof msg, __VA_ARGS__); report(msg); nbad++; } while (0)
  int cert = c->tls_cert_file[0] != 0, key = c->tls_key_file[0] != 0, ca = c->tls_client_ca_file[0] != 0;
  if (cert != key)
    CF__BAD("key '%s': set but '%s' is empty: TLS needs both the certificate and its key", cert ? "tls_cert_file" : "tls_key_file",
            cert ? "tls_key_file" : "tls_cert_file");
  if (ca && !cert) CF__BAD("key 'tls_client_ca_file': mutual TLS needs tls_cert_file and tls_key_file too");
  if ((cert || key || ca) && !c->tcp_listen[0])
    CF__BAD("key 'tcp_listen': empty, but tls_* keys are set: TLS applies to the TCP listener only "
            "(the unix socket is guarded by its file mode)");
  if (c->tcp_listen[0] && !cert && !c->tcp_insecure && !cf_tls_addr_is_loopback(c->tcp_listen))
    CF__BAD("key 'tcp_listen': %s is not a loopback address and TLS is off: anyone who reaches the port could drive "
            "the daemon; set tls_cert_file/tls_key_file (and tls_client_ca_file for client certificates), or "
            "tcp_insecure = yes on a network you trust", c->tcp_listen);
  if (cert && key && nbad == 0) {
    cf_tls_pem_t p;
    if (cf_tls_load(c, &p)) CF__BAD("%s", cf_errmsg());
    else cf_tls_free(&p);
  }
#undef CF__BAD
  return nbad;
}
