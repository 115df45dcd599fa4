/* Signal rows and the snapshot thread they start (signals.h). Whoever may
 * INSERT into the signal table drives this file, so a signal is data, never
 * SQL: its members come from a fixed list, numbers pass the config's own
 * range checks, the table must be one the configuration allows, a filter
 * becomes quoted columns and parameters (snapshot.c), and the payload shape
 * comes from snapshot.* only. A row is claimed (pending -> running, one more
 * attempt) before anything runs, so a redelivered or replayed INSERT acts
 * once, a bad one is marked failed once, and one that keeps stopping the
 * process gives up after MAX_ATTEMPTS. */
#include "signals.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "log.h"
#include "outbox.h"
#include "pg.h"
#include "snapshot.h"

#define MAX_ATTEMPTS 3
#define MAX_ATTEMPTS_STR "3"
#define MAX_STRING 1024 /* bytes of any string member */
#define MAX_NAME 63     /* NAMEDATALEN - 1: a filter column */

struct obx_signals_s {
    const obx_config_t *cfg;
    volatile sig_atomic_t *stop;
    pthread_t thread;
    int started;   /* thread must be joined */
    _Atomic int busy;
};

/* A snapshot requested by a signal row. Owns the row's data and everything
 * the options point to, since the thread outlives the caller. */
typedef struct {
    obx_signals_t *s;
    char *signal_id;
    cJSON *data;
    char *filter_desc;
    char *values[OBX_SNAPSHOT_MAX_FILTERS]; /* filter values printed from JSON numbers/booleans */
    obx_snapshot_filter_t filters[OBX_SNAPSHOT_MAX_FILTERS];
    obx_snapshot_opts_t opts;
    int topic_given; /* the signal named a topic: refused */
} snap_job_t;

obx_signals_t *obx_signals_new(const obx_config_t *cfg, volatile sig_atomic_t *stop)
{
    obx_signals_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->cfg = cfg;
    s->stop = stop;
    return s;
}

void obx_signals_destroy(obx_signals_t *s)
{
    if (!s) return;
    if (s->started) pthread_join(s->thread, NULL);
    free(s);
}

/* A short-lived connection: signals are rare, the stream's are busy. */
static PGconn *connect_normal(const obx_signals_t *s)
{
    obx_err_t err;
    PGconn *c = obx_pg_connect(s->cfg->pg_conninfo, "pg.conninfo", OBX_PG_NORMAL, &err);
    if (!c) obx_warn("signal", "%s", err.msg);
    return c;
}

/* Runs head + the quoted signal table + tail on c. NULL with err. */
static PGresult *table_exec(const obx_signals_t *s, PGconn *c, const char *head, const char *tail, int n,
                            const char *const *p, obx_err_t *err)
{
    char *table = obx_pg_quote_qualified(s->cfg->outbox_schema, s->cfg->signal_table);
    char *q = table ? malloc(strlen(head) + strlen(table) + strlen(tail) + 1) : NULL;
    PGresult *res = NULL;
    if (q) {
        sprintf(q, "%s%s%s", head, table, tail);
        res = obx_pg_exec(c, q, n, p, err);
    } else {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "out of memory");
    }
    free(q);
    free(table);
    return res;
}

/* The final word on a row. A clean stop ('interrupted') is no failed
 * attempt: the count starts again. */
static void signal_status(obx_signals_t *s, const char *id, const char *status, const char *detail)
{
    PGconn *c = connect_normal(s);
    if (!c) return;
    obx_err_t err;
    const char *p[3] = {id, status, detail};
    PGresult *res = table_exec(s, c, "UPDATE ",
                               " SET status = $2, detail = $3, updated_at = now(),"
                               " attempts = CASE WHEN $2 = 'interrupted' THEN 0 ELSE attempts END"
                               " WHERE id = $1::bigint", 3, p, &err);
    if (!res) obx_warn("signal", "cannot update signal %s to %s: %s", id, status, err.msg);
    PQclear(res);
    PQfinish(c);
}

