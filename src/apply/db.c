/* outboxd apply: the replica database. Connects through obx_pg_connect,
 * checks the replica (and tombstone) table against the config (columns,
 * types, ON CONFLICT key, privileges), builds and prepares the two
 * statements, and reads freshness back after a restart.
 *
 * The connection and the SQL strings belong to the obx_apply_t;
 * obx_apply_db_close and obx_apply_db_free_sql free them. */
#include "apply_int.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg.h"

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

static int fail(obx_err_t *err, int exit_code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(obx_err_t *err, int exit_code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    obx_err_clear(err);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    err->cls = OBX_ERR_FATAL;
    err->exit_code = exit_code;
    return -1;
}

/* A preflight query failed (err filled by obx_pg_exec): with the connection
 * alive the table or the grants need fixing; without it, or when the table
 * is only locked or the server slow (lock_timeout, statement_timeout while
 * a migration holds the table), retry. */
static int query_failed(PGconn *c, obx_err_t *err)
{
    int fatal = PQstatus(c) == CONNECTION_OK && obx_apply_err_data(err) && !obx_apply_err_transient(err);
    err->cls = fatal ? OBX_ERR_FATAL : OBX_ERR_RETRIABLE;
    err->exit_code = fatal ? OBX_EXIT_CONFIG : OBX_EXIT_FAIL;
    return -1;
}

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

/* The table's oid; *missing = 1 when it does not exist. */
static int table_oid(PGconn *c, const char *name, pgtable_t *t, int *missing, obx_err_t *err)
{
    obx_apply_sb_t q = {0};
    obx_apply_sb_name(&q, name);
    if (q.oom) return fail(err, OBX_EXIT_FAIL, "out of memory");
    const char *p[1] = {q.s};
    PGresult *r = obx_pg_exec(c, "SELECT to_regclass($1)::oid", 1, p, err);
    free(q.s);
    if (!r) return query_failed(c, err);
    *missing = PQgetisnull(r, 0, 0);
    if (!*missing) snprintf(t->oid, sizeof(t->oid), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (*missing) return fail(err, OBX_EXIT_CONFIG, "table %s does not exist in database %s", name, PQdb(c));
    return 0;
}

static int describe(PGconn *c, const char *name, pgtable_t *t, int *missing, obx_err_t *err)
{
    memset(t, 0, sizeof(*t));
    *missing = 0;
    if (table_oid(c, name, t, missing, err) != 0) return -1;
    const char *p[1] = {t->oid};
    PGresult *r = obx_pg_exec(c,
                              "SELECT a.attname, format_type(a.atttypid, a.atttypmod), coalesce(b.typname, ty.typname),"
                              " coalesce(b.typcategory, ty.typcategory)::text, a.attnotnull,"
                              " a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''"
                              " FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid"
                              " LEFT JOIN pg_type b ON ty.typtype = 'd' AND b.oid = ty.typbasetype"
                              " WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                              1, p, err);
    if (!r) return query_failed(c, err);
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
    if (!t->cols) return fail(err, OBX_EXIT_FAIL, "out of memory");
    return 0;
}

/* The table needs a plain unique index on exactly the key column for ON CONFLICT. */
static int check_unique_key(PGconn *c, const pgtable_t *t, const char *table, const char *key, obx_err_t *err)
{
    const char *p[2] = {t->oid, key};
    PGresult *r = obx_pg_exec(c,
                              "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                              " WHERE i.indrelid = $1::oid AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL"
                              " AND i.indexprs IS NULL AND a.attname = $2",
                              2, p, err);
    if (!r) return query_failed(c, err);
    int ok = atoi(PQgetvalue(r, 0, 0)) > 0;
    PQclear(r);
    if (!ok)
        return fail(err, OBX_EXIT_CONFIG, "table %s needs a primary key or unique index on exactly column \"%s\" (ON CONFLICT target): "
                    "ALTER TABLE %s ADD PRIMARY KEY (%s)", table, key, table, key);
    return 0;
}

static int check_privs(PGconn *c, const pgtable_t *t, const char *table, const char *privs, obx_err_t *err)
{
    char list[64];
    snprintf(list, sizeof(list), "%s", privs);
    char *save = NULL;
    for (char *pv = strtok_r(list, ",", &save); pv; pv = strtok_r(NULL, ",", &save)) {
        const char *p[2] = {t->oid, pv};
        PGresult *r = obx_pg_exec(c, "SELECT has_table_privilege($1::oid, $2)", 2, p, err);
        if (!r) return query_failed(c, err);
        int ok = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!ok)
            return fail(err, OBX_EXIT_CONFIG, "role %s lacks %s on %s: GRANT SELECT, INSERT, UPDATE%s ON %s TO %s", PQuser(c), pv,
                        table, strstr(privs, "DELETE") ? ", DELETE" : "", table, PQuser(c));
    }
    return 0;
}

/* The metadata columns: version an integer, times timestamps. */
static int check_meta(const pgtable_t *t, const char *table, const obx_config_t *cfg, obx_err_t *err)
{
    const char *names[4] = {cfg->apply_key_column, cfg->apply_col_version, cfg->apply_col_source_updated_at,
                            cfg->apply_col_replicated_at};
    const char *keys[4] = {"apply.key_column", "apply.column.source_version", "apply.column.source_updated_at",
                           "apply.column.replicated_at"};
    for (int i = 0; i < 4; i++) {
        const pgcol_t *c = pgcol(t, names[i]);
        if (!c) return fail(err, OBX_EXIT_CONFIG, "table %s has no column \"%s\" (%s)", table, names[i], keys[i]);
        if (i == 1 && obx_apply_col_kind(c->base, c->category) != OBX_COL_INT)
            return fail(err, OBX_EXIT_CONFIG, "column %s.%s (%s) holds the aggregate version: make it bigint", table, names[i],
                        c->type);
        if (i >= 2 && strcmp(c->base, "timestamptz") != 0 && strcmp(c->base, "timestamp") != 0)
            return fail(err, OBX_EXIT_CONFIG, "column %s.%s (%s) must be timestamptz", table, names[i], c->type);
    }
    return 0;
}

void obx_apply_db_free_sql(obx_apply_t *a)
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

/* --------------------------------------------------------- the statements */

/* `c1 = EXCLUDED.c1, c2 = EXCLUDED.c2 ...` of an upsert. */
static void sb_set_excluded(obx_apply_sb_t *b, const char *const *cols, size_t n, const char *sep_after)
{
    for (size_t i = 0; i < n; i++) {
        obx_apply_sb_ident(b, cols[i]);
        obx_apply_sb_puts(b, " = EXCLUDED."), obx_apply_sb_ident(b, cols[i]);
        if (i + 1 < n || sep_after) obx_apply_sb_puts(b, i + 1 < n ? ", " : sep_after);
    }
}

/* An older or equal version never overwrites. */
static void sb_version_guard(obx_apply_sb_t *b, const char *alias, const char *version_col)
{
    obx_apply_sb_puts(b, " WHERE "), obx_apply_sb_puts(b, alias), obx_apply_sb_puts(b, "."), obx_apply_sb_ident(b, version_col);
    obx_apply_sb_puts(b, " < EXCLUDED."), obx_apply_sb_ident(b, version_col);
}

/* ` FROM (SELECT DISTINCT ON (u.k) u.* FROM unnest($1::t1[], ...) AS
 * u(k, ..., v, s) ORDER BY u.k, u.v DESC) AS u`: one array per column, one
 * row per key. Keys that differ as text but not for the key column's type
 * ("1" and "01" for a bigint, a UUID's two cases) are one aggregate: the
 * newest version stays, and ON CONFLICT never meets a row twice (SQLSTATE
 * 21000). (bench/apply_row.c rewrites "unnest(...) AS u(" into VALUES.) */
static void sb_source(obx_apply_sb_t *b, int nparams, const char *const *types, const char *const *aliases)
{
    obx_apply_sb_puts(b, " FROM (SELECT DISTINCT ON (u.k) u.* FROM unnest(");
    for (int i = 0; i < nparams; i++) obx_apply_sb_printf(b, "%s$%d::%s[]", i ? ", " : "", i + 1, types[i]);
    obx_apply_sb_puts(b, ") AS u(");
    for (int i = 0; i < nparams; i++) obx_apply_sb_printf(b, "%s%s", i ? ", " : "", aliases[i]);
    obx_apply_sb_puts(b, ") ORDER BY u.k, u.v DESC) AS u");
}

/* The guard: an older or equal version never overwrites, and a tombstone
 * at or above the event's version keeps a deleted aggregate deleted. */
static void build_upsert(const obx_apply_t *a, obx_apply_sb_t *b, int np, const char *const *types, const char *const *aliases)
{
    const obx_config_t *cfg = a->cfg;
    const char *meta[3] = {cfg->apply_col_version, cfg->apply_col_source_updated_at, cfg->apply_col_replicated_at};
    obx_apply_sb_puts(b, "INSERT INTO ");
    obx_apply_sb_name(b, cfg->apply_table);
    obx_apply_sb_puts(b, " AS r (");
    obx_apply_sb_ident(b, cfg->apply_key_column);
    for (size_t i = 0; i < a->n_maps; i++) obx_apply_sb_puts(b, ", "), obx_apply_sb_ident(b, a->cols[i].name);
    for (int i = 0; i < 3; i++) obx_apply_sb_puts(b, ", "), obx_apply_sb_ident(b, meta[i]);
    obx_apply_sb_puts(b, ") SELECT ");
    for (int i = 0; i < np; i++) obx_apply_sb_printf(b, "u.%s, ", aliases[i]);
    obx_apply_sb_puts(b, "now()");
    sb_source(b, np, types, aliases);
    if (a->use_tomb) {
        obx_apply_sb_puts(b, " WHERE NOT EXISTS (SELECT 1 FROM ");
        obx_apply_sb_name(b, a->tomb_name);
        obx_apply_sb_puts(b, " t WHERE t."), obx_apply_sb_ident(b, cfg->apply_key_column);
        obx_apply_sb_puts(b, " = u.k AND t."), obx_apply_sb_ident(b, cfg->apply_col_version);
        obx_apply_sb_puts(b, " >= u.v)");
    } else {
        /* Without a WHERE, ON CONFLICT would parse as a join's ON. */
        obx_apply_sb_puts(b, " WHERE true");
    }
    obx_apply_sb_puts(b, " ON CONFLICT ("), obx_apply_sb_ident(b, cfg->apply_key_column);
    obx_apply_sb_puts(b, ") DO UPDATE SET ");
    for (size_t i = 0; i < a->n_maps; i++) sb_set_excluded(b, (const char *const[]){a->cols[i].name}, 1, ", ");
    sb_set_excluded(b, meta, 3, NULL);
    sb_version_guard(b, "r", cfg->apply_col_version);
    obx_apply_sb_puts(b, " RETURNING (extract(epoch FROM r."), obx_apply_sb_ident(b, cfg->apply_col_source_updated_at);
    obx_apply_sb_puts(b, ") * 1000000)::bigint, (extract(epoch FROM r."), obx_apply_sb_ident(b, cfg->apply_col_replicated_at);
    obx_apply_sb_puts(b, ") * 1000000)::bigint");
}

/* A tombstone (kept only if newer than the row) and the row's removal. */
static void build_delete(const obx_apply_t *a, obx_apply_sb_t *d)
{
    const obx_config_t *cfg = a->cfg;
    const char *meta[3] = {cfg->apply_col_version, cfg->apply_col_source_updated_at, cfg->apply_col_replicated_at};
    const char *dt[3] = {a->key_type, "bigint", "timestamptz"}, *da[3] = {"k", "v", "s"};
    obx_apply_sb_puts(d, "WITH d AS (INSERT INTO ");
    obx_apply_sb_name(d, a->tomb_name);
    obx_apply_sb_puts(d, " AS t (");
    obx_apply_sb_ident(d, cfg->apply_key_column);
    for (int i = 0; i < 3; i++) obx_apply_sb_puts(d, ", "), obx_apply_sb_ident(d, meta[i]);
    obx_apply_sb_puts(d, ") SELECT u.k, u.v, u.s, now()");
    sb_source(d, 3, dt, da);
    obx_apply_sb_puts(d, " WHERE NOT EXISTS (SELECT 1 FROM ");
    obx_apply_sb_name(d, cfg->apply_table);
    obx_apply_sb_puts(d, " r WHERE r."), obx_apply_sb_ident(d, cfg->apply_key_column);
    obx_apply_sb_puts(d, " = u.k AND r."), obx_apply_sb_ident(d, cfg->apply_col_version);
    obx_apply_sb_puts(d, " >= u.v) ON CONFLICT ("), obx_apply_sb_ident(d, cfg->apply_key_column);
    obx_apply_sb_puts(d, ") DO UPDATE SET ");
    sb_set_excluded(d, meta, 3, NULL);
    sb_version_guard(d, "t", cfg->apply_col_version);
    obx_apply_sb_puts(d, " RETURNING t."), obx_apply_sb_ident(d, cfg->apply_key_column);
    obx_apply_sb_puts(d, " AS k, t."), obx_apply_sb_ident(d, cfg->apply_col_version);
    obx_apply_sb_puts(d, " AS v, t."), obx_apply_sb_ident(d, cfg->apply_col_source_updated_at);
    obx_apply_sb_puts(d, " AS s, t."), obx_apply_sb_ident(d, cfg->apply_col_replicated_at);
    obx_apply_sb_puts(d, " AS rr), x AS (DELETE FROM ");
    obx_apply_sb_name(d, cfg->apply_table);
    obx_apply_sb_puts(d, " r USING d WHERE r."), obx_apply_sb_ident(d, cfg->apply_key_column);
    obx_apply_sb_puts(d, " = d.k AND r."), obx_apply_sb_ident(d, cfg->apply_col_version);
    obx_apply_sb_puts(d, " < d.v) SELECT (extract(epoch FROM d.s) * 1000000)::bigint, (extract(epoch FROM d.rr) * 1000000)::bigint FROM d");
}

/* Builds both statements from the described table. Parameters: key, the
 * mapped columns, version, source time. */
static int build_sql(obx_apply_t *a, obx_err_t *err)
{
    int np = (int)a->n_maps + 3, rc = 0;
    const char **types = calloc((size_t)np, sizeof(char *));
    char **aliases = calloc((size_t)np, sizeof(char *));
    obx_apply_sb_t b = {0}, d = {0};
    if (!types || !aliases) goto oom;
    types[0] = a->key_type;
    aliases[0] = strdup("k");
    for (size_t i = 0; i < a->n_maps; i++) {
        types[i + 1] = a->cols[i].type;
        if ((aliases[i + 1] = malloc(24))) snprintf(aliases[i + 1], 24, "c%zu", i + 1);
    }
    types[np - 2] = "bigint";
    aliases[np - 2] = strdup("v");
    types[np - 1] = "timestamptz";
    aliases[np - 1] = strdup("s");
    for (int i = 0; i < np; i++)
        if (!aliases[i]) goto oom;
    build_upsert(a, &b, np, types, (const char *const *)aliases);
    if (a->use_tomb) build_delete(a, &d);
    if (b.oom || d.oom) goto oom;
    a->sql_upsert = b.s;
    a->sql_delete = d.s;
    goto out;
oom:
    free(b.s);
    free(d.s);
    rc = fail(err, OBX_EXIT_FAIL, "out of memory");
out:
    for (int i = 0; aliases && i < np; i++) free(aliases[i]);
    free(aliases);
    free(types);
    return rc;
}

/* ---------------------------------------------------------------- preflight */

/* a->cols from the described table: each mapped column exists and is no array. */
static int map_columns(obx_apply_t *a, const pgtable_t *t, obx_err_t *err)
{
    const char *table = a->cfg->apply_table;
    a->key_type = strdup(pgcol(t, a->cfg->apply_key_column)->type);
    a->cols = calloc(a->n_maps ? a->n_maps : 1, sizeof(*a->cols));
    if (!a->key_type || !a->cols) return fail(err, OBX_EXIT_FAIL, "out of memory");
    for (size_t i = 0; i < a->n_maps; i++) {
        const pgcol_t *c = pgcol(t, a->maps[i].column);
        if (!c) return fail(err, OBX_EXIT_CONFIG, "table %s has no column \"%s\" (apply.columns)", table, a->maps[i].column);
        if (c->category == 'A')
            return fail(err, OBX_EXIT_CONFIG, "column %s.%s is an array (%s): map it to a jsonb column instead", table, c->name,
                        c->type);
        a->cols[i].name = strdup(c->name);
        a->cols[i].type = strdup(c->type);
        a->cols[i].kind = obx_apply_col_kind(c->base, c->category);
        a->cols[i].notnull = c->notnull;
        a->cols[i].map = &a->maps[i];
        if (!a->cols[i].name || !a->cols[i].type) return fail(err, OBX_EXIT_FAIL, "out of memory");
    }
    /* A NOT NULL column nobody fills would make every insert fail. */
    const obx_config_t *cfg = a->cfg;
    for (int i = 0; i < t->n; i++) {
        const pgcol_t *c = &t->cols[i];
        int covered = !strcmp(c->name, cfg->apply_key_column) || !strcmp(c->name, cfg->apply_col_version) ||
                      !strcmp(c->name, cfg->apply_col_source_updated_at) || !strcmp(c->name, cfg->apply_col_replicated_at);
        for (size_t j = 0; j < a->n_maps && !covered; j++) covered = !strcmp(c->name, a->maps[j].column);
        if (c->notnull && !c->hasdef && !covered)
            return fail(err, OBX_EXIT_CONFIG, "column %s.%s is NOT NULL without a default and not in apply.columns: map it, "
                        "give it a default or drop NOT NULL", table, c->name);
    }
    return 0;
}

static int check_tombstones(obx_apply_t *a, obx_err_t *err)
{
    const obx_config_t *cfg = a->cfg;
    pgtable_t tt;
    int missing, rc = describe(a->db, a->tomb_name, &tt, &missing, err);
    if (rc && missing) {
        char head[sizeof(err->msg)];
        snprintf(head, sizeof(head), "%s", err->msg);
        fail(err, OBX_EXIT_CONFIG, "%s; apply.delete_types needs the tombstone table (apply.tombstone_table): CREATE TABLE %s "
             "(%s %s PRIMARY KEY, %s bigint NOT NULL, %s timestamptz NOT NULL, %s timestamptz NOT NULL)",
             head, a->tomb_name, cfg->apply_key_column, a->key_type, cfg->apply_col_version,
             cfg->apply_col_source_updated_at, cfg->apply_col_replicated_at);
    }
    if (!rc) rc = check_meta(&tt, a->tomb_name, cfg, err);
    if (!rc) rc = check_unique_key(a->db, &tt, a->tomb_name, cfg->apply_key_column, err);
    if (!rc) rc = check_privs(a->db, &tt, a->tomb_name, "SELECT,INSERT,UPDATE", err);
    pgtable_free(&tt);
    return rc;
}

static int prepare(obx_apply_t *a, obx_err_t *err)
{
    PGresult *r = PQprepare(a->db, "obx_upsert", a->sql_upsert, 0, NULL);
    if (PQresultStatus(r) == PGRES_COMMAND_OK && a->sql_delete) {
        PQclear(r);
        r = PQprepare(a->db, "obx_delete", a->sql_delete, 0, NULL);
    }
    int rc = 0;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        obx_pg_error(err, a->db, r);
        obx_err_prefix(err, "cannot prepare the upsert");
        rc = query_failed(a->db, err);
    }
    PQclear(r);
    return rc;
}

/* Describes the replica (and tombstone) table, builds and prepares the
 * statements. */
static int preflight(obx_apply_t *a, obx_err_t *err)
{
    const obx_config_t *cfg = a->cfg;
    pgtable_t t;
    int missing, rc;
    obx_apply_db_free_sql(a);
    rc = describe(a->db, cfg->apply_table, &t, &missing, err);
    if (!rc) rc = check_meta(&t, cfg->apply_table, cfg, err);
    if (!rc) rc = check_unique_key(a->db, &t, cfg->apply_table, cfg->apply_key_column, err);
    if (!rc)
        rc = check_privs(a->db, &t, cfg->apply_table, a->use_tomb ? "SELECT,INSERT,UPDATE,DELETE" : "SELECT,INSERT,UPDATE", err);
    if (!rc) rc = map_columns(a, &t, err);
    pgtable_free(&t);
    if (!rc && a->use_tomb) rc = check_tombstones(a, err);
    if (!rc) rc = build_sql(a, err);
    if (!rc) rc = prepare(a, err);
    return rc;
}

/* Freshness survives restarts: it is read back from the replica itself
 * (the article's max(source_updated_at) / max(replicated_at)). */
void obx_apply_db_load_freshness(obx_apply_t *a)
{
    const char *tables[2] = {a->cfg->apply_table, a->use_tomb ? a->tomb_name : NULL};
    for (int i = 0; i < 2 && tables[i]; i++) {
        obx_apply_sb_t q = {0};
        obx_err_t err;
        obx_apply_sb_puts(&q, "SELECT (extract(epoch FROM max(");
        obx_apply_sb_ident(&q, a->cfg->apply_col_source_updated_at);
        obx_apply_sb_puts(&q, ")) * 1000000)::bigint, (extract(epoch FROM max(");
        obx_apply_sb_ident(&q, a->cfg->apply_col_replicated_at);
        obx_apply_sb_puts(&q, ")) * 1000000)::bigint FROM ");
        obx_apply_sb_name(&q, tables[i]);
        PGresult *r = q.oom ? NULL : obx_pg_exec(a->db, q.s, 0, NULL, &err);
        free(q.s);
        if (!r) {
            if (!q.oom) obx_warn("freshness", "%s", err.msg);
            continue;
        }
        if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) obx_metrics_apply_fresh(atoll(PQgetvalue(r, 0, 0)), atoll(PQgetvalue(r, 0, 1)));
        PQclear(r);
    }
}

