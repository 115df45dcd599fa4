/* obx_w2j_parse on one line of wal2json format-version 2 output: what the
 * slot sends is trusted in shape, but a table's names and values are the
 * users' data. The line is handed over with its length and no NUL after
 * it, as the relay does. */
#include "fuzz.h"
#include "wal2json.h"

static void check_change(const obx_w2j_change_t *c)
{
    CHECK(c->ncols >= 0);
    for (int i = 0; i < c->ncols; i++) {
        const obx_col_t *col = &c->cols[i];
        CHECK(col->name);
        CHECK(!col->value || col->value_len == strlen(col->value));
        CHECK(col->value || col->value_len == 0);
        const obx_col_t *found = obx_w2j_col(c, col->name);
        CHECK(found && strcmp(found->name, col->name) == 0);
    }
    if (c->kind == OBX_CHG_INSERT || c->kind == OBX_CHG_UPDATE || c->kind == OBX_CHG_DELETE)
        CHECK(c->schema && c->table);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* One struct reused across inputs, as the relay reuses its change (arena
     * chunks kept between parses), and a fresh one per input. */
    static obx_w2j_change_t reused;
    obx_w2j_change_t c;
    char err[256];
    char *line = malloc(size ? size : 1);
    CHECK(line);
    if (size) memcpy(line, data, size);

    memset(&c, 0, sizeof(c));
    err[0] = '\0';
    if (obx_w2j_parse(line, size, &c, err, sizeof(err)) == 0) {
        check_change(&c);
        obx_w2j_change_clear(&c);
    } else {
        CHECK(err[0]);
        CHECK(c.arena == NULL); /* a failed parse leaves nothing allocated */
    }
    if (obx_w2j_parse(line, size, &reused, err, sizeof(err)) == 0) check_change(&reused);

    /* add-tables escaping of the same bytes as a schema and a table name. */
    char *s = fuzz_cstr(data, size), out[256];
    size_t half = strlen(s) / 2;
    char saved = s[half];
    s[half] = '\0';
    if (obx_w2j_escape_table(s, s + half + (saved ? 1 : 0), out, sizeof(out)) == 0) CHECK(strlen(out) < sizeof(out));
    free(s);
    free(line);
    return 0;
}
