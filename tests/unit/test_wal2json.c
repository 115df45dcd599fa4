/* obx_w2j_parse on wal2json 2.5 format-version 2 lines captured from PG 15
 * (tests/unit/data/, re-made by data/capture.sh), the add-tables
 * escaping, and the LSN / timestamptz text parsers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lsn.h"
#include "unit_data.h"
#include "wal2json.h"

/* Parses line i of l into c and insists on success. */
static void parse_ok(const lines_t *l, int i, obx_w2j_change_t *c)
{
    char err[256] = "";
    int rc = obx_w2j_parse(l->line[i], l->len[i], c, err, sizeof(err));
    if (rc != 0) fail_msg("line %d: %s", i, err);
}

static const obx_col_t *col(const obx_w2j_change_t *c, const char *name)
{
    const obx_col_t *v = obx_w2j_col(c, name);
    if (!v) fail_msg("no column %s", name);
    return v;
}

static void assert_text(const obx_w2j_change_t *c, const char *name, const char *want)
{
    const obx_col_t *v = col(c, name);
    assert_non_null(v->value);
    assert_string_equal(v->value, want);
    assert_int_equal(v->value_len, strlen(want));
    assert_int_equal(v->inexact, 0);
}

static void assert_null_col(const obx_w2j_change_t *c, const char *name)
{
    const obx_col_t *v = col(c, name);
    assert_null(v->value);
    assert_int_equal(v->value_len, 0);
    assert_int_equal(v->inexact, 0);
}

static void assert_number(const obx_w2j_change_t *c, const char *name, const char *want, int inexact)
{
    const obx_col_t *v = col(c, name);
    assert_non_null(v->value);
    assert_string_equal(v->value, want);
    assert_int_equal(v->value_len, strlen(want));
    assert_int_equal(v->inexact, inexact);
}

static obx_lsn_t L(const char *s)
{
    obx_lsn_t l = 0;
    assert_int_equal(obx_lsn_parse(s, &l), 0);
    return l;
}

/* The struct as obx_w2j_change_clear leaves it. */
static void assert_cleared(const obx_w2j_change_t *c)
{
    assert_int_equal(c->kind, 0);
    assert_int_equal(c->lsn, 0);
    assert_int_equal(c->nextlsn, 0);
    assert_int_equal(c->xid, 0);
    assert_int_equal(c->has_xid, 0);
    assert_int_equal(c->commit_time_us, 0);
    assert_null(c->schema);
    assert_null(c->table);
    assert_null(c->prefix);
    assert_null(c->content);
    assert_int_equal(c->transactional, 0);
    assert_int_equal(c->ncols, 0);
    assert_null(c->tree);
    assert_null(obx_w2j_col(c, "id"));
}

/* ---- the examples from the brief (wal2json 2.5, PG 15, this server) ---- */

static const char brief_b[] =
    "{\"action\":\"B\",\"xid\":759,\"timestamp\":\"2026-11-26 12:15:12.025922+00\",\"lsn\":\"0/19BDF40\",\"nextlsn\":\"0/19BDF70\"}";
static const char brief_i[] =
    "{\"action\":\"I\",\"xid\":759,\"timestamp\":\"2026-11-26 12:15:12.025922+00\",\"lsn\":\"0/19BDD10\",\"schema\":\"public\","
    "\"table\":\"outbox\",\"columns\":[{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"4c215ef0-a0de-4f54-8e4d-f24837890dcc\"},"
    "{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"athlete\"},{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"a1\"},"
    "{\"name\":\"type\",\"type\":\"text\",\"value\":\"AthleteUpdated\"},{\"name\":\"payload\",\"type\":\"jsonb\","
    "\"value\":\"{\\\"name\\\": \\\"Zo\xc3\xab \\\\\\\"q\\\\\\\"\\\"}\"},{\"name\":\"aggregate_version\",\"type\":\"bigint\",\"value\":1},"
    "{\"name\":\"topic\",\"type\":\"text\",\"value\":null},{\"name\":\"headers\",\"type\":\"jsonb\","
    "\"value\":\"{\\\"n\\\": 5, \\\"trace\\\": \\\"t1\\\"}\"},{\"name\":\"occurred_at\",\"type\":\"timestamp with time zone\","
    "\"value\":\"2026-11-26 12:15:12.02468+00\"}]}";
static const char brief_c[] =
    "{\"action\":\"C\",\"xid\":759,\"timestamp\":\"2026-11-26 12:15:12.025922+00\",\"lsn\":\"0/19BDF40\",\"nextlsn\":\"0/19BDF70\"}";