/* Takes row id out of one of the `from` statuses ('{pending}') and counts
 * the attempt; 1 with its type and data (malloc'd, NULL for SQL NULL), 0
 * when the row is not there to take (handled before, or given up). */
static int signal_claim(obx_signals_t *s, const char *id, const char *from, char **type, char **data)
{
    PGconn *c = connect_normal(s);
    if (!c) return 0;
    obx_err_t err;
    const char *p[3] = {id, from, MAX_ATTEMPTS_STR};
    PGresult *res = table_exec(s, c, "UPDATE ",
                               " SET status = 'running', attempts = attempts + 1, detail = NULL, updated_at = now()"
                               " WHERE id = $1::bigint AND status = ANY ($2::text[]) AND attempts >= 0"
                               " AND attempts < $3::int RETURNING type, data::text", 3, p, &err);
    int got = res && PQntuples(res) == 1;
    if (!res)
        obx_error("signal", "signal %s not acted on: cannot claim it (%s)%s", id, err.msg,
                  obx_err_is_sqlstate(&err, "42703") /* undefined_column */
                      ? "; the signal table needs the column of deploy/sql/outbox.sql: ALTER TABLE <signal table> ADD "
                        "COLUMN attempts integer NOT NULL DEFAULT 0"
                      : "");
    else if (!got)
        obx_debug("signal", "signal %s is not %s (handled before or given up): nothing to do", id, from);
    *type = got && !PQgetisnull(res, 0, 0) ? strdup(PQgetvalue(res, 0, 0)) : NULL;
    *data = got && !PQgetisnull(res, 0, 1) ? strdup(PQgetvalue(res, 0, 1)) : NULL;
    PQclear(res);
    PQfinish(c);
    return got;
}

static void job_free(snap_job_t *j)
{
    if (!j) return;
    cJSON_Delete(j->data);
    free(j->signal_id);
    cJSON_free(j->filter_desc);
    for (size_t i = 0; i < OBX_SNAPSHOT_MAX_FILTERS; i++) free(j->values[i]);
    free(j);
}

static void *snap_main(void *arg)
{
    snap_job_t *j = arg;
    obx_signals_t *s = j->s;
    int rc = obx_snapshot_run(s->cfg, &j->opts, s->stop);
    const char *st = rc == OBX_EXIT_OK ? (*s->stop ? "interrupted" : "done") : "failed";
    char detail[128];
    snprintf(detail, sizeof(detail), "exit code %d; see outboxd_snapshots and the log", rc);
    signal_status(s, j->signal_id, st, rc == OBX_EXIT_OK ? NULL : detail);
    job_free(j);
    atomic_store(&s->busy, 0);
    return NULL;
}

/* 1 when table is snapshot.table or an entry of signal.allowed_tables,
 * compared as written: the snapshot resolves it exactly as it would the
 * operator's own setting. */
static int table_allowed(const obx_config_t *cfg, const char *table)
{
    if (!strcmp(table, cfg->snap_table)) return 1;
    const char *p = cfg->signal_allowed_tables;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        const char *start = p;
        int quoted = 0;
        for (; *p && (quoted || *p != ','); p++)
            if (*p == '"') quoted = !quoted;
        const char *end = p;
        while (end > start && end[-1] == ' ') end--;
        if (end > start && (size_t)(end - start) == strlen(table) && !strncmp(start, table, (size_t)(end - start)))
            return 1;
    }
    return 0;
}

/* A whole number in the range the config gives `key` (snapshot.page_size,
 * snapshot.rate_limit): checked by obx_config_set itself on a scratch
 * config, so a signal can never pass what the config file could not. */
