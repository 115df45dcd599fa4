#include "snapshot.h"
#include "pg.h"
#include "exitcodes.h"
#include "clock.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "envelope.h"
#include "log.h"
#include "lsn.h"
#include "metrics.h"
#include "outbox.h"
#include "preflight.h"
#include "producer.h"

#define CHECKPOINT_DDL                                                                                             \
    "CREATE TABLE IF NOT EXISTS %s.outboxd_snapshots ("                                                            \
    " name text PRIMARY KEY, source_table text NOT NULL, filter text, topic text, last_key text,"                  \
    " rows_done bigint NOT NULL DEFAULT 0, rows_estimated bigint, status text NOT NULL,"                           \
    " error text, started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())"

typedef struct {
    long acked, failed;
    char err[512];
} snap_dr_t;

static void snap_dr(void *opaque, uint64_t ticket, const char *err, int retriable, const char *topic,
                    const void *value, size_t value_len)
{
    (void)ticket, (void)retriable, (void)value, (void)value_len;
    snap_dr_t *d = opaque;
    if (!err) {
        d->acked++;
        return;
    }
    if (!d->failed++) snprintf(d->err, sizeof(d->err), "topic %s: %s", topic, err);
}

void obx_snapshot_opts_from_config(const obx_config_t *cfg, obx_snapshot_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->name = *cfg->snap_name ? cfg->snap_name : NULL;
    o->table = cfg->snap_table;
    o->where = *cfg->snap_where ? cfg->snap_where : NULL;
    o->topic = *cfg->snap_topic ? cfg->snap_topic : NULL;
    o->aggregate_type = *cfg->snap_aggregate_type ? cfg->snap_aggregate_type : NULL;
    o->version_column = cfg->snap_version_column;
    o->columns = *cfg->snap_columns ? cfg->snap_columns : NULL;
    o->payload_sql = *cfg->snap_payload_sql ? cfg->snap_payload_sql : NULL;
    o->event_type = cfg->snap_event_type;
    o->page_size = cfg->snap_page_size;
    o->rate_limit = cfg->snap_rate_limit;
}

static PGresult *exec(PGconn *c, const char *sql, int n, const char *const *p, char *err, size_t errsz)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        snprintf(err, errsz, "%s", PQresultErrorMessage(r));
        obx_chomp(err);
        PQclear(r);
        return NULL;
    }
    return r;
}

/* Payload expression over alias t: an SQL expression, a column list, or the
 * whole row. Returned string is malloc'd. */
static char *payload_expr(PGconn *c, const obx_snapshot_opts_t *o)
{
    if (o->payload_sql) return strdup(o->payload_sql);
    if (!o->columns) return strdup("to_jsonb(t)");
    size_t cap = 64 + strlen(o->columns) * 4;
    char *out = malloc(cap), *list = strdup(o->columns), *save = NULL;
    if (!out || !list) {
        free(out);
        free(list);
        return NULL;
    }
    size_t n = (size_t)snprintf(out, cap, "jsonb_build_object(");
    int first = 1;
    for (char *col = strtok_r(list, ", ", &save); col; col = strtok_r(NULL, ", ", &save)) {
        char *lit = PQescapeLiteral(c, col, strlen(col)), *id = PQescapeIdentifier(c, col, strlen(col));
        if (!lit || !id) break;
        size_t need = strlen(lit) + strlen(id) + 8;
        if (n + need >= cap) {
            cap = (n + need) * 2;
            char *g = realloc(out, cap);
            if (!g) break;
            out = g;
        }
        n += (size_t)snprintf(out + n, cap - n, "%s%s, t.%s", first ? "" : ", ", lit, id);
        first = 0;
        PQfreemem(lit);
        PQfreemem(id);
    }
    snprintf(out + n, cap - n, ")");
    free(list);
    return out;
}

static void progress_line(const obx_snapshot_opts_t *o, const char *name, long done, long total, double rate, int final)
{
    double eta = rate > 0 && total > done ? (double)(total - done) / rate : 0;
    if (o->progress_bar) {
        int width = 30, filled = total > 0 ? (int)((double)done / (double)total * width) : 0;
        if (filled > width) filled = width;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r%s [%s] %ld/%ld rows %.0f rows/s ETA %.0fs   %s", name, bar, done, total, rate, eta,
                final ? "\n" : "");
        fflush(stderr);
    } else {
        obx_info("snapshot_progress", "snapshot %s: %ld of ~%ld rows, %.0f rows/s, ETA %.0f s", name, done, total, rate, eta);
    }
}

