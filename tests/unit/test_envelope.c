/* Outbox row -> event (src/outbox.h) and the protobuf envelope
 * (src/envelope.h), from wal2json lines captured on PG 15 (data/). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "config.h"
#include "envelope.h"
#include "outbox.h"
#include "outboxd/v1/event.pb-c.h"
#include "unit_data.h"
#include "wal2json.h"

/* outbox_variants.jsonl: one txn, line numbers of its changes */
enum {
    V_BEGIN = 0,
    V_FULL = 1,          /* topic override, headers of every JSON type, no version */
    V_EMPTY_TOPIC = 2,   /* topic '' -> template; version 3 */
    V_TOPIC_SPACE = 3,   /* topic 'bad topic' */
    V_TOPIC_250 = 4,     /* topic of 250 chars */
    V_TYPE_SPACE = 5,    /* aggregatetype 'bad type' */
    V_NULL_ID = 6,
    V_NULL_AGGID = 7,
    V_NULL_PAYLOAD = 8,  /* payload NULL, headers '[1]' */
    V_TOPIC_249 = 9,
    V_AGGTYPE_237 = 10,  /* template gives 250 chars */
    V_AGGTYPE_236 = 11,  /* template gives 249 chars; version -(2^53-1) */
    V_NULL_TYPE = 12,
    V_TOPIC_300 = 13,
    V_BYTEA = 14,        /* '\x00ff10abCDEF7f80' */
    V_BYTEA_EMPTY = 15,
    V_BYTEA_NULL = 16,
    V_NUM_AGGID_BIG = 17, /* aggregateid bigint 2^53+1 */
    V_NUM_VER_FRAC = 18,  /* aggregate_version numeric 1.5 */
    V_NUM_VER_BIG = 19,   /* aggregate_version numeric 2^53+1 */
    V_NUM_OK = 20,        /* aggregateid bigint -5, version numeric 10.0, json payload */
    V_COMMIT = 21
};

typedef struct {
    lines_t l;
    obx_w2j_change_t b, c;
    obx_config_t *cfg;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    f->cfg = obx_config_new();
    if (!f->cfg) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    obx_w2j_change_clear(&f->b);
    obx_w2j_change_clear(&f->c);
    unload(&f->l);
    obx_config_destroy(f->cfg);
    free(f);
    return 0;
}

static void parse_line(const lines_t *l, int i, obx_w2j_change_t *c)
{
    char err[256] = "";
    assert_true(i < l->n);
    if (obx_w2j_parse(l->line[i], l->len[i], c, err, sizeof(err)) != 0) fail_msg("line %d: %s", i, err);
}

/* Loads file; f->b = its first line (BEGIN), f->c = line i. */
static void change(fx_t *f, const char *file, int i)
{
    if (!f->l.buf) load(&f->l, file);
    parse_line(&f->l, 0, &f->b);
    assert_int_equal(f->b.kind, OBX_CHG_BEGIN);
    parse_line(&f->l, i, &f->c);
    assert_int_equal(f->c.kind, OBX_CHG_INSERT);
}

static void set(obx_config_t *cfg, const char *k, const char *v)
{
    char err[256];
    if (obx_config_set(cfg, k, v, "test", err, sizeof(err)) != 0) fail_msg("%s", err);
}

static void map_ok(fx_t *f, obx_outbox_row_t *row)
{
    char err[512] = "";
    if (obx_outbox_map(f->cfg, &f->c, row, err, sizeof(err)) != 0) fail_msg("map: %s", err);
}

/* The row is poison: -1, errstr names the column (and more words). */
static void map_poison(fx_t *f, const char *const *needles)
{
    obx_outbox_row_t row;
    char err[512] = "";
    memset(&row, 0x5a, sizeof(row));
    int rc = obx_outbox_map(f->cfg, &f->c, &row, err, sizeof(err));
    if (rc != -1) fail_msg("row accepted (topic %s)", row.topic);
    for (; *needles; needles++)
        if (!strstr(err, *needles)) fail_msg("errstr \"%s\" lacks \"%s\"", err, *needles);
    /* left cleared: nothing to free, nothing dangling */
    assert_null(row.payload_buf);
    assert_null(row.event_id);
    assert_int_equal(row.topic[0], '\0');
}

#define POISON(f, ...) map_poison(f, (const char *const[]){__VA_ARGS__, NULL})

static obx_source_t source_of(const fx_t *f, uint32_t index)
{
    obx_source_t s = {
        .commit_lsn = f->b.lsn, .commit_end_lsn = f->b.nextlsn, .change_lsn = f->c.lsn,
        .index_in_txn = index, .xid = f->b.xid, .commit_time_us = f->b.commit_time_us,
        .database = "app", .schema = f->c.schema, .table = f->c.table, .slot = "ut_capture",
    };
    return s;
}

