/* outboxd snapshot (and snapshots started by a signal inside the relay):
 * owns its PostgreSQL connection, its producer and its checkpoint row in
 * <outbox.schema>.outboxd_snapshots for the length of one run. The flow is
 * snap_prepare() (validate, describe the table, build SQL, open the
 * checkpoint, start the producer), snap_pages() (publish a page, wait for
 * its acks, then move the checkpoint) and one cleanup path in
 * obx_snapshot_run(). */
#include "snapshot.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "envelope.h"
#include "err.h"
#include "log.h"
#include "lsn.h"
#include "metrics.h"
#include "outbox.h"
#include "pg.h"
#include "producer.h"

#define CHECKPOINT_DDL                                                                                             \
    "CREATE TABLE IF NOT EXISTS %s ("                                                                              \
    " name text PRIMARY KEY, source_table text NOT NULL, filter text, topic text, last_key text,"                  \
    " rows_done bigint NOT NULL DEFAULT 0, rows_estimated bigint, status text NOT NULL,"                           \
    " error text, started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())"

/* The table, its one-column primary key and the version column. */
#define DESCRIBE_SQL                                                                                               \
    "SELECT n.nspname, c.relname,"                                                                                 \
    " (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_index i JOIN pg_attribute a"                          \
    "   ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary)::text," \
    " (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_index i JOIN pg_attribute a"                            \
    "   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = c.oid AND i.indisprimary),"       \
    " (SELECT a.attname FROM pg_index i JOIN pg_attribute a"                                                       \
    "   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = c.oid AND i.indisprimary),"       \
    " greatest(c.reltuples, 0)::bigint"                                                                            \
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)"

#define VERSION_COLUMN_SQL                                                                                         \
    "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"        \
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3"   \
    " AND NOT a.attisdropped"

typedef struct {
    long acked, failed;
    char err[512];
} snap_dr_t;

/* How a run ended: the checkpoint status written and the log line. */
typedef enum { SNAP_DONE = 0, SNAP_STOPPED, SNAP_FAILED } snap_end_t;

/* One run. Every pointer here is owned by the run and freed by snap_free(). */
typedef struct {
    const obx_config_t *cfg;
    const obx_snapshot_opts_t *o;
    volatile sig_atomic_t *stop;
    const char *name;      /* checkpoint key (borrowed from o) */
    const char *atype;     /* aggregate type (borrowed from o, or table) */
    const char *fail_event;/* log event of the failure, "snapshot" unless set */
    PGconn *c;
    obx_producer_t *prod;
    snap_dr_t dr;
    char *schema, *table, *key, *ktype; /* from the catalog */
    char topic[256];       /* a valid topic is at most 249 bytes */
    char *qt;              /* "schema"."table" */
    char *ckpt;            /* "outbox_schema"."outboxd_snapshots" */
    char *page_sql;        /* one keyset page; $1 = last key or NULL, $2.. the filter values */
    char *count_sql;       /* the rows to do; $1.. the filter values */
    const char *params[1 + OBX_SNAPSHOT_MAX_FILTERS]; /* [0] last key, then the filter values */
    int n_values;          /* filter values in params[1..] */
    char *eid;             /* event id of the row being sent, grown as needed */
    size_t eid_cap;
    char *last_key;        /* newest checkpointed key; NULL = start */
    int ckpt_open;         /* the checkpoint row says 'running' */
    long estimate, done_rows, sent;
    int64_t t0, last_report;
} snap_t;

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

static int oom(obx_err_t *err)
{
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "out of memory");
    return -1;
}

/* printf into a malloc'd string sized to fit: SQL is never cut short.
 * NULL on allocation failure. */
