/* outbox_emit() message content -> a row-shaped change (message.h). */
#include "message.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox.h"

void obx_message_clear(obx_message_t *m)
{
    cJSON_Delete(m->tree);
    cJSON_free(m->headers);
    memset(m, 0, sizeof(*m));
}

static obx_col_t *add_col(obx_message_t *m, const char *name, const char *type)
{
    if (!name || !*name) return NULL; /* the column is disabled: so is the field */
    obx_col_t *c = &m->cols[m->chg.ncols++];
    c->name = name;
    c->type = type;
    return c;
}

/* A text field: string or null (absent counts as null). */
static int text_field(const cJSON *root, const char *field, obx_col_t *c, char *errstr, size_t errstr_size)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) {
        snprintf(errstr, errstr_size, "outbox message field \"%s\" is not a string", field);
        return -1;
    }
    if (c) {
        c->value = v->valuestring;
        c->value_len = strlen(v->valuestring);
    }
    return 0;
}

/* aggregate_version: an integer (exact below 2^53, like a row's bigint
 * column from wal2json), or its digits as a string. */
static int version_field(obx_message_t *m, const cJSON *root, obx_col_t *c, char *errstr, size_t errstr_size)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "aggregate_version");
    if (!v || cJSON_IsNull(v) || !c) return 0;
    if (cJSON_IsString(v)) {
        /* Digits only, as bigint::text gives them: strtoll would also take
         * " +12", so the event would depend on who parses it. */
        const char *d = v->valuestring + (v->valuestring[0] == '-');
        if (!*d || strspn(d, "0123456789") != strlen(d)) {
            snprintf(errstr, errstr_size, "outbox message field \"aggregate_version\" = \"%.40s\" is not an integer's digits",
                     v->valuestring);
            return -1;
        }
        return text_field(root, "aggregate_version", c, errstr, errstr_size);
    }
    if (!cJSON_IsNumber(v)) {
        snprintf(errstr, errstr_size, "outbox message field \"aggregate_version\" is not a number");
        return -1;
    }
    double d = v->valuedouble;
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || (double)(long long)d != d) {
        c->inexact = 1;
        snprintf(m->version, sizeof(m->version), "%.17g", d);
    } else {
        snprintf(m->version, sizeof(m->version), "%lld", (long long)d);
    }
    c->value = m->version;
    c->value_len = strlen(m->version);
    return 0;
}

/* headers: an object (its text as written in the content, then parsed like
 * a row's column: a reprint would round numbers through a double), its
 * text as a string, or null. */
static int headers_field(obx_message_t *m, const cJSON *root, const char *content, obx_col_t *c, char *errstr,
                         size_t errstr_size)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "headers");
    if (!v || cJSON_IsNull(v) || !c) return 0;
    if (cJSON_IsString(v)) return text_field(root, "headers", c, errstr, errstr_size);
    if (!cJSON_IsObject(v)) {
        snprintf(errstr, errstr_size, "outbox message field \"headers\" is not an object");
        return -1;
    }
    const char *raw = obx_json_members(content), *start = NULL, *end = NULL;
    for (const cJSON *mb = root->child; mb; mb = mb->next) {
        raw = obx_json_member_next(raw, &start, &end);
        if (mb == v) break;
    }
    if (!start || !(m->headers = cJSON_malloc((size_t)(end - start) + 1))) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    memcpy(m->headers, start, (size_t)(end - start));
    m->headers[end - start] = '\0';
    c->value = m->headers;
    c->value_len = strlen(m->headers);
    return 0;
}

static int map_fields(const obx_config_t *cfg, obx_message_t *m, const cJSON *root, const char *content, char *errstr,
                      size_t errstr_size)
{
    static const char *const text[][2] = {{"id", "uuid"}, {"aggregatetype", "text"}, {"aggregateid", "text"},
                                          {"type", "text"}, {"payload", "jsonb"}, {"topic", "text"},
                                          {"occurred_at", "timestamptz"}, {"tracingspancontext", "text"}};
    const char *cols[] = {cfg->col_id, cfg->col_aggregatetype, cfg->col_aggregateid, cfg->col_type, cfg->col_payload,
                          cfg->col_topic, cfg->col_occurred_at, cfg->col_tracingspancontext};
    /* A field given twice is ambiguous (cJSON reads the first, jsonb keeps
     * the last): poison, not a guess. Other members are ignored. */
    static const char *const fields[] = {"id", "aggregatetype", "aggregateid", "type", "payload", "topic",
                                         "occurred_at", "tracingspancontext", "aggregate_version", "headers"};
    int seen[sizeof(fields) / sizeof(fields[0])] = {0};
    for (const cJSON *mb = root->child; mb; mb = mb->next)
        for (size_t i = 0; mb->string && i < sizeof(fields) / sizeof(fields[0]); i++)
            if (!strcmp(mb->string, fields[i]) && seen[i]++) {
                snprintf(errstr, errstr_size, "outbox message field \"%s\" appears more than once", fields[i]);
                return -1;
            }
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++)
        if (text_field(root, text[i][0], add_col(m, cols[i], text[i][1]), errstr, errstr_size) != 0) return -1;
    if (version_field(m, root, add_col(m, cfg->col_aggregate_version, "bigint"), errstr, errstr_size) != 0) return -1;
    return headers_field(m, root, content, add_col(m, cfg->col_headers, "jsonb"), errstr, errstr_size);
}

int obx_message_parse(const obx_config_t *cfg, const char *content, size_t len, obx_lsn_t lsn, obx_message_t *m,
                      char *errstr, size_t errstr_size)
{
    memset(m, 0, sizeof(*m));
    m->chg.kind = OBX_CHG_INSERT;
    m->chg.lsn = lsn;
    m->chg.cols = m->cols;
    /* The whole content must be the object: bytes after it (a NUL and
     * binary, or text) are a malformed message, not something to drop. */
    const char *end = NULL;
    /* A raw NUL is never JSON (a string holds it as \u0000), and the
     * walk over the headers' text stops at one: refuse it whole. */
    cJSON *root = content && !memchr(content, '\0', len) ? cJSON_ParseWithLengthOpts(content, len, &end, 0) : NULL;
    m->tree = root;
    while (root && end < content + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
    if (!cJSON_IsObject(root) || end != content + len) {
        snprintf(errstr, errstr_size, "outbox message content is not a JSON object (%zu bytes)", len);
        goto fail;
    }
    if (map_fields(cfg, m, root, content, errstr, errstr_size) == 0) return 0;
fail:
    /* What a dead letter can carry: the content as it came. */
    cJSON_Delete(m->tree);
    cJSON_free(m->headers);
    m->tree = NULL;
    m->headers = NULL;
    memset(m->cols, 0, sizeof(m->cols));
    m->chg.ncols = 0;
    obx_col_t *c = add_col(m, cfg->col_payload, "text");
    if (c && content) {
        c->value = content;
        c->value_len = len;
    }
    return -1;
}