static Outboxd__V1__Event *roundtrip(const obx_outbox_row_t *row, const obx_source_t *src, uint8_t **buf, size_t *len)
{
    char err[256] = "";
    *buf = NULL;
    if (obx_envelope_encode(row, src, buf, len, err, sizeof(err)) != 0) fail_msg("encode: %s", err);
    assert_non_null(*buf);
    Outboxd__V1__Event *ev = obx_envelope_decode(*buf, *len);
    assert_non_null(ev);
    return ev;
}

static void assert_source(const Outboxd__V1__Event *ev, const obx_source_t *s)
{
    assert_non_null(ev->source);
    assert_int_equal(ev->source->commit_lsn, s->commit_lsn);
    assert_int_equal(ev->source->commit_end_lsn, s->commit_end_lsn);
    assert_int_equal(ev->source->change_lsn, s->change_lsn);
    assert_int_equal(ev->source->index_in_txn, s->index_in_txn);
    assert_int_equal(ev->source->xid, s->xid);
    assert_int_equal(ev->source->commit_time_us, s->commit_time_us);
    assert_string_equal(ev->source->database, s->database);
    assert_string_equal(ev->source->schema, s->schema);
    assert_string_equal(ev->source->table, s->table);
    assert_string_equal(ev->source->slot, s->slot);
}

static const char *header(const Outboxd__V1__Event *ev, const char *k)
{
    for (size_t i = 0; i < ev->n_headers; i++)
        if (strcmp(ev->headers[i]->key, k) == 0) return ev->headers[i]->value;
    fail_msg("no header %s", k);
    return NULL;
}

/* ---- mapping + round trip -------------------------------------------- */

static void test_basic_row(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;
    change(f, "outbox_basic.jsonl", 1);
    map_ok(f, &row);
    assert_string_equal(row.event_id, "4c215ef0-a0de-4f54-8e4d-f24837890dcc");
    assert_string_equal(row.aggregate_type, "athlete");
    assert_string_equal(row.aggregate_id, "a1");
    assert_string_equal(row.event_type, "AthleteUpdated");
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_JSON);
    assert_int_equal(row.has_version, 1);
    assert_int_equal(row.version, 1);
    assert_int_equal(row.occurred_at_us, INT64_C(1795695312024680));
    assert_string_equal(row.headers_json, "{\"n\": 5, \"trace\": \"t1\"}");
    assert_string_equal(row.topic, "outbox.event.athlete");

    obx_source_t src = source_of(f, 0);
    assert_int_equal(src.commit_lsn, 0x1A178D8);
    assert_int_equal(src.commit_end_lsn, 0x1A17908);
    assert_int_equal(src.change_lsn, 0x1A17818);
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);
    assert_string_equal(ev->event_id, "4c215ef0-a0de-4f54-8e4d-f24837890dcc");
    assert_string_equal(ev->aggregate_type, "athlete");
    assert_string_equal(ev->aggregate_id, "a1");
    assert_string_equal(ev->event_type, "AthleteUpdated");
    assert_int_equal(ev->version_case, OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION);
    assert_int_equal(ev->aggregate_version, 1);
    assert_int_equal(ev->occurred_at_us, INT64_C(1795695312024680));
    const char *payload = "{\"name\": \"Zo\xc3\xab \\\"q\\\"\"}";
    assert_int_equal(ev->payload.len, strlen(payload));
    assert_memory_equal(ev->payload.data, payload, strlen(payload));
    assert_string_equal(ev->content_type, "application/json");
    assert_int_equal(ev->n_headers, 2);
    assert_string_equal(ev->headers[0]->key, "n");
    assert_string_equal(ev->headers[0]->value, "5");
    assert_string_equal(ev->headers[1]->key, "trace");
    assert_string_equal(ev->headers[1]->value, "t1");
    assert_source(ev, &src);
    assert_int_equal(ev->source->xid, 777);
    assert_int_equal(ev->source->commit_time_us, INT64_C(1795695468591407));
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);
}