__attribute__((format(printf, 1, 2))) static char *sqlf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *q = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (q) {
        va_start(ap, fmt);
        vsnprintf(q, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    return q;
}

const char *obx_snapshot_filter_op(const char *op, int *takes_value)
{
    static const struct { const char *name, *sql; int value; } ops[] = {
        {"=", "=", 1}, {"<>", "<>", 1}, {"!=", "<>", 1}, {"<", "<", 1}, {"<=", "<=", 1}, {">", ">", 1},
        {">=", ">=", 1}, {"like", "LIKE", 1}, {"not like", "NOT LIKE", 1}, {"is null", "IS NULL", 0},
        {"is not null", "IS NOT NULL", 0},
    };
    for (size_t i = 0; op && i < sizeof(ops) / sizeof(ops[0]); i++)
        if (!strcasecmp(op, ops[i].name) || !strcmp(op, ops[i].sql)) {
            if (takes_value) *takes_value = ops[i].value;
            return ops[i].sql;
        }
    return NULL;
}

/* The filter as a predicate prefix, each term followed by " AND ": the
 * operator's where, then t."column" <op> $n with n from first_param.
 * Malloc'd ("" without a filter); NULL on allocation failure. */
static char *filter_prefix(const obx_snapshot_opts_t *o, int first_param)
{
    char *out = o->where ? sqlf("(%s) AND ", o->where) : strdup("");
    int n = first_param;
    for (size_t i = 0; out && i < o->n_filters; i++) {
        int takes_value = 0;
        const char *op = obx_snapshot_filter_op(o->filters[i].op, &takes_value);
        char *col = obx_pg_quote_ident(o->filters[i].column), *more = NULL;
        if (col && takes_value) more = sqlf("%st.%s %s $%d AND ", out, col, op, n++);
        else if (col) more = sqlf("%st.%s %s AND ", out, col, op);
        free(col);
        free(out);
        out = more;
    }
    return out;
}

/* Payload expression over alias t: an SQL expression, a column list (each
 * name quoted; the row of a sub-select keeps them as JSON keys), or the
 * whole row. Malloc'd; NULL on allocation failure. */
static char *payload_expr(const obx_snapshot_opts_t *o)
{
    if (o->payload_sql) return strdup(o->payload_sql);
    if (!o->columns) return strdup("to_jsonb(t)");
    char *list = strdup(o->columns), *save = NULL, *out = NULL;
    size_t cap = 64 + strlen(o->columns) * 8, n = 0;
    if (!list || !(out = malloc(cap))) goto fail;
    n = (size_t)snprintf(out, cap, "(SELECT to_jsonb(c) FROM (SELECT ");
    int first = 1;
    for (char *col = strtok_r(list, ", ", &save); col; col = strtok_r(NULL, ", ", &save)) {
        char *id = obx_pg_quote_ident(col);
        if (!id) goto fail;
        /* Each quoted name is at most 2 * len + 2 and cap holds 8 * len. */
        n += (size_t)snprintf(out + n, cap - n, "%st.%s", first ? "" : ", ", id);
        first = 0;
        free(id);
    }
    snprintf(out + n, cap - n, ") c)");
    free(list);
    return out;
fail:
    free(list);
    free(out);
    return NULL;
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

static int check_opts(const obx_snapshot_opts_t *o, obx_err_t *err)
{
    obx_err_clear(err);
    if (!o->table || !*o->table)
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "no table: set snapshot.table or pass --table");
    else if (!o->version_column || !*o->version_column)
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "no version column: set snapshot.version_column (consumers need the aggregate version to "
                    "keep the newest state when snapshot and live events mix)");
    else if (o->page_size <= 0)
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "page size %ld: use a positive number of rows per page",
                    o->page_size);
    else if (o->n_filters > OBX_SNAPSHOT_MAX_FILTERS)
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "%zu filter terms: at most %d", o->n_filters,
                    OBX_SNAPSHOT_MAX_FILTERS);
    for (size_t i = 0; err->cls == OBX_ERR_NONE && i < o->n_filters; i++) {
        int takes_value = 0;
        const obx_snapshot_filter_t *f = &o->filters[i];
        if (!f->column || !*f->column || !obx_snapshot_filter_op(f->op, &takes_value) || takes_value != !!f->value)
            obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "filter term %zu: needs a column, a known op and a value "
                        "exactly when the op takes one", i + 1);
    }
    return err->cls == OBX_ERR_NONE ? 0 : -1;
}

/* Fills schema, table, key, ktype, estimate and qt; checks the version
 * column exists. Every refusal is a config error naming the fix. */
