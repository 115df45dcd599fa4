/* Signal rows and the snapshot thread they start (signals.h). */
#include "signals.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "log.h"
#include "pg.h"
#include "snapshot.h"

struct obx_signals_s {
    const obx_config_t *cfg;
    volatile sig_atomic_t *stop;
    pthread_t thread;
    int started;   /* thread must be joined */
    _Atomic int busy;
};

/* A snapshot requested by a signal row. Owns copies of everything it
 * reads, since the signal's change is gone when the thread runs. */
typedef struct {
    obx_signals_t *s;
    char *signal_id;
    cJSON *data;
    obx_snapshot_opts_t opts;
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

/* head + the quoted signal table + tail, malloc'd; NULL on OOM. */
static char *table_sql(const obx_signals_t *s, const char *head, const char *tail)
{
    char *table = obx_pg_quote_qualified(s->cfg->outbox_schema, s->cfg->signal_table);
    char *q = table ? malloc(strlen(head) + strlen(table) + strlen(tail) + 1) : NULL;
    if (q) sprintf(q, "%s%s%s", head, table, tail);
    free(table);
    return q;
}

static void signal_status(obx_signals_t *s, const char *id, const char *status, const char *detail)
{
    PGconn *c = connect_normal(s);
    if (!c) return;
    char *q = table_sql(s, "UPDATE ", " SET status = $2, detail = $3, updated_at = now() WHERE id = $1::bigint");
    obx_err_t err;
    const char *p[3] = {id, status, detail};
    PGresult *res = q ? obx_pg_exec(c, q, 3, p, &err) : NULL;
    if (q && !res) obx_warn("signal", "cannot update signal %s to %s: %s", id, status, err.msg);
    PQclear(res);
    free(q);
    PQfinish(c);
}

static void job_free(snap_job_t *j)
{
    cJSON_Delete(j->data);
    free(j->signal_id);
    free(j);
}

static void *snap_main(void *arg)
{
    snap_job_t *j = arg;
    obx_signals_t *s = j->s;
    signal_status(s, j->signal_id, "running", NULL);
    int rc = obx_snapshot_run(s->cfg, &j->opts, s->stop);
    const char *st = rc == OBX_EXIT_OK ? (*s->stop ? "interrupted" : "done") : "failed";
    char detail[128];
    snprintf(detail, sizeof(detail), "exit code %d; see outboxd_snapshots and the log", rc);
    signal_status(s, j->signal_id, st, rc == OBX_EXIT_OK ? NULL : detail);
    job_free(j);
    atomic_store(&s->busy, 0);
    return NULL;
}

void obx_signals_resume(obx_signals_t *s)
{
    if (!*s->cfg->signal_table) return;
    PGconn *c = connect_normal(s);
    if (!c) return;
    char *q = table_sql(s, "SELECT id::text, type, data::text FROM ",
                        " WHERE status IN ('running', 'interrupted') ORDER BY id LIMIT 1");
    obx_err_t err;
    PGresult *res = q ? obx_pg_exec(c, q, 0, NULL, &err) : NULL;
    if (q && !res) obx_warn("signal", "cannot read the signal table: %s", err.msg);
    if (res && PQntuples(res) == 1) {
        obx_info("signal", "resuming the snapshot of signal %s", PQgetvalue(res, 0, 0));
        obx_signals_start(s, PQgetvalue(res, 0, 0), PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1),
                          PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    free(q);
    PQfinish(c);
}

static const char *jstr(const cJSON *o, const char *k, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && *v->valuestring ? v->valuestring : dflt;
}

/* The signal's data object over the configured snapshot options. */
static void job_opts(const obx_config_t *cfg, snap_job_t *j)
{
    obx_snapshot_opts_from_config(cfg, &j->opts);
    j->opts.table = jstr(j->data, "table", j->opts.table);
    j->opts.where = jstr(j->data, "where", j->opts.where);
    j->opts.topic = jstr(j->data, "topic", j->opts.topic);
    j->opts.name = jstr(j->data, "name", j->opts.name);
    j->opts.aggregate_type = jstr(j->data, "aggregate_type", j->opts.aggregate_type);
    j->opts.version_column = jstr(j->data, "version_column", j->opts.version_column);
    j->opts.columns = jstr(j->data, "columns", j->opts.columns);
    j->opts.payload_sql = jstr(j->data, "payload_sql", j->opts.payload_sql);
    j->opts.event_type = jstr(j->data, "event_type", j->opts.event_type);
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(j->data, "page_size");
    if (cJSON_IsNumber(ps)) j->opts.page_size = (long)ps->valuedouble;
    j->opts.restart = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j->data, "restart"));
}

void obx_signals_start(obx_signals_t *s, const char *sid, const char *type, const char *data)
{
    if (!type || strcmp(type, "snapshot") != 0) {
        obx_warn("signal", "signal %s of type %s ignored: only \"snapshot\" is known", sid, type ? type : "NULL");
        signal_status(s, sid, "ignored", "unknown type");
        return;
    }
    if (atomic_load(&s->busy)) {
        obx_warn("signal", "signal %s: a snapshot is already running; rejected (insert it again later)", sid);
        signal_status(s, sid, "rejected", "another snapshot is running");
        return;
    }
    snap_job_t *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->s = s;
    j->signal_id = strdup(sid);
    j->data = data ? cJSON_Parse(data) : cJSON_CreateObject();
    if (!j->signal_id || !cJSON_IsObject(j->data)) {
        obx_warn("signal", "signal %s: data is not a JSON object", sid);
        signal_status(s, sid, "failed", "data is not a JSON object");
        job_free(j);
        return;
    }
    job_opts(s->cfg, j);
    if (s->started) pthread_join(s->thread, NULL);
    s->started = 0;
    atomic_store(&s->busy, 1);
    obx_info("signal", "signal %s: snapshot of %s%s%s", sid, j->opts.table ? j->opts.table : "?",
             j->opts.where ? " where " : "", j->opts.where ? j->opts.where : "");
    if (pthread_create(&s->thread, NULL, snap_main, j) != 0) {
        atomic_store(&s->busy, 0);
        signal_status(s, sid, "failed", "cannot start a thread");
        job_free(j);
        return;
    }
    s->started = 1;
}
