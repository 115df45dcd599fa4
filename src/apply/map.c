/* outboxd apply: apply.columns parsing, JSON paths, column kinds, value
 * conversion, the batch helpers the unit tests check, and validation of the
 * apply.* keys. Also the small string and list helpers of src/apply.
 * Everything returned is malloc'd and owned by the caller (see apply.h). */
#include "apply_int.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pg.h"

/* ---------------------------------------------------------------- strings */

void obx_apply_sb_putn(obx_apply_sb_t *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void obx_apply_sb_puts(obx_apply_sb_t *b, const char *s) { obx_apply_sb_putn(b, s, strlen(s)); }

void obx_apply_sb_printf(obx_apply_sb_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof(tmp)) {
        obx_apply_sb_putn(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    obx_apply_sb_putn(b, big, (size_t)n);
    free(big);
}

/* Every identifier through the one quoting helper (names are used exactly
 * as configured). */
void obx_apply_sb_ident(obx_apply_sb_t *b, const char *ident)
{
    char *q = obx_pg_quote_ident(ident);
    if (!q) {
        b->oom = 1;
        return;
    }
    obx_apply_sb_puts(b, q);
    free(q);
}

/* "schema.table" or "table": the part before the first dot is the schema. */
void obx_apply_sb_name(obx_apply_sb_t *b, const char *name)
{
    const char *dot = strchr(name, '.');
    char *schema = dot ? strndup(name, (size_t)(dot - name)) : NULL;
    char *q = dot ? (schema ? obx_pg_quote_qualified(schema, dot + 1) : NULL) : obx_pg_quote_ident(name);
    free(schema);
    if (!q) {
        b->oom = 1;
        return;
    }
    obx_apply_sb_puts(b, q);
    free(q);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

/* Splits a comma-separated list into trimmed, non-empty, malloc'd items. */
int obx_apply_list_split(const char *s, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    char *copy = strdup(s ? s : "");
    if (!copy) return -1;
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        t = trim(t);
        if (!*t) continue;
        char **p = realloc(*out, (*n + 1) * sizeof(*p));
        if (!p || !(p[*n] = strdup(t))) {
            if (p) *out = p;
            free(copy);
            return -1;
        }
        *out = p;
        (*n)++;
    }
    free(copy);
    return 0;
}

void obx_apply_list_free(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++) free(l[i]);
    free(l);
}

int obx_apply_list_has(char *const *l, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(l[i], s) == 0) return 1;
    return 0;
}

/* ------------------------------------------------- exported for unit tests */

void obx_apply_maps_free(obx_apply_map_t *maps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(maps[i].column);
        free(maps[i].path);
    }
    free(maps);
}