int obx_snapshot_run(const obx_config_t *cfg, const obx_snapshot_opts_t *o, volatile sig_atomic_t *stop)
{
    char err[1024];
    obx_metrics_t *m = obx_metrics();
    int rc = OBX_EXIT_FAIL;
    PGconn *c = NULL;
    obx_producer_t *prod = NULL;
    PGresult *r = NULL;
    char *pexpr = NULL, *sql = NULL;
    snap_dr_t dr = {0};

    if (!o->table || !*o->table) {
        obx_error("snapshot", "no table: set snapshot.table or pass --table");
        return OBX_EXIT_CONFIG;
    }
    if (!o->version_column || !*o->version_column) {
        obx_error("snapshot", "no version column: set snapshot.version_column (consumers need the aggregate version to "
                  "keep the newest state when snapshot and live events mix)");
        return OBX_EXIT_CONFIG;
    }
    if (o->page_size <= 0) {
        obx_error("snapshot", "page size %ld: use a positive number of rows per page", o->page_size);
        return OBX_EXIT_CONFIG;
    }
    const char *name = o->name ? o->name : o->table;
    c = obx_pg_connect_str(cfg->pg_conninfo, err, sizeof(err));
    if (!c) {
        obx_error("pg_connect", "%s", err);
        return OBX_EXIT_FAIL;
    }

    /* The table, its one-column primary key, the version column. */
    const char *p1[1] = {o->table};
    r = exec(c,
             "SELECT n.nspname, c.relname,"
             " (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_index i JOIN pg_attribute a"
             "   ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary)::text,"
             " (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_index i JOIN pg_attribute a"
             "   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = c.oid AND i.indisprimary),"
             " (SELECT a.attname FROM pg_index i JOIN pg_attribute a"
             "   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = c.oid AND i.indisprimary),"
             " greatest(c.reltuples, 0)::bigint"
             " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
             1, p1, err, sizeof(err));
    if (!r || PQntuples(r) != 1) {
        obx_error("snapshot", "table %s does not exist or is not visible to this role%s%s: check snapshot.table and GRANT SELECT",
                  o->table, r ? "" : ": ", r ? "" : err);
        rc = OBX_EXIT_CONFIG;
        goto done;
    }
    char schema[128], table[128], key[128], ktype[128], qt[600];
    snprintf(schema, sizeof(schema), "%s", PQgetvalue(r, 0, 0));
    snprintf(table, sizeof(table), "%s", PQgetvalue(r, 0, 1));
    if (PQgetisnull(r, 0, 2)) {
        obx_error("snapshot", "table %s.%s has no primary key: keyset pagination needs one (ALTER TABLE ... ADD PRIMARY KEY)",
                  schema, table);
        rc = OBX_EXIT_CONFIG;
        goto done;
    }
    if (strchr(PQgetvalue(r, 0, 2), ',')) {
        obx_error("snapshot", "table %s.%s has a composite primary key %s: outboxd snapshots need a one-column key",
                  schema, table, PQgetvalue(r, 0, 2));
        rc = OBX_EXIT_CONFIG;
        goto done;
    }
    snprintf(ktype, sizeof(ktype), "%s", PQgetvalue(r, 0, 3));
    snprintf(key, sizeof(key), "%s", PQgetvalue(r, 0, 4));
    long estimate = atol(PQgetvalue(r, 0, 5));
    PQclear(r);
    r = NULL;
    {
        char *s = PQescapeIdentifier(c, schema, strlen(schema)), *t = PQescapeIdentifier(c, table, strlen(table));
        snprintf(qt, sizeof(qt), "%s.%s", s ? s : "", t ? t : "");
        PQfreemem(s);
        PQfreemem(t);
    }
    const char *p2[3] = {schema, table, o->version_column};
    r = exec(c,
             "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
             " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3"
             " AND NOT a.attisdropped",
             3, p2, err, sizeof(err));
    if (!r || PQntuples(r) != 1) {
        obx_error("snapshot", "table %s.%s has no version column \"%s\": set snapshot.version_column to a column that "
                  "increases with every change of the row", schema, table, o->version_column);
        rc = OBX_EXIT_CONFIG;
        goto done;
    }
    PQclear(r);
    r = NULL;

    /* Total: exact for a filtered reconcile, the planner's estimate otherwise. */
    char *vcol = PQescapeIdentifier(c, o->version_column, strlen(o->version_column));
    char *kcol = PQescapeIdentifier(c, key, strlen(key));
    pexpr = payload_expr(c, o);
    if (!vcol || !kcol || !pexpr) {
        obx_error("oom", "out of memory");
        PQfreemem(vcol);
        PQfreemem(kcol);
        goto done;
    }
    size_t sqlcap = 1024 + strlen(pexpr) + (o->where ? strlen(o->where) : 0) + strlen(qt);
    sql = malloc(sqlcap);
    if (!sql) goto done;
    if (o->where || estimate < 10000) {
        snprintf(sql, sqlcap, "SELECT count(*) FROM %s t%s%s%s", qt, o->where ? " WHERE (" : "", o->where ? o->where : "",
                 o->where ? ")" : "");
        r = exec(c, sql, 0, NULL, err, sizeof(err));
        if (!r) {
            obx_error("snapshot", "snapshot.where = \"%s\" on %s: %s", o->where ? o->where : "", qt, err);
            rc = OBX_EXIT_CONFIG;
            PQfreemem(vcol);
            PQfreemem(kcol);
            goto done;
        }
        estimate = atol(PQgetvalue(r, 0, 0));
        PQclear(r);
        r = NULL;
    }
    snprintf(sql, sqlcap,
             "SELECT t.%s::text, t.%s::text, (%s)::text, extract(epoch FROM statement_timestamp())::float8"
             " FROM %s t WHERE %s%s%s($1::text IS NULL OR t.%s > $1::%s) ORDER BY t.%s LIMIT %ld",
             kcol, vcol, pexpr, qt, o->where ? "(" : "", o->where ? o->where : "", o->where ? ") AND " : "", kcol, ktype,
             kcol, o->page_size);
    PQfreemem(vcol);
    PQfreemem(kcol);

    /* Checkpoint row: resume unless finished or told to restart. */
    char ddl[600];
    snprintf(ddl, sizeof(ddl), CHECKPOINT_DDL, cfg->outbox_schema);
    if (!(r = exec(c, ddl, 0, NULL, err, sizeof(err)))) {
        obx_error("snapshot", "cannot create %s.outboxd_snapshots (%s): create it with deploy/sql/outbox.sql or GRANT CREATE",
                  cfg->outbox_schema, err);
        rc = OBX_EXIT_CONFIG;
        goto done;
    }
    PQclear(r);
    char q[700];
    snprintf(q, sizeof(q), "SELECT last_key, rows_done, status FROM %s.outboxd_snapshots WHERE name = $1", cfg->outbox_schema);
    const char *pn[1] = {name};
    if (!(r = exec(c, q, 1, pn, err, sizeof(err)))) goto fail_sql;
    char *last_key = NULL;
    long done_rows = 0;
    if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 2), "done") != 0 && !o->restart) {
        if (!PQgetisnull(r, 0, 0)) last_key = strdup(PQgetvalue(r, 0, 0));
        done_rows = atol(PQgetvalue(r, 0, 1));
        obx_info("snapshot_resume", "snapshot %s resumes after key %s (%ld rows done)", name, last_key ? last_key : "(start)",
                 done_rows);
    }
    PQclear(r);
    char est[32], lim[32];
    snprintf(est, sizeof(est), "%ld", estimate);
    snprintf(lim, sizeof(lim), "%ld", done_rows);
    const char *pu[7] = {name, qt, o->where, o->topic, last_key, lim, est};
    snprintf(q, sizeof(q),
             "INSERT INTO %s.outboxd_snapshots AS s (name, source_table, filter, topic, last_key, rows_done, rows_estimated, status)"
             " VALUES ($1, $2, $3, $4, $5, $6, $7, 'running') ON CONFLICT (name) DO UPDATE SET source_table = $2, filter = $3,"
             " topic = $4, last_key = $5, rows_done = $6, rows_estimated = $7, status = 'running', error = NULL, updated_at = now()",
             cfg->outbox_schema);
    if (!(r = exec(c, q, 7, pu, err, sizeof(err)))) {
        free(last_key);
        goto fail_sql;
    }
    PQclear(r);
    r = NULL;

    prod = obx_producer_new(cfg, snap_dr, &dr, err, sizeof(err));
    if (!prod) {
        obx_error("kafka_producer", "%s", err);
        free(last_key);
        goto done;
    }
    char topic[256];
    const char *atype = o->aggregate_type ? o->aggregate_type : table;
    if (o->topic)
        snprintf(topic, sizeof(topic), "%s", o->topic);
    else if (obx_topic_expand(cfg->topic_template, atype, topic, sizeof(topic)) != 0)
        topic[0] = '\0';
    if (!obx_topic_valid(topic)) {
        obx_error("snapshot", "topic \"%s\" is not a valid Kafka topic name: set snapshot.topic", topic);
        rc = OBX_EXIT_CONFIG;
        free(last_key);
        goto done;
    }
    snprintf(m->snapshot_name, sizeof(m->snapshot_name), "%s", name);
    atomic_store(&m->snapshot_running, 1);
    atomic_store(&m->snapshot_rows_estimated, estimate);
    atomic_store(&m->snapshot_rows_done, done_rows);
    obx_info("snapshot_start", "snapshot %s of %s to %s: ~%ld rows, %ld per page%s%s", name, qt, topic, estimate,
             o->page_size, o->where ? ", where " : "", o->where ? o->where : "");

    int64_t t0 = obx_mono_ms(), last_report = 0;
    long sent_this_run = 0;
    int64_t now_us;
    for (;;) {
        if (*stop) {
            obx_info("snapshot_interrupted", "snapshot %s stopped at key %s; it resumes there", name, last_key ? last_key : "(start)");
            rc = OBX_EXIT_OK;
            free(last_key);
            goto mark_interrupted;
        }
        const char *pp[1] = {last_key};
        if (!(r = exec(c, sql, 1, pp, err, sizeof(err)))) {
            free(last_key);
            goto fail_sql;
        }
        int n = PQntuples(r);
        if (n == 0) break;
        /* Check the whole page before publishing any of it. */
        for (int i = 0; i < n; i++) {
            char *end;
            const char *v = PQgetvalue(r, i, 1);
            if (PQgetisnull(r, i, 1) || (strtoll(v, &end, 10), *end) || !*v) {
                obx_error("snapshot", "%s row %s = %s: version column \"%s\" is %s; every row needs an integer version "
                          "(nothing of this page was published)", qt, key, PQgetvalue(r, i, 0), o->version_column,
                          PQgetisnull(r, i, 1) ? "NULL" : "not an integer");
                rc = OBX_EXIT_POISON;
                free(last_key);
                goto fail_status;
            }
        }
        dr.acked = 0;
        now_us = (int64_t)(atof(PQgetvalue(r, 0, 3)) * 1e6);
        for (int i = 0; i < n; i++) {
            obx_outbox_row_t row;
            memset(&row, 0, sizeof(row));
            char eid[300];
            snprintf(eid, sizeof(eid), "snapshot:%s:%s:%s", name, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
            row.event_id = eid;
            row.aggregate_type = atype;
            row.aggregate_id = PQgetvalue(r, i, 0);
            row.event_type = o->event_type;
            row.payload = (const unsigned char *)PQgetvalue(r, i, 2);
            row.payload_len = (size_t)PQgetlength(r, i, 2);
            row.payload_kind = OBX_PAYLOAD_JSON;
            row.has_version = 1;
            row.version = strtoll(PQgetvalue(r, i, 1), NULL, 10);
            row.occurred_at_us = now_us;
            obx_source_t src = {.commit_time_us = now_us, .database = PQdb(c), .schema = schema, .table = table, .slot = ""};
            uint8_t *val;
            size_t len;
            if (obx_envelope_encode(&row, &src, &val, &len, err, sizeof(err)) != 0) {
                obx_error("snapshot", "encoding %s %s: %s", qt, row.aggregate_id, err);
                free(last_key);
                goto fail_status;
            }
            const char *kh[] = {"id", eid, "type", o->event_type, "content-type", "application/json", "outboxd-snapshot", name};
            for (;;) {
                obx_produce_rc_t pr = obx_producer_send(prod, topic, -1, row.aggregate_id, val, len, kh, 4, 0, err, sizeof(err));
                if (pr == OBX_PRODUCE_OK) break;
                if (pr == OBX_PRODUCE_QUEUE_FULL) {
                    obx_producer_poll(prod, 50);
                    continue;
                }
                free(val);
                obx_error("snapshot", "Kafka refused %s %s for topic %s: %s", qt, row.aggregate_id, topic, err);
                free(last_key);
                goto fail_status;
            }
        }
        /* The page is durable in Kafka before its checkpoint moves. */
        while (dr.acked + dr.failed < n && !dr.failed) obx_producer_poll(prod, 20);
        if (dr.failed) {
            obx_error("snapshot", "snapshot %s: Kafka did not ack a page (%s); the checkpoint stays at key %s, rerun to resume",
                      name, dr.err, last_key ? last_key : "(start)");
            free(last_key);
            goto fail_status;
        }
        free(last_key);
        last_key = strdup(PQgetvalue(r, n - 1, 0));
        done_rows += n;
        sent_this_run += n;
        PQclear(r);
        r = NULL;
        snprintf(lim, sizeof(lim), "%ld", done_rows);
        const char *pc[3] = {name, last_key, lim};
        snprintf(q, sizeof(q), "UPDATE %s.outboxd_snapshots SET last_key = $2, rows_done = $3, updated_at = now() WHERE name = $1",
                 cfg->outbox_schema);
        if (!(r = exec(c, q, 3, pc, err, sizeof(err)))) {
            free(last_key);
            goto fail_sql;
        }
        PQclear(r);
        r = NULL;
        double secs = (double)(obx_mono_ms() - t0) / 1000.0;
        double rate = secs > 0 ? (double)sent_this_run / secs : 0;
        atomic_store(&m->snapshot_rows_done, done_rows);
        atomic_store(&m->snapshot_rows_per_s_milli, (int64_t)(rate * 1000));
        if (o->progress_bar || obx_mono_ms() - last_report >= 5000) {
            last_report = obx_mono_ms();
            progress_line(o, name, done_rows, estimate > done_rows ? estimate : done_rows, rate, 0);
        }
        if (n < o->page_size) break;
        if (o->rate_limit > 0) {
            /* Sleep until the rows sent so far fit the rate. */
            double ahead = (double)sent_this_run / (double)o->rate_limit - secs;
            if (ahead > 0) {
                struct timespec ts = {(time_t)ahead, (long)((ahead - (double)(time_t)ahead) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    free(last_key);
    snprintf(q, sizeof(q), "UPDATE %s.outboxd_snapshots SET status = 'done', updated_at = now() WHERE name = $1", cfg->outbox_schema);
    PQclear(exec(c, q, 1, pn, err, sizeof(err)));
    {
        double secs = (double)(obx_mono_ms() - t0) / 1000.0;
        double rate = secs > 0 ? (double)sent_this_run / secs : 0;
        progress_line(o, name, done_rows, done_rows, rate, 1);
        obx_info("snapshot_done", "snapshot %s: %ld rows in %.1f s (%.0f rows/s) to %s", name, done_rows, secs, rate, topic);
    }
    rc = OBX_EXIT_OK;
    goto done;
fail_sql:
    obx_error("snapshot", "snapshot %s: %s", name, err);
fail_status:
    snprintf(q, sizeof(q), "UPDATE %s.outboxd_snapshots SET status = 'failed', updated_at = now() WHERE name = $1", cfg->outbox_schema);
    PQclear(exec(c, q, 1, pn, err, sizeof(err)));
    if (rc == OBX_EXIT_FAIL || rc == OBX_EXIT_OK) rc = rc == OBX_EXIT_OK ? OBX_EXIT_FAIL : rc;
    goto done;
mark_interrupted:
    snprintf(q, sizeof(q), "UPDATE %s.outboxd_snapshots SET status = 'interrupted', updated_at = now() WHERE name = $1",
             cfg->outbox_schema);
    PQclear(exec(c, q, 1, pn, err, sizeof(err)));
done:
    atomic_store(&m->snapshot_running, 0);
    PQclear(r);
    if (prod) {
        obx_producer_flush(prod, 10000);
        obx_producer_destroy(prod);
    }
    free(pexpr);
    free(sql);
    PQfinish(c);
    return rc;
}
