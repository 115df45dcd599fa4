#include "wal2json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void obx_w2j_change_clear(obx_w2j_change_t *c)
{
    if (c->tree) cJSON_Delete((cJSON *)c->tree);
    memset(c, 0, offsetof(obx_w2j_change_t, cols));
    c->ncols = 0;
    c->tree = NULL;
}

static const char *str_member(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int lsn_member(const cJSON *o, const char *k, obx_lsn_t *out, int required,
                      char *errstr, size_t errstr_size)
{
    const char *s = str_member(o, k);
    if (!s) {
        if (!required) return 0;
        snprintf(errstr, errstr_size, "wal2json change has no \"%s\" (is include-lsn on?)", k);
        return -1;
    }
    if (obx_lsn_parse(s, out) != 0) {
        snprintf(errstr, errstr_size, "wal2json \"%s\" is not an LSN: \"%.40s\"", k, s);
        return -1;
    }
    return 0;
}

int obx_w2j_parse(const char *line, size_t len, obx_w2j_change_t *out, char *errstr, size_t errstr_size)
{
    obx_w2j_change_clear(out);
    cJSON *root = cJSON_ParseWithLength(line, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at ? (long)(at - line) : -1;
        snprintf(errstr, errstr_size, "wal2json line is not valid JSON (at byte %ld of %zu)", off, len);
        return -1;
    }
    out->tree = root;
    if (!cJSON_IsObject(root)) {
        snprintf(errstr, errstr_size, "wal2json line is not a JSON object");
        goto fail;
    }
    const char *action = str_member(root, "action");
    if (!action || !action[0] || action[1]) {
        snprintf(errstr, errstr_size, "wal2json change has no one-letter \"action\"; is format-version 2 set?");
        goto fail;
    }
    out->kind = (obx_chg_kind_t)action[0];
    const cJSON *xid = cJSON_GetObjectItemCaseSensitive(root, "xid");
    if (cJSON_IsNumber(xid)) {
        out->xid = (uint32_t)xid->valuedouble;
        out->has_xid = 1;
    }
    switch (out->kind) {
    case OBX_CHG_BEGIN:
    case OBX_CHG_COMMIT: {
        if (lsn_member(root, "lsn", &out->lsn, 1, errstr, errstr_size) != 0) goto fail;
        if (lsn_member(root, "nextlsn", &out->nextlsn, 1, errstr, errstr_size) != 0) goto fail;
        const char *ts = str_member(root, "timestamp");
        if (ts && obx_timestamptz_parse(ts, &out->commit_time_us) != 0) {
            snprintf(errstr, errstr_size, "wal2json timestamp \"%.60s\" not understood; the replication session needs DateStyle ISO", ts);
            goto fail;
        }
        return 0;
    }
    case OBX_CHG_INSERT:
    case OBX_CHG_UPDATE:
    case OBX_CHG_DELETE: {
        if (lsn_member(root, "lsn", &out->lsn, 0, errstr, errstr_size) != 0) goto fail;
        out->schema = str_member(root, "schema");
        out->table = str_member(root, "table");
        if (!out->schema || !out->table) {
            snprintf(errstr, errstr_size, "wal2json row change without schema/table");
            goto fail;
        }
        /* Deletes carry "identity" instead of "columns"; only inserts matter. */
        const cJSON *cols = cJSON_GetObjectItemCaseSensitive(root, out->kind == OBX_CHG_DELETE ? "identity" : "columns");
        if (!cols) return 0;
        if (!cJSON_IsArray(cols)) {
            snprintf(errstr, errstr_size, "wal2json \"columns\" is not an array");
            goto fail;
        }
        const cJSON *c;
        cJSON_ArrayForEach(c, cols) {
            if (out->ncols == OBX_W2J_MAX_COLS) {
                snprintf(errstr, errstr_size, "%s.%s has more than %d columns", out->schema, out->table, OBX_W2J_MAX_COLS);
                goto fail;
            }
            obx_col_t *col = &out->cols[out->ncols];
            col->inexact = 0;
            col->name = str_member(c, "name");
            col->type = str_member(c, "type");
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "value");
            if (!col->name || !v) {
                snprintf(errstr, errstr_size, "wal2json column without name or value");
                goto fail;
            }
            if (cJSON_IsNull(v)) {
                col->value = NULL;
                col->value_len = 0;
            } else if (cJSON_IsString(v)) {
                col->value = v->valuestring;
                col->value_len = strlen(v->valuestring);
            } else if (cJSON_IsBool(v)) {
                col->value = cJSON_IsTrue(v) ? "true" : "false";
                col->value_len = strlen(col->value);
            } else if (cJSON_IsNumber(v)) {
                /* wal2json prints numeric types as JSON numbers and cJSON keeps
                 * only a double: integers below 2^53 are exact, anything else
                 * is flagged so no key or version is ever silently rounded. */
                double d = v->valuedouble;
                char *nb = out->numbuf[out->ncols];
                /* Range first: converting a double beyond int64 (a real 1e+30)
                 * is undefined behaviour. */
                if (fabs(d) < 9007199254740992.0 && d == (double)(int64_t)d) {
                    snprintf(nb, sizeof(out->numbuf[0]), "%lld", (long long)(int64_t)d);
                } else {
                    snprintf(nb, sizeof(out->numbuf[0]), "%.17g", d);
                    col->inexact = 1;
                }
                col->value = nb;
                col->value_len = strlen(nb);
            } else {
                snprintf(errstr, errstr_size, "wal2json column %s has an unexpected JSON value type", col->name);
                goto fail;
            }
            out->ncols++;
        }
        return 0;
    }
    case OBX_CHG_MESSAGE: {
        if (lsn_member(root, "lsn", &out->lsn, 0, errstr, errstr_size) != 0) goto fail;
        out->prefix = str_member(root, "prefix");
        out->content = str_member(root, "content");
        out->transactional = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "transactional"));
        return 0;
    }
    case OBX_CHG_TRUNCATE:
        out->schema = str_member(root, "schema");
        out->table = str_member(root, "table");
        return 0;
    default:
        snprintf(errstr, errstr_size, "wal2json action \"%s\" unknown", action);
        goto fail;
    }
fail:
    obx_w2j_change_clear(out);
    return -1;
}

const obx_col_t *obx_w2j_col(const obx_w2j_change_t *c, const char *name)
{
    for (int i = 0; i < c->ncols; i++)
        if (strcmp(c->cols[i].name, name) == 0) return &c->cols[i];
    return NULL;
}

static int esc(const char *s, char *out, size_t out_size, size_t *n)
{
    for (; *s; s++) {
        if (*s == '.' || *s == ',' || *s == '\\' || *s == ' ') {
            if (*n + 1 >= out_size) return -1;
            out[(*n)++] = '\\';
        }
        if (*n + 1 >= out_size) return -1;
        out[(*n)++] = *s;
    }
    return 0;
}

int obx_w2j_escape_table(const char *schema, const char *table, char *out, size_t out_size)
{
    size_t n = 0;
    if (out_size == 0 || esc(schema, out, out_size, &n) != 0) return -1;
    if (n + 1 >= out_size) return -1;
    out[n++] = '.';
    if (esc(table, out, out_size, &n) != 0) return -1;
    out[n] = '\0';
    return 0;
}
