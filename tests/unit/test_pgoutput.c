/* obx_pgo_parse on hand-built pgoutput (proto_version 1) messages, laid out
 * as PostgreSQL's proto.c writes them: the mapping onto the change struct
 * (as wal2json's), the relation and type caches, and truncated or hostile
 * input, which must be refused without reading past the message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "outbox.h"
#include "pgoutput.h"

#define PG_EPOCH_US (INT64_C(946684800) * 1000000)

typedef struct {
    unsigned char b[8192];
    size_t n;
} msg_t;

static void u8(msg_t *m, unsigned v) { m->b[m->n++] = (unsigned char)v; }
static void be(msg_t *m, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) u8(m, (unsigned)(v >> (8 * i)) & 0xff);
}
static void str(msg_t *m, const char *s)
{
    size_t l = strlen(s) + 1;
    memcpy(m->b + m->n, s, l);
    m->n += l;
}
static void text(msg_t *m, const char *v, size_t len)
{
    u8(m, 't');
    be(m, len, 4);
    memcpy(m->b + m->n, v, len);
    m->n += len;
}

static msg_t begin_msg(uint64_t final_lsn, int64_t time_pg, uint32_t xid)
{
    msg_t m = {.n = 0};
    u8(&m, 'B');
    be(&m, final_lsn, 8);
    be(&m, (uint64_t)time_pg, 8);
    be(&m, xid, 4);
    return m;
}

static msg_t commit_msg(uint64_t lsn, uint64_t end, int64_t time_pg)
{
    msg_t m = {.n = 0};
    u8(&m, 'C');
    u8(&m, 0);
    be(&m, lsn, 8);
    be(&m, end, 8);
    be(&m, (uint64_t)time_pg, 8);
    return m;
}

/* The outbox's Relation: id uuid, aggregatetype text, aggregateid text,
 * type text, payload (payload_oid), flag boolean, n bigint. */
static msg_t relation_msg(uint32_t oid, const char *schema, const char *table, uint32_t payload_oid)
{
    static const char *names[] = {"id", "aggregatetype", "aggregateid", "type", "payload", "flag", "n"};
    uint32_t types[] = {2950, 25, 25, 25, payload_oid, 16, 20};
    msg_t m = {.n = 0};
    u8(&m, 'R');
    be(&m, oid, 4);
    str(&m, schema);
    str(&m, table);
    u8(&m, 'd');
    be(&m, 7, 2);
    for (int i = 0; i < 7; i++) {
        u8(&m, i == 0);
        str(&m, names[i]);
        be(&m, types[i], 4);
        be(&m, (uint64_t)-1, 4);
    }
    return m;
}

static void tuple(msg_t *m, const char *payload, size_t payload_len)
{
    be(m, 7, 2);
    text(m, "2b0f5c6e-0000-4000-8000-000000000001", 36);
    text(m, "order", 5);
    text(m, "o-1", 3);
    text(m, "created", 7);
    if (payload) text(m, payload, payload_len);
    else u8(m, 'n');
    text(m, "t", 1);
    text(m, "9007199254740993", 16);
}

static msg_t insert_msg(uint32_t oid, const char *payload, size_t payload_len)
{
    msg_t m = {.n = 0};
    u8(&m, 'I');
    be(&m, oid, 4);
    u8(&m, 'N');
    tuple(&m, payload, payload_len);
    return m;
}

typedef struct {
    obx_pgo_t *p;
    obx_w2j_change_t c;
    obx_err_t err;
    int lookups;
} fx_t;

static int resolver(void *ctx, uint32_t oid, char *name, size_t size, obx_err_t *err)
{
    fx_t *f = ctx;
    (void)err;
    f->lookups++;
    if (oid == 70001) {
        snprintf(name, size, "%s", "public.money_amount");
        return 0;
    }
    return 1;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->p = obx_pgo_new(resolver, f);
    *state = f;
    return f->p ? 0 : -1;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    obx_w2j_change_clear(&f->c);
    obx_pgo_destroy(f->p);
    free(f);
    return 0;
}

static int parse(fx_t *f, const msg_t *m, uint64_t data_start)
{
    obx_err_clear(&f->err);
    return obx_pgo_parse(f->p, (const char *)m->b, m->n, data_start, &f->c, &f->err);
}

