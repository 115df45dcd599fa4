/* outboxd apply: writing a batch. The fast path keeps the newest version
 * per key and runs one upsert and one delete statement over arrays in one
 * transaction; after an error one row causes (at any statement or at
 * COMMIT) the batch is bisected, each part in its own transaction, down to
 * the events the database refuses. Poison events go to the dead-letter
 * topic (apply.poison.policy = dead-letter) before their offsets move.
 *
 * Nothing here frees the batch: loop.c owns it. */
#include "apply_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "kconf.h"
#include "log.h"
#include "pg.h"

int obx_apply_err_data(const obx_err_t *e)
{
    /* The server answered with an error: whatever its class, the batch is
     * bisected to the event responsible. Only connection-level trouble
     * (no SQLSTATE, class 08, 57P01-57P03 shutdown, class 53 resources)
     * means the database is down. */
    const char *st = e->sqlstate;
    if (!st[0]) return 0;
    if (!strncmp(st, "08", 2) || !strncmp(st, "53", 2)) return 0;
    if (!strcmp(st, "57P01") || !strcmp(st, "57P02") || !strcmp(st, "57P03")) return 0;
    return 1;
}

int obx_apply_err_row(obx_apply_t *a, const obx_err_t *e)
{
    return obx_apply_err_data(e) && a->db && PQstatus(a->db) == CONNECTION_OK;
}

int obx_apply_err_busy(const obx_err_t *e)
{
    const char *st = e->sqlstate;
    return !strcmp(st, "40001") || !strcmp(st, "40P01") || !strcmp(st, "55P03");
}

int obx_apply_err_transient(const obx_err_t *e)
{
    return obx_apply_err_busy(e) || !strcmp(e->sqlstate, "57014");
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
    for (size_t i = 0; i < n; i++) np += a->batch[i].kind == OBX_EV_POISON && !a->batch[i].dead;
    if (!np) return 0;
    if (dlq_open(a, err) != 0) return -1;
    a->dlq_failed = 0;
    for (size_t i = 0; i < n; i++)
        if (a->batch[i].kind == OBX_EV_POISON && !a->batch[i].dead && dlq_send(a, &a->batch[i], err) != 0) return -1;
    int left = obx_producer_flush(a->dlq, 60000);
    if (left || a->dlq_failed)
        return dlq_fail(err, left || a->dlq_retriable, "dead-letter topic %s did not take the poison events: %s",
                        a->cfg->apply_dlq_topic, left ? "timed out" : a->dlq_err);
    for (size_t i = 0; i < n; i++) {
        obx_apply_entry_t *e = &a->batch[i];
        if (e->kind != OBX_EV_POISON || e->dead) continue;
        /* Sent once, even when the transaction around it is retried. */
        e->dead = 1;
        st->dead_lettered++;
        obx_warn("dead_lettered", "%s [%d] offset %lld -> %s: %s (trace id %s)", rd_kafka_topic_name(e->msg->rkt),
                 (int)e->msg->partition, (long long)e->msg->offset, a->cfg->apply_dlq_topic,
                 e->reason ? e->reason : "poison", e->trace_id[0] ? e->trace_id : "none");
    }
    return 0;
}

/* --------------------------------------------------------------- writing */

/* Splits entries [lo, hi) into upserts and deletes, keeping the newest
 * version per key text (keys equal only for the key column's type are
 * deduplicated again in SQL). 0, or -1 when out of memory. */
