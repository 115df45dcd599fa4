/* outboxd apply's pure parts (src/apply.h): the column mapping, payload
 * paths, value conversion and type mismatches, array literals, the
 * newest-version-per-key rule, timestamps and config validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "apply.h"
#include "apply_int.h"
#include "pg.h"
#include "config.h"

static void test_parse_columns(void **state)
{
    (void)state;
    obx_apply_map_t *m;
    size_t n;
    char err[256];
    assert_int_equal(obx_apply_parse_columns(" display_name:displayName, city : address.city? ,tag:tags.0", &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3);
    assert_string_equal(m[0].column, "display_name");
    assert_string_equal(m[0].path, "displayName");
    assert_false(m[0].optional);
    assert_string_equal(m[1].column, "city");
    assert_string_equal(m[1].path, "address.city");
    assert_true(m[1].optional);
    assert_string_equal(m[2].path, "tags.0");
    obx_apply_maps_free(m, n);

    assert_int_equal(obx_apply_parse_columns("", &m, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 0);
    obx_apply_maps_free(m, n);

    const char *bad[] = {"status", "a:", ":b", "a:.b", "a:b.", "a:b..c", "a:x, a:y"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(obx_apply_parse_columns(bad[i], &m, &n, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "apply.columns"));
    }
}

static void test_json_path(void **state)
{
    (void)state;
    cJSON *root = cJSON_Parse("{\"a\":{\"b\":{\"c\":7}},\"tags\":[\"x\",\"y\"],\"n\":null,\"Case\":1}");
    assert_non_null(root);
    assert_int_equal(obx_apply_json_path(root, "a.b.c")->valueint, 7);
    assert_string_equal(obx_apply_json_path(root, "tags.1")->valuestring, "y");
    assert_true(cJSON_IsNull(obx_apply_json_path(root, "n")));
    assert_null(obx_apply_json_path(root, "a.x"));
    assert_null(obx_apply_json_path(root, "tags.2"));
    assert_null(obx_apply_json_path(root, "tags.y"));
    assert_null(obx_apply_json_path(root, "a.b.c.d"));
    assert_null(obx_apply_json_path(root, "case")); /* members are case-sensitive */
    cJSON_Delete(root);
}

static void test_col_kind(void **state)
{
    (void)state;
    assert_int_equal(obx_apply_col_kind("bool", 'B'), OBX_COL_BOOL);
    assert_int_equal(obx_apply_col_kind("int8", 'N'), OBX_COL_INT);
    assert_int_equal(obx_apply_col_kind("int2", 'N'), OBX_COL_INT);
    assert_int_equal(obx_apply_col_kind("float8", 'N'), OBX_COL_FLOAT);
    assert_int_equal(obx_apply_col_kind("numeric", 'N'), OBX_COL_NUMERIC);
    assert_int_equal(obx_apply_col_kind("jsonb", 'U'), OBX_COL_JSON);
    assert_int_equal(obx_apply_col_kind("text", 'S'), OBX_COL_TEXT);
    assert_int_equal(obx_apply_col_kind("timestamptz", 'D'), OBX_COL_TEXT);
    assert_int_equal(obx_apply_col_kind("my_enum", 'E'), OBX_COL_TEXT);
}

/* Converts the JSON text v for a column kind; NULL want = expect a mismatch. */
static void conv(const char *json, obx_col_kind_t kind, const char *want, const char *err_needle)
{
    cJSON *v = cJSON_Parse(json);
    assert_non_null(v);
    char *out = (char *)0x1, err[256] = "";
    int rc = obx_apply_json_to_text(v, kind, &out, err, sizeof(err));
    if (err_needle) {
        if (rc != -1) fail_msg("%s as kind %d: expected an error containing \"%s\", got \"%s\"", json, kind, err_needle, out);
        assert_non_null(strstr(err, err_needle));
    } else {
        if (rc != 0) fail_msg("%s as kind %d: %s", json, kind, err);
        if (!want) assert_null(out);
        else assert_string_equal(out, want);
        free(out);
    }
    cJSON_Delete(v);
}

