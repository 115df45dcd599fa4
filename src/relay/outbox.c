#include "outbox.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lsn.h"

const char *obx_payload_content_type(obx_payload_kind_t k)
{
    switch (k) {
    case OBX_PAYLOAD_JSON: return "application/json";
    case OBX_PAYLOAD_BYTES: return "application/octet-stream";
    default: return "text/plain; charset=utf-8";
    }
}

int obx_topic_valid(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 249 || !strcmp(t, ".") || !strcmp(t, "..")) return 0;
    return strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

int obx_topic_expand(const char *tmpl, const char *aggregate_type, char *out, size_t out_size)
{
    static const char var[] = "${aggregatetype}";
    size_t n = 0;
    for (const char *p = tmpl; *p;) {
        if (strncmp(p, var, sizeof(var) - 1) == 0) {
            size_t l = strlen(aggregate_type);
            if (n + l >= out_size) return -1;
            memcpy(out + n, aggregate_type, l);
            n += l;
            p += sizeof(var) - 1;
        } else {
            if (n + 1 >= out_size) return -1;
            out[n++] = *p++;
        }
    }
    out[n] = '\0';
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void obx_outbox_row_clear(obx_outbox_row_t *row)
{
    free(row->payload_buf);
    memset(row, 0, sizeof(*row));
}

static const obx_col_t *req(const obx_w2j_change_t *chg, const char *name, const char *what,
                            char *errstr, size_t errstr_size)
{
    const obx_col_t *c = obx_w2j_col(chg, name);
    if (!c) {
        snprintf(errstr, errstr_size, "outbox row has no column \"%s\" (%s); fix outbox.column.* or the table", name, what);
        return NULL;
    }
    if (!c->value) {
        snprintf(errstr, errstr_size, "column \"%s\" (%s) is NULL; the producer must set it", name, what);
        return NULL;
    }
    if (c->inexact) {
        snprintf(errstr, errstr_size, "column \"%s\" (%s) is a number (%s) that cannot be carried exactly "
                 "(beyond 2^53 or fractional); make the column text", name, what, c->value);
        return NULL;
    }
    return c;
}

/* The payload column: bytea (hex from wal2json) decoded, json/jsonb and
 * text as they are. 0, or -1 with errstr. */
static int map_payload(const obx_config_t *cfg, const obx_w2j_change_t *chg, obx_outbox_row_t *row, char *errstr,
                       size_t errstr_size)
{
    const obx_col_t *c = obx_w2j_col(chg, cfg->col_payload);
    if (!c) {
        snprintf(errstr, errstr_size, "outbox row has no column \"%s\" (payload)", cfg->col_payload);
        return -1;
    }
    if (!c->type) {
        /* Never guess how to carry it (pgoutput names types by OID). */
        snprintf(errstr, errstr_size, "payload column \"%s\" has a type outboxd could not name", cfg->col_payload);
        return -1;
    }
    if (strcmp(c->type, "bytea") != 0) {
        row->payload_kind = ((strcmp(c->type, "jsonb") == 0 || strcmp(c->type, "json") == 0))
                                ? OBX_PAYLOAD_JSON : OBX_PAYLOAD_TEXT;
        row->payload = (const unsigned char *)c->value; /* NULL payload = tombstone-like empty value */
        row->payload_len = c->value_len;
        return 0;
    }
    row->payload_kind = OBX_PAYLOAD_BYTES;
    if (!c->value) return 0;
    /* wal2json sends bytea as hex without the \x prefix. */
    size_t n = c->value_len;
    if (n % 2) {
        snprintf(errstr, errstr_size, "bytea column \"%s\" has odd hex length %zu", cfg->col_payload, n);
        return -1;
    }
    row->payload_buf = malloc(n / 2 + 1);
    if (!row->payload_buf) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(c->value[2 * i]), lo = hexval(c->value[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            snprintf(errstr, errstr_size, "bytea column \"%s\" is not hex", cfg->col_payload);
            return -1;
        }
        row->payload_buf[i] = (unsigned char)(hi << 4 | lo);
    }
    row->payload = row->payload_buf;
    row->payload_len = n / 2;
    return 0;
}

/* aggregate_version, occurred_at, headers: used when present. */
static int map_optional(const obx_config_t *cfg, const obx_w2j_change_t *chg, obx_outbox_row_t *row, char *errstr,
                        size_t errstr_size)
{
    const obx_col_t *c;
    if (*cfg->col_aggregate_version && (c = obx_w2j_col(chg, cfg->col_aggregate_version)) && c->value) {
        if (c->inexact) {
            snprintf(errstr, errstr_size, "column \"%s\" (aggregate version) = %s is beyond 2^53 or fractional; "
                     "versions must be integers below 2^53", cfg->col_aggregate_version, c->value);
            return -1;
        }
        char *end;
        errno = 0;
        long long v = strtoll(c->value, &end, 10);
        if (errno || *end || end == c->value) {
            snprintf(errstr, errstr_size, "column \"%s\" (aggregate version) = \"%.40s\" is not a 64-bit integer",
                     cfg->col_aggregate_version, c->value);
            return -1;
        }
        row->has_version = 1;
        row->version = v;
    }
    if (*cfg->col_occurred_at && (c = obx_w2j_col(chg, cfg->col_occurred_at)) && c->value) {
        if (obx_timestamptz_parse(c->value, &row->occurred_at_us) != 0) {
            snprintf(errstr, errstr_size, "column \"%s\" (occurred_at) = \"%.60s\" is not a timestamptz; make it timestamptz",
                     cfg->col_occurred_at, c->value);
            return -1;
        }
    }
    if (*cfg->col_headers && (c = obx_w2j_col(chg, cfg->col_headers)) && c->value) row->headers_json = c->value;
    if (*cfg->col_tracingspancontext && (c = obx_w2j_col(chg, cfg->col_tracingspancontext)) && c->value)
        row->trace_props = c->value;
    return 0;
}

/* The topic column when set and not empty, else topic.template. */
static int map_topic(const obx_config_t *cfg, const obx_w2j_change_t *chg, obx_outbox_row_t *row, char *errstr,
                     size_t errstr_size)
{
    const obx_col_t *c;
    const char *topic = NULL;
    if (*cfg->col_topic && (c = obx_w2j_col(chg, cfg->col_topic)) && c->value && c->value[0]) topic = c->value;
    if (topic) {
        if (strlen(topic) >= sizeof(row->topic)) {
            snprintf(errstr, errstr_size, "column \"%s\" (topic) = \"%.60s...\" is longer than 249 characters",
                     cfg->col_topic, topic);
            return -1;
        }
        strcpy(row->topic, topic);
    } else if (obx_topic_expand(cfg->topic_template, row->aggregate_type, row->topic, sizeof(row->topic)) != 0) {
        snprintf(errstr, errstr_size, "topic from template \"%s\" with column \"%s\" (aggregate type) is longer than 249 characters",
                 cfg->topic_template, cfg->col_aggregatetype);
        return -1;
    }
    if (!obx_topic_valid(row->topic)) {
        snprintf(errstr, errstr_size,
                 "topic \"%s\" is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -); fix column \"%s\" (%s) or topic.template",
                 row->topic, topic ? cfg->col_topic : cfg->col_aggregatetype, topic ? "topic" : "aggregate type");
        return -1;
    }
    return 0;
}

int obx_outbox_map(const obx_config_t *cfg, const obx_w2j_change_t *chg, obx_outbox_row_t *row,
                   char *errstr, size_t errstr_size)
{
    memset(row, 0, sizeof(*row));
    const obx_col_t *c;
    if (!(c = req(chg, cfg->col_id, "event id", errstr, errstr_size))) goto fail;
    row->event_id = c->value;
    if (!(c = req(chg, cfg->col_aggregatetype, "aggregate type", errstr, errstr_size))) goto fail;
    row->aggregate_type = c->value;
    if (!(c = req(chg, cfg->col_aggregateid, "aggregate id, the Kafka key", errstr, errstr_size))) goto fail;
    row->aggregate_id = c->value;
    if (!(c = req(chg, cfg->col_type, "event type", errstr, errstr_size))) goto fail;
    row->event_type = c->value;
    if (map_payload(cfg, chg, row, errstr, errstr_size) != 0 || map_optional(cfg, chg, row, errstr, errstr_size) != 0 ||
        map_topic(cfg, chg, row, errstr, errstr_size) != 0)
        goto fail;
    return 0;
fail:
    obx_outbox_row_clear(row);
    return -1;
}

void obx_headers_clear(obx_headers_t *h)
{
    for (size_t i = 0; i < h->n_owned; i++) cJSON_free(h->owned[i]);
    cJSON_Delete(h->tree);
    memset(h, 0, sizeof(*h));
}

/* A walk over the text of JSON that cJSON has already accepted: lets a non-string
 * header value be passed on as written (cJSON keeps numbers as doubles, so
 * reprinting 12345678901234567890 gave 1.2345678901234567e+19). */
static const char *skip_ws(const char *p)
{
    while (*p && (unsigned char)*p <= 32) p++; /* what cJSON skips */
    return p;
}

static const char *skip_string(const char *p)
{
    if (*p != '"') return p; /* never step past the end: the walk follows cJSON, not trusts it */
    for (p++; *p && *p != '"'; p++)
        if (*p == '\\' && p[1]) p++;
    return *p ? p + 1 : p;
}

static const char *skip_value(const char *p)
{
    if (*p == '"') return skip_string(p);
    if (*p != '{' && *p != '[') {
        while ((unsigned char)*p > 32 && *p != ',' && *p != '}' && *p != ']') p++;
        return p;
    }
    int depth = 0;
    while (*p) {
        if (*p == '"') {
            p = skip_string(p);
            continue;
        }
        if (*p == '{' || *p == '[') depth++;
        else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
        p++;
    }
    return p;
}

const char *obx_json_members(const char *json)
{
    json = skip_ws(json);
    return *json ? json + 1 : json;
}

const char *obx_json_member_next(const char *p, const char **value, const char **value_end)
{
    p = skip_ws(skip_string(skip_ws(p))); /* the key */
    *value = skip_ws(*p == ':' ? p + 1 : p);
    *value_end = skip_value(*value);
    p = skip_ws(*value_end);
    return *p == ',' ? p + 1 : p;
}

int obx_headers_parse(const char *json, obx_headers_t *h, char *errstr, size_t errstr_size)
{
    memset(h, 0, sizeof(*h));
    cJSON *tree = cJSON_Parse(json);
    h->tree = tree;
    if (!cJSON_IsObject(tree)) {
        snprintf(errstr, errstr_size, "headers column is not a JSON object");
        goto fail;
    }
    const cJSON *m;
    const char *raw = obx_json_members(json), *start, *end;
    cJSON_ArrayForEach(m, tree) {
        if (h->n == OBX_MAX_HEADERS) {
            snprintf(errstr, errstr_size, "headers object has more than %d members", OBX_MAX_HEADERS);
            goto fail;
        }
        raw = obx_json_member_next(raw, &start, &end);
        const char *v = m->valuestring;
        if (!cJSON_IsString(m)) {
            char *text = cJSON_malloc((size_t)(end - start) + 1);
            if (!text) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
            }
            memcpy(text, start, (size_t)(end - start));
            text[end - start] = '\0';
            h->owned[h->n_owned++] = text;
            v = text;
        }
        h->kv[2 * h->n] = m->string;
        h->kv[2 * h->n + 1] = v;
        h->n++;
    }
    return 0;
fail:
    obx_headers_clear(h);
    return -1;
}