static void test_topic_override_and_headers(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;
    change(f, "outbox_variants.jsonl", V_FULL);
    map_ok(f, &row);
    assert_string_equal(row.topic, "custom.topic_1"); /* topic column wins */
    assert_int_equal(row.has_version, 0);             /* NULL version */
    assert_int_equal(row.occurred_at_us, INT64_C(1795675512500000)); /* 12:15:12.5+05:30 */

    obx_source_t src = source_of(f, 0);
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);
    assert_int_equal(ev->version_case, OUTBOXD__V1__EVENT__VERSION__NOT_SET);
    assert_int_equal(ev->aggregate_version, 0);
    /* payload bytes are the jsonb text: big numbers and 12.50 untouched */
    const char *payload = "{\"n\": 12345678901234567890, \"total\": 12.50}";
    assert_int_equal(ev->payload.len, strlen(payload));
    assert_memory_equal(ev->payload.data, payload, strlen(payload));
    /* headers in jsonb's key order; non-strings as their JSON text, as written */
    assert_int_equal(ev->n_headers, 8);
    static const char *const keys[] = {"b", "f", "n", "o", "s", "u", "z", "big"};
    for (int i = 0; i < 8; i++) assert_string_equal(ev->headers[i]->key, keys[i]);
    assert_string_equal(header(ev, "s"), "v");
    assert_string_equal(header(ev, "n"), "5");
    assert_string_equal(header(ev, "f"), "1.5");
    assert_string_equal(header(ev, "b"), "true");
    assert_string_equal(header(ev, "z"), "null");
    assert_string_equal(header(ev, "o"), "{\"a\": [1, 2]}");
    assert_string_equal(header(ev, "u"), "\xc3\xa9\xf0\x9f\x98\x80");
    /* Not through a double: the digits as the row has them. */
    assert_string_equal(header(ev, "big"), "12345678901234567890");
    assert_source(ev, &src);
    assert_int_equal(ev->source->commit_lsn, 0x2D74620);
    assert_int_equal(ev->source->commit_end_lsn, 0x2D74650);
    assert_int_equal(ev->source->change_lsn, 0x2D73718);
    assert_int_equal(ev->source->xid, 2123);
    assert_int_equal(ev->source->commit_time_us, INT64_C(1795695518120398));
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);
}

static void test_template_and_versions(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;

    change(f, "outbox_variants.jsonl", V_EMPTY_TOPIC);
    map_ok(f, &row);
    assert_string_equal(row.topic, "outbox.event.order"); /* '' topic = unset */
    assert_int_equal(row.has_version, 1);
    assert_int_equal(row.version, 3);
    assert_int_equal(row.occurred_at_us, 0);
    assert_null(row.headers_json);
    obx_source_t src = source_of(f, 1);
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);
    assert_int_equal(ev->n_headers, 0);
    assert_int_equal(ev->occurred_at_us, 0);
    assert_int_equal(ev->aggregate_version, 3);
    assert_int_equal(ev->source->index_in_txn, 1);
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);

    change(f, "outbox_variants.jsonl", V_TOPIC_249);
    map_ok(f, &row);
    assert_int_equal(strlen(row.topic), 249);
    obx_outbox_row_clear(&row);

    change(f, "outbox_variants.jsonl", V_AGGTYPE_236);
    map_ok(f, &row);
    assert_int_equal(strlen(row.topic), 249);
    assert_memory_equal(row.topic, "outbox.event.aaa", 16);
    assert_int_equal(row.version, -INT64_C(9007199254740991));
    src = source_of(f, 2);
    ev = roundtrip(&row, &src, &buf, &len);
    assert_int_equal(ev->aggregate_version, -INT64_C(9007199254740991));
    assert_int_equal(strlen(ev->aggregate_type), 236);
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);

    /* another template, the variable used twice */
    set(f->cfg, "topic.template", "${aggregatetype}.events.${aggregatetype}");
    change(f, "outbox_variants.jsonl", V_EMPTY_TOPIC);
    map_ok(f, &row);
    assert_string_equal(row.topic, "order.events.order");
    obx_outbox_row_clear(&row);
    set(f->cfg, "topic.template", "all-events");
    map_ok(f, &row);
    assert_string_equal(row.topic, "all-events");
    obx_outbox_row_clear(&row);
}

/* aggregateid from a bigint column, version from numeric 10.0, json payload,
 * and a table without the optional columns. */
static void test_numeric_columns(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    change(f, "outbox_variants.jsonl", V_NUM_OK);
    map_ok(f, &row);
    assert_string_equal(row.aggregate_id, "-5");
    assert_int_equal(row.has_version, 1);
    assert_int_equal(row.version, 10);
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_JSON); /* json, not only jsonb */
    assert_int_equal(row.payload_len, 6);
    assert_memory_equal(row.payload, "[1, 2]", 6);
    assert_string_equal(row.topic, "outbox.event.acct");
    assert_null(row.headers_json);
    assert_int_equal(row.occurred_at_us, 0);
    obx_outbox_row_clear(&row);
}