static void test_json_to_text(void **state)
{
    (void)state;
    conv("\"Zoë \\\"q\\\"\"", OBX_COL_TEXT, "Zoë \"q\"", NULL);
    conv("null", OBX_COL_TEXT, NULL, NULL);
    conv("null", OBX_COL_INT, NULL, NULL);
    conv("42", OBX_COL_TEXT, NULL, "expected a string, got a number");
    conv("{\"a\":1}", OBX_COL_TEXT, NULL, "got an object");
    conv("true", OBX_COL_BOOL, "true", NULL);
    conv("\"yes\"", OBX_COL_BOOL, NULL, "expected a boolean, got a string");
    conv("-9007199254740992", OBX_COL_INT, "-9007199254740992", NULL);
    conv("1e3", OBX_COL_INT, "1000", NULL);
    conv("9007199254740993000", OBX_COL_INT, NULL, "2^53");
    conv("1.5", OBX_COL_INT, NULL, "expected an integer, got 1.5");
    conv("\"12345678901234567890\"", OBX_COL_INT, "12345678901234567890", NULL); /* strings pass: the database checks them */
    conv("[1]", OBX_COL_INT, NULL, "got an array");
    conv("0.1", OBX_COL_NUMERIC, "0.1", NULL);
    conv("12.34", OBX_COL_NUMERIC, "12.34", NULL);
    conv("\"12.340\"", OBX_COL_NUMERIC, "12.340", NULL);
    conv("0.30000000000000004", OBX_COL_FLOAT, "0.30000000000000004", NULL);
    conv("false", OBX_COL_FLOAT, NULL, "expected a number");
    conv("{\"b\":[1,\"x\"],\"a\":null}", OBX_COL_JSON, "{\"b\":[1,\"x\"],\"a\":null}", NULL);
    conv("\"s\"", OBX_COL_JSON, "\"s\"", NULL);
    conv("null", OBX_COL_JSON, NULL, NULL); /* JSON null is SQL NULL, not the json value null */
}

static void test_array_literal(void **state)
{
    (void)state;
    const char *vals[] = {"a", NULL, "q\"uote", "back\\slash", "", "comma,{brace}", "NULL"};
    char *s = obx_apply_array_literal(vals, 7);
    assert_string_equal(s, "{\"a\",NULL,\"q\\\"uote\",\"back\\\\slash\",\"\",\"comma,{brace}\",\"NULL\"}");
    free(s);
    s = obx_apply_array_literal(vals, 0);
    assert_string_equal(s, "{}");
    free(s);
}

static void test_dedupe_keeps_the_newest_version_per_key(void **state)
{
    (void)state;
    const char *keys[] = {"a", "b", "a", "c", "a", "b", "c"};
    const int64_t vers[] = {3, 1, 5, 2, 4, 1, 2};
    unsigned char keep[7];
    assert_int_equal(obx_apply_dedupe(keys, vers, 7, keep), 3);
    /* a: v5 (index 2) wins over v3 and the later, older v4; b: the first v1;
     * c: the first v2 (equal versions: the first one stays). */
    const unsigned char want[] = {0, 1, 1, 1, 0, 0, 0};
    assert_memory_equal(keep, want, 7);

    /* Many keys: collisions in the table, every key once. */
    enum { N = 5000 };
    char *k[N];
    const char *kc[N];
    int64_t v[N];
    unsigned char kp[N];
    for (int i = 0; i < N; i++) {
        k[i] = malloc(16);
        snprintf(k[i], 16, "k%d", i % 1000);
        kc[i] = k[i];
        v[i] = i;
    }
    assert_int_equal(obx_apply_dedupe(kc, v, N, kp), 1000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(kp[i], i >= N - 1000);
        free(k[i]);
    }
}

static void test_format_ts(void **state)
{
    (void)state;
    char b[48];
    assert_string_equal(obx_apply_format_ts(0, b, sizeof(b)), "1970-01-01 00:00:00.000000+00");
    assert_string_equal(obx_apply_format_ts(1795694400123456LL, b, sizeof(b)), "2026-11-26 12:00:00.123456+00");
    assert_string_equal(obx_apply_format_ts(-1, b, sizeof(b)), "1969-12-31 23:59:59.999999+00");
}

