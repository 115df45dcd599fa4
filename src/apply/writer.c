/* outboxd apply: writing a batch. The fast path keeps the newest version
 * per key and runs one upsert and one delete statement over arrays in one
 * transaction; after a data error the slow path finds the event the
 * database refuses, one at a time under savepoints. Poison events go to the
 * dead-letter topic (apply.poison.policy = dead-letter) before COMMIT.
 *
 * Nothing here frees the batch: loop.c owns it. */
#include "apply_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kconf.h"
#include "log.h"
#include "pg.h"

int obx_apply_err_data(const obx_err_t *e)
{
    return e->cls == OBX_ERR_POISON && (!strncmp(e->sqlstate, "22", 2) || !strncmp(e->sqlstate, "23", 2));
}

int obx_apply_err_halt(const obx_err_t *e)
{
    return e->cls == OBX_ERR_POISON && !e->sqlstate[0];
}

static int oom(obx_err_t *err)
{
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_RETRIABLE, OBX_EXIT_FAIL, "out of memory");
    return -1;
}

static void add_lags(obx_apply_t *a, PGresult *r, obx_apply_stats_t *st)
{
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t s = atoll(PQgetvalue(r, i, 0)), rep = atoll(PQgetvalue(r, i, 1));
        if (s > st->newest_src) st->newest_src = s;
        if (rep > st->newest_rep) st->newest_rep = rep;
        a->lags[st->n_lags++] = rep - s;
    }
}

/* One array literal per parameter: key, mapped columns (none for a
 * delete), version, source time. 0, or -1 when out of memory. */
static int build_params(obx_apply_t *a, const size_t *idx, size_t n, size_t ncols, char **params)
{
    int np = (int)ncols + 3, rc = 0;
    const char **vals = calloc(n ? n : 1, sizeof(char *));
    char **vstr = calloc(n ? n : 1, sizeof(char *));
    if (!vals || !vstr) rc = -1;
    for (size_t i = 0; !rc && i < n; i++) {
        if ((vstr[i] = malloc(24))) snprintf(vstr[i], 24, "%lld", (long long)a->batch[idx[i]].version);
        else rc = -1;
    }
    if (!rc) {
        for (size_t i = 0; i < n; i++) vals[i] = a->batch[idx[i]].key;
        params[0] = obx_apply_array_literal(vals, n);
        for (size_t c = 0; c < ncols; c++) {
            for (size_t i = 0; i < n; i++) vals[i] = a->batch[idx[i]].vals[c];
            params[c + 1] = obx_apply_array_literal(vals, n);
        }
        params[np - 2] = obx_apply_array_literal((const char *const *)vstr, n);
        for (size_t i = 0; i < n; i++) vals[i] = a->batch[idx[i]].src_ts;
        params[np - 1] = obx_apply_array_literal(vals, n);
        for (int i = 0; i < np; i++)
            if (!params[i]) rc = -1;
    }
    for (size_t i = 0; vstr && i < n; i++) free(vstr[i]);
    free(vstr);
    free(vals);
    return rc;
}

int obx_apply_write_stmt(obx_apply_t *a, int del, const size_t *idx, size_t n, obx_apply_stats_t *st, obx_err_t *err)
{
    size_t ncols = del ? 0 : a->n_maps;
    int np = (int)ncols + 3, rc = 0;
    char **params = calloc((size_t)np, sizeof(char *));
    if (!params || build_params(a, idx, n, ncols, params) != 0) {
        rc = oom(err);
        goto out;
    }
    PGresult *r = PQexecPrepared(a->db, del ? "obx_delete" : "obx_upsert", np, (const char *const *)params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        st->applied += (uint64_t)PQntuples(r);
        st->stale += n - (uint64_t)PQntuples(r);
        add_lags(a, r, st);
    } else {
        obx_pg_error(err, a->db, r);
        rc = -1;
    }
    PQclear(r);
out:
    for (int i = 0; params && i < np; i++) free(params[i]);
    free(params);
    return rc;
}

/* ------------------------------------------------------------ dead letter */

static void dlq_dr(void *opaque, uint64_t ticket, const char *err, int retriable, const char *topic, const void *value,
                   size_t value_len)
{
    (void)ticket, (void)topic, (void)value, (void)value_len;
    obx_apply_t *a = opaque;
    if (!err) return;
    if (!a->dlq_failed) {
        snprintf(a->dlq_err, sizeof(a->dlq_err), "%s", err);
        a->dlq_retriable = retriable;
    }
    a->dlq_failed++;
}

