#include "apply.h"
#include "kconf.h"
#include "pg.h"
#include "exitcodes.h"
#include "clock.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envelope.h"
#include "log.h"
#include "lsn.h"
#include "metrics.h"
#include "producer.h"
#include "outboxd/v1/event.pb-c.h"
#include "status_http.h"

/* ---------------------------------------------------------------- helpers */

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} sb_t;

static void sb_putn(sb_t *b, const char *s, size_t n)
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

static void sb_puts(sb_t *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_printf(sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof(tmp)) {
        sb_putn(b, tmp, (size_t)n);
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
    sb_putn(b, big, (size_t)n);
    free(big);
}

/* Identifiers are always quoted: names are used exactly as configured. */
static void sb_ident(sb_t *b, const char *name)
{
    sb_putn(b, "\"", 1);
    for (const char *p = name; *p; p++) {
        if (*p == '"') sb_putn(b, "\"", 1);
        sb_putn(b, p, 1);
    }
    sb_putn(b, "\"", 1);
}

/* "schema.table" or "table" as quoted identifiers. */
static void sb_qualified(sb_t *b, const char *name)
{
    const char *dot = strchr(name, '.');
    if (!dot) {
        sb_ident(b, name);
        return;
    }
    char schema[256];
    snprintf(schema, sizeof(schema), "%.*s", (int)(dot - name), name);
    sb_ident(b, schema);
    sb_putn(b, ".", 1);
    sb_ident(b, dot + 1);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

/* Splits a comma-separated list into trimmed, non-empty, malloc'd items. */
static int split_list(const char *s, char ***out, size_t *n)
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

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++) free(l[i]);
    free(l);
}

static int in_list(char *const *l, size_t n, const char *s)
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
    if (split_list(spec, &items, &ni) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    obx_apply_map_t *maps = calloc(ni ? ni : 1, sizeof(*maps));
    if (!maps) {
        free_list(items, ni);
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
    free_list(items, ni);
    *out = maps;
    *n = nm;
    return 0;
fail:
    free_list(items, ni);
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

static const char *json_type(const cJSON *v)
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
    char num[64];
    *out = NULL;
    if (cJSON_IsNull(v)) return 0;
    const char *want = NULL;
    switch (kind) {
    case OBX_COL_JSON: {
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
        if (cJSON_IsNumber(v)) {
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
        if (cJSON_IsNumber(v)) {
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
        snprintf(errstr, errstr_size, "type mismatch: expected %s, got %s", want, json_type(v));
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
    sb_t b = {0};
    sb_putn(&b, "{", 1);
    for (size_t i = 0; i < n; i++) {
        if (i) sb_putn(&b, ",", 1);
        if (!vals[i]) {
            sb_putn(&b, "NULL", 4);
            continue;
        }
        sb_putn(&b, "\"", 1);
        const char *s = vals[i], *run = s;
        for (; *s; s++)
            if (*s == '"' || *s == '\\') {
                sb_putn(&b, run, (size_t)(s - run));
                sb_putn(&b, "\\", 1);
                run = s;
            }
        sb_putn(&b, run, (size_t)(s - run));
        sb_putn(&b, "\"", 1);
    }
    sb_putn(&b, "}", 1);
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
    obx_apply_map_t *maps;
    size_t n;
    if (obx_apply_parse_columns(cfg->apply_columns, &maps, &n, errstr, errstr_size) != 0) return -1;
    obx_apply_maps_free(maps, n);
    if (strcmp(cfg->apply_mode, "batch") != 0 && strcmp(cfg->apply_mode, "row") != 0) {
        snprintf(errstr, errstr_size, "apply.mode = \"%s\": use batch (or row, the naive one-statement-per-event upsert, for comparison)",
                 cfg->apply_mode);
        return -1;
    }
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
    if (split_list(cfg->apply_event_types, &up, &nup) != 0 || split_list(cfg->apply_delete_types, &del, &ndel) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        rc = -1;
    }
    for (size_t i = 0; rc == 0 && i < ndel; i++)
        if (in_list(up, nup, del[i])) {
            snprintf(errstr, errstr_size, "event type \"%s\" is in both apply.event_types and apply.delete_types", del[i]);
            rc = -1;
        }
    free_list(up, nup);
    free_list(del, ndel);
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
    const char *strat = obx_config_kafka_get(cfg, "partition.assignment.strategy");
    if (strat && strstr(strat, "cooperative")) {
        snprintf(errstr, errstr_size,
                 "kafka.partition.assignment.strategy = %s: outboxd apply drops its open batch on every revocation and "
                 "needs the eager protocol (range or roundrobin)", strat);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------- the runtime */

enum { EV_UPSERT = 0, EV_DELETE, EV_SKIP, EV_POISON };
enum { WR_OK = 0, WR_DB, WR_DATA, WR_HALT };
enum { SRC_COMMIT = 0, SRC_OCCURRED, SRC_PAYLOAD };

typedef struct {
    char *name;
    char *type;     /* format_type() */
    obx_col_kind_t kind;
    int notnull;
    const obx_apply_map_t *map;
} col_t;

typedef struct {
    rd_kafka_message_t *msg; /* owned until the batch ends */
    int part;                /* index into apply_t.parts */
    int kind;                /* EV_* */
    char *key;
    int64_t version;
    char *src_ts;            /* timestamptz text */
    char **vals;             /* n_cols values, NULL = SQL NULL */
    char *reason;            /* EV_POISON */
} entry_t;

typedef struct {
    char *topic;
    int32_t partition;
    int assigned;
    int committed_fetched;   /* asked the group coordinator since the assignment */
    int64_t seek_to;         /* lowest offset dropped unwritten; -1 none */
    int mi;                  /* index in the metrics table, -1 none */
} part_t;

typedef struct {
    uint64_t applied, stale, superseded, skipped, dead_lettered;
    int64_t newest_src, newest_rep;
    size_t n_lags;
} stats_t;

typedef struct {
    const obx_config_t *cfg;
    volatile sig_atomic_t *stop;
    obx_metrics_t *m;
    obx_apply_map_t *maps;
    size_t n_maps;
    col_t *cols;             /* n_maps, same order */
    char *key_type;
    char **up_types, **del_types;
    size_t n_up_types, n_del_types;
    int src_kind;
    const char *src_path;
    int row_mode, dead_letter, use_tomb;
    char tomb_name[512];
    char *sql_upsert, *sql_delete;

    PGconn *db;
    rd_kafka_t *rk, *dlq;
    part_t *parts;
    size_t n_parts;
    entry_t *batch;
    size_t cap_batch;
    int64_t *lags;           /* apply lags of the open transaction, observed after COMMIT */
    int revoked;             /* the rebalance callback revoked: drop the open batch */
    int db_down, backoff_ms, down_logged;
    int64_t next_try_ms, last_tick_ms, last_wm_query_ms, last_progress_ms, last_kafka_err_ms;
    int dlq_failed, dlq_retriable;
    char dlq_err[256];
} apply_t;

static _Atomic(rd_kafka_t *) g_rk;

static void set_state(apply_t *a, obx_state_t s) { atomic_store(&a->m->state, (int)s); }

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* libpq messages end in a newline and may span lines: one log line each. */
/* Cached high watermark, for the status thread: librdkafka updates it from
 * fetch responses, so offset lag keeps moving while the loop is blocked in
 * a long statement. */
static int64_t hwm_hook(const char *topic, int32_t partition)
{
    rd_kafka_t *rk = atomic_load(&g_rk);
    int64_t lo = -1, hi = -1;
    if (!rk || rd_kafka_get_watermark_offsets(rk, topic, partition, &lo, &hi) != RD_KAFKA_RESP_ERR_NO_ERROR) return -1;
    return hi;
}

static int part_index(apply_t *a, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < a->n_parts; i++)
        if (a->parts[i].partition == partition && strcmp(a->parts[i].topic, topic) == 0) return (int)i;
    part_t *p = realloc(a->parts, (a->n_parts + 1) * sizeof(*p));
    if (!p) return -1;
    a->parts = p;
    part_t *n = &a->parts[a->n_parts];
    memset(n, 0, sizeof(*n));
    n->topic = strdup(topic);
    if (!n->topic) return -1;
    n->partition = partition;
    n->seek_to = -1;
    n->mi = obx_metrics_apply_partition(topic, partition);
    return (int)a->n_parts++;
}

static void note_dropped(apply_t *a, const rd_kafka_message_t *m)
{
    int p = part_index(a, rd_kafka_topic_name(m->rkt), m->partition);
    if (p < 0) return;
    if (a->parts[p].seek_to < 0 || m->offset < a->parts[p].seek_to) a->parts[p].seek_to = m->offset;
}

static void entry_clear(apply_t *a, entry_t *e)
{
    if (e->msg) rd_kafka_message_destroy(e->msg);
    free(e->key);
    free(e->src_ts);
    if (e->vals)
        for (size_t i = 0; i < a->n_maps; i++) free(e->vals[i]);
    free(e->vals);
    free(e->reason);
    memset(e, 0, sizeof(*e));
}

static void batch_free(apply_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++) entry_clear(a, &a->batch[i]);
}

/* ------------------------------------------------------- kafka callbacks */


/* Eager protocol only (validated): a revocation takes every partition, and
 * the next assignment starts from the committed offsets, so the open batch is
 * dropped and read again by whoever owns the partitions next. */
static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    apply_t *a = opaque;
    sb_t b = {0};
    for (int i = 0; i < parts->cnt; i++) sb_printf(&b, "%s%s[%d]", i ? " " : "", parts->elems[i].topic, (int)parts->elems[i].partition);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, parts);
        for (int i = 0; i < parts->cnt; i++) {
            int p = part_index(a, parts->elems[i].topic, parts->elems[i].partition);
            if (p < 0) continue;
            a->parts[p].assigned = 1;
            a->parts[p].committed_fetched = 0;
            a->parts[p].seek_to = -1;
            obx_metrics_apply_partition_set(a->parts[p].mi, 1, -1);
        }
        /* While the database is down nothing may be consumed. */
        if (a->db_down) rd_kafka_pause_partitions(rk, parts);
        obx_info("assigned", "group %s: assigned %s", a->cfg->apply_group, b.s ? b.s : "(nothing)");
    } else {
        a->revoked = 1;
        for (size_t p = 0; p < a->n_parts; p++) {
            a->parts[p].assigned = 0;
            a->parts[p].seek_to = -1;
            obx_metrics_apply_partition_set(a->parts[p].mi, 0, -1);
        }
        rd_kafka_assign(rk, NULL);
        obx_info("revoked", "group %s: revoked %s", a->cfg->apply_group, b.s ? b.s : "(nothing)");
    }
    free(b.s);
}

static void dlq_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    apply_t *a = opaque;
    if (!m->err) return;
    if (!a->dlq_failed) {
        snprintf(a->dlq_err, sizeof(a->dlq_err), "%s", rd_kafka_err2str(m->err));
        a->dlq_retriable = m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT || m->err == RD_KAFKA_RESP_ERR__TIMED_OUT ||
                           m->err == RD_KAFKA_RESP_ERR__TRANSPORT || m->err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
    }
    a->dlq_failed++;
}

/* Every kafka.* setting (security included) through the one builder. */
static rd_kafka_conf_t *kafka_conf(apply_t *a, obx_kconf_role_t role, char *errstr, size_t errstr_size)
{
    obx_err_t e;
    rd_kafka_conf_t *conf = obx_kconf_new(a->cfg, role, &e);
    if (!conf) {
        snprintf(errstr, errstr_size, "%s", e.msg);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, a);
    return conf;
}

static int consumer_new(apply_t *a, char *errstr, size_t errstr_size)
{
    rd_kafka_conf_t *conf = kafka_conf(a, OBX_KCONF_CONSUMER, errstr, errstr_size);
    if (!conf) return OBX_EXIT_CONFIG;
    /* Offsets move only after the database committed (see write_batch). */
    const char *forced[][2] = {{"group.id", a->cfg->apply_group}, {"enable.auto.commit", "false"},
                               {"enable.auto.offset.store", "false"}, {"enable.partition.eof", "false"}};
    for (size_t i = 0; i < sizeof(forced) / sizeof(forced[0]); i++)
        if (rd_kafka_conf_set(conf, forced[i][0], forced[i][1], errstr, errstr_size) != RD_KAFKA_CONF_OK) goto fail;
    /* A new group bootstraps from the beginning; the version guard makes the overlap safe. */
    if (!obx_config_kafka_get(a->cfg, "auto.offset.reset") &&
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, errstr_size) != RD_KAFKA_CONF_OK)
        goto fail;
    if (!obx_config_kafka_get(a->cfg, "topic.metadata.refresh.interval.ms") &&
        rd_kafka_conf_set(conf, "topic.metadata.refresh.interval.ms", "10000", errstr, errstr_size) != RD_KAFKA_CONF_OK)
        goto fail;
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    a->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, errstr_size);
    if (!a->rk) goto fail;
    rd_kafka_poll_set_consumer(a->rk);
    char **topics = NULL;
    size_t nt = 0;
    if (split_list(a->cfg->apply_topics, &topics, &nt) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        return OBX_EXIT_FAIL;
    }
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new((int)nt);
    for (size_t i = 0; i < nt; i++) rd_kafka_topic_partition_list_add(subs, topics[i], RD_KAFKA_PARTITION_UA);
    free_list(topics, nt);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(a->rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (e) {
        snprintf(errstr, errstr_size, "apply.topics = \"%s\": %s", a->cfg->apply_topics, rd_kafka_err2str(e));
        return OBX_EXIT_CONFIG;
    }
    atomic_store(&g_rk, a->rk);
    return 0;
fail:
    rd_kafka_conf_destroy(conf);
    return OBX_EXIT_CONFIG;
}

