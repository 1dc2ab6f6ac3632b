/* lib/util: error codes, JSON reader. */
#include "cf_test.h"
#include "util/cf_err.h"
#include "util/cf_json.h"

#include <stdlib.h>

CF_TEST(err_names_and_messages) {
  CF_CHECK_STR(cf_err_name(CF_EINVAL), "CF_EINVAL");
  CF_CHECK_STR(cf_strerror(CF_ECORRUPT), "data failed its checksum");
  CF_CHECK_STR(cf_strerror(12345), "unknown error");
  CF_CHECK_LT(CF_EINTERNAL, 0);
  CF_CHECK_EQ(cf_seterr(CF_EIO, "disk %d", 3), CF_EIO);
  CF_CHECK_STR(cf_errmsg(), "disk 3");
  cf_err_prefix(CF_EIO, "file.bin: ");
  CF_CHECK_STR(cf_errmsg(), "file.bin: disk 3");
}

CF_TEST(json_parses_nested_values) {
  const char *t = "{\"a\": [1, 2.5, -3e2, true, null, \"x\\u00e9\\n\"], \"b\": {\"c\": 9007199254740993}}";
  cf_json_t *v;
  CF_CHECK_OK(cf_json_parse(t, strlen(t), &v));
  const cf_json_t *a = cf_json_get(v, "a");
  CF_CHECK(a && a->type == CF_JSON_ARR && a->len == 6);
  CF_CHECK(cf_json_at(a, 0)->is_int && cf_json_at(a, 0)->i64 == 1);
  CF_CHECK(!cf_json_at(a, 1)->is_int);
  CF_CHECK_NEAR(cf_json_at(a, 2)->num, -300.0, 0);
  CF_CHECK_STR(cf_json_at(a, 5)->str, "x\xc3\xa9\n");
  int64_t c;
  CF_CHECK_OK(cf_json_get_i64(cf_json_get(v, "b"), "c", &c));
  CF_CHECK(c == 9007199254740993LL); /* exact beyond 2^53 */
  CF_CHECK_ERR(cf_json_get_i64(v, "a", &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'a': expected number, found array");
  CF_CHECK_ERR(cf_json_get_i64(v, "zz", &c), CF_ENOTFOUND);
  cf_json_free(v);
}

CF_TEST(json_rejects_malformed_with_position) {
  const char *bad[] = {"{", "[1,]", "{\"a\" 1}", "\"\\x\"", "01", "[1] x", "\"\\ud800\"", "", "-", "1e", "{\"a\":tru}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cf_json_t *v = (cf_json_t *)1;
    int rc = cf_json_parse(bad[i], strlen(bad[i]), &v);
    CF_CHECK_MSG(rc == CF_EFORMAT, "input %zu '%s' gave %d", i, bad[i], rc);
    CF_CHECK(v == NULL);
    CF_CHECK_CONTAINS(cf_errmsg(), "JSON line 1 col");
  }
}

CF_TEST(json_depth_is_bounded) {
  char buf[200];
  memset(buf, '[', sizeof buf);
  cf_json_t *v;
  CF_CHECK_ERR(cf_json_parse(buf, sizeof buf, &v), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "nesting deeper than 64");
}

CF_TEST(json_escape_roundtrips) {
  char buf[64];
  const char *s = "a\"b\\c\n";
  size_t n = cf_json_escape(buf, sizeof buf, s);
  CF_CHECK_EQ(n, strlen(buf));
  cf_json_t *v;
  CF_CHECK_OK(cf_json_parse(buf, n, &v));
  CF_CHECK_STR(v->str, s);
  cf_json_free(v);
}