static int snap_describe(snap_t *s, obx_err_t *err)
{
    const obx_snapshot_opts_t *o = s->o;
    const char *p1[1] = {o->table};
    PGresult *r = obx_pg_exec(s->c, DESCRIBE_SQL, 1, p1, err);
    if (!r || PQntuples(r) != 1) {
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s%.600s", r ? "" : ": ", r ? "" : err->msg);
        PQclear(r);
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "table %s does not exist or is not visible to this role%.600s: check snapshot.table and GRANT SELECT",
                    o->table, why);
        return -1;
    }
    if (!(s->schema = strdup(PQgetvalue(r, 0, 0))) || !(s->table = strdup(PQgetvalue(r, 0, 1)))) {
        PQclear(r);
        return oom(err);
    }
    obx_err_clear(err);
    if (PQgetisnull(r, 0, 2))
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "table %s.%s has no primary key: keyset pagination needs one (ALTER TABLE ... ADD PRIMARY KEY)",
                    s->schema, s->table);
    else if (strchr(PQgetvalue(r, 0, 2), ','))
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "table %s.%s has a composite primary key %s: outboxd snapshots need a one-column key", s->schema,
                    s->table, PQgetvalue(r, 0, 2));
    if (err->cls != OBX_ERR_NONE) {
        PQclear(r);
        return -1;
    }
    s->ktype = strdup(PQgetvalue(r, 0, 3));
    s->key = strdup(PQgetvalue(r, 0, 4));
    s->estimate = atol(PQgetvalue(r, 0, 5));
    PQclear(r);
    if (!s->ktype || !s->key || !(s->qt = obx_pg_quote_qualified(s->schema, s->table))) return oom(err);

    const char *p2[3] = {s->schema, s->table, o->version_column};
    r = obx_pg_exec(s->c, VERSION_COLUMN_SQL, 3, p2, err);
    int found = r && PQntuples(r) == 1;
    PQclear(r);
    if (!found) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "table %s.%s has no version column \"%s\": set snapshot.version_column to a column that "
                    "increases with every change of the row",
                    s->schema, s->table, o->version_column);
        return -1;
    }
    return 0;
}

/* Total: exact for a filtered reconcile or a small table, the planner's
 * estimate otherwise. */
static int snap_count(snap_t *s, obx_err_t *err)
{
    const obx_snapshot_opts_t *o = s->o;
    if (!o->where && !o->n_filters && s->estimate >= 10000) return 0;
    PGresult *r = obx_pg_exec(s->c, s->count_sql, s->n_values, s->params + 1, err);
    if (!r) {
        char why[sizeof(err->msg)];
        memcpy(why, err->msg, sizeof(why));
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "%s = \"%.300s\" on %s: %.600s",
                    o->where ? "snapshot.where" : "filter", o->where ? o->where : o->filter_desc ? o->filter_desc : "",
                    s->qt, why);
        return -1;
    }
    s->estimate = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

/* The page and count queries and their filter values. ktype is the
 * server's own format_type() of the key column (a type name, not an
 * identifier), so it goes in as rendered. */
static int snap_build_sql(snap_t *s, obx_err_t *err)
{
    const obx_snapshot_opts_t *o = s->o;
    for (size_t i = 0; i < o->n_filters; i++)
        if (o->filters[i].value) s->params[1 + s->n_values++] = o->filters[i].value;
    char *vcol = obx_pg_quote_ident(o->version_column), *kcol = obx_pg_quote_ident(s->key);
    char *pexpr = payload_expr(o), *page_w = filter_prefix(o, 2), *count_w = filter_prefix(o, 1);
    if (vcol && kcol && pexpr && page_w && count_w) {
        s->page_sql = sqlf("SELECT t.%s::text, t.%s::text, (%s)::text, extract(epoch FROM statement_timestamp())::float8"
                           " FROM %s t WHERE %s($1::text IS NULL OR t.%s > $1::%s) ORDER BY t.%s LIMIT %ld",
                           kcol, vcol, pexpr, s->qt, page_w, kcol, s->ktype, kcol, o->page_size);
        s->count_sql = sqlf("SELECT count(*) FROM %s t WHERE %strue", s->qt, count_w);
    }
    free(vcol);
    free(kcol);
    free(pexpr);
    free(page_w);
    free(count_w);
    return s->page_sql && s->count_sql ? 0 : oom(err);
}