static int int_member(const cJSON *v, const char *key, long *out, char *why, size_t n)
{
    if (!cJSON_IsNumber(v) || v->valuedouble > 1e15 || v->valuedouble < -1e15 ||
        (double)(long long)v->valuedouble != v->valuedouble) {
        snprintf(why, n, "\"%s\" must be a whole number", v->string);
        return -1;
    }
    obx_config_t *tmp = obx_config_new();
    char text[32], err[256];
    snprintf(text, sizeof(text), "%lld", (long long)v->valuedouble);
    int rc = tmp ? obx_config_set(tmp, key, text, "signal", err, sizeof(err)) : -1;
    if (rc != 0) snprintf(why, n, "\"%s\": %s", v->string, tmp ? err : "out of memory");
    else *out = !strcmp(key, "snapshot.page_size") ? tmp->snap_page_size : tmp->snap_rate_limit;
    obx_config_destroy(tmp);
    return rc;
}

/* One {"column", "op", "value"} term into j->filters[i]. */
static int filter_term(snap_job_t *j, size_t i, const cJSON *t, char *why, size_t n)
{
    obx_snapshot_filter_t *f = &j->filters[i];
    const cJSON *m, *value = NULL;
    int takes_value = 0;
    if (!cJSON_IsObject(t)) {
        snprintf(why, n, "filter term %zu is not an object {\"column\", \"op\", \"value\"}", i + 1);
        return -1;
    }
    cJSON_ArrayForEach(m, t) {
        if (!strcmp(m->string, "column") && cJSON_IsString(m) && *m->valuestring && strlen(m->valuestring) <= MAX_NAME)
            f->column = m->valuestring;
        else if (!strcmp(m->string, "op") && cJSON_IsString(m) && obx_snapshot_filter_op(m->valuestring, &takes_value))
            f->op = obx_snapshot_filter_op(m->valuestring, &takes_value);
        else if (!strcmp(m->string, "value") && !cJSON_IsNull(m) && !cJSON_IsArray(m) && !cJSON_IsObject(m))
            value = m;
        else {
            snprintf(why, n, "filter term %zu: bad \"%.40s\" (column: a name of 1-%d bytes; op: = <> != < <= > >= like, "
                     "not like, is null, is not null; value: a string, number or boolean)", i + 1, m->string, MAX_NAME);
            return -1;
        }
    }
    if (!f->column || !f->op || takes_value != (value != NULL)) {
        snprintf(why, n, "filter term %zu needs a column, an op, and a value exactly when the op takes one", i + 1);
        return -1;
    }
    if (cJSON_IsString(value) && strlen(value->valuestring) <= MAX_STRING) f->value = value->valuestring;
    else if (value && !cJSON_IsString(value) && !(f->value = j->values[i] = cJSON_PrintUnformatted(value))) {
        snprintf(why, n, "out of memory");
        return -1;
    } else if (value && !f->value) {
        snprintf(why, n, "filter term %zu: value longer than %d bytes", i + 1, MAX_STRING);
        return -1;
    }
    return 0;
}

static int filter_member(snap_job_t *j, const cJSON *v, char *why, size_t n)
{
    size_t count = cJSON_IsArray(v) ? (size_t)cJSON_GetArraySize(v) : 1;
    if (count == 0 || count > OBX_SNAPSHOT_MAX_FILTERS) {
        snprintf(why, n, "\"filter\" must hold 1 to %d terms", OBX_SNAPSHOT_MAX_FILTERS);
        return -1;
    }
    for (size_t i = 0; i < count; i++)
        if (filter_term(j, i, cJSON_IsArray(v) ? cJSON_GetArrayItem(v, (int)i) : v, why, n) != 0) return -1;
    j->opts.filters = j->filters;
    j->opts.n_filters = count;
    if (!(j->filter_desc = cJSON_PrintUnformatted(v))) snprintf(why, n, "out of memory");
    j->opts.filter_desc = j->filter_desc;
    return j->filter_desc ? 0 : -1;
}