/* --------------------------------------------------------------- decoding */

static void poison(entry_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void poison(entry_t *e, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* One line: it goes into a log line and a Kafka header. */
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\t') *p = ' ';
    e->kind = EV_POISON;
    free(e->reason);
    e->reason = strdup(buf);
}

/* Message -> entry. Anything that cannot become a replica row is poison. */
static void decode(apply_t *a, rd_kafka_message_t *m, entry_t *e)
{
    char err[512], ts[48];
    memset(e, 0, sizeof(*e));
    e->msg = m;
    e->part = part_index(a, rd_kafka_topic_name(m->rkt), m->partition);
    Outboxd__V1__Event *ev = obx_envelope_decode(m->payload, m->len);
    cJSON *root = NULL;
    if (!ev) {
        poison(e, "undecodable envelope: the record value is not an outboxd.v1.Event (%zu bytes)", m->len);
        return;
    }
    if (!ev->aggregate_id || !*ev->aggregate_id) {
        poison(e, "event %s has an empty aggregate_id (the replica key)", ev->event_id);
        goto done;
    }
    if (ev->version_case != OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION) {
        poison(e, "event %s has no aggregate_version: the version guard needs one (the producer's outbox.column.aggregate_version)",
               ev->event_id);
        goto done;
    }
    e->version = ev->aggregate_version;
    e->key = strdup(ev->aggregate_id);
    e->kind = in_list(a->del_types, a->n_del_types, ev->event_type) ? EV_DELETE
              : (a->n_up_types && !in_list(a->up_types, a->n_up_types, ev->event_type)) ? EV_SKIP
                                                                                          : EV_UPSERT;
    if (!e->key) {
        poison(e, "out of memory");
        goto done;
    }
    if (e->kind == EV_SKIP) goto done;
    if (e->kind == EV_UPSERT || a->src_kind == SRC_PAYLOAD) {
        if (strcmp(ev->content_type, "application/json") == 0)
            root = cJSON_ParseWithLength((const char *)ev->payload.data, ev->payload.len);
        if (!root && e->kind == EV_UPSERT) {
            poison(e, "event %s: payload is not JSON (content type %s)", ev->event_id, ev->content_type);
            goto done;
        }
    }
    int64_t commit_us = ev->source ? ev->source->commit_time_us : 0;
    if (a->src_kind == SRC_PAYLOAD) {
        const cJSON *v = root ? obx_apply_json_path(root, a->src_path) : NULL;
        if (cJSON_IsString(v)) {
            e->src_ts = strdup(v->valuestring);
        } else if (e->kind == EV_DELETE && !v && commit_us > 0) {
            /* A delete event need not carry the state; its commit time will do. */
            e->src_ts = strdup(obx_apply_format_ts(commit_us, ts, sizeof(ts)));
        } else {
            poison(e, "event %s: payload field \"%s\" (apply.source_time) is %s, expected a timestamp string", ev->event_id,
                   a->src_path, v ? json_type(v) : "missing");
            goto done;
        }
    } else {
        int64_t us = a->src_kind == SRC_OCCURRED ? ev->occurred_at_us : commit_us;
        if (us <= 0) {
            poison(e, "event %s has no %s (apply.source_time)", ev->event_id,
                   a->src_kind == SRC_OCCURRED ? "occurred_at_us" : "source.commit_time_us");
            goto done;
        }
        e->src_ts = strdup(obx_apply_format_ts(us, ts, sizeof(ts)));
    }
    if (!e->src_ts) {
        poison(e, "out of memory");
        goto done;
    }
    if (e->kind != EV_UPSERT) goto done;
    e->vals = calloc(a->n_maps ? a->n_maps : 1, sizeof(char *));
    if (!e->vals) {
        poison(e, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < a->n_maps; i++) {
        const col_t *c = &a->cols[i];
        const cJSON *v = obx_apply_json_path(root, c->map->path);
        if (!v && !c->map->optional) {
            poison(e, "event %s: payload has no field \"%s\" (column %s)", ev->event_id, c->map->path, c->name);
            goto done;
        }
        if (v && obx_apply_json_to_text(v, c->kind, &e->vals[i], err, sizeof(err)) != 0) {
            poison(e, "event %s: payload field \"%s\" for column %s (%s): %s", ev->event_id, c->map->path, c->name, c->type, err);
            goto done;
        }
        if (!e->vals[i] && c->notnull) {
            poison(e, "event %s: payload field \"%s\" is %s but column %s is NOT NULL", ev->event_id, c->map->path,
                   v ? "null" : "missing", c->name);
            goto done;
        }
    }
done:
    cJSON_Delete(root);
    obx_envelope_free(ev);
}

/* -------------------------------------------------------------- database */

static int classify(PGconn *c, const PGresult *r)
{
    if (!r || PQstatus(c) != CONNECTION_OK) return WR_DB;
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    /* Data exceptions and integrity violations belong to a row; anything
     * else (connection, shutdown, locks, resources, schema) to the database. */
    if (st && (!strncmp(st, "22", 2) || !strncmp(st, "23", 2))) return WR_DATA;
    return WR_DB;
}

static int exec_cmd(apply_t *a, const char *sql, char *errstr, size_t errstr_size)
{
    PGresult *r = PQexec(a->db, sql);
    int rc = WR_OK;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = classify(a->db, r);
        snprintf(errstr, errstr_size, "%s: %s", sql, r ? PQresultErrorMessage(r) : PQerrorMessage(a->db));
        obx_chomp(errstr);
    }
    PQclear(r);
    return rc;
}

static PGresult *query(PGconn *c, const char *sql, int n, const char *const *params, char *errstr, size_t errstr_size)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
        snprintf(errstr, errstr_size, "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(c));
        obx_chomp(errstr);
        PQclear(r);
        return NULL;
    }
    return r;
}