/* Creates the checkpoint table if needed, reads the row (resume unless it
 * finished or restart is asked) and marks it running. */
static int snap_checkpoint_open(snap_t *s, obx_err_t *err)
{
    const obx_snapshot_opts_t *o = s->o;
    if (!(s->ckpt = obx_pg_quote_qualified(s->cfg->outbox_schema, "outboxd_snapshots"))) return oom(err);
    char *q = sqlf(CHECKPOINT_DDL, s->ckpt);
    if (!q) return oom(err);
    int rc = obx_pg_command(s->c, q, err);
    free(q);
    if (rc != 0) {
        char why[sizeof(err->msg)];
        memcpy(why, err->msg, sizeof(why));
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "cannot create %s.outboxd_snapshots (%.600s): create it with deploy/sql/outbox.sql or GRANT CREATE",
                    s->cfg->outbox_schema, why);
        return -1;
    }
    if (!(q = sqlf("SELECT last_key, rows_done, status FROM %s WHERE name = $1", s->ckpt))) return oom(err);
    const char *pn[1] = {s->name};
    PGresult *r = obx_pg_exec(s->c, q, 1, pn, err);
    free(q);
    if (!r) return -1;
    if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 2), "done") != 0 && !o->restart) {
        if (!PQgetisnull(r, 0, 0) && !(s->last_key = strdup(PQgetvalue(r, 0, 0)))) {
            PQclear(r);
            return oom(err);
        }
        s->done_rows = atol(PQgetvalue(r, 0, 1));
        obx_info("snapshot_resume", "snapshot %s resumes after key %s (%ld rows done)", s->name,
                 s->last_key ? s->last_key : "(start)", s->done_rows);
    }
    PQclear(r);
    char est[32], done[32];
    snprintf(est, sizeof(est), "%ld", s->estimate);
    snprintf(done, sizeof(done), "%ld", s->done_rows);
    const char *pu[7] = {s->name, s->qt, o->where ? o->where : o->filter_desc, o->topic, s->last_key, done, est};
    q = sqlf("INSERT INTO %s AS s (name, source_table, filter, topic, last_key, rows_done, rows_estimated, status)"
             " VALUES ($1, $2, $3, $4, $5, $6, $7, 'running') ON CONFLICT (name) DO UPDATE SET source_table = $2,"
             " filter = $3, topic = $4, last_key = $5, rows_done = $6, rows_estimated = $7, status = 'running',"
             " error = NULL, updated_at = now()",
             s->ckpt);
    if (!q) return oom(err);
    r = obx_pg_exec(s->c, q, 7, pu, err);
    free(q);
    if (!r) return -1;
    PQclear(r);
    s->ckpt_open = 1;
    return 0;
}

/* Final status of the checkpoint row; a failure here is only logged (the
 * row then says 'running', which resumes the same way). */
static void snap_checkpoint_status(snap_t *s, const char *status)
{
    obx_err_t err;
    char *q = sqlf("UPDATE %s SET status = $2, updated_at = now() WHERE name = $1", s->ckpt);
    const char *p[2] = {s->name, status};
    PGresult *r = q ? obx_pg_exec(s->c, q, 2, p, &err) : NULL;
    if (!q) snprintf(err.msg, sizeof(err.msg), "out of memory");
    free(q);
    if (!r) obx_warn("snapshot", "snapshot %s: cannot mark the checkpoint %s: %s", s->name, status, err.msg);
    PQclear(r);
}

/* The page is durable in Kafka: move the checkpoint past its last key. */
static int snap_checkpoint_move(snap_t *s, const char *last_key, long n, obx_err_t *err)
{
    char *k = strdup(last_key);
    if (!k) return oom(err);
    free(s->last_key);
    s->last_key = k;
    s->done_rows += n;
    s->sent += n;
    char done[32];
    snprintf(done, sizeof(done), "%ld", s->done_rows);
    char *q = sqlf("UPDATE %s SET last_key = $2, rows_done = $3, updated_at = now() WHERE name = $1", s->ckpt);
    if (!q) return oom(err);
    const char *p[3] = {s->name, s->last_key, done};
    PGresult *r = obx_pg_exec(s->c, q, 3, p, err);
    free(q);
    if (!r) return -1;
    PQclear(r);
    return 0;
}