static int parse_v(fx_t *f, msg_t m) { return parse(f, &m, 0); }

static const obx_col_t *col(const obx_w2j_change_t *c, const char *name)
{
    const obx_col_t *v = obx_w2j_col(c, name);
    if (!v) fail_msg("no column %s", name);
    return v;
}

/* B and C as wal2json's: lsn = commit record start, C's nextlsn = its end,
 * times on the Unix epoch; B carries no end LSN (0). */
static void test_begin_commit(void **state)
{
    fx_t *f = *state;
    msg_t b = begin_msg(0x19BDF40, 817820112025922, 759);
    assert_int_equal(parse(f, &b, 0x19BDE00), 0);
    assert_int_equal(f->c.kind, OBX_CHG_BEGIN);
    assert_int_equal(f->c.lsn, 0x19BDF40);
    assert_int_equal(f->c.nextlsn, 0);
    assert_int_equal(f->c.xid, 759);
    assert_true(f->c.has_xid);
    assert_int_equal(f->c.commit_time_us, 817820112025922 + PG_EPOCH_US);
    msg_t c = commit_msg(0x19BDF40, 0x19BDF70, 817820112025922);
    assert_int_equal(parse(f, &c, 0x19BDF70), 0);
    assert_int_equal(f->c.kind, OBX_CHG_COMMIT);
    assert_int_equal(f->c.lsn, 0x19BDF40);
    assert_int_equal(f->c.nextlsn, 0x19BDF70);
    assert_int_equal(f->c.xid, 759);
    assert_int_equal(f->c.commit_time_us, 817820112025922 + PG_EPOCH_US);
}

/* Values as wal2json gives them: text, bytea without \x, booleans spelled
 * out, big integers exact; names and types from the Relation message. */
static void test_insert_values(void **state)
{
    fx_t *f = *state;
    msg_t r = relation_msg(16390, "public", "outbox", 17);
    assert_int_equal(parse(f, &r, 0), 1);
    msg_t b = begin_msg(0x3000, 0, 900);
    assert_int_equal(parse(f, &b, 0x2F00), 0);
    msg_t i = insert_msg(16390, "\\x00ff10", 8);
    assert_int_equal(parse(f, &i, 0x2F80), 0);
    assert_int_equal(f->c.kind, OBX_CHG_INSERT);
    assert_int_equal(f->c.lsn, 0x2F80);
    assert_int_equal(f->c.xid, 900);
    assert_string_equal(f->c.schema, "public");
    assert_string_equal(f->c.table, "outbox");
    assert_int_equal(f->c.ncols, 7);
    assert_string_equal(col(&f->c, "id")->type, "uuid");
    assert_string_equal(col(&f->c, "id")->value, "2b0f5c6e-0000-4000-8000-000000000001");
    assert_string_equal(col(&f->c, "payload")->type, "bytea");
    assert_string_equal(col(&f->c, "payload")->value, "00ff10");
    assert_int_equal(col(&f->c, "payload")->value_len, 6);
    assert_string_equal(col(&f->c, "flag")->value, "true");
    assert_string_equal(col(&f->c, "n")->value, "9007199254740993");
    assert_false(col(&f->c, "n")->inexact);

    /* the outbox mapping decodes the bytea payload as from wal2json */
    obx_config_t *cfg = obx_config_new();
    obx_outbox_row_t row;
    char e[256];
    assert_int_equal(obx_outbox_map(cfg, &f->c, &row, e, sizeof(e)), 0);
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_BYTES);
    assert_int_equal(row.payload_len, 3);
    assert_memory_equal(row.payload, "\x00\xff\x10", 3);
    assert_string_equal(row.aggregate_id, "o-1");
    obx_outbox_row_clear(&row);

    /* NULL payload, jsonb kind; pg_catalog arrives as "" */
    msg_t r2 = relation_msg(16391, "", "t2", 3802);
    assert_int_equal(parse(f, &r2, 0), 1);
    msg_t i2 = insert_msg(16391, NULL, 0);
    assert_int_equal(parse(f, &i2, 0x2F90), 0);
    assert_string_equal(f->c.schema, "pg_catalog");
    assert_null(col(&f->c, "payload")->value);
    assert_string_equal(col(&f->c, "payload")->type, "jsonb");
    msg_t i3 = insert_msg(16391, "{\"a\": 1}", 8);
    assert_int_equal(parse(f, &i3, 0x2FA0), 0);
    assert_int_equal(obx_outbox_map(cfg, &f->c, &row, e, sizeof(e)), 0);
    assert_int_equal(row.payload_kind, OBX_PAYLOAD_JSON);
    assert_memory_equal(row.payload, "{\"a\": 1}", 8);
    obx_outbox_row_clear(&row);
    obx_config_destroy(cfg);
}