static void check_outbox_insert(const obx_w2j_change_t *c)
{
    assert_int_equal(c->kind, OBX_CHG_INSERT);
    assert_int_equal(c->ncols, 9);
    static const char *const names[] = {"id", "aggregatetype", "aggregateid", "type", "payload",
                                        "aggregate_version", "topic", "headers", "occurred_at"};
    static const char *const types[] = {"uuid", "text", "text", "text", "jsonb", "bigint", "text", "jsonb",
                                        "timestamp with time zone"};
    for (int i = 0; i < 9; i++) {
        assert_string_equal(c->cols[i].name, names[i]);
        assert_string_equal(c->cols[i].type, types[i]);
    }
    assert_text(c, "id", "4c215ef0-a0de-4f54-8e4d-f24837890dcc");
    assert_text(c, "aggregatetype", "athlete");
    assert_text(c, "aggregateid", "a1");
    assert_text(c, "type", "AthleteUpdated");
    /* jsonb text with the JSON escapes of the outer line undone once. */
    assert_text(c, "payload", "{\"name\": \"Zo\xc3\xab \\\"q\\\"\"}");
    assert_number(c, "aggregate_version", "1", 0);
    assert_null_col(c, "topic");
    assert_text(c, "headers", "{\"n\": 5, \"trace\": \"t1\"}");
    assert_text(c, "occurred_at", "2026-11-26 12:15:12.02468+00");
    assert_null(obx_w2j_col(c, "nope"));
    assert_null(obx_w2j_col(c, "ID")); /* names are case-sensitive */
}

static void test_brief_examples(void **state)
{
    (void)state;
    obx_w2j_change_t c;
    char err[256];
    memset(&c, 0, sizeof(c));

    assert_int_equal(obx_w2j_parse(brief_b, strlen(brief_b), &c, err, sizeof(err)), 0);
    assert_int_equal(c.kind, OBX_CHG_BEGIN);
    assert_int_equal(c.xid, 759);
    assert_int_equal(c.has_xid, 1);
    assert_int_equal(c.lsn, 0x19BDF40);
    assert_int_equal(c.nextlsn, 0x19BDF70);
    assert_int_equal(c.commit_time_us, INT64_C(1795695312025922));
    assert_int_equal(c.ncols, 0);

    assert_int_equal(obx_w2j_parse(brief_i, strlen(brief_i), &c, err, sizeof(err)), 0);
    check_outbox_insert(&c);
    assert_int_equal(c.xid, 759);
    assert_int_equal(c.lsn, 0x19BDD10);
    assert_int_equal(c.nextlsn, 0);
    assert_string_equal(c.schema, "public");
    assert_string_equal(c.table, "outbox");
    /* I lines carry a timestamp too, but only B/C's is the commit time. */
    assert_int_equal(c.commit_time_us, 0);

    assert_int_equal(obx_w2j_parse(brief_c, strlen(brief_c), &c, err, sizeof(err)), 0);
    assert_int_equal(c.kind, OBX_CHG_COMMIT);
    assert_int_equal(c.lsn, 0x19BDF40);
    assert_int_equal(c.nextlsn, 0x19BDF70);
    assert_int_equal(c.commit_time_us, INT64_C(1795695312025922));
    assert_null(c.schema);
    assert_int_equal(c.ncols, 0);
    obx_w2j_change_clear(&c);
    assert_cleared(&c);
}

/* The line need not be NUL-terminated: only len bytes count. */
static void test_len_bounds_the_line(void **state)
{
    (void)state;
    obx_w2j_change_t c;
    char err[256];
    memset(&c, 0, sizeof(c));
    size_t n = strlen(brief_b);
    char *buf = malloc(n + 8);
    assert_non_null(buf);
    memcpy(buf, brief_b, n);
    memcpy(buf + n, "GARBAGE", 7); /* no NUL at all after the object */
    assert_int_equal(obx_w2j_parse(buf, n, &c, err, sizeof(err)), 0);
    assert_int_equal(c.kind, OBX_CHG_BEGIN);
    assert_int_equal(c.nextlsn, 0x19BDF70);
    /* One byte short is a truncated object. */
    assert_int_equal(obx_w2j_parse(buf, n - 1, &c, err, sizeof(err)), -1);
    assert_cleared(&c);
    free(buf);
}

/* ---- captured lines --------------------------------------------------- */

static void test_captured_outbox_txn(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    load(&l, "outbox_basic.jsonl");
    assert_int_equal(l.n, 3);

    parse_ok(&l, 0, &c);
    assert_int_equal(c.kind, OBX_CHG_BEGIN);
    assert_int_equal(c.xid, 777);
    /* B and C both carry the commit record's start and end. */
    assert_int_equal(c.lsn, L("0/1A178D8"));
    assert_int_equal(c.nextlsn, L("0/1A17908"));
    assert_int_equal(c.commit_time_us, INT64_C(1795695468591407));

    parse_ok(&l, 1, &c);
    check_outbox_insert(&c);
    assert_string_equal(c.table, "ut_outbox");
    assert_int_equal(c.lsn, L("0/1A17818"));
    assert_true(c.lsn < L("0/1A178D8")); /* the change precedes its commit */

    parse_ok(&l, 2, &c);
    assert_int_equal(c.kind, OBX_CHG_COMMIT);
    assert_int_equal(c.xid, 777);
    assert_int_equal(c.lsn, L("0/1A178D8"));
    assert_int_equal(c.nextlsn, L("0/1A17908"));
    assert_int_equal(c.commit_time_us, INT64_C(1795695468591407));
    obx_w2j_change_clear(&c);
    unload(&l);
}