static void test_bytea_payload(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;
    static const unsigned char want[] = {0x00, 0xff, 0x10, 0xab, 0xcd, 0xef, 0x7f, 0x80};

    change(f, "outbox_variants.jsonl", V_BYTEA);
    map_ok(f, &row);
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_BYTES);
    assert_int_equal(row.payload_len, sizeof(want));
    assert_memory_equal(row.payload, want, sizeof(want));
    assert_int_equal(row.occurred_at_us, INT64_C(946713599999999));
    assert_string_equal(row.topic, "outbox.event.blob");
    obx_source_t src = source_of(f, 0);
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);
    assert_string_equal(ev->content_type, "application/octet-stream");
    assert_int_equal(ev->payload.len, sizeof(want));
    assert_memory_equal(ev->payload.data, want, sizeof(want));
    assert_string_equal(ev->source->table, "ut_outbox_bytea");
    assert_int_equal(ev->occurred_at_us, INT64_C(946713599999999));
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);

    change(f, "outbox_variants.jsonl", V_BYTEA_EMPTY);
    map_ok(f, &row);
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_BYTES);
    assert_int_equal(row.payload_len, 0);
    assert_int_equal(row.has_version, 0);
    src = source_of(f, 1); /* the old one borrowed from the previous parse */
    ev = roundtrip(&row, &src, &buf, &len);
    assert_int_equal(ev->payload.len, 0);
    assert_string_equal(ev->content_type, "application/octet-stream");
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);

    change(f, "outbox_variants.jsonl", V_BYTEA_NULL);
    map_ok(f, &row);
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_BYTES);
    assert_null(row.payload);
    assert_int_equal(row.payload_len, 0);
    assert_int_equal(row.version, 2);
    obx_outbox_row_clear(&row);
}

static void test_text_payload(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;
    /* messages.jsonl: M, B, M, M, I(ut_outbox_text), C */
    load(&f->l, "messages.jsonl");
    parse_line(&f->l, 1, &f->b);
    parse_line(&f->l, 4, &f->c);
    map_ok(f, &row);
    assert_string_equal(row.event_id, "e1");
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_TEXT);
    assert_int_equal(row.has_version, 0); /* no such column: optional */
    assert_null(row.headers_json);
    assert_string_equal(row.topic, "outbox.event.note");
    obx_source_t src = source_of(f, 0);
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);
    assert_string_equal(ev->content_type, "text/plain; charset=utf-8");
    assert_int_equal(ev->payload.len, 10);
    assert_memory_equal(ev->payload.data, "plain text", 10);
    assert_int_equal(ev->source->xid, 2118);
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);
}

static void test_null_payload_json(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *out = NULL;
    size_t len = 0;
    char err[256] = "";
    change(f, "outbox_variants.jsonl", V_NULL_PAYLOAD);
    map_ok(f, &row);
    assert_null(row.payload);
    assert_int_equal(row.payload_len, 0);
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_JSON);
    /* headers '[1]' maps, but cannot become envelope headers */
    assert_string_equal(row.headers_json, "[1]");
    obx_source_t src = source_of(f, 0);
    assert_int_equal(obx_envelope_encode(&row, &src, &out, &len, err, sizeof(err)), -1);
    assert_null(out);
    assert_non_null(strstr(err, "headers"));
    assert_non_null(strstr(err, "not a JSON object"));
    /* without headers it encodes, payload empty */
    row.headers_json = NULL;
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &out, &len);
    assert_int_equal(ev->payload.len, 0);
    assert_int_equal(ev->version_case, OUTBOXD__V1__EVENT__VERSION__NOT_SET);
    obx_envelope_free(ev);
    free(out);
    obx_outbox_row_clear(&row);
}

static void test_huge_payload(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;
    change(f, "outbox_huge.jsonl", 1);
    map_ok(f, &row);
    assert_int_equal(row.payload_len, 982904);
    obx_source_t src = source_of(f, 0);
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);
    assert_true(len > 982904);
    assert_int_equal(ev->payload.len, 982904);
    assert_memory_equal(ev->payload.data, obx_w2j_col(&f->c, "payload")->value, 982904);
    assert_int_equal(ev->aggregate_version, 7);
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);
}

/* Field numbers are a wire contract: bytes computed by hand from
 * event.proto (tag = field << 3 | wire type). */
