/* cf_tls (daemon/cf_tls.c): which tcp_listen addresses count as loopback (plaintext TCP is
 * allowed there without tcp_insecure), and the cross-key checks that need no files. The files
 * themselves (parse, key match, expiry) are checked against openssl-made certificates in
 * tests/integration/daemon_tls.sh. */
#include <string.h>

#include "cf_test.h"
#include "cf_tls.h" /* linked from libcfdaemon */

CF_TEST(tls_loopback_addresses) {
  static const char *const lo[] = {"127.0.0.1:7000", "127.1.2.3:1", "localhost:7000", "[::1]:7000",
                                   "[::ffff:127.0.0.1]:7000"};
  static const char *const not_lo[] = {"0.0.0.0:7000", "[::]:7000", "10.0.0.5:7000", "128.0.0.1:7000",
                                       "localhost.example.com:7000", "my-host:7000", "[::2]:7000", "126.255.255.255:1"};
  for (size_t i = 0; i < sizeof lo / sizeof lo[0]; i++) CF_CHECK_MSG(cf_tls_addr_is_loopback(lo[i]), "%s", lo[i]);
  for (size_t i = 0; i < sizeof not_lo / sizeof not_lo[0]; i++)
    CF_CHECK_MSG(!cf_tls_addr_is_loopback(not_lo[i]), "%s", not_lo[i]);
}

static int nlines;
static char last[1024];
static void collect(const char *line) { nlines++; snprintf(last, sizeof last, "%s", line); }

CF_TEST(tls_check_config_cross_keys) {
  cf_config_t c;
  cf_config_defaults(&c);
  nlines = 0;
  CF_CHECK(cf_tls_check_config(&c, collect) == 0); /* no TCP: nothing to say */
  CF_CHECK(cf_config_set(&c, "tcp_listen", "0.0.0.0:7000") == 0);
  CF_CHECK(cf_tls_check_config(&c, collect) == 1 && strstr(last, "not a loopback address and TLS is off"));
  CF_CHECK(cf_config_set(&c, "tcp_insecure", "yes") == 0);
  CF_CHECK(cf_tls_check_config(&c, collect) == 0);
  CF_CHECK(cf_config_set(&c, "tcp_insecure", "maybe") != 0); /* yes|no only */
  CF_CHECK(cf_config_set(&c, "tls_cert_file", "relative.pem") != 0); /* absolute paths only */
  CF_CHECK(cf_config_set(&c, "tls_key_file", "/etc/k.pem") == 0);
  CF_CHECK(cf_tls_check_config(&c, collect) == 1 && strstr(last, "key 'tls_key_file': set but 'tls_cert_file' is empty"));
  CF_CHECK(cf_config_set(&c, "tcp_listen", "") == 0);
  CF_CHECK(cf_tls_check_config(&c, collect) == 2 && strstr(last, "key 'tcp_listen': empty, but tls_* keys are set"));
  CF_CHECK(cf_config_set(&c, "tcp_listen", "127.0.0.1:7000") == 0);
  CF_CHECK(cf_config_set(&c, "tls_cert_file", "/nonexistent/cert.pem") == 0);
  nlines = 0;
  CF_CHECK(cf_tls_check_config(&c, collect) == 1 && strstr(last, "key 'tls_cert_file': cannot open /nonexistent/cert.pem"));
  CF_CHECK(!cf_tls_enabled(&(cf_config_t){0}) && cf_tls_enabled(&c));
}