/* Fail closed: a change of a relation no Relation message described, and
 * an INSERT with an unchanged-TOAST value, halt (exit 3). */
static void test_uncached_and_toast(void **state)
{
    fx_t *f = *state;
    msg_t i = insert_msg(424242, "{}", 2);
    assert_int_equal(parse(f, &i, 0x100), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
    assert_int_equal(f->err.exit_code, OBX_EXIT_POISON);
    assert_non_null(strstr(f->err.msg, "424242"));

    msg_t t = {.n = 0};
    u8(&t, 'T');
    be(&t, 1, 4);
    u8(&t, 0);
    be(&t, 424242, 4);
    assert_int_equal(parse(f, &t, 0x100), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);

    msg_t r = relation_msg(16390, "public", "outbox", 3802);
    assert_int_equal(parse(f, &r, 0), 1);
    msg_t u = {.n = 0};
    u8(&u, 'I');
    be(&u, 16390, 4);
    u8(&u, 'N');
    be(&u, 7, 2);
    for (int k = 0; k < 7; k++) u8(&u, k == 4 ? 'u' : 'n');
    assert_int_equal(parse(f, &u, 0x100), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
    assert_non_null(strstr(f->err.msg, "payload"));

    /* in an UPDATE (never an event) it is a NULL; the old key comes first */
    msg_t up = {.n = 0};
    u8(&up, 'U');
    be(&up, 16390, 4);
    u8(&up, 'K');
    be(&up, 7, 2);
    for (int k = 0; k < 7; k++) u8(&up, 'n');
    u8(&up, 'N');
    be(&up, 7, 2);
    for (int k = 0; k < 7; k++) u8(&up, k == 4 ? 'u' : 'n');
    assert_int_equal(parse(f, &up, 0x200), 0);
    assert_int_equal(f->c.kind, OBX_CHG_UPDATE);
    assert_null(col(&f->c, "payload")->value);

    /* a truncate of a known relation names it */
    msg_t t2 = {.n = 0};
    u8(&t2, 'T');
    be(&t2, 1, 4);
    u8(&t2, 0);
    be(&t2, 16390, 4);
    assert_int_equal(parse(f, &t2, 0x300), 0);
    assert_int_equal(f->c.kind, OBX_CHG_TRUNCATE);
    assert_string_equal(f->c.table, "outbox");
}

/* Logical messages as wal2json's M: prefix, content with its length (NUL
 * bytes kept), transactional flag, LSN. */
static void test_message(void **state)
{
    fx_t *f = *state;
    msg_t m = {.n = 0};
    u8(&m, 'M');
    u8(&m, 1);
    be(&m, 0x5000, 8);
    str(&m, "outboxd");
    be(&m, 5, 4);
    memcpy(m.b + m.n, "a\0b\0c", 5);
    m.n += 5;
    assert_int_equal(parse(f, &m, 0x4F00), 0);
    assert_int_equal(f->c.kind, OBX_CHG_MESSAGE);
    assert_int_equal(f->c.lsn, 0x5000);
    assert_string_equal(f->c.prefix, "outboxd");
    assert_int_equal(f->c.content_len, 5);
    assert_memory_equal(f->c.content, "a\0b\0c", 5);
    assert_int_equal(f->c.content[5], '\0');
    assert_true(f->c.transactional);
    assert_false(f->c.has_xid); /* outside a transaction */
    m.b[1] = 0;
    assert_int_equal(parse(f, &m, 0x4F00), 0);
    assert_false(f->c.transactional);

    msg_t o = {.n = 0};
    u8(&o, 'O');
    be(&o, 0x10, 8);
    str(&o, "origin_a");
    assert_int_equal(parse(f, &o, 0), 1);
}

static msg_t type_msg(uint32_t oid, const char *nspname, const char *typname)
{
    msg_t y = {.n = 0};
    u8(&y, 'Y');
    be(&y, oid, 4);
    str(&y, nspname);
    str(&y, typname);
    return y;
}

/* Types outside the built-in table: the resolver once per OID, else unknown
 * (NULL), which the payload mapping refuses. pgoutput's Type message comes
 * first and names a domain by its base type ("jsonb", "bytea"): never used,
 * or a domain payload would be carried unlike wal2json's format_type(). */
static void test_types(void **state)
{
    fx_t *f = *state;
    msg_t y1 = type_msg(70001, "pg_catalog", "jsonb");
    assert_int_equal(parse(f, &y1, 0), 1);
    msg_t r = relation_msg(1, "public", "a", 70001);
    assert_int_equal(parse(f, &r, 0), 1);
    assert_int_equal(parse(f, &r, 0), 1);
    assert_int_equal(f->lookups, 1);
    msg_t i = insert_msg(1, "12.50", 5);
    assert_int_equal(parse(f, &i, 0), 0);
    assert_string_equal(col(&f->c, "payload")->type, "public.money_amount");

    /* a type the resolver cannot name stays unknown, whatever Y said */
    msg_t y = type_msg(70002, "pg_catalog", "bytea");
    assert_int_equal(parse(f, &y, 0), 1);
    msg_t r2 = relation_msg(2, "public", "b", 70002);
    assert_int_equal(parse(f, &r2, 0), 1);
    assert_int_equal(parse_v(f, insert_msg(2, "ok", 2)), 0);
    assert_null(col(&f->c, "payload")->type);

    msg_t r3 = relation_msg(3, "public", "c", 70003);
    assert_int_equal(parse(f, &r3, 0), 1);
    assert_int_equal(parse_v(f, insert_msg(3, "x", 1)), 0);
    assert_null(col(&f->c, "payload")->type);
    obx_config_t *cfg = obx_config_new();
    obx_outbox_row_t row;
    char e[256];
    assert_int_equal(obx_outbox_map(cfg, &f->c, &row, e, sizeof(e)), -1);
    assert_non_null(strstr(e, "could not name"));
    obx_config_destroy(cfg);
    assert_string_equal(obx_pgo_builtin_type(1184), "timestamp with time zone");
    assert_null(obx_pgo_builtin_type(70003));

    /* a new Relation message for the OID replaces the columns */
    msg_t r4 = {.n = 0};
    u8(&r4, 'R');
    be(&r4, 3, 4);
    str(&r4, "public");
    str(&r4, "c2");
    u8(&r4, 'd');
    be(&r4, 1, 2);
    u8(&r4, 0);
    str(&r4, "only");
    be(&r4, 25, 4);
    be(&r4, (uint64_t)-1, 4);
    assert_int_equal(parse(f, &r4, 0), 1);
    msg_t i4 = {.n = 0};
    u8(&i4, 'I');
    be(&i4, 3, 4);
    u8(&i4, 'N');
    be(&i4, 1, 2);
    text(&i4, "v", 1);
    assert_int_equal(parse(f, &i4, 0), 0);
    assert_string_equal(f->c.table, "c2");
    assert_int_equal(f->c.ncols, 1);
    /* the old shape against the new relation: columns disagree, halt */
    assert_int_equal(parse_v(f, insert_msg(3, "x", 1)), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
}

/* Every prefix of every valid message is refused (never overread: the
 * bytes are copied to an exact-size heap buffer, so ASan sees any). */
static void test_truncated(void **state)
{
    fx_t *f = *state;
    msg_t r = relation_msg(16390, "public", "outbox", 3802);
    assert_int_equal(parse(f, &r, 0), 1);
    msg_t m = {.n = 0};
    u8(&m, 'M');
    u8(&m, 1);
    be(&m, 0x5000, 8);
    str(&m, "outboxd");
    be(&m, 3, 4);
    memcpy(m.b + m.n, "abc", 3);
    m.n += 3;
    msg_t all[] = {begin_msg(1, 2, 3), commit_msg(1, 2, 3), relation_msg(16390, "public", "outbox", 3802),
                   insert_msg(16390, "{}", 2), m};
    for (size_t k = 0; k < sizeof(all) / sizeof(all[0]); k++) {
        for (size_t n = 0; n < all[k].n; n++) {
            char *buf = malloc(n ? n : 1);
            memcpy(buf, all[k].b, n);
            obx_err_clear(&f->err);
            int rc = obx_pgo_parse(f->p, buf, n, 0, &f->c, &f->err);
            free(buf);
            if (rc != -1) fail_msg("message %zu cut to %zu of %zu bytes: rc %d", k, n, all[k].n, rc);
            assert_int_equal(f->err.cls, OBX_ERR_FATAL);
        }
        /* one byte more is refused too */
        all[k].b[all[k].n++] = 0;
        assert_int_equal(parse(f, &all[k], 0), -1);
    }
}

/* Hostile shapes: counts out of range, strings without NUL, binary or
 * unknown value kinds, streaming and unknown message types. */
static void test_hostile(void **state)
{
    fx_t *f = *state;
    msg_t r = relation_msg(16390, "public", "outbox", 3802);
    size_t natts_at = 1 + 4 + strlen("public") + 1 + strlen("outbox") + 1 + 1;
    r.b[natts_at] = 0xff; /* -1..: negative */
    assert_int_equal(parse(f, &r, 0), -1);
    r.b[natts_at] = 0x7f; /* 32k columns: beyond 1600 */
    assert_int_equal(parse(f, &r, 0), -1);

    msg_t s = {.n = 0};
    u8(&s, 'R');
    be(&s, 5, 4);
    memcpy(s.b + s.n, "public", 6); /* no NUL anywhere */
    s.n += 6;
    assert_int_equal(parse(f, &s, 0), -1);

    msg_t good = relation_msg(16390, "public", "outbox", 3802);
    assert_int_equal(parse(f, &good, 0), 1);
    msg_t i = {.n = 0};
    u8(&i, 'I');
    be(&i, 16390, 4);
    u8(&i, 'N');
    be(&i, 7, 2);
    u8(&i, 'b');
    be(&i, 1, 4);
    u8(&i, 'x');
    assert_int_equal(parse(f, &i, 0), -1);
    assert_int_equal(f->err.cls, OBX_ERR_FATAL);

    msg_t huge = {.n = 0};
    u8(&huge, 'I');
    be(&huge, 16390, 4);
    u8(&huge, 'N');
    be(&huge, 7, 2);
    u8(&huge, 't');
    be(&huge, 0xffffffff, 4);
    assert_int_equal(parse(f, &huge, 0), -1);

    msg_t wrong_marker = insert_msg(16390, "{}", 2);
    wrong_marker.b[5] = 'K';
    assert_int_equal(parse(f, &wrong_marker, 0), -1);

    msg_t msgbig = {.n = 0};
    u8(&msgbig, 'M');
    u8(&msgbig, 1);
    be(&msgbig, 1, 8);
    str(&msgbig, "p");
    be(&msgbig, 0x7fffffff, 4);
    assert_int_equal(parse(f, &msgbig, 0), -1);

    msg_t tr = {.n = 0};
    u8(&tr, 'T');
    be(&tr, 0x40000000, 4);
    u8(&tr, 0);
    be(&tr, 16390, 4);
    assert_int_equal(parse(f, &tr, 0), -1);

    const char kinds[] = {'S', 'E', 'c', 'A', 'P', 'K', 'r', 0, (char)0xff};
    for (size_t k = 0; k < sizeof(kinds); k++) {
        msg_t x = {.n = 0};
        u8(&x, (unsigned char)kinds[k]);
        be(&x, 0, 8);
        assert_int_equal(parse(f, &x, 0), -1);
        assert_int_equal(f->err.cls, OBX_ERR_FATAL);
    }
    assert_int_equal(obx_pgo_parse(f->p, "", 0, 0, &f->c, &f->err), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_begin_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uncached_and_toast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