static void test_wire_format(void **state)
{
    (void)state;
    static const uint8_t want[] = {
        0x0a, 0x01, 'e', 0x12, 0x01, 't', 0x1a, 0x01, 'k',
        0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, /* version -1 */
        0x2a, 0x01, 'T', 0x30, 0x01, 0x3a, 0x02, '{', '}',
        0x42, 0x10, 'a', 'p', 'p', 'l', 'i', 'c', 'a', 't', 'i', 'o', 'n', '/', 'j', 's', 'o', 'n',
        0x4a, 0x06, 0x0a, 0x01, 'h', 0x12, 0x01, 'v',
        0x52, 0x18, 0x08, 0x01, 0x10, 0x02, 0x18, 0x03, 0x20, 0x04, 0x28, 0x05,
        0x32, 0x01, 'd', 0x3a, 0x01, 's', 0x42, 0x01, 't', 0x4a, 0x01, 'l', 0x50, 0x06};
    obx_outbox_row_t row;
    memset(&row, 0, sizeof(row));
    row.event_id = "e";
    row.aggregate_type = "t";
    row.aggregate_id = "k";
    row.event_type = "T";
    row.has_version = 1;
    row.version = -1;
    row.occurred_at_us = 1;
    row.payload = (const unsigned char *)"{}";
    row.payload_len = 2;
    row.payload_kind = OBX_PAYLOAD_JSON;
    row.headers_json = "{\"h\": \"v\"}";
    obx_source_t src = {.commit_lsn = 1, .change_lsn = 2, .index_in_txn = 3, .xid = 4, .commit_time_us = 5,
                        .database = "d", .schema = "s", .table = "t", .slot = "l", .commit_end_lsn = 6};
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[128];
    assert_int_equal(obx_envelope_encode(&row, &src, &buf, &len, err, sizeof(err)), 0);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, sizeof(want));
    free(buf);

    /* version 0 is present (oneof), not absent; NULL source strings are "" */
    row.version = 0;
    row.headers_json = NULL;
    obx_source_t empty = {0};
    Outboxd__V1__Event *ev = roundtrip(&row, &empty, &buf, &len);
    assert_int_equal(ev->version_case, OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION);
    assert_int_equal(ev->aggregate_version, 0);
    assert_string_equal(ev->source->database, "");
    assert_string_equal(ev->source->slot, "");
    obx_envelope_free(ev);
    free(buf);
}

static void test_decode_garbage(void **state)
{
    (void)state;
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
    assert_null(obx_envelope_decode(junk, sizeof(junk)));
    static const uint8_t cut[] = {0x0a, 0x05, 'a', 'b'}; /* string of 5, 2 present */
    assert_null(obx_envelope_decode(cut, sizeof(cut)));
    obx_envelope_free(NULL);
}

/* ---- JSON rendering (outboxd consume) --------------------------------- */

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(v)) fail_msg("%s is not a string", k);
    return v->valuestring;
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v)) fail_msg("%s is not a number", k);
    return v->valuedouble;
}

static void assert_has(const char *json, const char *needle)
{
    if (!strstr(json, needle)) fail_msg("%s lacks %s", json, needle);
}

static void test_to_json(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;
    change(f, "outbox_variants.jsonl", V_FULL);
    map_ok(f, &row);
    obx_source_t src = source_of(f, 4);
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);

    char *js = obx_envelope_to_json(ev, row.topic, 7, INT64_MAX, "o-1\0junk", 3, INT64_C(1795695518123));
    assert_non_null(js);
    /* exact integers, beyond what a double holds */
    assert_has(js, "\"offset\":9223372036854775807");
    assert_has(js, "\"partition\":7");
    assert_has(js, "\"kafka_timestamp_ms\":1795695518123");
    assert_has(js, "\"occurred_at_us\":1795675512500000");
    assert_has(js, "\"commit_time_us\":1795695518120398");
    assert_has(js, "\"aggregate_version\":null");
    cJSON *o = cJSON_Parse(js);
    assert_non_null(o);
    assert_string_equal(jstr(o, "topic"), "custom.topic_1");
    assert_string_equal(jstr(o, "key"), "o-1");
    assert_string_equal(jstr(o, "event_id"), "11111111-1111-4111-8111-111111111111");
    assert_string_equal(jstr(o, "aggregate_type"), "order");
    assert_string_equal(jstr(o, "aggregate_id"), "o-1");
    assert_string_equal(jstr(o, "event_type"), "OrderPlaced");
    assert_string_equal(jstr(o, "content_type"), "application/json");
    assert_string_equal(jstr(o, "payload"), "{\"n\": 12345678901234567890, \"total\": 12.50}");
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "payload_hex"));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "aggregate_version")));
    assert_true(jnum(o, "occurred_at_us") == 1795675512500000.0);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "headers");
    assert_true(cJSON_IsObject(h));
    assert_int_equal(cJSON_GetArraySize(h), 8);
    assert_string_equal(jstr(h, "s"), "v");
    assert_string_equal(jstr(h, "n"), "5");
    assert_string_equal(jstr(h, "o"), "{\"a\": [1, 2]}");
    assert_string_equal(jstr(h, "u"), "\xc3\xa9\xf0\x9f\x98\x80");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "source");
    assert_true(cJSON_IsObject(s));
    assert_string_equal(jstr(s, "commit_lsn"), "0/2D74620");
    assert_string_equal(jstr(s, "commit_end_lsn"), "0/2D74650");
    assert_string_equal(jstr(s, "change_lsn"), "0/2D73718");
    assert_true(jnum(s, "index_in_txn") == 4.0);
    assert_true(jnum(s, "xid") == 2123.0);
    assert_string_equal(jstr(s, "database"), "app");
    assert_string_equal(jstr(s, "schema"), "public");
    assert_string_equal(jstr(s, "table"), "ut_outbox");
    assert_string_equal(jstr(s, "slot"), "ut_capture");
    cJSON_Delete(o);
    free(js);

    /* without a topic: no Kafka record fields */
    js = obx_envelope_to_json(ev, NULL, 0, 0, NULL, 0, 0);
    assert_non_null(js);
    o = cJSON_Parse(js);
    assert_non_null(o);
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "topic"));
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "offset"));
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "key"));
    assert_string_equal(jstr(o, "event_id"), "11111111-1111-4111-8111-111111111111");
    cJSON_Delete(o);
    free(js);
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);
}