static void test_captured_escapes_unicode_nulls(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    load(&l, "strings.jsonl");
    assert_int_equal(l.n, 5);

    parse_ok(&l, 1, &c);
    assert_int_equal(c.ncols, 15);
    assert_number(&c, "id", "1", 0);
    /* wal2json escapes " \ \n \t \r and control bytes (\u0001); DEL and '/'
     * go through raw. */
    assert_text(&c, "t", "quote \" backslash \\ slash / nl \n tab \t cr \r ctl \x01 del \x7f");
    assert_text(&c, "j", "{\"k\": \"v\"}");
    assert_string_equal(col(&c, "j")->type, "jsonb");
    assert_string_equal(col(&c, "js")->type, "json");
    static const char *const nulls[] = {"big", "num", "f8", "f4", "i2", "b", "bin", "ts", "tsn", "d", "arr"};
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++) assert_null_col(&c, nulls[i]);
    assert_string_equal(col(&c, "arr")->type, "integer[]");
    assert_string_equal(col(&c, "tsn")->type, "timestamp without time zone");

    parse_ok(&l, 2, &c);
    /* 2-, 3- and 4-byte UTF-8 arrive raw, not as \u escapes. */
    assert_text(&c, "t", "\xc3\xa9 \xc3\xbc \xc3\x9f \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \xf0\x9d\x84\x9e");
    /* jsonb normalises \u escapes to UTF-8 (and sorts keys by length);
     * \u0001 and an escaped backslash stay escaped inside the jsonb text. */
    assert_text(&c, "j",
                "{\"e\": \"\xc3\xa9\", \"ctl\": \"\\u0001\", \"lit\": \"\\\\u0041\", \"emoji\": \"\xf0\x9f\x98\x80\"}");
    /* json keeps the text as written, \u escapes and spacing included. */
    assert_text(&c, "js", "{\"e\": \"\\u00e9\", \"emoji\": \"\\ud83d\\ude00\",  \"sp\" :  1 }");

    parse_ok(&l, 3, &c);
    assert_text(&c, "t", ""); /* empty string is not NULL */
    assert_non_null(col(&c, "t")->value);
    assert_text(&c, "j", "\"just a string\"");
    assert_text(&c, "js", "[1, 2.50, true, null]");
    obx_w2j_change_clear(&c);
    unload(&l);
}

/* \u escapes in the line itself (wal2json writes them for control bytes;
 * other encoders for everything): surrogate pairs become one 4-byte char. */
static void test_unicode_escapes_in_line(void **state)
{
    (void)state;
    static const char line[] =
        "{\"action\":\"I\",\"xid\":1,\"lsn\":\"0/10\",\"schema\":\"s\",\"table\":\"t\",\"columns\":["
        "{\"name\":\"a\",\"type\":\"text\",\"value\":\"\\u00e9\\u4e2d\\ud83d\\ude00\\u0041\\u001f\"},"
        "{\"name\":\"\\u00fcber\",\"type\":\"text\",\"value\":\"x\"}]}";
    obx_w2j_change_t c;
    char err[256];
    memset(&c, 0, sizeof(c));
    assert_int_equal(obx_w2j_parse(line, strlen(line), &c, err, sizeof(err)), 0);
    assert_text(&c, "a", "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80" "A\x1f");
    assert_text(&c, "\xc3\xbc" "ber", "x");
    obx_w2j_change_clear(&c);
}

static void test_captured_numbers(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    load(&l, "numbers.jsonl");
    assert_int_equal(l.n, 8);

    parse_ok(&l, 1, &c);
    assert_number(&c, "id", "10", 0);
    /* 2^53 + 1 reaches cJSON as 2^53: flagged, never passed off as exact. */
    assert_number(&c, "big", "9007199254740992", 1);
    assert_number(&c, "num", "1.5", 1);
    assert_number(&c, "f8", "0.10000000000000001", 1);
    assert_number(&c, "f4", "3.1400000000000001", 1);
    assert_number(&c, "i2", "-32768", 0);

    parse_ok(&l, 2, &c);
    assert_number(&c, "big", "9.2233720368547758e+18", 1); /* int64 max */
    assert_number(&c, "num", "1.2345678901234567e+19", 1);
    /* wal2json writes NaN and +-Infinity as JSON null: same as SQL NULL. */
    assert_null_col(&c, "f8");
    assert_null_col(&c, "f4");
    assert_number(&c, "i2", "32767", 0);

    parse_ok(&l, 3, &c);
    assert_number(&c, "big", "-9.2233720368547758e+18", 1); /* int64 min */
    /* numeric 10.0 is integral: exact, but its text loses the ".0". */
    assert_number(&c, "num", "10", 0);
    assert_null_col(&c, "f8");
    assert_number(&c, "f4", "1e+30", 1); /* beyond int64: no UB on the way */
    assert_number(&c, "i2", "0", 0);

    parse_ok(&l, 4, &c);
    assert_number(&c, "big", "9007199254740992", 1); /* 2^53 itself is ambiguous */
    assert_null_col(&c, "num");                      /* numeric NaN */
    assert_number(&c, "f8", "1e-300", 1);
    assert_number(&c, "f4", "0", 0);                 /* real -0 is printed 0 */

    parse_ok(&l, 5, &c);
    assert_number(&c, "big", "9007199254740991", 0); /* 2^53 - 1: exact */
    assert_number(&c, "num", "0", 0);
    assert_number(&c, "f8", "123456789012", 0);
    assert_number(&c, "f4", "15000001000", 0);       /* 1.5000001e+10 is integral */
    assert_number(&c, "i2", "-1", 0);

    parse_ok(&l, 6, &c);
    assert_number(&c, "big", "-9007199254740991", 0);
    assert_number(&c, "num", "-9.9999999999999995e-07", 1);
    assert_number(&c, "f8", "4.9406564584124654e-324", 1);
    assert_null_col(&c, "f4");
    obx_w2j_change_clear(&c);
    unload(&l);
}