static obx_config_t *apply_cfg(void)
{
    obx_config_t *c = obx_config_new();
    char err[256];
    assert_non_null(c);
    assert_int_equal(obx_config_set(c, "apply.conninfo", "dbname=replica", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "apply.topics", "t", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "apply.table", "r", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "apply.columns", "name:name", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "kafka.bootstrap.servers", "k:9092", "test", err, sizeof(err)), 0);
    return c;
}

static void invalid(const char *key, const char *value, const char *needle)
{
    obx_config_t *c = apply_cfg();
    char err[512] = "";
    assert_int_equal(obx_config_set(c, key, value, "test", err, sizeof(err)), 0);
    assert_int_equal(obx_apply_validate(c, err, sizeof(err)), -1);
    if (!strstr(err, needle)) fail_msg("%s = %s: \"%s\" lacks \"%s\"", key, value, err, needle);
    obx_config_destroy(c);
}

static void test_validate(void **state)
{
    (void)state;
    char err[512];
    obx_config_t *c = apply_cfg();
    /* pg.conninfo (the producer's) is not needed by apply */
    assert_int_equal(obx_apply_validate(c, err, sizeof(err)), 0);
    obx_config_destroy(c);
    invalid("apply.table", "", "OUTBOXD_APPLY_TABLE");
    invalid("apply.conninfo", "", "apply.conninfo");
    invalid("apply.columns", "nocolon", "column:path");
    invalid("apply.poison.policy", "skip", "apply.poison.policy");
    invalid("apply.source_time", "payload:", "apply.source_time");
    invalid("apply.source_time", "now", "apply.source_time");
    c = apply_cfg();
    assert_int_equal(obx_config_set(c, "apply.event_types", "Created, Updated", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "apply.delete_types", "Updated", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_apply_validate(c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "both"));
    obx_config_destroy(c);
    /* Cooperative rebalancing is supported (issue 16). */
    c = apply_cfg();
    assert_int_equal(obx_config_set(c, "kafka.partition.assignment.strategy", "cooperative-sticky", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_apply_validate(c, err, sizeof(err)), 0);
    obx_config_destroy(c);
    c = apply_cfg();
    assert_int_equal(obx_config_set(c, "apply.event_types", "Updated", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "apply.source_time", "payload:meta.updatedAt", "test", err, sizeof(err)), 0);
    assert_int_equal(obx_apply_validate(c, err, sizeof(err)), 0);
    obx_config_destroy(c);
}

/* Every identifier through obx_pg_quote_*: the first dot splits schema and table. */
static void test_quoted_names(void **state)
{
    (void)state;
    obx_apply_sb_t b = {0};
    obx_apply_sb_name(&b, "app.rep\"x");
    obx_apply_sb_puts(&b, " ");
    obx_apply_sb_name(&b, "plain");
    obx_apply_sb_puts(&b, " ");
    obx_apply_sb_ident(&b, "a.b");
    assert_false(b.oom);
    assert_string_equal(b.s, "\"app\".\"rep\"\"x\" \"plain\" \"a.b\"");
    free(b.s);
}

/* Every error the server answers with goes to bisection and the poison
 * policy; connection-level trouble (no SQLSTATE, 08, 53, 57P01-57P03) is
 * the database being down; poison without SQLSTATE is the dead-letter
 * topic refusing. */
static void test_error_decisions(void **state)
{
    (void)state;
    obx_err_t e;
    const char *st[] = {"22P02", "23505", "21000", "54000", "42P01", "08006", "P0001", "XX000", "42501", "57P01", "53300"};
    const int data[] = {1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0};
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        obx_err_clear(&e);
        int code;
        e.cls = obx_pg_classify(st[i], 1, &code);
        snprintf(e.sqlstate, sizeof(e.sqlstate), "%s", st[i]);
        assert_int_equal(obx_apply_err_data(&e), data[i]);
        assert_int_equal(obx_apply_err_halt(&e), 0);
    }
    obx_err_clear(&e);
    obx_err_set(&e, OBX_ERR_POISON, OBX_EXIT_POISON, "dead-letter topic t: refused");
    assert_int_equal(obx_apply_err_halt(&e), 1);
    assert_int_equal(obx_apply_err_data(&e), 0);
    /* Locks, deadlocks, serialization and statement timeouts are the
     * database's state: never poison; only a timeout is worth a split. */
    const char *tr[] = {"40001", "40P01", "55P03", "57014", "55000", "P0001", "22P02", "57P01"};
    const int transient[] = {1, 1, 1, 1, 0, 0, 0, 0}, busy[] = {1, 1, 1, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < sizeof(tr) / sizeof(tr[0]); i++) {
        obx_err_clear(&e);
        snprintf(e.sqlstate, sizeof(e.sqlstate), "%s", tr[i]);
        assert_int_equal(obx_apply_err_transient(&e), transient[i]);
        assert_int_equal(obx_apply_err_busy(&e), busy[i]);
    }
}

/* The span of the value at path in text, as a string ("" when none). */
static void span_is(const char *text, const char *path, const char *want)
{
    cJSON *root = cJSON_ParseWithLength(text, strlen(text));
    assert_non_null(root);
    const cJSON *v = obx_apply_json_path(root, path);
    const char *start = NULL;
    size_t n = 0;
    int rc = obx_apply_json_span(text, strlen(text), root, v, &start, &n);
    if (!want) {
        assert_int_equal(rc, -1);
    } else {
        assert_int_equal(rc, 0);
        char got[512];
        snprintf(got, sizeof(got), "%.*s", (int)n, start);
        assert_string_equal(got, want);
    }
    cJSON_Delete(root);
}

static void test_json_span_finds_the_original_text(void **state)
{
    (void)state;
    const char *doc = "\xEF\xBB\xBF { \"a\" : 9223372036854775807 ,\"s\":\"x,\\\"}]\",\"b\":{\"c\":[1, 1e-30 ,"
                      "{\"d\":12345678901234567890.123456789012345678}],\"e\" :\t{\"f\":-0.0E+2}} ,"
                      "\"k\\\"ey\":true, \"n\":null, \"dup\":1, \"dup\":2, \"z\": [ ] }";
    span_is(doc, "a", "9223372036854775807");
    span_is(doc, "s", "\"x,\\\"}]\"");
    span_is(doc, "b.c.1", "1e-30");
    span_is(doc, "b.c.2.d", "12345678901234567890.123456789012345678");
    span_is(doc, "b.c.2", "{\"d\":12345678901234567890.123456789012345678}");
    span_is(doc, "b.e", "{\"f\":-0.0E+2}");
    span_is(doc, "b", "{\"c\":[1, 1e-30 ,{\"d\":12345678901234567890.123456789012345678}],\"e\" :\t{\"f\":-0.0E+2}}");
    span_is(doc, "n", "null");
    span_is(doc, "dup", "1"); /* the member cJSON returns: the first */
    span_is(doc, "z", "[ ]");
    span_is("[10,[20,30],\"]\",40]", "3", "40");
    span_is("{\"a\":1}", "missing", NULL);
    /* Text that is not the parsed tree: not found, never a wrong span. */
    cJSON *root = cJSON_Parse("{\"a\":1}");
    const char *st;
    size_t n;
    assert_int_equal(obx_apply_json_span("[1]", 3, root, root->child, &st, &n), -1);
    cJSON_Delete(root);
}

static void test_json_number_ok(void **state)
{
    (void)state;
    const char *ok[] = {"0", "-0", "12", "1.5", "-1.25e-30", "1E+5", "12345678901234567890.123456789012345678"};
    const char *bad[] = {"01", "1.", "+1", ".5", "1e", "-", "1e+", "00", "1.5.5", ""};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) assert_true(obx_apply_json_number_ok(ok[i], strlen(ok[i]), 0));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) assert_false(obx_apply_json_number_ok(bad[i], strlen(bad[i]), 0));
    assert_true(obx_apply_json_number_ok("-9223372036854775808", 20, 1));
    assert_false(obx_apply_json_number_ok("1.0", 3, 1));
    assert_false(obx_apply_json_number_ok("1e3", 3, 1));
    assert_true(obx_apply_json_text_ok("{\"a\":[1,-2.5e3,\"01\"]}", 21));
    assert_false(obx_apply_json_text_ok("{\"a\":01}", 8));
    assert_false(obx_apply_json_text_ok("\"a\nb\"", 5));
}

