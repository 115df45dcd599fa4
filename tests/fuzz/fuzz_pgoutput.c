/* obx_pgo_parse on a sequence of pgoutput messages: each input is split
 * into messages by a 2-byte big-endian length before each, all fed to one
 * decoder (so Relation and Type messages fill the caches later messages
 * read). Each message is copied to an exactly sized buffer without a NUL
 * after it, as the relay hands over XLogData. Seeds: tests/fuzz/corpus/pgoutput
 * (Relation, Type, Begin, Insert, Update, Truncate, Message, Commit). */
#include "fuzz.h"
#include "pgoutput.h"

static void check_change(const obx_w2j_change_t *c)
{
    CHECK(c->ncols >= 0 && c->ncols <= 1600);
    for (int i = 0; i < c->ncols; i++) {
        const obx_col_t *col = &c->cols[i];
        CHECK(col->name);
        CHECK(!col->value || col->value_len == strlen(col->value) || memchr(col->value, '\0', col->value_len));
        CHECK(col->value || col->value_len == 0);
    }
    if (c->kind == OBX_CHG_INSERT || c->kind == OBX_CHG_UPDATE || c->kind == OBX_CHG_DELETE ||
        c->kind == OBX_CHG_TRUNCATE)
        CHECK(c->schema && c->table);
    if (c->kind == OBX_CHG_MESSAGE) CHECK(c->prefix && c->content && c->content[c->content_len] == '\0');
}

/* Names every OID above 70000 whose low bit is set, fails for 69999. */
static int resolver(void *ctx, uint32_t oid, char *name, size_t size, obx_err_t *err)
{
    (void)ctx;
    if (oid == 69999) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "lookup failed");
        return -1;
    }
    if (oid > 70000 && (oid & 1)) {
        snprintf(name, size, "t%u", oid);
        return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    obx_pgo_t *p = obx_pgo_new(resolver, NULL);
    CHECK(p);
    obx_w2j_change_t c;
    memset(&c, 0, sizeof(c));
    size_t off = 0;
    while (off + 2 <= size) {
        size_t n = (size_t)data[off] << 8 | data[off + 1];
        off += 2;
        if (n > size - off) n = size - off;
        char *m = malloc(n ? n : 1);
        CHECK(m);
        if (n) memcpy(m, data + off, n);
        off += n;
        obx_err_t err;
        obx_err_clear(&err);
        int rc = obx_pgo_parse(p, m, n, 0x1000, &c, &err);
        CHECK(rc >= -1 && rc <= 1);
        if (rc == 0) check_change(&c);
        if (rc < 0) CHECK(err.cls != OBX_ERR_NONE && err.msg[0]);
        free(m);
    }
    obx_w2j_change_clear(&c);
    obx_pgo_destroy(p);
    return 0;
}
