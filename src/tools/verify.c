#include "verify.h"
#include "exitcodes.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "lsn.h"
#include "outboxd/v1/event.pb-c.h"

/* A small open-addressing string map; values are per-kind records. */
typedef struct {
    char **keys;
    void **vals;
    size_t cap, n;
} map_t;

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static int map_grow(map_t *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    char **k = calloc(ncap, sizeof(*k));
    void **v = calloc(ncap, sizeof(*v));
    if (!k || !v) {
        free(k);
        free(v);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) {
            size_t j = hash(m->keys[i]) & (ncap - 1);
            while (k[j]) j = (j + 1) & (ncap - 1);
            k[j] = m->keys[i];
            v[j] = m->vals[i];
        }
    free(m->keys);
    free(m->vals);
    m->keys = k;
    m->vals = v;
    m->cap = ncap;
    return 0;
}

/* Returns the slot for key (creating it with *created = 1). NULL on OOM. */
static void **map_get(map_t *m, const char *key, int *created)
{
    if ((m->n + 1) * 2 > m->cap && map_grow(m) != 0) return NULL;
    size_t j = hash(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (!strcmp(m->keys[j], key)) {
            *created = 0;
            return &m->vals[j];
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = strdup(key);
    if (!m->keys[j]) return NULL;
    m->n++;
    *created = 1;
    return &m->vals[j];
}

static void map_free(map_t *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) {
            free(m->keys[i]);
            free(m->vals[i]);
        }
    free(m->keys);
    free(m->vals);
}

typedef struct {
    int64_t version;
    int has_version;
    int32_t partition;
    char topic[1];
} agg_t;

typedef struct {
    uint64_t commit_lsn;
    uint32_t index;
} pos_t;

typedef struct {
    map_t seen, aggs, parts;
    long events, duplicates, order_errors, partition_errors, position_errors, oom;
    int reported;
} vstate_t;

/* printf-checked: the compiler matches every argument to its conversion
 * (a fixed (a, b, x, y) list once fed a string to %lld). */
static void problem(vstate_t *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(vstate_t *v, const char *fmt, ...)
{
    if (v->reported++ < 20) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        obx_warn("verify_problem", "%s", msg);
    }
}

static int on_event(void *opaque, const Outboxd__V1__Event *ev, const char *topic, int32_t partition, int64_t offset)
{
    vstate_t *v = opaque;
    int created;
    v->events++;
    void **s = map_get(&v->seen, ev->event_id, &created);
    if (!s) return ++v->oom, 1;
    if (!created) {
        v->duplicates++;
        problem(v, "duplicate event %s (again at %s offset %lld)", ev->event_id, topic, (long long)offset);
        return 0;
    }
    char key[600];
    snprintf(key, sizeof(key), "%s\x1f%s", topic, ev->aggregate_id);
    void **a = map_get(&v->aggs, key, &created);
    if (!a) return ++v->oom, 1;
    int has_v = ev->version_case == OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION;
    if (created) {
        agg_t *g = malloc(sizeof(agg_t));
        if (!g) return ++v->oom, 1;
        g->version = ev->aggregate_version;
        g->has_version = has_v;
        g->partition = partition;
        *a = g;
    } else {
        agg_t *g = *a;
        if (g->partition != partition) {
            v->partition_errors++;
            problem(v, "aggregate %s of %s is in two partitions (%d and %d)", ev->aggregate_id, topic, (int)g->partition,
                    (int)partition);
        }
        if (has_v && g->has_version && ev->aggregate_version <= g->version) {
            v->order_errors++;
            problem(v, "aggregate %s: version %lld after %lld", ev->aggregate_id, (long long)ev->aggregate_version,
                    (long long)g->version);
        }
        if (has_v) {
            g->version = ev->aggregate_version;
            g->has_version = 1;
        }
    }
    if (ev->source && *ev->source->slot) {
        snprintf(key, sizeof(key), "%s\x1f%d\x1f%s\x1f%s", topic, (int)partition, ev->source->database, ev->source->slot);
        void **p = map_get(&v->parts, key, &created);
        if (!p) return ++v->oom, 1;
        pos_t now = {ev->source->commit_lsn, ev->source->index_in_txn};
        if (created) {
            *p = malloc(sizeof(pos_t));
            if (!*p) return ++v->oom, 1;
        } else {
            pos_t *last = *p;
            if (now.commit_lsn < last->commit_lsn || (now.commit_lsn == last->commit_lsn && now.index <= last->index)) {
                v->position_errors++;
                char l[24];
                problem(v, "%s: source position went back to commit %s", topic, obx_lsn_format(now.commit_lsn, l, sizeof(l)));
            }
        }
        *(pos_t *)*p = now;
    }
    return 0;
}

/* The summary's failure reason; "" when every check passed. */
static void verdict(const obx_verify_opts_t *o, const vstate_t *v, int rc, const char *why, long missing, char *out,
                    size_t n)
{
    long unique = v->events - v->duplicates;
    *out = '\0';
    if (rc != OBX_EXIT_OK) snprintf(out, n, "%s", *why ? why : "reading failed (see the log)");
    else if (v->oom) snprintf(out, n, "out of memory");
    else if (missing) snprintf(out, n, "%ld expected event(s) missing", missing);
    else if (unique < o->expect_min) snprintf(out, n, "read %ld event(s), expected at least %ld", unique, o->expect_min);
    else if (v->order_errors || v->partition_errors || v->position_errors) snprintf(out, n, "order checks failed");
    else if (v->duplicates && !o->allow_duplicates) snprintf(out, n, "duplicates");
}

/* Ids of the expected file that were not seen: counted and reported.
 * Surrounding blanks (psql's aligned output, CRLF) are not part of an id. */
static long count_missing(vstate_t *v, FILE *f, long *expected)
{
    long missing = 0;
    char buf[512];
    while (fgets(buf, sizeof(buf), f)) {
        char *line = buf, *e = buf + strlen(buf);
        while (*line == ' ' || *line == '\t') line++;
        while (e > line && strchr(" \t\r\n", e[-1])) e--;
        *e = '\0';
        if (!*line) continue;
        (*expected)++;
        int created;
        void **s = map_get(&v->seen, line, &created);
        if (s && created) {
            missing++;
            problem(v, "missing event %s", line);
        }
    }
    return missing;
}

int obx_verify_run(obx_verify_opts_t *o, FILE *out, volatile sig_atomic_t *stop)
{
    vstate_t v;
    memset(&v, 0, sizeof(v));
    char why[1024] = "", reason[1100];
    o->consume.on_event = on_event;
    o->consume.opaque = &v;
    o->consume.require_topics = 1;
    o->consume.why = why;
    o->consume.why_size = sizeof(why);
    /* Opened first: a typo in its path is reported now, not after reading
     * the whole topic. */
    FILE *ef = o->expected_path ? fopen(o->expected_path, "r") : NULL;
    if (o->expected_path && !ef) {
        obx_error("verify", "cannot open --expected file %s: %s", o->expected_path, strerror(errno));
        return OBX_EXIT_CONFIG;
    }
    obx_info("verify", "reading %s from %s", o->consume.topics, obx_consume_brokers(&o->consume));
    int rc = obx_consume_run(&o->consume, out, stop);
    long missing = 0, expected = 0;
    if (ef && (rc == OBX_EXIT_OK || rc == OBX_EXIT_FAIL)) missing = count_missing(&v, ef, &expected);
    if (ef) fclose(ef);
    /* A refusal by the brokers (exit 2) still gets its summary: why says it. */
    if (rc != OBX_EXIT_OK && rc != OBX_EXIT_FAIL && !*why) {
        map_free(&v.seen);
        map_free(&v.aggs);
        map_free(&v.parts);
        return rc;
    }
    verdict(o, &v, rc, why, missing, reason, sizeof(reason));
    int ok = !*reason;
    if (!ok) obx_error("verify_failed", "%s", reason);
    fprintf(out,
            "{\"events\":%ld,\"unique\":%ld,\"expected\":%ld,\"missing\":%ld,\"duplicates\":%ld,"
            "\"aggregates\":%zu,\"order_errors\":%ld,\"partition_errors\":%ld,\"position_errors\":%ld,\"ok\":%s,"
            "\"reason\":\"",
            v.events, v.events - v.duplicates, expected, missing, v.duplicates, v.aggs.n, v.order_errors,
            v.partition_errors, v.position_errors, ok ? "true" : "false");
    for (const char *p = reason; *p; p++) /* JSON string: quotes, backslashes, controls */
        if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
        else if ((unsigned char)*p >= 0x20) fputc(*p, out);
    fputs("\"}\n", out);
    map_free(&v.seen);
    map_free(&v.aggs);
    map_free(&v.parts);
    return ok ? OBX_EXIT_OK : rc != OBX_EXIT_OK ? rc : OBX_EXIT_FAIL;
}