void obx_apply_db_close(obx_apply_t *a)
{
    if (a->db) PQfinish(a->db);
    a->db = NULL;
    atomic_store(&a->m->pg_connected, 0);
}

/* Server NOTICEs and WARNINGs go through the logger (its format, its
 * secret scrubbing), never raw to stderr; the level comes from the
 * non-localized severity, not from the text. */
static void notice(void *arg, const PGresult *r)
{
    (void)arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    obx_chomp(msg);
    obx_log(sev && !strcmp(sev, "WARNING") ? OBX_LOG_WARN : OBX_LOG_INFO, "pg_notice", "replica database: %s", msg);
}

int obx_apply_db_open(obx_apply_t *a, obx_err_t *err)
{
    if (a->db) PQfinish(a->db);
    a->db = obx_pg_connect(a->cfg->apply_conninfo, "apply.conninfo", OBX_PG_NORMAL, err);
    if (!a->db) return -1;
    PQsetNoticeReceiver(a->db, notice, NULL);
    /* Timestamps go in and come out as UTC, whatever the server's default.
     * Operators find apply's sessions as outboxd-apply unless conninfo
     * names them (obx_pg_connect's fallback name is the relay's). */
    const char *app = PQparameterStatus(a->db, "application_name");
    int rc = obx_pg_command(a->db, "SET TimeZone = 'UTC'", err);
    if (!rc && app && !strcmp(app, "outboxd")) rc = obx_pg_command(a->db, "SET application_name = 'outboxd-apply'", err);
    if (rc) {
        obx_err_prefix(err, "session setup");
        err->cls = OBX_ERR_RETRIABLE;
    }
    if (!rc) rc = preflight(a, err);
    if (rc) {
        obx_apply_db_close(a);
        return -1;
    }
    atomic_store(&a->m->pg_connected, 1);
    return 0;
}