typedef struct {
    char *name, *type, *base;
    char category;
    int notnull, hasdef;
} pgcol_t;

typedef struct {
    char oid[16];
    pgcol_t *cols;
    int n;
} pgtable_t;

static void pgtable_free(pgtable_t *t)
{
    for (int i = 0; i < t->n; i++) {
        free(t->cols[i].name);
        free(t->cols[i].type);
        free(t->cols[i].base);
    }
    free(t->cols);
    memset(t, 0, sizeof(*t));
}

static const pgcol_t *pgcol(const pgtable_t *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->cols[i].name, name) == 0) return &t->cols[i];
    return NULL;
}

/* 0, -1 (connection trouble: retry), OBX_EXIT_CONFIG (errstr says what to fix). */
static int describe(PGconn *c, const char *name, pgtable_t *t, char *errstr, size_t errstr_size)
{
    sb_t q = {0};
    sb_qualified(&q, name);
    const char *p[2] = {q.s, NULL};
    memset(t, 0, sizeof(*t));
    PGresult *r = query(c, "SELECT to_regclass($1)::oid", 1, p, errstr, errstr_size);
    free(q.s);
    if (!r) return PQstatus(c) == CONNECTION_OK ? OBX_EXIT_CONFIG : -1;
    if (PQgetisnull(r, 0, 0)) {
        snprintf(errstr, errstr_size, "table %s does not exist in database %s", name, PQdb(c));
        PQclear(r);
        return OBX_EXIT_CONFIG;
    }
    snprintf(t->oid, sizeof(t->oid), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    p[0] = t->oid;
    r = query(c,
              "SELECT a.attname, format_type(a.atttypid, a.atttypmod), coalesce(b.typname, ty.typname),"
              " coalesce(b.typcategory, ty.typcategory)::text, a.attnotnull,"
              " a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''"
              " FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid"
              " LEFT JOIN pg_type b ON ty.typtype = 'd' AND b.oid = ty.typbasetype"
              " WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
              1, p, errstr, errstr_size);
    if (!r) return PQstatus(c) == CONNECTION_OK ? OBX_EXIT_CONFIG : -1;
    t->n = PQntuples(r);
    t->cols = calloc(t->n ? (size_t)t->n : 1, sizeof(*t->cols));
    for (int i = 0; t->cols && i < t->n; i++) {
        t->cols[i].name = strdup(PQgetvalue(r, i, 0));
        t->cols[i].type = strdup(PQgetvalue(r, i, 1));
        t->cols[i].base = strdup(PQgetvalue(r, i, 2));
        t->cols[i].category = PQgetvalue(r, i, 3)[0];
        t->cols[i].notnull = PQgetvalue(r, i, 4)[0] == 't';
        t->cols[i].hasdef = PQgetvalue(r, i, 5)[0] == 't';
        if (!t->cols[i].name || !t->cols[i].type || !t->cols[i].base) t->n = i;
    }
    PQclear(r);
    if (!t->cols) {
        snprintf(errstr, errstr_size, "out of memory");
        return OBX_EXIT_FAIL;
    }
    return 0;
}

/* The table needs a plain unique index on exactly the key column for ON CONFLICT. */
static int check_unique_key(PGconn *c, const pgtable_t *t, const char *table, const char *key, char *errstr, size_t errstr_size)
{
    const char *p[2] = {t->oid, key};
    PGresult *r = query(c,
                        "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                        " WHERE i.indrelid = $1::oid AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL"
                        " AND i.indexprs IS NULL AND a.attname = $2",
                        2, p, errstr, errstr_size);
    if (!r) return PQstatus(c) == CONNECTION_OK ? OBX_EXIT_CONFIG : -1;
    int ok = atoi(PQgetvalue(r, 0, 0)) > 0;
    PQclear(r);
    if (!ok) {
        snprintf(errstr, errstr_size, "table %s needs a primary key or unique index on exactly column \"%s\" (ON CONFLICT target): "
                 "ALTER TABLE %s ADD PRIMARY KEY (%s)", table, key, table, key);
        return OBX_EXIT_CONFIG;
    }
    return 0;
}

static int check_privs(PGconn *c, const pgtable_t *t, const char *table, const char *privs, char *errstr, size_t errstr_size)
{
    char list[64];
    snprintf(list, sizeof(list), "%s", privs);
    char *save = NULL;
    for (char *pv = strtok_r(list, ",", &save); pv; pv = strtok_r(NULL, ",", &save)) {
        const char *p[2] = {t->oid, pv};
        PGresult *r = query(c, "SELECT has_table_privilege($1::oid, $2)", 2, p, errstr, errstr_size);
        if (!r) return PQstatus(c) == CONNECTION_OK ? OBX_EXIT_CONFIG : -1;
        int ok = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!ok) {
            snprintf(errstr, errstr_size, "role %s lacks %s on %s: GRANT SELECT, INSERT, UPDATE%s ON %s TO %s", PQuser(c), pv, table,
                     strstr(privs, "DELETE") ? ", DELETE" : "", table, PQuser(c));
            return OBX_EXIT_CONFIG;
        }
    }
    return 0;
}

/* The metadata columns: version an integer, times timestamps. */
static int check_meta(const pgtable_t *t, const char *table, const obx_config_t *cfg, char *errstr, size_t errstr_size)
{
    const char *names[4] = {cfg->apply_key_column, cfg->apply_col_version, cfg->apply_col_source_updated_at,
                            cfg->apply_col_replicated_at};
    const char *keys[4] = {"apply.key_column", "apply.column.source_version", "apply.column.source_updated_at",
                           "apply.column.replicated_at"};
    for (int i = 0; i < 4; i++) {
        const pgcol_t *c = pgcol(t, names[i]);
        if (!c) {
            snprintf(errstr, errstr_size, "table %s has no column \"%s\" (%s)", table, names[i], keys[i]);
            return OBX_EXIT_CONFIG;
        }
        if (i == 1 && obx_apply_col_kind(c->base, c->category) != OBX_COL_INT) {
            snprintf(errstr, errstr_size, "column %s.%s (%s) holds the aggregate version: make it bigint", table, names[i], c->type);
            return OBX_EXIT_CONFIG;
        }
        if (i >= 2 && strcmp(c->base, "timestamptz") != 0 && strcmp(c->base, "timestamp") != 0) {
            snprintf(errstr, errstr_size, "column %s.%s (%s) must be timestamptz", table, names[i], c->type);
            return OBX_EXIT_CONFIG;
        }
    }
    return 0;
}

static void free_sql(apply_t *a)
{
    free(a->sql_upsert);
    free(a->sql_delete);
    a->sql_upsert = a->sql_delete = NULL;
    if (a->cols)
        for (size_t i = 0; i < a->n_maps; i++) {
            free(a->cols[i].name);
            free(a->cols[i].type);
        }
    free(a->cols);
    a->cols = NULL;
    free(a->key_type);
    a->key_type = NULL;
}

/* "$3::text[]" (batch) or "$3::text" (row). */
static void sb_param(apply_t *a, sb_t *b, int i, const char *type)
{
    sb_printf(b, "$%d::%s%s", i, type, a->row_mode ? "" : "[]");
}

/* `c1 = EXCLUDED.c1, c2 = EXCLUDED.c2 ...` and the version guard of an upsert. */
static void sb_set_excluded(sb_t *b, const char *const *cols, size_t n, const char *sep_after)
{
    for (size_t i = 0; i < n; i++) {
        sb_ident(b, cols[i]);
        sb_puts(b, " = EXCLUDED."), sb_ident(b, cols[i]);
        if (i + 1 < n || sep_after) sb_puts(b, i + 1 < n ? ", " : sep_after);
    }
}

static void sb_version_guard(sb_t *b, const char *alias, const char *version_col)
{
    sb_puts(b, " WHERE "), sb_puts(b, alias), sb_puts(b, "."), sb_ident(b, version_col);
    sb_puts(b, " < EXCLUDED."), sb_ident(b, version_col);
}