static void test_to_json_bytes_and_version(void **state)
{
    fx_t *f = *state;
    obx_outbox_row_t row;
    uint8_t *buf;
    size_t len;
    change(f, "outbox_variants.jsonl", V_BYTEA);
    map_ok(f, &row);
    obx_source_t src = source_of(f, 0);
    src.xid = UINT32_MAX;
    Outboxd__V1__Event *ev = roundtrip(&row, &src, &buf, &len);
    char *js = obx_envelope_to_json(ev, "t", 0, 0, "b1", 2, 0);
    assert_non_null(js);
    assert_has(js, "\"aggregate_version\":1");
    assert_has(js, "\"xid\":4294967295");
    cJSON *o = cJSON_Parse(js);
    assert_non_null(o);
    assert_string_equal(jstr(o, "payload_hex"), "00ff10abcdef7f80");
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "payload"));
    assert_string_equal(jstr(o, "content_type"), "application/octet-stream");
    assert_true(jnum(o, "aggregate_version") == 1.0);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "headers")), 0);
    cJSON_Delete(o);
    free(js);
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);

    /* a version beyond 2^53 printed exactly */
    change(f, "outbox_variants.jsonl", V_EMPTY_TOPIC);
    map_ok(f, &row);
    row.version = INT64_MIN;
    src = source_of(f, 0);
    ev = roundtrip(&row, &src, &buf, &len);
    js = obx_envelope_to_json(ev, NULL, 0, 0, NULL, 0, 0);
    assert_non_null(js);
    assert_has(js, "\"aggregate_version\":-9223372036854775808");
    free(js);
    obx_envelope_free(ev);
    free(buf);
    obx_outbox_row_clear(&row);
}

/* ---- poison rows ------------------------------------------------------ */

static void test_poison_nulls(void **state)
{
    fx_t *f = *state;
    change(f, "outbox_variants.jsonl", V_NULL_ID);
    POISON(f, "\"id\"", "NULL");
    change(f, "outbox_variants.jsonl", V_NULL_AGGID);
    POISON(f, "\"aggregateid\"", "NULL");
    change(f, "outbox_variants.jsonl", V_NULL_TYPE);
    POISON(f, "\"type\"", "NULL");
}

static void test_poison_missing_column(void **state)
{
    fx_t *f = *state;
    change(f, "outbox_variants.jsonl", V_FULL);
    set(f->cfg, "outbox.column.type", "kind");
    POISON(f, "\"kind\"", "no column");
    set(f->cfg, "outbox.column.type", "type");
    set(f->cfg, "outbox.column.payload", "body");
    POISON(f, "\"body\"", "no column");
    set(f->cfg, "outbox.column.payload", "payload");
    set(f->cfg, "outbox.column.aggregateid", "aggregate_id");
    POISON(f, "\"aggregate_id\"", "no column");
    set(f->cfg, "outbox.column.aggregateid", "aggregateid");
    obx_outbox_row_t row;
    map_ok(f, &row); /* and back to a good mapping */
    obx_outbox_row_clear(&row);

    /* optional columns may be missing or switched off */
    set(f->cfg, "outbox.column.topic", "");
    set(f->cfg, "outbox.column.headers", "nope");
    set(f->cfg, "outbox.column.occurred_at", "");
    map_ok(f, &row);
    assert_string_equal(row.topic, "outbox.event.order");
    assert_null(row.headers_json);
    assert_int_equal(row.occurred_at_us, 0);
    obx_outbox_row_clear(&row);
    change(f, "outbox_variants.jsonl", V_EMPTY_TOPIC);
    set(f->cfg, "outbox.column.aggregate_version", "");
    map_ok(f, &row);
    assert_int_equal(row.has_version, 0);
    obx_outbox_row_clear(&row);
}