static int snap_open_producer(snap_t *s, obx_err_t *err)
{
    const obx_snapshot_opts_t *o = s->o;
    char perr[512];
    obx_producer_opts_t po = {.gapless = s->cfg->exactly_once}; /* not the relay's: leaves kafka_brokers_up alone */
    if (!(s->prod = obx_producer_new_opts(s->cfg, &po, snap_dr, &s->dr, perr, sizeof(perr)))) {
        s->fail_event = "kafka_producer";
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "%s", perr);
        return -1;
    }
    s->atype = o->aggregate_type ? o->aggregate_type : s->table;
    if (o->topic && strlen(o->topic) < sizeof(s->topic))
        snprintf(s->topic, sizeof(s->topic), "%s", o->topic);
    else if (o->topic)
        s->topic[0] = '\0';
    else if (obx_topic_expand(s->cfg->topic_template, s->atype, s->topic, sizeof(s->topic)) != 0)
        s->topic[0] = '\0';
    if (!obx_topic_valid(s->topic)) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "topic \"%s\" is not a valid Kafka topic name: set snapshot.topic", s->topic);
        return -1;
    }
    return 0;
}

static int snap_prepare(snap_t *s, obx_err_t *err)
{
    if (!(s->c = obx_pg_connect(s->cfg->pg_conninfo, "pg.conninfo", OBX_PG_NORMAL, err))) {
        s->fail_event = "pg_connect";
        return -1;
    }
    if (snap_describe(s, err) != 0 || snap_build_sql(s, err) != 0 || snap_count(s, err) != 0 ||
        snap_checkpoint_open(s, err) != 0 || snap_open_producer(s, err) != 0)
        return -1;
    obx_metrics_t *m = obx_metrics();
    snprintf(m->snapshot_name, sizeof(m->snapshot_name), "%s", s->name);
    atomic_store(&m->snapshot_running, 1);
    atomic_store(&m->snapshot_rows_estimated, s->estimate);
    atomic_store(&m->snapshot_rows_done, s->done_rows);
    const char *f = s->o->where ? s->o->where : s->o->filter_desc;
    obx_info("snapshot_start", "snapshot %s of %s to %s: ~%ld rows, %ld per page%s%s", s->name, s->qt, s->topic,
             s->estimate, s->o->page_size, f ? ", where " : "", f ? f : "");
    return 0;
}

/* Checks the whole page before publishing any of it: every row needs an
 * integer version. */
static int snap_check_page(snap_t *s, PGresult *r, obx_err_t *err)
{
    for (int i = 0; i < PQntuples(r); i++) {
        char *end;
        const char *v = PQgetvalue(r, i, 1);
        int null = PQgetisnull(r, i, 1);
        if (null || !*v || (strtoll(v, &end, 10), *end)) {
            obx_err_clear(err);
            obx_err_set(err, OBX_ERR_POISON, OBX_EXIT_POISON,
                        "%s row %s = %s: version column \"%s\" is %s; every row needs an integer version "
                        "(nothing of this page was published)",
                        s->qt, s->key, PQgetvalue(r, i, 0), s->o->version_column, null ? "NULL" : "not an integer");
            return -1;
        }
    }
    return 0;
}

/* Hands row i of the page to the producer, polling while its queue is
 * full. 0 sent, 1 stopped while the queue stayed full, -1 err. */