static void sb_source(apply_t *a, sb_t *b, int nparams, const char *const *types, const char *const *aliases)
{
    if (a->row_mode) {
        sb_puts(b, " FROM (VALUES (");
        for (int i = 0; i < nparams; i++) {
            if (i) sb_puts(b, ", ");
            sb_param(a, b, i + 1, types[i]);
        }
        sb_puts(b, ")) AS u(");
    } else {
        sb_puts(b, " FROM unnest(");
        for (int i = 0; i < nparams; i++) {
            if (i) sb_puts(b, ", ");
            sb_param(a, b, i + 1, types[i]);
        }
        sb_puts(b, ") AS u(");
    }
    for (int i = 0; i < nparams; i++) sb_printf(b, "%s%s", i ? ", " : "", aliases[i]);
    sb_puts(b, ")");
}

/* Builds both statements from the described table. */
static int build_sql(apply_t *a, char *errstr, size_t errstr_size)
{
    const obx_config_t *cfg = a->cfg;
    int np = (int)a->n_maps + 3;
    const char **types = calloc((size_t)np, sizeof(char *));
    char **aliases = calloc((size_t)np, sizeof(char *));
    sb_t b = {0}, d = {0};
    if (!types || !aliases) goto oom;
    types[0] = a->key_type;
    aliases[0] = strdup("k");
    for (size_t i = 0; i < a->n_maps; i++) {
        types[i + 1] = a->cols[i].type;
        aliases[i + 1] = malloc(24);
        if (aliases[i + 1]) snprintf(aliases[i + 1], 24, "c%zu", i + 1);
    }
    types[np - 2] = "bigint";
    aliases[np - 2] = strdup("v");
    types[np - 1] = "timestamptz";
    aliases[np - 1] = strdup("s");
    for (int i = 0; i < np; i++)
        if (!aliases[i]) goto oom;

    /* The guard: an older or equal version never overwrites, and a tombstone
     * at or above the event's version keeps a deleted aggregate deleted. */
    sb_puts(&b, "INSERT INTO ");
    sb_qualified(&b, cfg->apply_table);
    sb_puts(&b, " AS r (");
    sb_ident(&b, cfg->apply_key_column);
    for (size_t i = 0; i < a->n_maps; i++) sb_puts(&b, ", "), sb_ident(&b, a->cols[i].name);
    sb_puts(&b, ", "), sb_ident(&b, cfg->apply_col_version);
    sb_puts(&b, ", "), sb_ident(&b, cfg->apply_col_source_updated_at);
    sb_puts(&b, ", "), sb_ident(&b, cfg->apply_col_replicated_at);
    sb_puts(&b, ") SELECT ");
    for (int i = 0; i < np; i++) sb_printf(&b, "u.%s, ", aliases[i]);
    sb_puts(&b, "now()");
    sb_source(a, &b, np, types, (const char *const *)aliases);
    if (a->use_tomb) {
        sb_puts(&b, " WHERE NOT EXISTS (SELECT 1 FROM ");
        sb_qualified(&b, a->tomb_name);
        sb_puts(&b, " t WHERE t."), sb_ident(&b, cfg->apply_key_column);
        sb_puts(&b, " = u.k AND t."), sb_ident(&b, cfg->apply_col_version);
        sb_puts(&b, " >= u.v)");
    } else {
        /* Without a WHERE, ON CONFLICT would parse as a join's ON. */
        sb_puts(&b, " WHERE true");
    }
    sb_puts(&b, " ON CONFLICT ("), sb_ident(&b, cfg->apply_key_column);
    sb_puts(&b, ") DO UPDATE SET ");
    for (size_t i = 0; i < a->n_maps; i++) sb_set_excluded(&b, (const char *const[]){a->cols[i].name}, 1, ", ");
    const char *meta[3] = {cfg->apply_col_version, cfg->apply_col_source_updated_at, cfg->apply_col_replicated_at};
    sb_set_excluded(&b, meta, 3, NULL);
    sb_version_guard(&b, "r", cfg->apply_col_version);
    sb_puts(&b, " RETURNING (extract(epoch FROM r."), sb_ident(&b, cfg->apply_col_source_updated_at);
    sb_puts(&b, ") * 1000000)::bigint, (extract(epoch FROM r."), sb_ident(&b, cfg->apply_col_replicated_at);
    sb_puts(&b, ") * 1000000)::bigint");

    if (a->use_tomb) {
        const char *dt[3] = {a->key_type, "bigint", "timestamptz"}, *da[3] = {"k", "v", "s"};
        sb_puts(&d, "WITH d AS (INSERT INTO ");
        sb_qualified(&d, a->tomb_name);
        sb_puts(&d, " AS t (");
        sb_ident(&d, cfg->apply_key_column);
        for (int i = 0; i < 3; i++) sb_puts(&d, ", "), sb_ident(&d, meta[i]);
        sb_puts(&d, ") SELECT u.k, u.v, u.s, now()");
        sb_source(a, &d, 3, dt, da);
        sb_puts(&d, " WHERE NOT EXISTS (SELECT 1 FROM ");
        sb_qualified(&d, cfg->apply_table);
        sb_puts(&d, " r WHERE r."), sb_ident(&d, cfg->apply_key_column);
        sb_puts(&d, " = u.k AND r."), sb_ident(&d, cfg->apply_col_version);
        sb_puts(&d, " >= u.v) ON CONFLICT ("), sb_ident(&d, cfg->apply_key_column);
        sb_puts(&d, ") DO UPDATE SET ");
        sb_set_excluded(&d, meta, 3, NULL);
        sb_version_guard(&d, "t", cfg->apply_col_version);
        sb_puts(&d, " RETURNING t."), sb_ident(&d, cfg->apply_key_column);
        sb_puts(&d, " AS k, t."), sb_ident(&d, cfg->apply_col_version);
        sb_puts(&d, " AS v, t."), sb_ident(&d, cfg->apply_col_source_updated_at);
        sb_puts(&d, " AS s, t."), sb_ident(&d, cfg->apply_col_replicated_at);
        sb_puts(&d, " AS rr), x AS (DELETE FROM ");
        sb_qualified(&d, cfg->apply_table);
        sb_puts(&d, " r USING d WHERE r."), sb_ident(&d, cfg->apply_key_column);
        sb_puts(&d, " = d.k AND r."), sb_ident(&d, cfg->apply_col_version);
        sb_puts(&d, " < d.v) SELECT (extract(epoch FROM d.s) * 1000000)::bigint, (extract(epoch FROM d.rr) * 1000000)::bigint FROM d");
    }
    if (b.oom || d.oom) goto oom;
    a->sql_upsert = b.s;
    a->sql_delete = d.s;
    for (int i = 0; i < np; i++) free(aliases[i]);
    free(aliases);
    free(types);
    return 0;
oom:
    if (aliases)
        for (int i = 0; i < np; i++) free(aliases[i]);
    free(aliases);
    free(types);
    free(b.s);
    free(d.s);
    snprintf(errstr, errstr_size, "out of memory");
    return OBX_EXIT_FAIL;
}

/* Describes the replica (and tombstone) table, builds and prepares the
 * statements. 0, -1 (retry) or an OBX_EXIT_* code. */