/* One member of the signal's data over the configured options. */
static int job_member(snap_job_t *j, const cJSON *v, char *why, size_t n)
{
    static const char *const strings[] = {"table", "name", "aggregate_type", "event_type"};
    obx_snapshot_opts_t *o = &j->opts;
    const char *k = v->string;
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        if (strcmp(k, strings[i]) != 0) continue;
        if (!cJSON_IsString(v) || !*v->valuestring || strlen(v->valuestring) > MAX_STRING) {
            snprintf(why, n, "\"%s\" must be a non-empty string of at most %d bytes", k, MAX_STRING);
            return -1;
        }
        const char **dst[] = {&o->table, &o->name, &o->aggregate_type, &o->event_type};
        *dst[i] = v->valuestring;
        return 0;
    }
    if (!strcmp(k, "topic")) {
        /* Refused in job_parse, after the table: a signal must not
         * choose where rows go (outboxd.slots, another service's topic). */
        j->topic_given = 1;
        return 0;
    }
    if (!strcmp(k, "filter")) return filter_member(j, v, why, n);
    if (!strcmp(k, "page_size")) return int_member(v, "snapshot.page_size", &o->page_size, why, n);
    if (!strcmp(k, "rate_limit")) return int_member(v, "snapshot.rate_limit", &o->rate_limit, why, n);
    if (!strcmp(k, "restart") && cJSON_IsBool(v)) {
        o->restart = cJSON_IsTrue(v);
        return 0;
    }
    if (!strcmp(k, "where") || !strcmp(k, "payload_sql") || !strcmp(k, "columns") || !strcmp(k, "version_column"))
        snprintf(why, n, "\"%s\" is not accepted from a signal: signals carry no SQL; payload and version column "
                 "come from snapshot.* in the configuration, and a filter is "
                 "\"filter\": {\"column\": ..., \"op\": ..., \"value\": ...}", k);
    else
        snprintf(why, n, "unknown or mistyped member \"%.60s\" (known: table, filter, name, aggregate_type, "
                 "event_type, page_size, rate_limit, restart)", k);
    return -1;
}

/* The options of j from the configuration and the signal's data: 0, or -1
 * with why naming the problem. */
static int job_parse(const obx_config_t *cfg, snap_job_t *j, char *why, size_t n)
{
    obx_snapshot_opts_from_config(cfg, &j->opts);
    j->opts.where = NULL; /* the operator's snapshot.where is for `outboxd snapshot`, not for signals */
    j->opts.rate_limit = cfg->snap_rate_limit;
    if (!cJSON_IsObject(j->data)) {
        snprintf(why, n, "data is not a JSON object");
        return -1;
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, j->data)
        if (job_member(j, v, why, n) != 0) return -1;
    if (!j->opts.table || !*j->opts.table) {
        snprintf(why, n, "no table: name one in \"table\" or set snapshot.table");
        return -1;
    }
    if (!table_allowed(cfg, j->opts.table)) {
        snprintf(why, n, "table \"%.200s\" is not allowed for signals: it must be snapshot.table or listed in "
                 "signal.allowed_tables", j->opts.table);
        return -1;
    }
    if (j->opts.page_size <= 0) {
        snprintf(why, n, "page_size %ld: use a positive number of rows per page", j->opts.page_size);
        return -1;
    }
    if (j->topic_given) {
        snprintf(why, n, "\"topic\" is not accepted from a signal: the topic comes from the configuration "
                 "(snapshot.topic, or the outbox topic rules from aggregate_type)");
        return -1;
    }
    if (j->opts.topic && !obx_topic_valid(j->opts.topic)) {
        snprintf(why, n, "snapshot.topic is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)");
        return -1;
    }
    return 0;
}