static void test_captured_bool_bytea_time(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    int64_t us;
    memset(&c, 0, sizeof(c));
    /* Decoded with TimeZone Asia/Kolkata: every timestamptz is +05:30. */
    load(&l, "bool_bytea_time.jsonl");
    assert_int_equal(l.n, 4);

    parse_ok(&l, 0, &c);
    assert_int_equal(c.commit_time_us, INT64_C(1795695475131819)); /* 17:47:55.131819+05:30 */

    parse_ok(&l, 1, &c);
    assert_text(&c, "b", "true");
    assert_string_equal(col(&c, "b")->type, "boolean");
    assert_text(&c, "bin", "00ff10abcdef"); /* hex, lower case, no \x */
    assert_text(&c, "ts", "2026-11-26 17:45:12.02468+05:30");
    assert_int_equal(obx_timestamptz_parse(col(&c, "ts")->value, &us), 0);
    assert_int_equal(us, INT64_C(1795695312024680)); /* 12:15:12.02468Z */
    assert_text(&c, "tsn", "2026-11-26 12:15:12");
    assert_text(&c, "d", "2026-11-26");
    assert_text(&c, "arr", "{1,2,3}");

    parse_ok(&l, 2, &c);
    assert_text(&c, "b", "false");
    assert_text(&c, "bin", ""); /* empty bytea is "", not NULL */
    assert_text(&c, "ts", "2000-01-01 05:29:59+05:30");
    assert_int_equal(obx_timestamptz_parse(col(&c, "ts")->value, &us), 0);
    assert_int_equal(us, INT64_C(946684799000000));
    assert_text(&c, "tsn", "2000-01-01 00:00:00.5");
    assert_text(&c, "arr", "{}");

    parse_ok(&l, 3, &c);
    assert_int_equal(c.kind, OBX_CHG_COMMIT);
    assert_int_equal(c.commit_time_us, INT64_C(1795695475131819));
    obx_w2j_change_clear(&c);
    unload(&l);

    /* TimeZone America/Los_Angeles: "-08", hours only. */
    load(&l, "tz_pst.jsonl");
    parse_ok(&l, 0, &c);
    assert_int_equal(c.commit_time_us, INT64_C(1795695475225529)); /* 04:17:55.225529-08 */
    obx_w2j_change_clear(&c);
    unload(&l);
}

/* DateStyle SQL changes column values (not the B/C timestamp). */
static void test_captured_datestyle_sql(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    int64_t us = 0;
    memset(&c, 0, sizeof(c));
    load(&l, "outbox_datestyle_sql.jsonl");
    parse_ok(&l, 0, &c);
    assert_int_equal(c.commit_time_us, INT64_C(1795695478337769));
    parse_ok(&l, 1, &c);
    assert_text(&c, "occurred_at", "26/11/2026 04:15:12.5 PST");
    assert_int_equal(obx_timestamptz_parse(col(&c, "occurred_at")->value, &us), -1);
    obx_w2j_change_clear(&c);
    unload(&l);
}

static void test_captured_update_delete_truncate(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    load(&l, "update_delete.jsonl");
    assert_int_equal(l.n, 5);

    parse_ok(&l, 1, &c);
    assert_int_equal(c.kind, OBX_CHG_UPDATE);
    assert_int_equal(c.xid, 2113);
    assert_int_equal(c.lsn, L("0/2CBB6A8"));
    assert_string_equal(c.table, "ut_types");
    assert_int_equal(c.ncols, 15); /* new tuple; "identity" holds the old key */
    assert_number(&c, "id", "1", 0);
    assert_text(&c, "t", "updated");
    assert_number(&c, "big", "42", 0);

    parse_ok(&l, 2, &c);
    assert_int_equal(c.kind, OBX_CHG_UPDATE);
    assert_number(&c, "id", "100", 0); /* key change: new value in columns */

    parse_ok(&l, 3, &c);
    assert_int_equal(c.kind, OBX_CHG_DELETE);
    assert_int_equal(c.lsn, L("0/2CBB858"));
    assert_int_equal(c.ncols, 1); /* only the replica identity */
    assert_number(&c, "id", "3", 0);
    assert_string_equal(col(&c, "id")->type, "integer");
    obx_w2j_change_clear(&c);
    unload(&l);

    load(&l, "truncate.jsonl");
    assert_int_equal(l.n, 3);
    parse_ok(&l, 1, &c);
    assert_int_equal(c.kind, OBX_CHG_TRUNCATE);
    assert_int_equal(c.xid, 2114);
    assert_int_equal(c.has_xid, 1);
    assert_string_equal(c.schema, "public");
    assert_string_equal(c.table, "ut_types");
    assert_int_equal(c.ncols, 0);
    parse_ok(&l, 2, &c);
    assert_int_equal(c.kind, OBX_CHG_COMMIT);
    assert_int_equal(c.nextlsn, L("0/2CBC888"));
    obx_w2j_change_clear(&c);
    unload(&l);
}