int obx_apply_parse_columns(const char *spec, obx_apply_map_t **out, size_t *n, char *errstr, size_t errstr_size)
{
    char **items = NULL;
    size_t ni = 0;
    *out = NULL;
    *n = 0;
    if (obx_apply_list_split(spec, &items, &ni) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    obx_apply_map_t *maps = calloc(ni ? ni : 1, sizeof(*maps));
    if (!maps) {
        obx_apply_list_free(items, ni);
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    size_t nm = 0;
    for (size_t i = 0; i < ni; i++) {
        char *colon = strchr(items[i], ':');
        if (!colon) {
            snprintf(errstr, errstr_size, "apply.columns: \"%s\" is not column:path (e.g. display_name:displayName)", items[i]);
            goto fail;
        }
        *colon = '\0';
        char *col = trim(items[i]), *path = trim(colon + 1);
        size_t pl = strlen(path);
        int optional = pl && path[pl - 1] == '?';
        if (optional) path[--pl] = '\0';
        if (!*col || !pl || path[0] == '.' || path[pl - 1] == '.' || strstr(path, "..")) {
            snprintf(errstr, errstr_size, "apply.columns: \"%s:%s\" needs a column name and a payload path like a or a.b", col, path);
            goto fail;
        }
        for (size_t j = 0; j < nm; j++)
            if (strcmp(maps[j].column, col) == 0) {
                snprintf(errstr, errstr_size, "apply.columns: column \"%s\" is mapped twice", col);
                goto fail;
            }
        maps[nm].column = strdup(col);
        maps[nm].path = strdup(path);
        maps[nm].optional = optional;
        nm++;
        if (!maps[nm - 1].column || !maps[nm - 1].path) {
            snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
    }
    obx_apply_list_free(items, ni);
    *out = maps;
    *n = nm;
    return 0;
fail:
    obx_apply_list_free(items, ni);
    obx_apply_maps_free(maps, nm);
    return -1;
}

const cJSON *obx_apply_json_path(const cJSON *root, const char *path)
{
    const cJSON *node = root;
    const char *p = path;
    char seg[256];
    while (node && *p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (l == 0 || l >= sizeof(seg)) return NULL;
        memcpy(seg, p, l);
        seg[l] = '\0';
        if (cJSON_IsObject(node)) {
            node = cJSON_GetObjectItemCaseSensitive(node, seg);
        } else if (cJSON_IsArray(node) && strspn(seg, "0123456789") == l) {
            node = cJSON_GetArrayItem(node, atoi(seg));
        } else {
            return NULL;
        }
        p += l;
        if (*p == '.') p++;
    }
    return node;
}

obx_col_kind_t obx_apply_col_kind(const char *t, char category)
{
    if (!strcmp(t, "bool")) return OBX_COL_BOOL;
    if (!strcmp(t, "int2") || !strcmp(t, "int4") || !strcmp(t, "int8")) return OBX_COL_INT;
    if (!strcmp(t, "float4") || !strcmp(t, "float8")) return OBX_COL_FLOAT;
    if (!strcmp(t, "json") || !strcmp(t, "jsonb")) return OBX_COL_JSON;
    if (category == 'N') return OBX_COL_NUMERIC;
    return OBX_COL_TEXT;
}

const char *obx_apply_json_type(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsObject(v)) return "an object";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsNull(v)) return "null";
    return "an invalid value";
}

/* Shortest text that reads back as the same double (what cJSON prints). */
static void fmt_double(double d, char *buf, size_t size)
{
    snprintf(buf, size, "%.15g", d);
    if (strtod(buf, NULL) != d) snprintf(buf, size, "%.17g", d);
}

int obx_apply_json_to_text(const cJSON *v, obx_col_kind_t kind, char **out, char *errstr, size_t errstr_size)
{
    return obx_apply_json_to_text_raw(v, NULL, 0, kind, out, errstr, errstr_size);
}

int obx_apply_json_to_text_raw(const cJSON *v, const char *raw, size_t raw_len, obx_col_kind_t kind, char **out, char *errstr,
                               size_t errstr_size)
{
    char num[64];
    *out = NULL;
    if (cJSON_IsNull(v)) return 0;
    const char *want = NULL;
    /* The producer's own text where PostgreSQL reads it as JSON does:
     * no digit lost. Else cJSON's value, as before. */
    int raw_num = raw && cJSON_IsNumber(v) && obx_apply_json_number_ok(raw, raw_len, 0);
    switch (kind) {
    case OBX_COL_JSON: {
        if (raw && obx_apply_json_text_ok(raw, raw_len)) {
            *out = strndup(raw, raw_len);
            break;
        }
        char *s = cJSON_PrintUnformatted(v);
        if (!s) break;
        *out = strdup(s);
        cJSON_free(s);
        break;
    }
    case OBX_COL_BOOL:
        if (cJSON_IsBool(v)) *out = strdup(cJSON_IsTrue(v) ? "true" : "false");
        else want = "a boolean";
        break;
    case OBX_COL_INT:
        if (raw_num && obx_apply_json_number_ok(raw, raw_len, 1)) {
            /* Any size: the column's type checks the range. */
            *out = strndup(raw, raw_len);
        } else if (cJSON_IsNumber(v)) {
            double d = v->valuedouble;
            if (!isfinite(d) || d != floor(d)) {
                fmt_double(d, num, sizeof(num));
                snprintf(errstr, errstr_size, "type mismatch: expected an integer, got %s", num);
                return -1;
            }
            if (fabs(d) > 9007199254740992.0) {
                snprintf(errstr, errstr_size, "integer beyond 2^53 cannot be read exactly from JSON: send it as a string");
                return -1;
            }
            snprintf(num, sizeof(num), "%.0f", d);
            *out = strdup(num);
        } else if (cJSON_IsString(v)) {
            *out = strdup(v->valuestring);
        } else {
            want = "an integer";
        }
        break;
    case OBX_COL_FLOAT:
    case OBX_COL_NUMERIC:
        if (raw_num) {
            *out = strndup(raw, raw_len);
        } else if (cJSON_IsNumber(v)) {
            fmt_double(v->valuedouble, num, sizeof(num));
            *out = strdup(num);
        } else if (cJSON_IsString(v)) {
            *out = strdup(v->valuestring);
        } else {
            want = "a number";
        }
        break;
    case OBX_COL_TEXT:
        if (cJSON_IsString(v)) *out = strdup(v->valuestring);
        else want = "a string";
        break;
    }
    if (want) {
        snprintf(errstr, errstr_size, "type mismatch: expected %s, got %s", want, obx_apply_json_type(v));
        return -1;
    }
    if (!*out) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    return 0;
}

char *obx_apply_array_literal(const char *const *vals, size_t n)
{
    obx_apply_sb_t b = {0};
    obx_apply_sb_putn(&b, "{", 1);
    for (size_t i = 0; i < n; i++) {
        if (i) obx_apply_sb_putn(&b, ",", 1);
        if (!vals[i]) {
            obx_apply_sb_putn(&b, "NULL", 4);
            continue;
        }
        obx_apply_sb_putn(&b, "\"", 1);
        const char *s = vals[i], *run = s;
        for (; *s; s++)
            if (*s == '"' || *s == '\\') {
                obx_apply_sb_putn(&b, run, (size_t)(s - run));
                obx_apply_sb_putn(&b, "\\", 1);
                run = s;
            }
        obx_apply_sb_putn(&b, run, (size_t)(s - run));
        obx_apply_sb_putn(&b, "\"", 1);
    }
    obx_apply_sb_putn(&b, "}", 1);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

size_t obx_apply_dedupe(const char *const *keys, const int64_t *versions, size_t n, unsigned char *keep)
{
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    size_t *slot = malloc(cap * sizeof(*slot));
    if (!slot) return (size_t)-1;
    for (size_t i = 0; i < cap; i++) slot[i] = (size_t)-1;
    size_t winners = 0;
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)fnv1a(keys[i]) & (cap - 1);
        while (slot[h] != (size_t)-1 && strcmp(keys[slot[h]], keys[i]) != 0) h = (h + 1) & (cap - 1);
        if (slot[h] == (size_t)-1) {
            slot[h] = i;
            keep[i] = 1;
            winners++;
        } else if (versions[i] > versions[slot[h]]) {
            keep[slot[h]] = 0;
            keep[i] = 1;
            slot[h] = i;
        } else {
            keep[i] = 0;
        }
    }
    free(slot);
    return winners;
}