static int preflight(apply_t *a, char *errstr, size_t errstr_size)
{
    const obx_config_t *cfg = a->cfg;
    pgtable_t t = {0}, tt = {0};
    int rc;
    free_sql(a);
    if ((rc = describe(a->db, cfg->apply_table, &t, errstr, errstr_size)) != 0) goto done;
    if ((rc = check_meta(&t, cfg->apply_table, cfg, errstr, errstr_size)) != 0) goto done;
    if ((rc = check_unique_key(a->db, &t, cfg->apply_table, cfg->apply_key_column, errstr, errstr_size)) != 0) goto done;
    if ((rc = check_privs(a->db, &t, cfg->apply_table, a->use_tomb ? "SELECT,INSERT,UPDATE,DELETE" : "SELECT,INSERT,UPDATE",
                          errstr, errstr_size)) != 0)
        goto done;
    a->key_type = strdup(pgcol(&t, cfg->apply_key_column)->type);
    a->cols = calloc(a->n_maps ? a->n_maps : 1, sizeof(*a->cols));
    if (!a->key_type || !a->cols) {
        snprintf(errstr, errstr_size, "out of memory");
        rc = OBX_EXIT_FAIL;
        goto done;
    }
    for (size_t i = 0; i < a->n_maps; i++) {
        const pgcol_t *c = pgcol(&t, a->maps[i].column);
        if (!c) {
            snprintf(errstr, errstr_size, "table %s has no column \"%s\" (apply.columns)", cfg->apply_table, a->maps[i].column);
            rc = OBX_EXIT_CONFIG;
            goto done;
        }
        if (c->category == 'A') {
            snprintf(errstr, errstr_size, "column %s.%s is an array (%s): map it to a jsonb column instead", cfg->apply_table,
                     c->name, c->type);
            rc = OBX_EXIT_CONFIG;
            goto done;
        }
        a->cols[i].name = strdup(c->name);
        a->cols[i].type = strdup(c->type);
        a->cols[i].kind = obx_apply_col_kind(c->base, c->category);
        a->cols[i].notnull = c->notnull;
        a->cols[i].map = &a->maps[i];
        if (!a->cols[i].name || !a->cols[i].type) {
            snprintf(errstr, errstr_size, "out of memory");
            rc = OBX_EXIT_FAIL;
            goto done;
        }
    }
    /* A NOT NULL column nobody fills would make every insert fail. */
    for (int i = 0; i < t.n; i++) {
        const pgcol_t *c = &t.cols[i];
        int covered = !strcmp(c->name, cfg->apply_key_column) || !strcmp(c->name, cfg->apply_col_version) ||
                      !strcmp(c->name, cfg->apply_col_source_updated_at) || !strcmp(c->name, cfg->apply_col_replicated_at);
        for (size_t j = 0; j < a->n_maps && !covered; j++) covered = !strcmp(c->name, a->maps[j].column);
        if (c->notnull && !c->hasdef && !covered) {
            snprintf(errstr, errstr_size, "column %s.%s is NOT NULL without a default and not in apply.columns: map it, "
                     "give it a default or drop NOT NULL", cfg->apply_table, c->name);
            rc = OBX_EXIT_CONFIG;
            goto done;
        }
    }
    if (a->use_tomb) {
        rc = describe(a->db, a->tomb_name, &tt, errstr, errstr_size);
        if (rc == OBX_EXIT_CONFIG && strstr(errstr, "does not exist")) {
            char e2[1024];
            snprintf(e2, sizeof(e2), "%s; apply.delete_types needs the tombstone table (apply.tombstone_table): CREATE TABLE %s "
                     "(%s %s PRIMARY KEY, %s bigint NOT NULL, %s timestamptz NOT NULL, %s timestamptz NOT NULL)",
                     errstr, a->tomb_name, cfg->apply_key_column, a->key_type, cfg->apply_col_version,
                     cfg->apply_col_source_updated_at, cfg->apply_col_replicated_at);
            snprintf(errstr, errstr_size, "%s", e2);
        }
        if (rc) goto done;
        if ((rc = check_meta(&tt, a->tomb_name, cfg, errstr, errstr_size)) != 0) goto done;
        if ((rc = check_unique_key(a->db, &tt, a->tomb_name, cfg->apply_key_column, errstr, errstr_size)) != 0) goto done;
        if ((rc = check_privs(a->db, &tt, a->tomb_name, "SELECT,INSERT,UPDATE", errstr, errstr_size)) != 0) goto done;
    }
    if ((rc = build_sql(a, errstr, errstr_size)) != 0) goto done;
    PGresult *r = PQprepare(a->db, "obx_upsert", a->sql_upsert, 0, NULL);
    if (PQresultStatus(r) == PGRES_COMMAND_OK && a->sql_delete) {
        PQclear(r);
        r = PQprepare(a->db, "obx_delete", a->sql_delete, 0, NULL);
    }
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        snprintf(errstr, errstr_size, "cannot prepare the upsert: %s", r ? PQresultErrorMessage(r) : PQerrorMessage(a->db));
        obx_chomp(errstr);
        rc = PQstatus(a->db) == CONNECTION_OK ? OBX_EXIT_CONFIG : -1;
    }
    PQclear(r);
done:
    pgtable_free(&t);
    pgtable_free(&tt);
    return rc;
}

/* Freshness survives restarts: it is read back from the replica itself
 * (the article's max(source_updated_at) / max(replicated_at)). */
static void load_freshness(apply_t *a)
{
    sb_t q = {0};
    const char *tables[2] = {a->cfg->apply_table, a->use_tomb ? a->tomb_name : NULL};
    char err[512];
    for (int i = 0; i < 2 && tables[i]; i++) {
        q.len = 0;
        sb_puts(&q, "SELECT (extract(epoch FROM max(");
        sb_ident(&q, a->cfg->apply_col_source_updated_at);
        sb_puts(&q, ")) * 1000000)::bigint, (extract(epoch FROM max(");
        sb_ident(&q, a->cfg->apply_col_replicated_at);
        sb_puts(&q, ")) * 1000000)::bigint FROM ");
        sb_qualified(&q, tables[i]);
        if (q.oom) break;
        PGresult *r = query(a->db, q.s, 0, NULL, err, sizeof(err));
        if (!r) {
            obx_warn("freshness", "%s", err);
            continue;
        }
        if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) {
            obx_metrics_apply_fresh(atoll(PQgetvalue(r, 0, 0)), atoll(PQgetvalue(r, 0, 1)));
        }
        PQclear(r);
    }
    free(q.s);
}

/* 0, -1 (retry later) or an OBX_EXIT_* code. */
static int db_open(apply_t *a, char *errstr, size_t errstr_size)
{
    const char *keys[] = {"connect_timeout", "keepalives_idle", "keepalives_interval", "keepalives_count",
                          "tcp_user_timeout", "dbname", "fallback_application_name", NULL};
    const char *vals[] = {"10", "10", "5", "3", "30000", a->cfg->apply_conninfo, "outboxd-apply", NULL};
    if (a->db) PQfinish(a->db);
    a->db = PQconnectdbParams(keys, vals, 1);
    if (!a->db || PQstatus(a->db) != CONNECTION_OK) {
        snprintf(errstr, errstr_size, "cannot connect to the replica database (apply.conninfo): %s",
                 a->db ? PQerrorMessage(a->db) : "out of memory");
        obx_chomp(errstr);
        PQfinish(a->db);
        a->db = NULL;
        return -1;
    }
    /* Timestamps go in and come out as UTC, whatever the server's default. */
    char err[512];
    int rc = exec_cmd(a, "SET TimeZone = 'UTC'", err, sizeof(err));
    if (rc == WR_OK) rc = preflight(a, errstr, errstr_size);
    else snprintf(errstr, errstr_size, "%s", err), rc = -1;
    if (rc != 0) {
        PQfinish(a->db);
        a->db = NULL;
        return rc;
    }
    atomic_store(&a->m->pg_connected, 1);
    return 0;
}

/* ----------------------------------------------------------------- writing */

static void add_lags(apply_t *a, PGresult *r, stats_t *st)
{
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t s = atoll(PQgetvalue(r, i, 0)), rep = atoll(PQgetvalue(r, i, 1));
        if (s > st->newest_src) st->newest_src = s;
        if (rep > st->newest_rep) st->newest_rep = rep;
        a->lags[st->n_lags++] = rep - s;
    }
}

/* Runs one prepared statement over `idx` entries (arrays in batch mode, one
 * row at a time in row mode). */
