/* cf_tls — the TCP listener's certificates: read the PEM files named by tls_cert_file,
 * tls_key_file and tls_client_ca_file, check them with OpenSSL (each parses, the key matches the
 * certificate, the certificate has not expired) so a bad file is refused with a message naming
 * it — at start-up, by --check-config and on SIGHUP (the running certificates are then kept) —
 * instead of surfacing as gRPC's "cannot bind" or as handshakes that fail for every client.
 * Also the start-up rule of issue 16: a TCP listener on a non-loopback address without TLS is
 * refused unless tcp_insecure = yes.
 *
 * cf_rpc (the only module that includes gRPC) hands the PEM strings to gRPC core; this module
 * includes only OpenSSL's libcrypto. */
#ifndef CF_TLS_H
#define CF_TLS_H

#include <stddef.h>

#include "cf_config.h"

typedef struct {
  char *cert;   /* PEM certificate chain (server first) */
  char *key;    /* PEM private key (cleansed when freed) */
  char *ca;     /* PEM client CA bundle, or NULL (no client certificate asked) */
  char desc[512]; /* "subject=CN=... serial=... sha256=AB:CD... not_after=..." of the certificate */
} cf_tls_pem_t;

/* Read and check the files of `c` (tls_client_ca_file may be empty). Returns 0, or CF_EINVAL /
 * CF_EIO with a detail naming the key and the file. On error *out holds nothing to free. */
int cf_tls_load(const cf_config_t *c, cf_tls_pem_t *out);
void cf_tls_free(cf_tls_pem_t *p);

/* 1 when the TCP listener would use TLS (tls_cert_file set). */
int cf_tls_enabled(const cf_config_t *c);

/* 1 when `hostport` ("127.0.0.1:7000", "[::1]:7000", "localhost:7000") names a loopback host.
 * Host names other than localhost are not resolved and count as non-loopback. */
int cf_tls_addr_is_loopback(const char *hostport);

/* The checks that span several keys, plus reading the files: TLS keys set together, a key
 * without a certificate, TLS without tcp_listen, a non-loopback tcp_listen without TLS unless
 * tcp_insecure = yes. Each problem goes to report() as "key 'k': ..."; returns how many. */
int cf_tls_check_config(const cf_config_t *c, void (*report)(const char *line));

#endif
