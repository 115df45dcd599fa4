/* bench_apply_row: the naive replica consumer, the baseline that `outboxd
 * apply`'s batched upsert is measured against (tests/e2e/test_apply.py::
 * test_apply_rate_batched_vs_naive_row_at_a_time, docs/apply.md).
 *
 * It is outboxd apply (same config keys, consumer, decoding, replica checks,
 * version guard, tombstones, metrics and status port) with one difference:
 * every event is its own upsert statement over scalar parameters
 * (VALUES instead of unnest) and its own transaction (autocommit), in
 * arrival order, with no newest-per-key reduction. It is a benchmark
 * program, never part of the daemon.
 *
 *   bench_apply_row [--config FILE]     (OUTBOXD_* env overrides the file)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply_int.h"
#include "config.h"
#include "log.h"
#include "pg.h"

extern char **environ;

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* The daemon's statement with scalar parameters: " FROM unnest($1::t[], ...)
 * AS u(" becomes " FROM (VALUES ($1::t, ...)) AS u(". Column types are
 * never arrays (preflight refuses them), so every "[]" there is a parameter's. */
static char *row_sql(const char *sql)
{
    const char *from = strstr(sql, " FROM unnest("), *end = from ? strstr(from, ") AS u(") : NULL;
    char *out = malloc(strlen(sql) + 16), *o = out;
    if (!out || !end) {
        free(out);
        return NULL;
    }
    o += sprintf(o, "%.*s FROM (VALUES (", (int)(from - sql), sql);
    for (const char *p = from + strlen(" FROM unnest("); p < end; p++) {
        if (p[0] == '[' && p[1] == ']') p++;
        else *o++ = *p;
    }
    sprintf(o, "))%s", end + 1);
    return out;
}

/* Prepares the row statements once per connection (a reconnect prepares
 * the daemon's statements again, and so these). */
static int prepare_rows(obx_apply_t *a, obx_err_t *err)
{
    static PGconn *prepared_on;
    static int prepared_pid;
    if (prepared_on == a->db && prepared_pid == PQbackendPID(a->db)) return 0;
    const char *names[2] = {"obx_row_upsert", "obx_row_delete"}, *sqls[2] = {a->sql_upsert, a->sql_delete};
    for (int i = 0; i < 2 && sqls[i]; i++) {
        char *sql = row_sql(sqls[i]);
        PGresult *r = sql ? PQprepare(a->db, names[i], sql, 0, NULL) : NULL;
        free(sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            obx_pg_error(err, a->db, r);
            PQclear(r);
            return -1;
        }
        PQclear(r);
    }
    prepared_on = a->db;
    prepared_pid = PQbackendPID(a->db);
    return 0;
}

static int write_row(obx_apply_t *a, const obx_apply_entry_t *e, obx_apply_stats_t *st, obx_err_t *err)
{
    int del = e->kind == OBX_EV_DELETE, np = (del ? 0 : (int)a->n_maps) + 3;
    const char *p[np];
    char vbuf[32];
    snprintf(vbuf, sizeof(vbuf), "%lld", (long long)e->version);
    p[0] = e->key;
    for (int c = 0; c < np - 3; c++) p[c + 1] = e->vals[c];
    p[np - 2] = vbuf;
    p[np - 1] = e->src_ts;
    PGresult *r = PQexecPrepared(a->db, del ? "obx_row_delete" : "obx_row_upsert", np, p, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        obx_pg_error(err, a->db, r);
        PQclear(r);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t s = atoll(PQgetvalue(r, i, 0)), rep = atoll(PQgetvalue(r, i, 1));
        if (s > st->newest_src) st->newest_src = s;
        if (rep > st->newest_rep) st->newest_rep = rep;
        a->lags[st->n_lags++] = rep - s;
    }
    st->applied += (uint64_t)PQntuples(r);
    st->stale += (uint64_t)(1 - PQntuples(r));
    PQclear(r);
    return 0;
}

/* One statement, one transaction per event. */
static int write_rows(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err)
{
    if (prepare_rows(a, err) != 0) return -1;
    for (size_t i = 0; i < n; i++) {
        const obx_apply_entry_t *e = &a->batch[i];
        if (e->kind == OBX_EV_SKIP) st->skipped++;
        if (e->kind != OBX_EV_UPSERT && e->kind != OBX_EV_DELETE) continue;
        if (write_row(a, e, st, err) != 0) return -1;
    }
    return a->dead_letter ? obx_apply_dead_letter(a, n, st, err) : 0;
}

int main(int argc, char **argv)
{
    char err[1024];
    const char *path = NULL;
    if (argc == 3 && (!strcmp(argv[1], "--config") || !strcmp(argv[1], "-c"))) {
        path = argv[2];
    } else if (argc != 1) {
        fprintf(stderr, "usage: bench_apply_row [--config FILE]\n");
        return OBX_EXIT_CONFIG;
    }
    obx_config_t *cfg = obx_config_new();
    if (!cfg) return OBX_EXIT_FAIL;
    if ((path && obx_config_load_file(cfg, path, err, sizeof(err)) != 0) ||
        obx_config_load_env(cfg, environ, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_apply_row: %s\n", err);
        obx_config_destroy(cfg);
        return OBX_EXIT_CONFIG;
    }
    obx_log_level_t lvl = OBX_LOG_INFO;
    obx_log_format_t fmt = OBX_LOG_AUTO;
    obx_log_level_parse(cfg->log_level, &lvl);
    obx_log_format_parse(cfg->log_format, &fmt);
    obx_log_setup(lvl, fmt);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc = obx_apply_run_with(cfg, &g_stop, write_rows, "row (naive baseline)");
    obx_info("exit", "exit code %d", rc);
    obx_config_destroy(cfg);
    return rc;
}