/* Converts the value at path of doc with its original text. */
static void conv_raw(const char *doc, const char *path, obx_col_kind_t kind, const char *want, const char *err_has)
{
    cJSON *root = cJSON_Parse(doc);
    assert_non_null(root);
    const cJSON *v = obx_apply_json_path(root, path);
    const char *raw = NULL;
    size_t n = 0;
    assert_int_equal(obx_apply_json_span(doc, strlen(doc), root, v, &raw, &n), 0);
    char *out = NULL, err[256] = "";
    int rc = obx_apply_json_to_text_raw(v, raw, n, kind, &out, err, sizeof(err));
    if (err_has) {
        assert_int_equal(rc, -1);
        assert_non_null(strstr(err, err_has));
    } else {
        assert_int_equal(rc, 0);
        assert_string_equal(out, want);
    }
    free(out);
    cJSON_Delete(root);
}

static void test_numbers_keep_every_digit(void **state)
{
    (void)state;
    const char *doc = "{\"big\":9223372036854775807,\"min\":-9223372036854775808,\"num\":12345678901234567890.123456789012345678,"
                      "\"tiny\":1e-30,\"m\":12345678901234567.89,\"lead\":01,\"one\":1.0,\"half\":1.5,\"s\":\"7\","
                      "\"doc\":{\"big\": 9223372036854775807, \"l\":[1e-30, 12345678901234567890.123456789012345678]},"
                      "\"odd\":{\"x\":01}}";
    conv_raw(doc, "big", OBX_COL_INT, "9223372036854775807", NULL);
    conv_raw(doc, "min", OBX_COL_INT, "-9223372036854775808", NULL);
    conv_raw(doc, "num", OBX_COL_NUMERIC, "12345678901234567890.123456789012345678", NULL);
    conv_raw(doc, "m", OBX_COL_NUMERIC, "12345678901234567.89", NULL);
    conv_raw(doc, "tiny", OBX_COL_NUMERIC, "1e-30", NULL);
    conv_raw(doc, "tiny", OBX_COL_FLOAT, "1e-30", NULL);
    conv_raw(doc, "big", OBX_COL_NUMERIC, "9223372036854775807", NULL);
    conv_raw(doc, "doc", OBX_COL_JSON, "{\"big\": 9223372036854775807, \"l\":[1e-30, 12345678901234567890.123456789012345678]}",
             NULL);
    conv_raw(doc, "doc.l", OBX_COL_JSON, "[1e-30, 12345678901234567890.123456789012345678]", NULL);
    /* Not JSON's grammar (cJSON is lenient): cJSON's value, as before. */
    conv_raw(doc, "lead", OBX_COL_INT, "1", NULL);
    conv_raw(doc, "lead", OBX_COL_NUMERIC, "1", NULL);
    conv_raw(doc, "odd", OBX_COL_JSON, "{\"x\":1}", NULL);
    /* The integer rules stay: 1.0 is 1, 1.5 is no integer. */
    conv_raw(doc, "one", OBX_COL_INT, "1", NULL);
    conv_raw(doc, "half", OBX_COL_INT, NULL, "expected an integer, got 1.5");
    conv_raw(doc, "s", OBX_COL_INT, "7", NULL);
    conv_raw(doc, "s", OBX_COL_NUMERIC, "7", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_columns),   cmocka_unit_test(test_json_path),
        cmocka_unit_test(test_col_kind),        cmocka_unit_test(test_json_to_text),
        cmocka_unit_test(test_array_literal),   cmocka_unit_test(test_dedupe_keeps_the_newest_version_per_key),
        cmocka_unit_test(test_format_ts),       cmocka_unit_test(test_validate),
        cmocka_unit_test(test_quoted_names),    cmocka_unit_test(test_error_decisions),
        cmocka_unit_test(test_json_span_finds_the_original_text), cmocka_unit_test(test_json_number_ok),
        cmocka_unit_test(test_numbers_keep_every_digit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