/* One logical line of Properties text: key and value unescaped into k and
 * v. Returns the start of the next line. */
static const char *props_line(const char *p, char *k, size_t ks, char *v, size_t vs)
{
    size_t kn = 0, vn = 0;
    int in_value = 0, sep_seen = 0;
    while (*p == ' ' || *p == '\t' || *p == '\f') p++;
    if (*p == '#' || *p == '!') {
        while (*p && *p != '\n' && *p != '\r') p++;
        k[0] = v[0] = '\0';
        return p;
    }
    while (*p && *p != '\n' && *p != '\r') {
        char ch = *p++;
        if (ch == '\\' && *p) {
            ch = *p++;
            if (ch == '\n' || ch == '\r') { /* a continued line */
                while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
                continue;
            }
            ch = ch == 't' ? '\t' : ch == 'n' ? '\n' : ch == 'r' ? '\r' : ch == 'f' ? '\f' : ch;
        } else if (!in_value && (ch == '=' || ch == ':' || ch == ' ' || ch == '\t')) {
            in_value = 1;
            sep_seen = ch == '=' || ch == ':';
            while (*p == ' ' || *p == '\t') p++;
            if (!sep_seen && (*p == '=' || *p == ':')) {
                p++;
                while (*p == ' ' || *p == '\t') p++;
            }
            continue;
        }
        if (!in_value) {
            if (kn + 1 < ks) k[kn++] = ch;
        } else if (vn + 1 < vs) {
            v[vn++] = ch;
        }
    }
    k[kn] = v[vn] = '\0';
    return p;
}