static void test_captured_messages(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    load(&l, "messages.jsonl");
    assert_int_equal(l.n, 6);

    /* A non-transactional message comes at once, before its txn's B, with
     * "xid":null and "timestamp":null. */
    parse_ok(&l, 0, &c);
    assert_int_equal(c.kind, OBX_CHG_MESSAGE);
    assert_int_equal(c.has_xid, 0);
    assert_int_equal(c.transactional, 0);
    assert_string_equal(c.prefix, "ut_nontx");
    assert_string_equal(c.content, "outside");
    assert_int_equal(c.lsn, L("0/2CBCBA0"));

    parse_ok(&l, 1, &c);
    assert_int_equal(c.kind, OBX_CHG_BEGIN);

    parse_ok(&l, 2, &c);
    assert_int_equal(c.kind, OBX_CHG_MESSAGE);
    assert_int_equal(c.has_xid, 1);
    assert_int_equal(c.xid, 2118);
    assert_int_equal(c.transactional, 1);
    assert_string_equal(c.prefix, "ut_tx");
    assert_string_equal(c.content, "hello \"m\" \xc3\xa9\\n\xf0\x9f\x98\x80");
    assert_int_equal(c.lsn, L("0/2CBCB18"));
    assert_null(c.schema);
    assert_int_equal(c.ncols, 0);

    /* bytea content '\x00ff41': wal2json prints it as a C string, so it
     * ends at the first NUL byte. */
    parse_ok(&l, 3, &c);
    assert_string_equal(c.prefix, "ut_bin");
    assert_string_equal(c.content, "");

    parse_ok(&l, 4, &c);
    assert_int_equal(c.kind, OBX_CHG_INSERT);
    assert_int_equal(c.ncols, 5);
    assert_text(&c, "payload", "plain text");
    assert_string_equal(col(&c, "payload")->type, "text");
    obx_w2j_change_clear(&c);
    unload(&l);
}

static void test_captured_huge_payload(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    load(&l, "outbox_huge.jsonl");
    assert_int_equal(l.n, 3);
    assert_int_equal(l.len[1], 1123561);
    parse_ok(&l, 1, &c);
    const obx_col_t *p = col(&c, "payload");
    /* Postgres: octet_length(payload::text) = 982904. */
    assert_int_equal(p->value_len, 982904);
    assert_int_equal(strlen(p->value), 982904);
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 of the payload text */
    for (size_t i = 0; i < p->value_len; i++) h = (h ^ (unsigned char)p->value[i]) * 0x100000001b3ULL;
    assert_int_equal(h, 0xdaf721f984be115eULL);
    const char *head = "{\"rows\": [{\"i\": 1, \"s\": \"x\\\"y\\\\z \xc3\xa9 \xf0\x9f\x98\x80 c4ca4238";
    const char *tail = "5898493fbdf4a44a24084021b2215f85\"}]}";
    assert_memory_equal(p->value, head, strlen(head));
    assert_string_equal(p->value + p->value_len - strlen(tail), tail);
    assert_number(&c, "aggregate_version", "7", 0);
    obx_w2j_change_clear(&c);
    unload(&l);
}

static void test_captured_empty_txn(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    /* A transaction on a table outside add-tables: B and C only. */
    load(&l, "empty_txn.jsonl");
    assert_int_equal(l.n, 2);
    parse_ok(&l, 0, &c);
    assert_int_equal(c.kind, OBX_CHG_BEGIN);
    obx_lsn_t b_lsn = c.lsn, b_next = c.nextlsn;
    parse_ok(&l, 1, &c);
    assert_int_equal(c.kind, OBX_CHG_COMMIT);
    assert_int_equal(c.lsn, b_lsn);
    assert_int_equal(c.nextlsn, b_next);
    assert_int_equal(c.nextlsn, L("0/2D746C0"));
    assert_int_equal(c.xid, 2124);
    obx_w2j_change_clear(&c);
    unload(&l);
}

/* The add-tables value obx_w2j_escape_table makes for "ut s.ch"."t,a\b" is
 * the one that selected exactly that table on the server (weird_names.jsonl;
 * the sibling "ut s.ch"."t" written in the same txn is absent). */
static void test_captured_weird_names(void **state)
{
    (void)state;
    lines_t l;
    obx_w2j_change_t c;
    char out[64];
    memset(&c, 0, sizeof(c));
    load(&l, "weird_names.jsonl");
    assert_int_equal(l.n, 3);
    parse_ok(&l, 1, &c);
    assert_string_equal(c.schema, "ut s.ch");
    assert_string_equal(c.table, "t,a\\b");
    assert_int_equal(obx_w2j_escape_table(c.schema, c.table, out, sizeof(out)), 0);
    assert_string_equal(out, "ut\\ s\\.ch.t\\,a\\\\b");
    obx_w2j_change_clear(&c);
    unload(&l);
}