static int run_stmt(apply_t *a, int del, const size_t *idx, size_t n, stats_t *st, char *errstr, size_t errstr_size)
{
    size_t ncols = del ? 0 : a->n_maps;
    int np = (int)ncols + 3;
    const char **vals = calloc(n ? n : 1, sizeof(char *));
    char **params = calloc((size_t)np, sizeof(char *));
    char vbuf[32];
    int rc = WR_OK;
    if (!vals || !params) {
        free(vals);
        free(params);
        snprintf(errstr, errstr_size, "out of memory");
        return WR_DB;
    }
    char **vstr = NULL;
    if (!a->row_mode) {
        vstr = calloc(n ? n : 1, sizeof(char *));
        for (size_t i = 0; vstr && i < n; i++) {
            vstr[i] = malloc(24);
            if (vstr[i]) snprintf(vstr[i], 24, "%lld", (long long)a->batch[idx[i]].version);
        }
    }
    size_t rows = a->row_mode ? n : 1;
    for (size_t row = 0; row < rows && rc == WR_OK; row++) {
        if (a->row_mode) {
            entry_t *e = &a->batch[idx[row]];
            snprintf(vbuf, sizeof(vbuf), "%lld", (long long)e->version);
            const char *p[np];
            p[0] = e->key;
            for (size_t c = 0; c < ncols; c++) p[c + 1] = e->vals[c];
            p[np - 2] = vbuf;
            p[np - 1] = e->src_ts;
            PGresult *r = PQexecPrepared(a->db, del ? "obx_delete" : "obx_upsert", np, p, NULL, NULL, 0);
            if (PQresultStatus(r) == PGRES_TUPLES_OK) {
                st->applied += (uint64_t)PQntuples(r);
                st->stale += (uint64_t)(1 - PQntuples(r));
                add_lags(a, r, st);
            } else {
                rc = classify(a->db, r);
                snprintf(errstr, errstr_size, "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(a->db));
                obx_chomp(errstr);
            }
            PQclear(r);
            continue;
        }
        /* Batch: one array parameter per column. */
        for (size_t i = 0; i < n; i++) vals[i] = a->batch[idx[i]].key;
        params[0] = obx_apply_array_literal(vals, n);
        for (size_t c = 0; c < ncols; c++) {
            for (size_t i = 0; i < n; i++) vals[i] = a->batch[idx[i]].vals[c];
            params[c + 1] = obx_apply_array_literal(vals, n);
        }
        params[np - 2] = vstr ? obx_apply_array_literal((const char *const *)vstr, n) : NULL;
        for (size_t i = 0; i < n; i++) vals[i] = a->batch[idx[i]].src_ts;
        params[np - 1] = obx_apply_array_literal(vals, n);
        for (int i = 0; i < np; i++)
            if (!params[i]) {
                snprintf(errstr, errstr_size, "out of memory");
                rc = WR_DB;
            }
        if (rc != WR_OK) break;
        PGresult *r = PQexecPrepared(a->db, del ? "obx_delete" : "obx_upsert", np, (const char *const *)params, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            st->applied += (uint64_t)PQntuples(r);
            st->stale += n - (uint64_t)PQntuples(r);
            add_lags(a, r, st);
        } else {
            rc = classify(a->db, r);
            snprintf(errstr, errstr_size, "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(a->db));
            obx_chomp(errstr);
        }
        PQclear(r);
    }
    for (int i = 0; i < np; i++) free(params[i]);
    if (vstr)
        for (size_t i = 0; i < n; i++) free(vstr[i]);
    free(vstr);
    free(params);
    free(vals);
    return rc;
}

/* Dead-letters the poison entries among the first n (before COMMIT: the
 * offsets move past them only once the dead-letter topic has them). */
static int dead_letter(apply_t *a, size_t n, stats_t *st, char *errstr, size_t errstr_size)
{
    size_t np = 0;
    for (size_t i = 0; i < n; i++) np += a->batch[i].kind == EV_POISON;
    if (!np) return WR_OK;
    if (!a->dlq) {
        rd_kafka_conf_t *conf = kafka_conf(a, OBX_KCONF_PRODUCER, errstr, errstr_size);
        if (!conf) return WR_HALT;
        rd_kafka_conf_set_dr_msg_cb(conf, dlq_dr_cb);
        if (!obx_config_kafka_get(a->cfg, "message.timeout.ms"))
            rd_kafka_conf_set(conf, "message.timeout.ms", "30000", errstr, errstr_size);
        a->dlq = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size);
        if (!a->dlq) {
            rd_kafka_conf_destroy(conf);
            return WR_HALT;
        }
    }
    a->dlq_failed = 0;
    for (size_t i = 0; i < n; i++) {
        entry_t *e = &a->batch[i];
        if (e->kind != EV_POISON) continue;
        rd_kafka_message_t *m = e->msg;
        rd_kafka_headers_t *orig = NULL, *h;
        h = (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR && orig) ? rd_kafka_headers_copy(orig)
                                                                                     : rd_kafka_headers_new(4);
        char part[16], off[24];
        snprintf(part, sizeof(part), "%d", (int)m->partition);
        snprintf(off, sizeof(off), "%lld", (long long)m->offset);
        rd_kafka_header_add(h, "outboxd-error", -1, e->reason ? e->reason : "poison", -1);
        rd_kafka_header_add(h, "outboxd-original-topic", -1, rd_kafka_topic_name(m->rkt), -1);
        rd_kafka_header_add(h, "outboxd-original-partition", -1, part, -1);
        rd_kafka_header_add(h, "outboxd-original-offset", -1, off, -1);
        rd_kafka_resp_err_t err = rd_kafka_producev(
            a->dlq, RD_KAFKA_V_TOPIC(a->cfg->apply_dlq_topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
        if (err) {
            rd_kafka_headers_destroy(h);
            snprintf(errstr, errstr_size, "dead-letter topic %s: %s", a->cfg->apply_dlq_topic, rd_kafka_err2str(err));
            return WR_HALT;
        }
    }
    int left = 0;
    if (rd_kafka_flush(a->dlq, 60000) != RD_KAFKA_RESP_ERR_NO_ERROR) left = rd_kafka_outq_len(a->dlq);
    if (left || a->dlq_failed) {
        snprintf(errstr, errstr_size, "dead-letter topic %s did not take the poison events: %s", a->cfg->apply_dlq_topic,
                 left ? "timed out" : a->dlq_err);
        return left || a->dlq_retriable ? WR_DB : WR_HALT;
    }
    for (size_t i = 0; i < n; i++) {
        entry_t *e = &a->batch[i];
        if (e->kind != EV_POISON) continue;
        st->dead_lettered++;
        obx_warn("dead_lettered", "%s [%d] offset %lld -> %s: %s", rd_kafka_topic_name(e->msg->rkt), (int)e->msg->partition,
                 (long long)e->msg->offset, a->cfg->apply_dlq_topic, e->reason ? e->reason : "poison");
    }
    return WR_OK;
}

/* The fast path: highest version per key, then one statement for the
 * upserts and one for the deletes, in one transaction. */
static int write_fast(apply_t *a, size_t n, stats_t *st, char *errstr, size_t errstr_size)
{
    size_t *cand = malloc((n ? n : 1) * sizeof(size_t)), *up = malloc((n ? n : 1) * sizeof(size_t)),
           *del = malloc((n ? n : 1) * sizeof(size_t));
    const char **keys = malloc((n ? n : 1) * sizeof(char *));
    int64_t *vers = malloc((n ? n : 1) * sizeof(int64_t));
    unsigned char *keep = malloc(n ? n : 1);
    size_t nc = 0, nu = 0, nd = 0;
    int rc = WR_OK;
    if (!cand || !up || !del || !keys || !vers || !keep) {
        snprintf(errstr, errstr_size, "out of memory");
        rc = WR_DB;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        entry_t *e = &a->batch[i];
        if (e->kind == EV_SKIP) st->skipped++;
        if (e->kind != EV_UPSERT && e->kind != EV_DELETE) continue;
        keys[nc] = e->key;
        vers[nc] = e->version;
        cand[nc++] = i;
    }
    if (a->row_mode) {
        /* The naive consumer: every event on its own, in arrival order. */
        memset(keep, 1, nc ? nc : 1);
    } else if (obx_apply_dedupe(keys, vers, nc, keep) == (size_t)-1) {
        snprintf(errstr, errstr_size, "out of memory");
        rc = WR_DB;
        goto out;
    }
    for (size_t j = 0; j < nc; j++) {
        if (!keep[j]) {
            st->superseded++;
            continue;
        }
        if (a->batch[cand[j]].kind == EV_UPSERT) up[nu++] = cand[j];
        else del[nd++] = cand[j];
    }
    if (!a->row_mode && (rc = exec_cmd(a, "BEGIN", errstr, errstr_size)) != WR_OK) goto out;
    if (nu && (rc = run_stmt(a, 0, up, nu, st, errstr, errstr_size)) != WR_OK) goto out;
    if (nd && (rc = run_stmt(a, 1, del, nd, st, errstr, errstr_size)) != WR_OK) goto out;
    if (a->dead_letter && (rc = dead_letter(a, n, st, errstr, errstr_size)) != WR_OK) goto out;
    if (!a->row_mode) rc = exec_cmd(a, "COMMIT", errstr, errstr_size);
out:
    free(cand), free(up), free(del), free(keys), free(vers), free(keep);
    return rc;
}

/* The slow path after a data error: each event on its own under a savepoint,
 * in arrival order, to find the poison. Under halt, *halt_at is the first
 * one and the events before it are committed. */
static int write_slow(apply_t *a, size_t n, stats_t *st, size_t *halt_at, char *errstr, size_t errstr_size)
{
    char err[1024];
    int rc = exec_cmd(a, "BEGIN", errstr, errstr_size);
    for (size_t i = 0; rc == WR_OK && i < n; i++) {
        entry_t *e = &a->batch[i];
        if (e->kind == EV_SKIP) st->skipped++;
        if (e->kind != EV_UPSERT && e->kind != EV_DELETE) continue;
        if ((rc = exec_cmd(a, "SAVEPOINT obx_row", errstr, errstr_size)) != WR_OK) break;
        stats_t one = {0};
        one.n_lags = st->n_lags;
        rc = run_stmt(a, e->kind == EV_DELETE, &i, 1, &one, err, sizeof(err));
        if (rc == WR_DATA) {
            poison(e, "the replica database refused it: %s", err);
            if ((rc = exec_cmd(a, "ROLLBACK TO SAVEPOINT obx_row", errstr, errstr_size)) != WR_OK) break;
            if (!a->dead_letter) {
                *halt_at = i;
                rc = exec_cmd(a, "COMMIT", errstr, errstr_size);
                return rc == WR_OK ? WR_HALT : rc;
            }
            continue;
        }
        if (rc != WR_OK) {
            snprintf(errstr, errstr_size, "%s", err);
            break;
        }
        st->applied += one.applied;
        st->stale += one.stale;
        st->n_lags = one.n_lags;
        if (one.newest_src > st->newest_src) st->newest_src = one.newest_src;
        if (one.newest_rep > st->newest_rep) st->newest_rep = one.newest_rep;
        rc = exec_cmd(a, "RELEASE SAVEPOINT obx_row", errstr, errstr_size);
    }
    if (rc == WR_OK && a->dead_letter) rc = dead_letter(a, n, st, errstr, errstr_size);
    if (rc == WR_OK) rc = exec_cmd(a, "COMMIT", errstr, errstr_size);
    return rc;
}

/* Offsets of the first n entries, committed after their rows are. A failed
 * commit only means those events are read (and ignored as stale) again. */
static void commit_offsets(apply_t *a, size_t n)
{
    if (!n) return;
    int64_t *next = malloc((a->n_parts ? a->n_parts : 1) * sizeof(int64_t));
    if (!next) return;
    for (size_t p = 0; p < a->n_parts; p++) next[p] = -1;
    for (size_t i = 0; i < n; i++) {
        entry_t *e = &a->batch[i];
        if (e->part >= 0 && e->msg->offset + 1 > next[e->part]) next[e->part] = e->msg->offset + 1;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    for (size_t p = 0; p < a->n_parts; p++)
        if (next[p] >= 0 && a->parts[p].assigned)
            rd_kafka_topic_partition_list_add(l, a->parts[p].topic, a->parts[p].partition)->offset = next[p];
    if (l->cnt) {
        rd_kafka_resp_err_t err = rd_kafka_commit(a->rk, l, 0);
        for (int i = 0; !err && i < l->cnt; i++) err = l->elems[i].err;
        if (err) {
            atomic_fetch_add(&a->m->apply_offset_commit_failures, 1);
            obx_warn("offset_commit_failed", "group %s: %s; the rows are written, so those events are only read again "
                     "and ignored as stale", a->cfg->apply_group, rd_kafka_err2str(err));
        } else {
            atomic_fetch_add(&a->m->apply_offset_commits, 1);
            for (size_t p = 0; p < a->n_parts; p++)
                if (next[p] >= 0 && a->parts[p].assigned) obx_metrics_apply_partition_set(a->parts[p].mi, 1, next[p]);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    free(next);
}

static void log_poison(apply_t *a, const entry_t *e)
{
    const rd_kafka_message_t *m = e->msg;
    const char *topic = rd_kafka_topic_name(m->rkt);
    obx_error("poison_event",
              "topic %s partition %d offset %lld: %s. outboxd apply stops here (exit 3) without committing this offset: "
              "everything before it is applied and committed, nothing after it in this partition is applied. Fix the "
              "producer or apply.columns and restart, or set apply.poison.policy = dead-letter; to skip it on purpose, "
              "with outboxd apply stopped: kafka-consumer-groups.sh --bootstrap-server %s --group %s --reset-offsets "
              "--topic %s:%d --to-offset %lld --execute",
              topic, (int)m->partition, (long long)m->offset, e->reason ? e->reason : "poison",
              obx_config_kafka_get(a->cfg, "bootstrap.servers"), a->cfg->apply_group, topic, (int)m->partition,
              (long long)m->offset + 1);
}

static void account(apply_t *a, const stats_t *st)
{
    obx_metrics_t *m = a->m;
    atomic_fetch_add(&m->apply_applied, st->applied);
    atomic_fetch_add(&m->apply_stale, st->stale);
    atomic_fetch_add(&m->apply_superseded, st->superseded);
    atomic_fetch_add(&m->apply_skipped, st->skipped);
    atomic_fetch_add(&m->apply_dead_lettered, st->dead_lettered);
    atomic_fetch_add(&m->apply_batches, 1);
    for (size_t i = 0; i < st->n_lags; i++) obx_metrics_observe_apply_lag(a->lags[i]);
    obx_metrics_apply_fresh(st->newest_src, st->newest_rep);
}

/* The database failed: nothing of the batch is acked. Stop consuming (pause,
 * so the group keeps us), and after reconnecting seek back to the first
 * event not written. */
static void go_down(apply_t *a, size_t n, const char *why)
{
    for (size_t i = 0; i < n; i++) note_dropped(a, a->batch[i].msg);
    atomic_fetch_add(&a->m->apply_failed, n);
    atomic_fetch_add(&a->m->apply_db_errors, 1);
    batch_free(a, n);
    rd_kafka_topic_partition_list_t *l = NULL;
    if (!rd_kafka_assignment(a->rk, &l) && l) {
        rd_kafka_pause_partitions(a->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    if (a->db) {
        PQfinish(a->db);
        a->db = NULL;
    }
    atomic_store(&a->m->pg_connected, 0);
    a->db_down = 1;
    a->next_try_ms = obx_mono_ms() + a->backoff_ms;
    set_state(a, OBX_STATE_CONNECTING);
    obx_warn("pg_lost", "replica database: %s; %zu events not written, their offsets not committed; consumption paused, "
             "retrying in %d ms, then re-reading from the first event not written", why, n, a->backoff_ms);
}

static int seek_back(apply_t *a)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    for (size_t p = 0; p < a->n_parts; p++)
        if (a->parts[p].assigned && a->parts[p].seek_to >= 0)
            rd_kafka_topic_partition_list_add(l, a->parts[p].topic, a->parts[p].partition)->offset = a->parts[p].seek_to;
    int rc = 0;
    if (l->cnt) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(a->rk, l, 10000);
        if (e) {
            obx_warn("seek", "seeking back to the first event not written failed: %s; retrying", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            rc = -1;
        }
        for (int i = 0; !rc && i < l->cnt; i++) {
            int p = part_index(a, l->elems[i].topic, l->elems[i].partition);
            if (l->elems[i].err && p >= 0 && a->parts[p].assigned) {
                obx_warn("seek", "%s [%d] to offset %lld: %s; retrying", l->elems[i].topic, (int)l->elems[i].partition,
                         (long long)l->elems[i].offset, rd_kafka_err2str(l->elems[i].err));
                rc = -1;
            }
        }
        for (int i = 0; !rc && i < l->cnt; i++)
            obx_info("seek", "%s [%d]: reading again from offset %lld", l->elems[i].topic, (int)l->elems[i].partition,
                     (long long)l->elems[i].offset);
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (!rc)
        for (size_t p = 0; p < a->n_parts; p++) a->parts[p].seek_to = -1;
    return rc;
}

/* While the database is down: keep the group membership (poll), drop
 * whatever still arrives, reconnect with capped backoff. */
static int down_step(apply_t *a)
{
    rd_kafka_message_t *m = rd_kafka_consumer_poll(a->rk, 100);
    if (m) {
        if (!m->err) note_dropped(a, m);
        rd_kafka_message_destroy(m);
    }
    a->revoked = 0;
    if (obx_mono_ms() < a->next_try_ms) return 0;
    char err[2048];
    if (!a->db) {
        int rc = db_open(a, err, sizeof(err));
        if (rc > 0) {
            obx_error("replica_table", "%s", err);
            return rc;
        }
        if (rc < 0) {
            a->backoff_ms = a->backoff_ms * 2 > a->cfg->reconnect_backoff_max_ms ? a->cfg->reconnect_backoff_max_ms
                                                                                : a->backoff_ms * 2;
            a->next_try_ms = obx_mono_ms() + a->backoff_ms;
            obx_warn("pg_connect", "%s; retrying in %d ms", err, a->backoff_ms);
            return 0;
        }
    }
    if (seek_back(a) != 0) {
        a->next_try_ms = obx_mono_ms() + 1000;
        return 0;
    }
    rd_kafka_topic_partition_list_t *l = NULL;
    if (!rd_kafka_assignment(a->rk, &l) && l) {
        rd_kafka_resume_partitions(a->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    a->db_down = 0;
    a->backoff_ms = 500;
    set_state(a, OBX_STATE_STREAMING);
    obx_info("pg_recovered", "replica database is back; consuming again");
    return 0;
}

/* Once a second: liveness, committed offsets of new assignments, high
 * watermarks (queried from the broker while paused: nothing is fetched). */
static void tick(apply_t *a)
{
    int64_t now = obx_mono_ms();
    atomic_store(&a->m->last_loop_us, obx_now_us());
    if (now - a->last_tick_ms < 1000) return;
    a->last_tick_ms = now;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    for (size_t p = 0; p < a->n_parts; p++)
        if (a->parts[p].assigned && !a->parts[p].committed_fetched)
            rd_kafka_topic_partition_list_add(l, a->parts[p].topic, a->parts[p].partition);
    if (l->cnt && rd_kafka_committed(a->rk, l, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < l->cnt; i++) {
            int p = part_index(a, l->elems[i].topic, l->elems[i].partition);
            if (p < 0 || l->elems[i].err) continue;
            a->parts[p].committed_fetched = 1;
            if (l->elems[i].offset >= 0) obx_metrics_apply_partition_set(a->parts[p].mi, 1, l->elems[i].offset);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    int query = a->db_down && now - a->last_wm_query_ms >= 5000;
    if (query) a->last_wm_query_ms = now;
    for (size_t p = 0; p < a->n_parts; p++) {
        if (!a->parts[p].assigned) continue;
        int64_t lo = -1, hi = -1;
        if (query && obx_mono_ms() - now < 2000)
            rd_kafka_query_watermark_offsets(a->rk, a->parts[p].topic, a->parts[p].partition, &lo, &hi, 1000);
        else
            rd_kafka_get_watermark_offsets(a->rk, a->parts[p].topic, a->parts[p].partition, &lo, &hi);
        obx_metrics_apply_partition_wm(a->parts[p].mi, lo, hi);
    }
    if (now - a->last_progress_ms >= 60000) {
        a->last_progress_ms = now;
        obx_info("progress", "group %s: %llu applied, %llu stale ignored, %llu superseded in batch, %llu skipped, %llu dead-lettered, %llu batches",
                 a->cfg->apply_group, (unsigned long long)atomic_load(&a->m->apply_applied),
                 (unsigned long long)atomic_load(&a->m->apply_stale), (unsigned long long)atomic_load(&a->m->apply_superseded),
                 (unsigned long long)atomic_load(&a->m->apply_skipped),
                 (unsigned long long)atomic_load(&a->m->apply_dead_lettered), (unsigned long long)atomic_load(&a->m->apply_batches));
    }
}

static void kafka_msg_error(apply_t *a, const rd_kafka_message_t *m)
{
    int64_t now = obx_mono_ms();
    /* Topics that do not exist yet are normal while producers start. */
    if (now - a->last_kafka_err_ms < 10000) return;
    a->last_kafka_err_ms = now;
    obx_warn("kafka_consume", "%s", rd_kafka_message_errstr(m));
}

/* Reads one batch: up to apply.batch_max events, or what arrived within
 * apply.batch_wait_ms of the first. *cut: a poison event under halt ends
 * the batch; it sits at index *n, not counted. */
static size_t read_batch(apply_t *a, int *cut)
{
    size_t n = 0;
    int64_t first = 0;
    *cut = 0;
    while (n < (size_t)a->cfg->apply_batch_max && !*a->stop) {
        int timeout = 100;
        if (n) {
            int64_t left = first + a->cfg->apply_batch_wait_ms - obx_mono_ms();
            if (left <= 0) break;
            timeout = left < 100 ? (int)left : 100;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(a->rk, timeout);
        if (a->revoked) {
            /* The next owner reads these from the committed offsets. */
            batch_free(a, n);
            n = 0;
            a->revoked = 0;
        }
        if (!m) {
            if (!n) break;
            continue;
        }
        if (m->err) {
            kafka_msg_error(a, m);
            rd_kafka_message_destroy(m);
            continue;
        }
        decode(a, m, &a->batch[n]);
        if (a->batch[n].kind == EV_POISON && !a->dead_letter) {
            *cut = 1;
            break;
        }
        if (!n) first = obx_mono_ms();
        n++;
    }
    return n;
}

static int loop(apply_t *a)
{
    char err[2048];
    while (!*a->stop) {
        tick(a);
        if (a->db_down) {
            int rc = down_step(a);
            if (rc) return rc;
            continue;
        }
        int cut;
        size_t n = read_batch(a, &cut);
        if (!n && !cut) continue;
        stats_t st = {0};
        size_t halt_at = n;
        int rc = write_fast(a, n, &st, err, sizeof(err));
        if (rc == WR_DATA) {
            PGresult *r = PQexec(a->db, "ROLLBACK");
            PQclear(r);
            obx_warn("data_error", "%s; finding the event the database refuses, one at a time", err);
            memset(&st, 0, sizeof(st));
            rc = write_slow(a, n, &st, &halt_at, err, sizeof(err));
        }
        if (rc == WR_DB) {
            go_down(a, n + (size_t)cut, err);
            continue;
        }
        if (rc == WR_HALT && halt_at == n) {
            /* The dead-letter topic refused for good. */
            obx_error("poison_event", "%s", err);
            batch_free(a, n + (size_t)cut);
            set_state(a, OBX_STATE_HALTED);
            return OBX_EXIT_POISON;
        }
        account(a, &st);
        commit_offsets(a, halt_at);
        if (rc == WR_HALT || cut) {
            log_poison(a, &a->batch[rc == WR_HALT ? halt_at : n]);
            batch_free(a, n + (size_t)cut);
            set_state(a, OBX_STATE_HALTED);
            return OBX_EXIT_POISON;
        }
        batch_free(a, n);
    }
    return OBX_EXIT_OK;
}

int obx_apply_run(const obx_config_t *cfg, volatile sig_atomic_t *stop)
{
    char err[2048];
    if (obx_apply_validate(cfg, err, sizeof(err)) != 0) {
        obx_error("config", "%s", err);
        return OBX_EXIT_CONFIG;
    }
    apply_t a;
    memset(&a, 0, sizeof(a));
    a.cfg = cfg;
    a.stop = stop;
    a.m = obx_metrics();
    a.backoff_ms = 500;
    a.row_mode = !strcmp(cfg->apply_mode, "row");
    a.dead_letter = !strcmp(cfg->apply_poison_policy, "dead-letter");
    a.src_kind = !strcmp(cfg->apply_source_time, "commit_time") ? SRC_COMMIT
                 : !strcmp(cfg->apply_source_time, "occurred_at") ? SRC_OCCURRED
                                                                  : SRC_PAYLOAD;
    a.src_path = a.src_kind == SRC_PAYLOAD ? cfg->apply_source_time + 8 : NULL;
    if (*cfg->apply_tombstone_table) snprintf(a.tomb_name, sizeof(a.tomb_name), "%s", cfg->apply_tombstone_table);
    else snprintf(a.tomb_name, sizeof(a.tomb_name), "%s_tombstones", cfg->apply_table);
    int rc = OBX_EXIT_OK;
    obx_status_http_t *http = NULL;
    if (obx_apply_parse_columns(cfg->apply_columns, &a.maps, &a.n_maps, err, sizeof(err)) != 0 ||
        split_list(cfg->apply_event_types, &a.up_types, &a.n_up_types) != 0 ||
        split_list(cfg->apply_delete_types, &a.del_types, &a.n_del_types) != 0) {
        obx_error("config", "%s", err);
        rc = OBX_EXIT_CONFIG;
        goto out;
    }
    a.use_tomb = a.n_del_types > 0;
    a.batch = calloc((size_t)cfg->apply_batch_max + 1, sizeof(entry_t));
    a.lags = calloc((size_t)cfg->apply_batch_max + 1, sizeof(int64_t));
    if (!a.batch || !a.lags) {
        obx_error("oom", "out of memory for a batch of %d", cfg->apply_batch_max);
        rc = OBX_EXIT_FAIL;
        goto out;
    }
    obx_metrics_apply_start(cfg->apply_group, hwm_hook);
    set_state(&a, OBX_STATE_STARTING);
    if (*cfg->status_listen) {
        http = obx_status_http_start(cfg->status_listen, err, sizeof(err));
        if (!http) {
            obx_error("status_http", "%s", err);
            rc = OBX_EXIT_CONFIG;
            goto out;
        }
        obx_info("status_http", "status port on http://%s (/healthz /readyz /metrics /status)", cfg->status_listen);
    }
    char red[1024];
    obx_conninfo_redact(cfg->apply_conninfo, red, sizeof(red));
    /* The replica first: a table that does not fit is a configuration error,
     * an unreachable server is retried. */
    set_state(&a, OBX_STATE_CONNECTING);
    for (int backoff = 500;;) {
        atomic_store(&a.m->last_loop_us, obx_now_us());
        int orc = db_open(&a, err, sizeof(err));
        if (orc == 0) break;
        if (orc > 0) {
            obx_error("replica_table", "%s", err);
            rc = orc;
            goto out;
        }
        obx_warn("pg_connect", "%s (%s); retrying in %d ms", err, red, backoff);
        for (int w = 0; w < backoff && !*stop; w += 100) {
            sleep_ms(100);
            atomic_store(&a.m->last_loop_us, obx_now_us());
        }
        if (*stop) goto out;
        backoff = backoff * 2 > cfg->reconnect_backoff_max_ms ? cfg->reconnect_backoff_max_ms : backoff * 2;
    }
    load_freshness(&a);
    if ((rc = consumer_new(&a, err, sizeof(err))) != 0) {
        obx_error("kafka_consumer", "%s", err);
        goto out;
    }
    obx_info("applying", "group %s: topics %s -> table %s (%zu mapped columns, %s mode, batches of up to %d, deletes %s)",
             cfg->apply_group, cfg->apply_topics, cfg->apply_table, a.n_maps, cfg->apply_mode, cfg->apply_batch_max,
             a.use_tomb ? a.tomb_name : "off");
    set_state(&a, OBX_STATE_STREAMING);
    rc = loop(&a);
    if (rc == OBX_EXIT_OK) set_state(&a, OBX_STATE_STOPPING);
    obx_info("stopped", "group %s: %llu applied, %llu stale ignored, %llu superseded in batch, %llu skipped, %llu dead-lettered",
             cfg->apply_group, (unsigned long long)atomic_load(&a.m->apply_applied),
             (unsigned long long)atomic_load(&a.m->apply_stale), (unsigned long long)atomic_load(&a.m->apply_superseded),
             (unsigned long long)atomic_load(&a.m->apply_skipped), (unsigned long long)atomic_load(&a.m->apply_dead_lettered));
out:
    /* The status thread reads the consumer's watermarks: stop it first. */
    obx_status_http_stop(http);
    atomic_store(&g_rk, NULL);
    if (a.rk) {
        rd_kafka_consumer_close(a.rk);
        rd_kafka_destroy(a.rk);
    }
    if (a.dlq) {
        rd_kafka_flush(a.dlq, 5000);
        rd_kafka_destroy(a.dlq);
    }
    if (a.db) PQfinish(a.db);
    free_sql(&a);
    obx_apply_maps_free(a.maps, a.n_maps);
    free_list(a.up_types, a.n_up_types);
    free_list(a.del_types, a.n_del_types);
    for (size_t p = 0; p < a.n_parts; p++) free(a.parts[p].topic);
    free(a.parts);
    free(a.batch);
    free(a.lags);
    return rc;
}