/* Starts the snapshot thread for j: 0 (the thread owns j), or -1. */
static int job_start(obx_signals_t *s, snap_job_t *j)
{
    if (s->started) pthread_join(s->thread, NULL);
    s->started = 0;
    atomic_store(&s->busy, 1);
    obx_info("signal", "signal %s: snapshot of %s%s%s", j->signal_id, j->opts.table,
             j->opts.filter_desc ? " where " : "", j->opts.filter_desc ? j->opts.filter_desc : "");
    if (pthread_create(&s->thread, NULL, snap_main, j) != 0) {
        atomic_store(&s->busy, 0);
        return -1;
    }
    s->started = 1;
    return 0;
}

/* Claims row sid out of `from` and acts on it. */
static void signal_act(obx_signals_t *s, const char *sid, const char *from)
{
    char *type = NULL, *data = NULL, why[512];
    if (!signal_claim(s, sid, from, &type, &data)) return;
    snap_job_t *j = NULL;
    if (!type || strcmp(type, "snapshot") != 0) {
        obx_warn("signal", "signal %s of type %s ignored: only \"snapshot\" is known", sid, type ? type : "NULL");
        signal_status(s, sid, "ignored", "unknown type");
    } else if (atomic_load(&s->busy)) {
        obx_warn("signal", "signal %s: a snapshot is already running; rejected (insert it again later)", sid);
        signal_status(s, sid, "rejected", "another snapshot is running");
    } else if (!(j = calloc(1, sizeof(*j))) || !(j->signal_id = strdup(sid))) {
        obx_error("signal", "signal %s: out of memory", sid);
        signal_status(s, sid, "failed", "out of memory");
    } else {
        j->s = s;
        j->data = data ? cJSON_Parse(data) : cJSON_CreateObject();
        if (job_parse(s->cfg, j, why, sizeof(why)) != 0) {
            obx_warn("signal", "signal %s refused: %s", sid, why);
            signal_status(s, sid, "failed", why);
        } else if (job_start(s, j) == 0) {
            j = NULL;
        } else {
            signal_status(s, sid, "failed", "cannot start a thread");
        }
    }
    job_free(j);
    free(type);
    free(data);
}

void obx_signals_resume(obx_signals_t *s)
{
    if (!*s->cfg->signal_table) return;
    PGconn *c = connect_normal(s);
    if (!c) return;
    obx_err_t err;
    /* Each start counted an attempt; a row still 'running' after MAX_ATTEMPTS
     * stopped the process each time: give up rather than crash-loop. */
    const char *pm[1] = {MAX_ATTEMPTS_STR};
    PGresult *res = table_exec(s, c, "UPDATE ",
                               " SET status = 'failed', updated_at = now(), detail = 'gave up after ' || attempts ||"
                               " ' attempts: the relay stopped during each (see the log)'"
                               " WHERE status IN ('running', 'interrupted') AND NOT (attempts >= 0 AND attempts < $1::int)"
                               " RETURNING id::text, attempts", 1, pm, &err);
    for (int i = 0; res && i < PQntuples(res); i++)
        obx_error("signal", "signal %s: gave up after %s attempts, each ended by a stop of the relay; marked failed",
                  PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    if (res) {
        PQclear(res);
        res = table_exec(s, c, "SELECT id::text FROM ",
                         " WHERE status IN ('running', 'interrupted') ORDER BY id LIMIT 1", 0, NULL, &err);
    }
    if (!res) obx_warn("signal", "cannot read the signal table: %s", err.msg);
    char *id = res && PQntuples(res) == 1 ? strdup(PQgetvalue(res, 0, 0)) : NULL;
    PQclear(res);
    PQfinish(c);
    if (!id) return;
    obx_info("signal", "resuming the snapshot of signal %s", id);
    signal_act(s, id, "{running,interrupted}");
    free(id);
}

void obx_signals_start(obx_signals_t *s, const char *sid, const char *type, const char *data)
{
    /* The row is read back when claimed: the WAL's copy may be a replay. */
    (void)type, (void)data;
    signal_act(s, sid, "{pending}");
}