/* ---- malformed input -------------------------------------------------- */

static void expect_fail(const char *line, size_t len, const char *needle)
{
    obx_w2j_change_t c;
    char err[256];
    memset(&c, 0, sizeof(c));
    /* A previous good parse must not survive a failed one. */
    assert_int_equal(obx_w2j_parse(brief_i, strlen(brief_i), &c, err, sizeof(err)), 0);
    assert_int_equal(c.ncols, 9);
    err[0] = '\0';
    int rc = obx_w2j_parse(line, len, &c, err, sizeof(err));
    if (rc != -1) fail_msg("accepted: %.*s", (int)len, line);
    assert_true(strlen(err) > 0);
    if (!strstr(err, needle)) fail_msg("errstr \"%s\" lacks \"%s\"", err, needle);
    assert_cleared(&c);
}

#define FAIL(s, needle) expect_fail(s, strlen(s), needle)

static void test_malformed(void **state)
{
    (void)state;
    /* truncated line */
    expect_fail(brief_i, strlen(brief_i) / 2, "not valid JSON");
    expect_fail(brief_b, strlen(brief_b) - 1, "not valid JSON");
    FAIL("", "not valid JSON");
    FAIL("{\"action\":\"B\",", "not valid JSON");
    /* not an object */
    FAIL("[1,2,3]", "not a JSON object");
    FAIL("\"B\"", "not a JSON object");
    FAIL("42", "not a JSON object");
    FAIL("null", "not a JSON object");
    /* missing or malformed action */
    FAIL("{\"xid\":1,\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "action");
    FAIL("{\"action\":\"\",\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "action");
    FAIL("{\"action\":\"BC\",\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "action");
    FAIL("{\"action\":66,\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "action");
    /* format-version 1 output */
    FAIL("{\"xid\":759,\"change\":[]}", "format-version 2");
    /* bad or missing LSNs */
    FAIL("{\"action\":\"B\",\"xid\":1,\"lsn\":\"0/XYZ\",\"nextlsn\":\"0/2\"}", "\"lsn\" is not an LSN");
    FAIL("{\"action\":\"C\",\"xid\":1,\"lsn\":\"19BDF40\",\"nextlsn\":\"0/2\"}", "\"lsn\" is not an LSN");
    FAIL("{\"action\":\"C\",\"xid\":1,\"lsn\":\"0/1\",\"nextlsn\":\"0/1/2\"}", "\"nextlsn\" is not an LSN");
    FAIL("{\"action\":\"B\",\"xid\":1,\"lsn\":\"0/1\"}", "no \"nextlsn\"");
    FAIL("{\"action\":\"C\",\"xid\":1,\"nextlsn\":\"0/1\"}", "no \"lsn\"");
    FAIL("{\"action\":\"I\",\"lsn\":\"-1/0\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[]}", "\"lsn\" is not an LSN");
    FAIL("{\"action\":\"M\",\"lsn\":\"zz\",\"transactional\":false,\"prefix\":\"p\",\"content\":\"c\"}", "\"lsn\" is not an LSN");
    /* unknown action */
    FAIL("{\"action\":\"X\",\"xid\":1,\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "action \"X\" unknown");
    FAIL("{\"action\":\"b\",\"xid\":1,\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "unknown");
    /* broken row changes */
    FAIL("{\"action\":\"I\",\"lsn\":\"0/1\",\"table\":\"t\",\"columns\":[]}", "schema/table");
    FAIL("{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"s\",\"table\":\"t\",\"columns\":{}}", "not an array");
    FAIL("{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[{\"name\":\"a\",\"type\":\"text\"}]}",
         "without name or value");
    FAIL("{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[{\"type\":\"text\",\"value\":\"v\"}]}",
         "without name or value");
    FAIL("{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[{\"name\":\"a\",\"type\":\"text\",\"value\":[1]}]}",
         "unexpected JSON value type");
    /* xid beyond uint32_t (found by tests/fuzz: the cast was undefined) */
    FAIL("{\"action\":\"B\",\"xid\":1.62e67,\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "not a 32-bit transaction id");
    FAIL("{\"action\":\"I\",\"xid\":-123,\"lsn\":\"0/1\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[]}", "xid");
    FAIL("{\"action\":\"C\",\"xid\":4294967296,\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}", "xid");
    /* B/C timestamp in a DateStyle we cannot read */
    FAIL("{\"action\":\"B\",\"xid\":1,\"timestamp\":\"26/11/2026 04:15:12.5 PST\",\"lsn\":\"0/1\",\"nextlsn\":\"0/2\"}",
         "timestamp");
}

/* A table may have up to 1600 columns (PostgreSQL's limit): all of them
 * parse, each numeric with its own text (this once stopped at 64). */
static void test_many_columns(void **state)
{
    (void)state;
    enum { NCOLS = 1600 };
    size_t cap = 64 + (size_t)NCOLS * 64, n;
    char *line = malloc(cap);
    assert_non_null(line);
    n = (size_t)snprintf(line, cap, "{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[");
    for (int i = 0; i < NCOLS; i++)
        n += (size_t)snprintf(line + n, cap - n, "%s{\"name\":\"c%d\",\"type\":\"integer\",\"value\":%d}",
                              i ? "," : "", i, 1000 + i);
    snprintf(line + n, cap - n, "]}");
    obx_w2j_change_t c;
    char err[256];
    memset(&c, 0, sizeof(c));
    assert_int_equal(obx_w2j_parse(line, strlen(line), &c, err, sizeof(err)), 0);
    assert_int_equal(c.ncols, NCOLS);
    assert_number(&c, "c0", "1000", 0);
    assert_number(&c, "c63", "1063", 0);
    assert_number(&c, "c64", "1064", 0);
    assert_number(&c, "c1599", "2599", 0);
    /* the same struct again with a short row: nothing of the long one left */
    const char *small = "{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[{\"name\":\"a\",\"type\":\"integer\",\"value\":7}]}";
    assert_int_equal(obx_w2j_parse(small, strlen(small), &c, err, sizeof(err)), 0);
    assert_int_equal(c.ncols, 1);
    assert_number(&c, "a", "7", 0);
    assert_null(obx_w2j_col(&c, "c64"));
    obx_w2j_change_clear(&c);
    free(line);
}

/* ---- add-tables escaping ---------------------------------------------- */

static void test_escape_table(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(obx_w2j_escape_table("public", "outbox", out, sizeof(out)), 0);
    assert_string_equal(out, "public.outbox");
    assert_int_equal(obx_w2j_escape_table("my.schema", "a,b", out, sizeof(out)), 0);
    assert_string_equal(out, "my\\.schema.a\\,b");
    assert_int_equal(obx_w2j_escape_table("back\\slash", "sp ace", out, sizeof(out)), 0);
    assert_string_equal(out, "back\\\\slash.sp\\ ace");
    assert_int_equal(obx_w2j_escape_table("Ünï", "t*", out, sizeof(out)), 0);
    assert_string_equal(out, "Ünï.t*");

    /* "public.outbox" needs 14 bytes with its NUL */
    memset(out, 'X', sizeof(out));
    assert_int_equal(obx_w2j_escape_table("public", "outbox", out, 14), 0);
    assert_string_equal(out, "public.outbox");
    assert_int_equal(obx_w2j_escape_table("public", "outbox", out, 13), -1);
    assert_int_equal(obx_w2j_escape_table("public", "outbox", out, 7), -1);
    assert_int_equal(obx_w2j_escape_table("public", "outbox", out, 0), -1);
    /* escapes count: "a\.b" + "." + "c" = 6 chars + NUL */
    assert_int_equal(obx_w2j_escape_table("a.b", "c", out, 7), 0);
    assert_string_equal(out, "a\\.b.c");
    assert_int_equal(obx_w2j_escape_table("a.b", "c", out, 6), -1);
    assert_int_equal(obx_w2j_escape_table("a.b", "c", out, 3), -1); /* would split the escape */
}

/* ---- timestamptz ------------------------------------------------------ */

static void ts_ok(const char *s, int64_t want)
{
    int64_t us = 12345;
    if (obx_timestamptz_parse(s, &us) != 0) fail_msg("rejected \"%s\"", s);
    if (us != want) fail_msg("\"%s\": got %lld, want %lld", s, (long long)us, (long long)want);
}

static void ts_bad(const char *s)
{
    int64_t us = 12345;
    /* s may be NULL: printing a NULL %s is undefined (gcc -O2 refuses it). */
    if (obx_timestamptz_parse(s, &us) != -1) fail_msg("accepted \"%s\" as %lld", s ? s : "(null)", (long long)us);
    assert_int_equal(us, 12345); /* untouched */
}

static void test_timestamptz_parse(void **state)
{
    (void)state;
    const int64_t base = INT64_C(1795695312025922); /* 2026-11-26 12:15:12.025922Z */
    ts_ok("2026-11-26 12:15:12.025922+00", base);
    ts_ok("2026-11-26 17:45:12.025922+05:30", base);
    ts_ok("2026-11-26 17:45:12.025922+0530", base);
    ts_ok("2026-11-26 04:15:12.025922-08", base);
    ts_ok("2026-11-26 04:15:12.025922-08:00", base);
    ts_ok("2026-11-26 12:15:12.025922 UTC", base);
    ts_ok("2026-11-26 12:15:12.025922UTC", base);
    ts_ok("2026-11-26 12:15:12.025922 GMT", base);
    ts_ok("2026-11-26T12:15:12.025922Z", base);
    ts_ok("2026-11-26T12:15:12.025922+00:00", base);
    ts_ok("2026-11-26 12:15:12.0259229999+00", base); /* beyond microseconds: truncated */
    ts_ok("2026-11-26 12:15:12+00", base - 25922);     /* no fraction */
    ts_ok("2026-11-26 12:15:12", base - 25922);        /* no zone: UTC */
    ts_ok("2026-11-26 12:15:12.5+00", base - 25922 + 500000);
    ts_ok("2026-11-26 12:15:12.02468+00", INT64_C(1795695312024680));
    ts_ok("1970-01-01 00:00:00+00", 0);
    ts_ok("1969-12-31 23:59:59.5+00", -500000);
    ts_ok("2000-01-01 00:00:00+00", INT64_C(946684800000000));
    ts_ok("2000-02-29 00:53:28+00:53:28", INT64_C(951782400000000)); /* LMT-style seconds offset */
    ts_ok("1999-12-31 23:59:59.999999-08", INT64_C(946713599999999));
    ts_ok("2024-02-29 12:00:00+00", INT64_C(1709208000000000));

    ts_bad(NULL);
    ts_bad("");
    ts_bad("garbage");
    ts_bad("2026-11-26");
    ts_bad("2026-11-26 12:15");
    ts_bad("2026-11-26X12:15:12+00");
    ts_bad("2026-13-01 00:00:00+00");
    ts_bad("2026-11-26 25:00:00+00");
    ts_bad("2026-11-26 12:15:12+5");    /* one-digit offset */
    ts_bad("2026-11-26 12:15:12+");
    ts_bad("2026-11-26 12:15:12+05:3"); /* one-digit minutes */
    ts_bad("2026-11-26 12:15:12 PST");  /* an abbreviation we cannot resolve */
    ts_bad("2026-11-26 12:15:12+00 BC");
    ts_bad("2026-11-26 12:15:12+00junk");
    ts_bad("26/11/2026 04:15:12.5 PST"); /* DateStyle SQL */
    ts_bad("Thu Nov 26 04:15:12.5 2026 PST"); /* DateStyle Postgres */
}

/* ---- LSN text --------------------------------------------------------- */

static void lsn_ok(const char *s, obx_lsn_t want)
{
    obx_lsn_t l = 7;
    if (obx_lsn_parse(s, &l) != 0) fail_msg("rejected \"%s\"", s);
    assert_int_equal(l, want);
}

static void lsn_bad(const char *s)
{
    obx_lsn_t l = 7;
    if (obx_lsn_parse(s, &l) != -1) fail_msg("accepted \"%s\"", s ? s : "(null)");
    assert_int_equal(l, 7);
}

static void test_lsn_parse_format(void **state)
{
    (void)state;
    char buf[24];
    lsn_ok("0/0", 0);
    lsn_ok("0/19BDF40", 0x19BDF40);
    lsn_ok("16/B374D848", UINT64_C(0x16B374D848));
    lsn_ok("16/b374d848", UINT64_C(0x16B374D848));
    lsn_ok("FFFFFFFF/FFFFFFFF", UINT64_MAX);
    lsn_ok("00000001/00000000", UINT64_C(0x100000000));

    lsn_bad(NULL);
    lsn_bad("");
    lsn_bad("/");
    lsn_bad("0/");
    lsn_bad("/0");
    lsn_bad("0");
    lsn_bad("19BDF40");
    lsn_bad("1/2/3");
    lsn_bad("0/XYZ");
    lsn_bad("G/0");
    lsn_bad("1/2 ");
    lsn_bad(" 1/2");
    lsn_bad("1/ 2");
    lsn_bad("+1/2");
    lsn_bad("1/-2");
    lsn_bad("-1/0");
    lsn_bad("0x1/2");
    lsn_bad("1/0x2");
    lsn_bad("100000000/0");
    lsn_bad("0/100000000");
    lsn_bad("000000001/0"); /* 9 digits, like pg_lsn_in */

    assert_string_equal(obx_lsn_format(0, buf, sizeof(buf)), "0/0");
    assert_string_equal(obx_lsn_format(UINT64_C(0x16B374D848), buf, sizeof(buf)), "16/B374D848");
    assert_string_equal(obx_lsn_format(UINT64_MAX, buf, sizeof(buf)), "FFFFFFFF/FFFFFFFF");
    assert_string_equal(obx_lsn_format(0x19BDF40, buf, sizeof(buf)), "0/19BDF40");
    assert_ptr_equal(obx_lsn_format(1, buf, sizeof(buf)), buf);

    /* round trip over a spread of values */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < 1000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        obx_lsn_t back = 0;
        obx_lsn_format(x, buf, sizeof(buf));
        assert_int_equal(obx_lsn_parse(buf, &back), 0);
        assert_int_equal(back, x);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_brief_examples),
        cmocka_unit_test(test_len_bounds_the_line),
        cmocka_unit_test(test_captured_outbox_txn),
        cmocka_unit_test(test_captured_escapes_unicode_nulls),
        cmocka_unit_test(test_unicode_escapes_in_line),
        cmocka_unit_test(test_captured_numbers),
        cmocka_unit_test(test_captured_bool_bytea_time),
        cmocka_unit_test(test_captured_datestyle_sql),
        cmocka_unit_test(test_captured_update_delete_truncate),
        cmocka_unit_test(test_captured_messages),
        cmocka_unit_test(test_captured_huge_payload),
        cmocka_unit_test(test_captured_empty_txn),
        cmocka_unit_test(test_captured_weird_names),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_many_columns),
        cmocka_unit_test(test_escape_table),
        cmocka_unit_test(test_timestamptz_parse),
        cmocka_unit_test(test_lsn_parse_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