static int snap_send_row(snap_t *s, PGresult *r, int i, int64_t now_us, obx_err_t *err)
{
    char perr[512];
    /* Full length, never cut: two keys sharing a long prefix stay two ids. */
    size_t need = strlen(s->name) + (size_t)PQgetlength(r, i, 0) + (size_t)PQgetlength(r, i, 1) + 16;
    if (need > s->eid_cap) {
        char *e = realloc(s->eid, need);
        if (!e) return oom(err);
        s->eid = e;
        s->eid_cap = need;
    }
    char *eid = s->eid;
    /* The "snapshot:" prefix (event_id, the envelope's first field) lets the
     * relay's exactly-once read-back skip these records undecoded (dedup.c). */
    snprintf(eid, need, "snapshot:%s:%s:%s", s->name, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    obx_outbox_row_t row = {
        .event_id = eid, .aggregate_type = s->atype, .aggregate_id = PQgetvalue(r, i, 0),
        .event_type = s->o->event_type, .payload = (const unsigned char *)PQgetvalue(r, i, 2),
        .payload_len = (size_t)PQgetlength(r, i, 2), .payload_kind = OBX_PAYLOAD_JSON, .has_version = 1,
        .version = strtoll(PQgetvalue(r, i, 1), NULL, 10), .occurred_at_us = now_us};
    obx_source_t src = {.commit_time_us = now_us, .database = PQdb(s->c), .schema = s->schema, .table = s->table,
                        .slot = ""};
    uint8_t *val;
    size_t len;
    if (obx_envelope_encode(&row, &src, &val, &len, perr, sizeof(perr)) != 0) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_POISON, OBX_EXIT_FAIL, "encoding %s %s: %s", s->qt, row.aggregate_id, perr);
        return -1;
    }
    const char *kh[] = {"id", eid, "type", s->o->event_type, "content-type", "application/json",
                        "outboxd-snapshot", s->name};
    for (;;) {
        obx_produce_rc_t pr =
            obx_producer_send(s->prod, s->topic, -1, row.aggregate_id, val, len, kh, 4, 0, perr, sizeof(perr));
        if (pr == OBX_PRODUCE_OK) return 0;
        if (pr == OBX_PRODUCE_QUEUE_FULL && !*s->stop) {
            obx_producer_poll(s->prod, 50);
            continue;
        }
        free(val);
        if (pr == OBX_PRODUCE_QUEUE_FULL) return 1;
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "Kafka refused %s %s for topic %s: %s", s->qt,
                    row.aggregate_id, s->topic, perr);
        return -1;
    }
}

/* Waits until the page's n messages are acked: 0 acked, -1 err (one
 * failed), 1 stopped. With exactly_once messages never time out, so a
 * stop gives Kafka half of shutdown.timeout_ms to finish the page and
 * then leaves it unacked: its checkpoint does not move. */
static int snap_wait_acks(snap_t *s, long n, obx_err_t *err)
{
    int64_t deadline = 0;
    while (s->dr.acked + s->dr.failed < n && !s->dr.failed) {
        if (*s->stop) {
            int64_t now = obx_mono_ms();
            if (!deadline) deadline = now + s->cfg->shutdown_timeout_ms / 2;
            if (now >= deadline) return 1;
        }
        obx_producer_poll(s->prod, 20);
    }
    if (!s->dr.failed) return 0;
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_RETRIABLE, OBX_EXIT_FAIL,
                "snapshot %s: Kafka did not ack a page (%s); the checkpoint stays at key %s, rerun to resume", s->name,
                s->dr.err, s->last_key ? s->last_key : "(start)");
    return -1;
}

/* Publishes one fetched page and moves the checkpoint once Kafka holds it.
 * 0 done, 1 stopped, -1 err. */
static int snap_publish_page(snap_t *s, PGresult *r, obx_err_t *err)
{
    int n = PQntuples(r), rc;
    if (snap_check_page(s, r, err) != 0) return -1;
    s->dr.acked = 0;
    int64_t now_us = (int64_t)(atof(PQgetvalue(r, 0, 3)) * 1e6);
    for (int i = 0; i < n; i++)
        if ((rc = snap_send_row(s, r, i, now_us, err)) != 0) return rc;
    if ((rc = snap_wait_acks(s, n, err)) != 0) return rc;
    return snap_checkpoint_move(s, PQgetvalue(r, n - 1, 0), n, err);
}

static double snap_rate(const snap_t *s, double *secs)
{
    *secs = (double)(obx_mono_ms() - s->t0) / 1000.0;
    return *secs > 0 ? (double)s->sent / *secs : 0;
}

/* Progress gauges and line; then sleeps until the rows sent fit the rate
 * limit (a stop ends the sleep). */