int obx_trace_props_get(const char *props, const char *key, char *out, size_t out_size)
{
    char k[64], v[1024];
    for (const char *p = props; p && *p;) {
        p = props_line(p, k, sizeof(k), v, sizeof(v));
        while (*p == '\n' || *p == '\r') p++;
        if (strcmp(k, key) == 0) {
            if (strlen(v) >= out_size) return 0;
            strcpy(out, v);
            return 1;
        }
    }
    return 0;
}

int obx_headers_add_trace(obx_headers_t *h, const char *props, char *errstr, size_t errstr_size)
{
    static const char *const keys[] = {"traceparent", "tracestate"};
    char v[1024];
    for (size_t i = 0; i < 2; i++) {
        int have = 0;
        for (size_t j = 0; j < h->n; j++) have |= strcmp(h->kv[2 * j], keys[i]) == 0;
        if (have || !obx_trace_props_get(props, keys[i], v, sizeof(v))) continue;
        if (h->n == OBX_MAX_HEADERS || h->n_owned == OBX_MAX_HEADERS) {
            snprintf(errstr, errstr_size, "headers and tracingspancontext make more than %d headers", OBX_MAX_HEADERS);
            return -1;
        }
        char *copy = cJSON_malloc(strlen(v) + 1);
        if (!copy) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        strcpy(copy, v);
        h->owned[h->n_owned++] = copy;
        h->kv[2 * h->n] = keys[i];
        h->kv[2 * h->n + 1] = copy;
        h->n++;
    }
    return 0;
}