static int dlq_fail(obx_err_t *err, int retriable, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int dlq_fail(obx_err_t *err, int retriable, const char *fmt, ...)
{
    va_list ap;
    obx_err_clear(err);
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    /* Poison without SQLSTATE: the dead-letter topic refused for good. */
    err->cls = retriable ? OBX_ERR_RETRIABLE : OBX_ERR_POISON;
    err->exit_code = retriable ? OBX_EXIT_FAIL : OBX_EXIT_POISON;
    return -1;
}

/* The dead-letter producer, made on first use. Never gapless: a poison
 * event that cannot be parked stops apply instead. */
static int dlq_open(obx_apply_t *a, obx_err_t *err)
{
    if (a->dlq) return 0;
    char e[512];
    obx_producer_opts_t o = {.gapless = 0, .message_timeout_ms = "30000"};
    a->dlq = obx_producer_new_opts(a->cfg, &o, dlq_dr, a, e, sizeof(e));
    return a->dlq ? 0 : dlq_fail(err, 0, "dead-letter topic %s: %s", a->cfg->apply_dlq_topic, e);
}

static int dlq_send(obx_apply_t *a, const obx_apply_entry_t *e, obx_err_t *err)
{
    const rd_kafka_message_t *m = e->msg;
    char part[16], off[24], why[512];
    snprintf(part, sizeof(part), "%d", (int)m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    const char *h[8] = {"outboxd-error", e->reason ? e->reason : "poison", "outboxd-original-topic",
                        rd_kafka_topic_name(m->rkt), "outboxd-original-partition", part, "outboxd-original-offset", off};
    for (;;) {
        obx_produce_rc_t rc = obx_producer_forward(a->dlq, a->cfg->apply_dlq_topic, m, h, 4, 0, why, sizeof(why));
        if (rc == OBX_PRODUCE_OK) return 0;
        if (rc != OBX_PRODUCE_QUEUE_FULL) return dlq_fail(err, 0, "dead-letter topic %s: %s", a->cfg->apply_dlq_topic, why);
        obx_producer_poll(a->dlq, 100);
    }
}

/* Dead-letters the poison entries among the first n (before COMMIT: the
 * offsets move past them only once the dead-letter topic has them). */
int obx_apply_dead_letter(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err)
{
    size_t np = 0;
    for (size_t i = 0; i < n; i++) np += a->batch[i].kind == OBX_EV_POISON;
    if (!np) return 0;
    if (dlq_open(a, err) != 0) return -1;
    a->dlq_failed = 0;
    for (size_t i = 0; i < n; i++)
        if (a->batch[i].kind == OBX_EV_POISON && dlq_send(a, &a->batch[i], err) != 0) return -1;
    int left = obx_producer_flush(a->dlq, 60000);
    if (left || a->dlq_failed)
        return dlq_fail(err, left || a->dlq_retriable, "dead-letter topic %s did not take the poison events: %s",
                        a->cfg->apply_dlq_topic, left ? "timed out" : a->dlq_err);
    for (size_t i = 0; i < n; i++) {
        const obx_apply_entry_t *e = &a->batch[i];
        if (e->kind != OBX_EV_POISON) continue;
        st->dead_lettered++;
        obx_warn("dead_lettered", "%s [%d] offset %lld -> %s: %s", rd_kafka_topic_name(e->msg->rkt), (int)e->msg->partition,
                 (long long)e->msg->offset, a->cfg->apply_dlq_topic, e->reason ? e->reason : "poison");
    }
    return 0;
}

/* --------------------------------------------------------------- writing */

/* Splits the first n entries into upserts and deletes, keeping the newest
 * version per key. 0, or -1 when out of memory. */
static int pick(obx_apply_t *a, size_t n, obx_apply_stats_t *st, size_t *up, size_t *nu, size_t *del, size_t *nd)
{
    size_t *cand = malloc((n ? n : 1) * sizeof(size_t)), nc = 0;
    const char **keys = calloc(n ? n : 1, sizeof(char *));
    int64_t *vers = calloc(n ? n : 1, sizeof(int64_t));
    unsigned char *keep = malloc(n ? n : 1);
    int rc = 0;
    if (!cand || !keys || !vers || !keep) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const obx_apply_entry_t *e = &a->batch[i];
        if (e->kind == OBX_EV_SKIP) st->skipped++;
        if (e->kind != OBX_EV_UPSERT && e->kind != OBX_EV_DELETE) continue;
        keys[nc] = e->key;
        vers[nc] = e->version;
        cand[nc++] = i;
    }
    if (obx_apply_dedupe(keys, vers, nc, keep) == (size_t)-1) {
        rc = -1;
        goto out;
    }
    *nu = *nd = 0;
    for (size_t j = 0; j < nc; j++) {
        if (!keep[j]) st->superseded++;
        else if (a->batch[cand[j]].kind == OBX_EV_UPSERT) up[(*nu)++] = cand[j];
        else del[(*nd)++] = cand[j];
    }
out:
    free(cand), free(keys), free(vers), free(keep);
    return rc;
}

/* The fast path: one statement for the upserts and one for the deletes,
 * in one transaction. */
int obx_apply_write_batch(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err)
{
    size_t *up = malloc((n ? n : 1) * sizeof(size_t)), *del = malloc((n ? n : 1) * sizeof(size_t)), nu = 0, nd = 0;
    int rc = 0;
    if (!up || !del || pick(a, n, st, up, &nu, del, &nd) != 0) {
        rc = oom(err);
        goto out;
    }
    if ((rc = obx_pg_command(a->db, "BEGIN", err)) != 0) goto out;
    if (nu && (rc = obx_apply_write_stmt(a, 0, up, nu, st, err)) != 0) goto out;
    if (nd && (rc = obx_apply_write_stmt(a, 1, del, nd, st, err)) != 0) goto out;
    if (a->dead_letter && (rc = obx_apply_dead_letter(a, n, st, err)) != 0) goto out;
    rc = obx_pg_command(a->db, "COMMIT", err);
out:
    free(up), free(del);
    return rc;
}

/* One event under a savepoint. 0 written, 1 refused (e now poison), -1 err. */
static int write_one(obx_apply_t *a, size_t i, obx_apply_stats_t *st, obx_err_t *err)
{
    obx_apply_entry_t *e = &a->batch[i];
    obx_err_t one_err;
    if (obx_pg_command(a->db, "SAVEPOINT obx_row", err) != 0) return -1;
    obx_apply_stats_t one = {0};
    one.n_lags = st->n_lags;
    if (obx_apply_write_stmt(a, e->kind == OBX_EV_DELETE, &i, 1, &one, &one_err) != 0) {
        if (!obx_apply_err_data(&one_err)) {
            *err = one_err;
            return -1;
        }
        obx_apply_poison(e, "the replica database refused it: %s", one_err.msg);
        return obx_pg_command(a->db, "ROLLBACK TO SAVEPOINT obx_row", err) != 0 ? -1 : 1;
    }
    st->applied += one.applied;
    st->stale += one.stale;
    st->n_lags = one.n_lags;
    if (one.newest_src > st->newest_src) st->newest_src = one.newest_src;
    if (one.newest_rep > st->newest_rep) st->newest_rep = one.newest_rep;
    return obx_pg_command(a->db, "RELEASE SAVEPOINT obx_row", err) != 0 ? -1 : 0;
}

/* The slow path after a data error: each event on its own under a
 * savepoint, in arrival order, to find the poison. Under halt, *halt_at is
 * the first one (else n) and the events before it are committed. */
int obx_apply_write_slow(obx_apply_t *a, size_t n, obx_apply_stats_t *st, size_t *halt_at, obx_err_t *err)
{
    *halt_at = n;
    if (obx_pg_command(a->db, "BEGIN", err) != 0) return -1;
    for (size_t i = 0; i < n; i++) {
        obx_apply_entry_t *e = &a->batch[i];
        if (e->kind == OBX_EV_SKIP) st->skipped++;
        if (e->kind != OBX_EV_UPSERT && e->kind != OBX_EV_DELETE) continue;
        int rc = write_one(a, i, st, err);
        if (rc < 0) return -1;
        if (rc > 0 && !a->dead_letter) {
            *halt_at = i;
            break;
        }
    }
    if (*halt_at == n && a->dead_letter && obx_apply_dead_letter(a, n, st, err) != 0) return -1;
    return obx_pg_command(a->db, "COMMIT", err);
}