static void snap_progress(snap_t *s)
{
    obx_metrics_t *m = obx_metrics();
    double secs, rate = snap_rate(s, &secs);
    atomic_store(&m->snapshot_rows_done, s->done_rows);
    atomic_store(&m->snapshot_rows_per_s_milli, (int64_t)(rate * 1000));
    if (s->o->progress_bar || obx_mono_ms() - s->last_report >= 5000) {
        s->last_report = obx_mono_ms();
        progress_line(s->o, s->name, s->done_rows, s->estimate > s->done_rows ? s->estimate : s->done_rows, rate, 0);
    }
    if (s->o->rate_limit > 0) {
        double ahead = (double)s->sent / (double)s->o->rate_limit - secs;
        if (ahead > 0) obx_sleep_unless((int)(ahead * 1000), 50, s->stop, NULL, NULL);
    }
}

/* The page loop: 0 when the table is done, 1 stopped, -1 err. */
static int snap_pages(snap_t *s, obx_err_t *err)
{
    s->t0 = obx_mono_ms();
    for (;;) {
        if (*s->stop) return 1;
        s->params[0] = s->last_key;
        PGresult *r = obx_pg_exec(s->c, s->page_sql, 1 + s->n_values, s->params, err);
        if (!r) {
            obx_err_prefix(err, "snapshot %s", s->name);
            return -1;
        }
        int n = PQntuples(r), rc = n ? snap_publish_page(s, r, err) : 0;
        PQclear(r);
        if (rc != 0) return rc;
        if (n == 0) return 0;
        snap_progress(s);
        if (n < s->o->page_size) return 0;
    }
}

/* The one ending: log once, write the checkpoint status, exit code. */
static int snap_finish(snap_t *s, int rc, const obx_err_t *err)
{
    if (rc < 0) {
        obx_error(s->fail_event ? s->fail_event : "snapshot", "%s", err->msg);
        if (s->ckpt_open) snap_checkpoint_status(s, "failed");
        int code = obx_err_exit_code(err);
        return code == OBX_EXIT_OK ? OBX_EXIT_FAIL : code;
    }
    if (rc == 1) {
        obx_info("snapshot_interrupted", "snapshot %s stopped at key %s; it resumes there", s->name,
                 s->last_key ? s->last_key : "(start)");
        snap_checkpoint_status(s, "interrupted");
        return OBX_EXIT_OK;
    }
    snap_checkpoint_status(s, "done");
    double secs, rate = snap_rate(s, &secs);
    progress_line(s->o, s->name, s->done_rows, s->done_rows, rate, 1);
    obx_info("snapshot_done", "snapshot %s: %ld rows in %.1f s (%.0f rows/s) to %s", s->name, s->done_rows, secs,
             rate, s->topic);
    return OBX_EXIT_OK;
}

static void snap_free(snap_t *s)
{
    atomic_store(&obx_metrics()->snapshot_running, 0);
    if (s->prod) {
        /* Everything acked was checkpointed; after a stop the rest is
         * purged rather than waited for (Kafka may be gone). */
        if (!*s->stop) obx_producer_flush(s->prod, 10000);
        obx_producer_destroy(s->prod);
    }
    free(s->schema);
    free(s->table);
    free(s->key);
    free(s->ktype);
    free(s->eid);
    free(s->qt);
    free(s->ckpt);
    free(s->page_sql);
    free(s->count_sql);
    free(s->last_key);
    PQfinish(s->c);
}

int obx_snapshot_run(const obx_config_t *cfg, const obx_snapshot_opts_t *o, volatile sig_atomic_t *stop)
{
    obx_err_t err;
    if (check_opts(o, &err) != 0) {
        obx_error("snapshot", "%s", err.msg);
        return obx_err_exit_code(&err);
    }
    snap_t s = {.cfg = cfg, .o = o, .stop = stop, .name = o->name ? o->name : o->table};
    obx_log_set_thread_context("snapshot", s.name);
    int rc = snap_prepare(&s, &err);
    if (rc == 0) rc = snap_pages(&s, &err);
    rc = snap_finish(&s, rc, &err);
    snap_free(&s);
    obx_log_set_thread_context("snapshot", NULL);
    return rc;
}