static void test_poison_topics(void **state)
{
    fx_t *f = *state;
    change(f, "outbox_variants.jsonl", V_TOPIC_SPACE);
    POISON(f, "\"topic\"", "bad topic", "not a valid Kafka topic");
    change(f, "outbox_variants.jsonl", V_TOPIC_250);
    POISON(f, "\"topic\"", "not a valid Kafka topic");
    change(f, "outbox_variants.jsonl", V_TOPIC_300);
    POISON(f, "\"topic\"", "longer than 249");
    change(f, "outbox_variants.jsonl", V_TYPE_SPACE);
    POISON(f, "\"aggregatetype\"", "outbox.event.bad type");
    change(f, "outbox_variants.jsonl", V_AGGTYPE_237);
    POISON(f, "\"aggregatetype\"", "not a valid Kafka topic");
    /* a template that overflows the topic buffer */
    set(f->cfg, "topic.template", "${aggregatetype}.${aggregatetype}");
    change(f, "outbox_variants.jsonl", V_AGGTYPE_236);
    POISON(f, "\"aggregatetype\"", "longer than 249");
    /* a renamed column is the one named */
    set(f->cfg, "topic.template", "outbox.event.${aggregatetype}");
    set(f->cfg, "outbox.column.topic", "aggregateid");
    change(f, "outbox_variants.jsonl", V_TOPIC_SPACE); /* aggregateid o-3 is a fine topic */
    obx_outbox_row_t row;
    map_ok(f, &row);
    assert_string_equal(row.topic, "o-3");
    obx_outbox_row_clear(&row);
    set(f->cfg, "outbox.column.topic", "type");
    set(f->cfg, "outbox.column.aggregatetype", "id");
    change(f, "outbox_variants.jsonl", V_TYPE_SPACE);
    map_ok(f, &row);
    assert_string_equal(row.topic, "OrderPlaced");
    obx_outbox_row_clear(&row);
}

static void test_poison_inexact_numbers(void **state)
{
    fx_t *f = *state;
    change(f, "outbox_variants.jsonl", V_NUM_AGGID_BIG);
    POISON(f, "\"aggregateid\"", "cannot be carried exactly");
    change(f, "outbox_variants.jsonl", V_NUM_VER_FRAC);
    POISON(f, "\"aggregate_version\"", "1.5");
    change(f, "outbox_variants.jsonl", V_NUM_VER_BIG);
    POISON(f, "\"aggregate_version\"", "beyond 2^53");
}

static void test_poison_bad_values(void **state)
{
    fx_t *f = *state;
    /* occurred_at decoded with DateStyle SQL */
    change(f, "outbox_datestyle_sql.jsonl", 1);
    POISON(f, "\"occurred_at\"", "26/11/2026 04:15:12.5 PST");
    unload(&f->l);
    memset(&f->l, 0, sizeof(f->l));

    /* bytea decoded with bytea_output = escape: wal2json cut off "\x" that
     * was not there, leaving 'C\377\000' of 'ABC\377\000' */
    change(f, "bytea_escape_output.jsonl", 1);
    assert_string_equal(obx_w2j_col(&f->c, "payload")->value, "C\\377\\000");
    POISON(f, "\"payload\"", "odd hex length 9");
    unload(&f->l);
    memset(&f->l, 0, sizeof(f->l));

    /* by hand: even-length non-hex bytea, and a text version */
    static const char *const lines[] = {
        "{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"public\",\"table\":\"o\",\"columns\":["
        "{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"u\"},{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"a\"},"
        "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"k\"},{\"name\":\"type\",\"type\":\"text\",\"value\":\"T\"},"
        "{\"name\":\"payload\",\"type\":\"bytea\",\"value\":\"00zz\"}]}",
        "{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"public\",\"table\":\"o\",\"columns\":["
        "{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"u\"},{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"a\"},"
        "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"k\"},{\"name\":\"type\",\"type\":\"text\",\"value\":\"T\"},"
        "{\"name\":\"payload\",\"type\":\"text\",\"value\":\"p\"},{\"name\":\"aggregate_version\",\"type\":\"text\",\"value\":\"v1\"}]}",
        "{\"action\":\"I\",\"lsn\":\"0/1\",\"schema\":\"public\",\"table\":\"o\",\"columns\":["
        "{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"u\"},{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"a\"},"
        "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"k\"},{\"name\":\"type\",\"type\":\"text\",\"value\":\"T\"},"
        "{\"name\":\"payload\",\"type\":\"text\",\"value\":\"p\"},{\"name\":\"aggregate_version\",\"type\":\"text\",\"value\":\"99999999999999999999\"}]}",
    };
    char err[256];
    assert_int_equal(obx_w2j_parse(lines[0], strlen(lines[0]), &f->c, err, sizeof(err)), 0);
    POISON(f, "\"payload\"", "not hex");
    assert_int_equal(obx_w2j_parse(lines[1], strlen(lines[1]), &f->c, err, sizeof(err)), 0);
    POISON(f, "\"aggregate_version\"", "\"v1\"", "not a 64-bit integer");
    assert_int_equal(obx_w2j_parse(lines[2], strlen(lines[2]), &f->c, err, sizeof(err)), 0);
    POISON(f, "\"aggregate_version\"", "not a 64-bit integer");
}