char *obx_apply_format_ts(int64_t us, char *buf, size_t size)
{
    int64_t s = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        s--;
    }
    time_t t = (time_t)s;
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, size, "%04d-%02d-%02d %02d:%02d:%02d.%06lld+00", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (long long)frac);
    return buf;
}

int obx_apply_validate(const obx_config_t *cfg, char *errstr, size_t errstr_size)
{
    static const struct { const char *key; size_t off; } req[] = {
        {"apply.conninfo", offsetof(obx_config_t, apply_conninfo)},
        {"apply.topics", offsetof(obx_config_t, apply_topics)},
        {"apply.table", offsetof(obx_config_t, apply_table)},
        {"apply.key_column", offsetof(obx_config_t, apply_key_column)},
        {"apply.group", offsetof(obx_config_t, apply_group)},
        {"apply.column.source_version", offsetof(obx_config_t, apply_col_version)},
        {"apply.column.source_updated_at", offsetof(obx_config_t, apply_col_source_updated_at)},
        {"apply.column.replicated_at", offsetof(obx_config_t, apply_col_replicated_at)},
    };
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
        const char *v = *(char *const *)((const char *)cfg + req[i].off);
        if (!v || !*v) {
            char env[128];
            snprintf(env, sizeof(env), "OUTBOXD_%s", req[i].key);
            for (char *p = env + 8; *p; p++) *p = (*p == '.') ? '_' : (char)toupper((unsigned char)*p);
            snprintf(errstr, errstr_size, "missing required config key \"%s\" for outboxd apply: set it in the config file or as %s",
                     req[i].key, env);
            return -1;
        }
    }
    if (obx_config_check_names(cfg, errstr, errstr_size) != 0) return -1;
    obx_apply_map_t *maps;
    size_t n;
    if (obx_apply_parse_columns(cfg->apply_columns, &maps, &n, errstr, errstr_size) != 0) return -1;
    obx_apply_maps_free(maps, n);
    if (strcmp(cfg->apply_poison_policy, "halt") != 0 && strcmp(cfg->apply_poison_policy, "dead-letter") != 0) {
        snprintf(errstr, errstr_size, "apply.poison.policy = \"%s\": use halt or dead-letter", cfg->apply_poison_policy);
        return -1;
    }
    const char *st = cfg->apply_source_time;
    if (strcmp(st, "commit_time") != 0 && strcmp(st, "occurred_at") != 0 &&
        !(strncmp(st, "payload:", 8) == 0 && st[8] && st[8] != '.')) {
        snprintf(errstr, errstr_size, "apply.source_time = \"%s\": use commit_time, occurred_at or payload:<path> (e.g. payload:updatedAt)", st);
        return -1;
    }
    char **up = NULL, **del = NULL;
    size_t nup = 0, ndel = 0;
    int rc = 0;
    if (obx_apply_list_split(cfg->apply_event_types, &up, &nup) != 0 || obx_apply_list_split(cfg->apply_delete_types, &del, &ndel) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        rc = -1;
    }
    for (size_t i = 0; rc == 0 && i < ndel; i++)
        if (obx_apply_list_has(up, nup, del[i])) {
            snprintf(errstr, errstr_size, "event type \"%s\" is in both apply.event_types and apply.delete_types", del[i]);
            rc = -1;
        }
    obx_apply_list_free(up, nup);
    obx_apply_list_free(del, ndel);
    if (rc) return rc;
    obx_log_level_t lvl;
    obx_log_format_t fmt;
    if (obx_log_level_parse(cfg->log_level, &lvl) != 0 || obx_log_format_parse(cfg->log_format, &fmt) != 0) {
        snprintf(errstr, errstr_size, "log.level = \"%s\" / log.format = \"%s\": use debug|info|warn|error and auto|json|text",
                 cfg->log_level, cfg->log_format);
        return -1;
    }
    if (!obx_config_kafka_get(cfg, "bootstrap.servers")) {
        snprintf(errstr, errstr_size,
                 "missing required config key \"kafka.bootstrap.servers\": set it in the config file or as OUTBOXD_KAFKA_BOOTSTRAP_SERVERS");
        return -1;
    }
    return 0;
}