static int pick(obx_apply_t *a, size_t lo, size_t hi, obx_apply_stats_t *st, size_t *up, size_t *nu, size_t *del, size_t *nd)
{
    size_t n = hi - lo;
    size_t *cand = malloc((n ? n : 1) * sizeof(size_t)), nc = 0;
    const char **keys = calloc(n ? n : 1, sizeof(char *));
    int64_t *vers = calloc(n ? n : 1, sizeof(int64_t));
    unsigned char *keep = malloc(n ? n : 1);
    int rc = 0;
    if (!cand || !keys || !vers || !keep) {
        rc = -1;
        goto out;
    }
    for (size_t i = lo; i < hi; i++) {
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

/* Entries [lo, hi) in one transaction: one statement for the upserts, one
 * for the deletes; with dlq, the poison entries are dead-lettered before
 * COMMIT. A failed transaction is rolled back. */
static int write_range(obx_apply_t *a, size_t lo, size_t hi, int dlq, obx_apply_stats_t *st, obx_err_t *err)
{
    size_t n = hi - lo;
    size_t *up = malloc((n ? n : 1) * sizeof(size_t)), *del = malloc((n ? n : 1) * sizeof(size_t)), nu = 0, nd = 0;
    int rc = 0, open = 0;
    if (!up || !del || pick(a, lo, hi, st, up, &nu, del, &nd) != 0) {
        rc = oom(err);
        goto out;
    }
    if ((rc = obx_pg_command(a->db, "BEGIN", err)) != 0) goto out;
    open = 1;
    if (nu && (rc = obx_apply_write_stmt(a, 0, up, nu, st, err)) != 0) goto out;
    if (nd && (rc = obx_apply_write_stmt(a, 1, del, nd, st, err)) != 0) goto out;
    if (dlq && (rc = obx_apply_dead_letter(a, hi, st, err)) != 0) goto out;
    /* A failed COMMIT (a deferred constraint) ends the transaction too. */
    open = 0;
    rc = obx_pg_command(a->db, "COMMIT", err);
out:
    if (rc && open && PQstatus(a->db) == CONNECTION_OK) {
        obx_err_t ignore;
        obx_pg_command(a->db, "ROLLBACK", &ignore);
    }
    free(up), free(del);
    return rc;
}

/* The fast path: the whole batch in one transaction. */
int obx_apply_write_batch(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err)
{
    return write_range(a, 0, n, a->dead_letter, st, err);
}

static void stats_add(obx_apply_stats_t *st, const obx_apply_stats_t *s)
{
    st->applied += s->applied;
    st->stale += s->stale;
    st->superseded += s->superseded;
    st->skipped += s->skipped;
    st->n_lags = s->n_lags;
    if (s->newest_src > st->newest_src) st->newest_src = s->newest_src;
    if (s->newest_rep > st->newest_rep) st->newest_rep = s->newest_rep;
}

/* Writes [lo, hi) in one transaction; when the database refuses it for a
 * row's sake (at any statement or at COMMIT), writes each half on its own,
 * in order, down to the single event responsible, which becomes poison.
 * Under halt the first such event stops it: *halt_at. A lock, deadlock,
 * serialization or statement timeout error is never poison: -1 with it,
 * and the caller reads the batch again after backoff. */
static int bisect(obx_apply_t *a, size_t lo, size_t hi, obx_apply_stats_t *st, size_t *halt_at, obx_err_t *err)
{
    obx_apply_stats_t one = {0};
    one.n_lags = st->n_lags;
    if (write_range(a, lo, hi, 0, &one, err) == 0) {
        stats_add(st, &one);
        return 0;
    }
    /* A lock or a concurrent writer: the database's state, not a row's. */
    if (!obx_apply_err_row(a, err) || obx_apply_err_busy(err)) return -1;
    if (hi - lo == 1) {
        obx_apply_entry_t *e = &a->batch[lo];
        /* Serialization, deadlock, lock or statement timeout: the same
         * event may pass on its own a moment later, a few times at most. */
        for (int t = 0; t < OBX_APPLY_TRANSIENT_TRIES && obx_apply_err_transient(err); t++) {
            if (obx_sleep_unless(100 << t, 50, a->stop, NULL, NULL)) return -1;
            memset(&one, 0, sizeof(one));
            one.n_lags = st->n_lags;
            if (write_range(a, lo, hi, 0, &one, err) == 0) {
                stats_add(st, &one);
                return 0;
            }
            if (!obx_apply_err_row(a, err)) return -1;
        }
        /* Still timing out on its own: a slow or locked database, which a
         * dead-letter or a halt would turn into a skipped good event. */
        if (obx_apply_err_transient(err)) return -1;
        obx_apply_poison(e, "the replica database refused it (SQLSTATE %s): %s", err->sqlstate, err->msg);
        if (!a->dead_letter) *halt_at = lo;
        return 0;
    }
    size_t mid = lo + (hi - lo) / 2;
    if (bisect(a, lo, mid, st, halt_at, err) != 0) return -1;
    if (*halt_at != (size_t)-1) return 0;
    return bisect(a, mid, hi, st, halt_at, err);
}

/* After the batch failed for a row's sake: finds the events responsible
 * by bisection, each half in its own transaction, so every event either
 * lands in a committed transaction or is poison. Under halt, *halt_at is
 * the first poison event (else n) and every event before it is committed;
 * under dead-letter the poison events are published after the commits
 * (a retry after a failure there re-applies idempotently). */
int obx_apply_write_isolate(obx_apply_t *a, size_t n, obx_apply_stats_t *st, size_t *halt_at, obx_err_t *err)
{
    size_t at = (size_t)-1;
    if (n && bisect(a, 0, n, st, &at, err) != 0) return -1;
    *halt_at = at == (size_t)-1 ? n : at;
    if (a->dead_letter) return obx_apply_dead_letter(a, n, st, err);
    return 0;
}