/* ---- small helpers of outbox.h ---------------------------------------- */

static void test_topic_helpers(void **state)
{
    (void)state;
    char out[32], long_name[300];
    assert_true(obx_topic_valid("outbox.event.order"));
    assert_true(obx_topic_valid("A-z_0.9"));
    assert_true(obx_topic_valid("..."));
    assert_false(obx_topic_valid(""));
    assert_false(obx_topic_valid("."));
    assert_false(obx_topic_valid(".."));
    assert_false(obx_topic_valid("a b"));
    assert_false(obx_topic_valid("a/b"));
    assert_false(obx_topic_valid("\xc3\xa9"));
    memset(long_name, 'x', sizeof(long_name));
    long_name[249] = '\0';
    assert_true(obx_topic_valid(long_name));
    long_name[249] = 'x';
    long_name[250] = '\0';
    assert_false(obx_topic_valid(long_name));

    assert_int_equal(obx_topic_expand("outbox.event.${aggregatetype}", "order", out, sizeof(out)), 0);
    assert_string_equal(out, "outbox.event.order");
    assert_int_equal(obx_topic_expand("${aggregatetype}", "", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(obx_topic_expand("x${aggregatetyp}", "order", out, sizeof(out)), 0);
    assert_string_equal(out, "x${aggregatetyp}");
    assert_int_equal(obx_topic_expand("${aggregatetype}", "0123456789", out, 11), 0);
    assert_string_equal(out, "0123456789");
    assert_int_equal(obx_topic_expand("${aggregatetype}", "0123456789", out, 10), -1);
    assert_int_equal(obx_topic_expand("0123456789", "", out, 10), -1);

    assert_string_equal(obx_payload_content_type(OBX_PAYLOAD_JSON), "application/json");
    assert_string_equal(obx_payload_content_type(OBX_PAYLOAD_BYTES), "application/octet-stream");
    assert_string_equal(obx_payload_content_type(OBX_PAYLOAD_TEXT), "text/plain; charset=utf-8");
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

/* Non-string header values pass on as their text in the column, whatever
 * the number (beyond 2^53, 1.10, 1e400, -0), nesting or whitespace, and
 * strings full of JSON punctuation do not shift the walk. */
static void test_headers_values_as_written(void **state)
{
    (void)state;
    static const struct {
        const char *json, *kv[8]; /* expected key, value pairs */
    } cases[] = {
        {"{\"big\": 12345678901234567890, \"f\": 1.10, \"inf\": 1e400, \"z\": -0}",
         {"big", "12345678901234567890", "f", "1.10", "inf", "1e400", "z", "-0"}},
        {"{\"s\":\"a}\\\",b\\\\\",\"n\":007.5e+3,\"o\":{\"k\":\"]}\",\"a\":[1,{\"x\":2}]}}",
         {"s", "a}\",b\\", "n", "007.5e+3", "o", "{\"k\":\"]}\",\"a\":[1,{\"x\":2}]}"}},
        {"\n\t{ \"t\" :\ttrue ,\r\n\"nul\" : null,\"arr\": [ 1 , 2 ] , \"e\":{} }",
         {"t", "true", "nul", "null", "arr", "[ 1 , 2 ]", "e", "{}"}},
        {"{\"k\": 1, \"k\": 98765432109876543210}", {"k", "1", "k", "98765432109876543210"}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        obx_headers_t h;
        char e[256];
        if (obx_headers_parse(cases[i].json, &h, e, sizeof(e)) != 0) fail_msg("case %zu: %s", i, e);
        size_t n = 0;
        while (n < 4 && cases[i].kv[2 * n]) n++;
        assert_int_equal(h.n, n);
        for (size_t j = 0; j < n; j++) {
            assert_string_equal(h.kv[2 * j], cases[i].kv[2 * j]);
            assert_string_equal(h.kv[2 * j + 1], cases[i].kv[2 * j + 1]);
        }
        obx_headers_clear(&h);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_basic_row),
        T(test_topic_override_and_headers),
        T(test_template_and_versions),
        T(test_numeric_columns),
        T(test_bytea_payload),
        T(test_text_payload),
        T(test_null_payload_json),
        T(test_huge_payload),
        cmocka_unit_test(test_wire_format),
        cmocka_unit_test(test_decode_garbage),
        T(test_to_json),
        T(test_to_json_bytes_and_version),
        T(test_poison_nulls),
        T(test_poison_missing_column),
        T(test_poison_topics),
        T(test_poison_inexact_numbers),
        T(test_poison_bad_values),
        cmocka_unit_test(test_topic_helpers),
        cmocka_unit_test(test_headers_values_as_written),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
