#include "relay.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envelope.h"
#include "log.h"
#include "lsn_ring.h"
#include "outbox.h"
#include "outboxd/v1/event.pb-c.h"
#include "pg_repl.h"
#include "preflight.h"
#include "producer.h"
#include "wal2json.h"

#define MAX_KHEADERS 67 /* id, type, content-type + up to 64 row headers */

typedef enum { S_STOP = 0, S_RETRY, S_FATAL } session_rc_t;

typedef struct {
    const obx_config_t *cfg;
    volatile sig_atomic_t *stop;
    obx_pg_info_t pg;
    obx_lsn_t confirmed;      /* highest flush LSN known acked; survives sessions */
    int exit_code;            /* for S_FATAL */

    /* one session */
    obx_repl_t *repl;
    obx_producer_t *prod;
    obx_lsn_ring_t *ring;
    obx_lsn_t write_lsn, sent_flush;
    int64_t last_status_ms, last_progress_ms;
    int backpressured;
    int64_t stop_deadline;    /* set when a stop request arrives */

    /* the open transaction */
    obx_lsn_t txn_lsn, txn_end;
    uint32_t txn_xid, txn_index;
    int64_t txn_time_us;

    /* first delivery failure of the session */
    int dr_failed, dr_retriable;
    char dr_err[1024];

    uint64_t n_published, n_acked, n_txns, n_ignored, n_backpressure;
} relay_t;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void dr_cb(void *opaque, uint64_t ticket, const char *err, int retriable, const char *topic,
                  const void *value, size_t value_len)
{
    relay_t *r = opaque;
    if (!err) {
        if (obx_lsn_ring_ack(r->ring, ticket) != 0)
            obx_error("ack_unknown", "delivery report for unknown ticket %llu", (unsigned long long)ticket);
        r->n_acked++;
        return;
    }
    if (r->dr_failed) return; /* the first failure names the row; the rest follow from it */
    r->dr_failed = 1;
    r->dr_retriable = retriable;
    Outboxd__V1__Event *ev = obx_envelope_decode(value, value_len);
    char cl[24] = "?", chl[24] = "?", el[24] = "?";
    if (ev && ev->source) {
        obx_lsn_format(ev->source->commit_lsn, cl, sizeof(cl));
        obx_lsn_format(ev->source->change_lsn, chl, sizeof(chl));
        obx_lsn_format(ev->source->commit_end_lsn, el, sizeof(el));
    }
    snprintf(r->dr_err, sizeof(r->dr_err),
             "Kafka refused outbox row id=%s aggregateid=%s (change LSN %s, commit LSN %s, end %s, xid %u) for topic %s: %s",
             ev ? ev->event_id : "?", ev ? ev->aggregate_id : "?", chl, cl, el, ev && ev->source ? ev->source->xid : 0,
             topic, err);
    obx_envelope_free(ev);
}

/* Standby status: write = highest received, flush = apply = ring flush LSN.
 * Sent at least every status.interval_ms, within 1 s of the flush moving,
 * and at once when forced (server asked, shutdown). */
static int maybe_send_status(relay_t *r, int force, char *errstr, size_t errstr_size)
{
    obx_lsn_t flush = obx_lsn_ring_flush_lsn(r->ring);
    int64_t now = obx_mono_ms();
    int64_t since = now - r->last_status_ms;
    if (!force && since < r->cfg->status_interval_ms && !(flush != r->sent_flush && since >= 1000)) return 0;
    if (r->write_lsn < flush) r->write_lsn = flush;
    if (obx_repl_send_status(r->repl, r->write_lsn, flush, flush, errstr, errstr_size) != 0) return -1;
    if (flush != r->sent_flush) obx_debug("lsn_confirmed", "confirmed flush LSN " OBX_LSN_FMT, OBX_LSN_ARGS(flush));
    r->sent_flush = flush;
    if (flush > r->confirmed) r->confirmed = flush;
    r->last_status_ms = now;
    return 0;
}

static void progress(relay_t *r)
{
    int64_t now = obx_mono_ms();
    if (now - r->last_progress_ms < 60000) return;
    r->last_progress_ms = now;
    obx_info("progress", "slot %s: %llu events published, %llu acked, %llu transactions, in flight %llu, confirmed " OBX_LSN_FMT,
             r->cfg->slot_name, (unsigned long long)r->n_published, (unsigned long long)r->n_acked,
             (unsigned long long)r->n_txns, (unsigned long long)obx_lsn_ring_inflight_msgs(r->ring),
             OBX_LSN_ARGS(obx_lsn_ring_flush_lsn(r->ring)));
}

static session_rc_t poison(relay_t *r, const char *what)
{
    obx_error("poison_row",
              "%s. outboxd stops here and does not confirm past this transaction (slot %s stays at or before " OBX_LSN_FMT
              "). Fix the cause (topic config, the row's producer, outbox.column.* or topic.template) and restart; to "
              "skip the whole transaction on purpose: SELECT pg_replication_slot_advance('%s', '" OBX_LSN_FMT "')",
              what, r->cfg->slot_name, OBX_LSN_ARGS(obx_lsn_ring_flush_lsn(r->ring)), r->cfg->slot_name,
              OBX_LSN_ARGS(r->txn_end));
    r->exit_code = OBX_EXIT_POISON;
    return S_FATAL;
}

/* A stop request waits for the open transaction's COMMIT (bounded by
 * shutdown.timeout_ms): stopping mid-transaction would leave its produced
 * rows unconfirmable, and a restart would send them twice. */
static int must_stop(relay_t *r)
{
    if (!*r->stop) return 0;
    if (!obx_lsn_ring_in_txn(r->ring)) return 1;
    int64_t now = obx_mono_ms();
    if (!r->stop_deadline) {
        r->stop_deadline = now + r->cfg->shutdown_timeout_ms;
        obx_info("stopping", "stop requested inside transaction xid %u: reading to its commit first", r->txn_xid);
    }
    return now >= r->stop_deadline;
}

/* Delivery failures seen in the last poll decide the session's fate. */
static int check_dr(relay_t *r, session_rc_t *out)
{
    if (!r->dr_failed) return 0;
    if (r->dr_retriable) {
        obx_warn("kafka_delivery_failed", "%s; restarting the pipeline from the last confirmed LSN", r->dr_err);
        *out = S_RETRY;
    } else {
        /* Name the row; the poison() text carries the advice. */
        obx_error("poison_row",
                  "%s. outboxd stops here and does not confirm past this transaction. Fix the cause (e.g. raise the "
                  "topic's max.message.bytes, grant the topic, fix the row's producer) and restart",
                  r->dr_err);
        r->exit_code = OBX_EXIT_POISON;
        *out = S_FATAL;
    }
    return 1;
}

/* Row headers become Kafka headers; non-string values travel as JSON text
 * in strings the caller frees (owned[0..*nowned)). */
static int add_row_headers(const char *json, cJSON **tree, const char **kh, size_t *nkh, char **owned,
                           size_t *nowned)
{
    *tree = cJSON_Parse(json);
    if (!cJSON_IsObject(*tree)) return -1;
    const cJSON *h;
    cJSON_ArrayForEach(h, *tree) {
        if (*nkh >= MAX_KHEADERS) return -1;
        const char *v = h->valuestring;
        if (!cJSON_IsString(h)) {
            char *s = cJSON_PrintUnformatted(h);
            if (!s) return -1;
            owned[(*nowned)++] = s;
            v = s;
        }
        kh[2 * *nkh] = h->string;
        kh[2 * *nkh + 1] = v;
        (*nkh)++;
    }
    return 0;
}

/* One outbox INSERT: map, encode, produce (waiting out a full queue). */
static int handle_insert(relay_t *r, const obx_w2j_change_t *chg, session_rc_t *out)
{
    char err[1024], what[1400];
    obx_outbox_row_t row;
    if (obx_outbox_map(r->cfg, chg, &row, err, sizeof(err)) != 0) {
        const obx_col_t *id = obx_w2j_col(chg, r->cfg->col_id);
        snprintf(what, sizeof(what), "outbox row id=%s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ", xid %u) cannot become an event: %s",
                 id && id->value ? id->value : "NULL", OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(r->txn_lsn), r->txn_xid, err);
        *out = poison(r, what);
        return -1;
    }
    obx_source_t src = {
        .commit_lsn = r->txn_lsn, .commit_end_lsn = r->txn_end, .change_lsn = chg->lsn,
        .index_in_txn = r->txn_index, .xid = r->txn_xid, .commit_time_us = r->txn_time_us,
        .database = r->pg.database, .schema = chg->schema, .table = chg->table, .slot = r->cfg->slot_name,
    };
    uint8_t *val = NULL;
    size_t val_len = 0;
    if (obx_envelope_encode(&row, &src, &val, &val_len, err, sizeof(err)) != 0) {
        snprintf(what, sizeof(what), "outbox row id=%s (change LSN " OBX_LSN_FMT ") cannot be encoded: %s", row.event_id,
                 OBX_LSN_ARGS(chg->lsn), err);
        obx_outbox_row_clear(&row);
        *out = poison(r, what);
        return -1;
    }
    const char *kh[2 * MAX_KHEADERS];
    size_t nkh = 0;
    kh[nkh * 2] = "id", kh[nkh * 2 + 1] = row.event_id, nkh++;
    kh[nkh * 2] = "type", kh[nkh * 2 + 1] = row.event_type, nkh++;
    kh[nkh * 2] = "content-type", kh[nkh * 2 + 1] = obx_payload_content_type(row.payload_kind), nkh++;
    cJSON *htree = NULL;
    char *howned[MAX_KHEADERS];
    size_t nhowned = 0;
    if (row.headers_json && add_row_headers(row.headers_json, &htree, kh, &nkh, howned, &nhowned) != 0) {
        for (size_t i = 0; i < nhowned; i++) cJSON_free(howned[i]);
        snprintf(what, sizeof(what), "outbox row id=%s (change LSN " OBX_LSN_FMT "): headers column is not a JSON object of at most 64 members",
                 row.event_id, OBX_LSN_ARGS(chg->lsn));
        cJSON_Delete(htree);
        free(val);
        obx_outbox_row_clear(&row);
        *out = poison(r, what);
        return -1;
    }

    uint64_t ticket;
    int rc = -1;
    if (obx_lsn_ring_add(r->ring, &ticket) != 0) {
        obx_error("oom", "cannot track in-flight transaction");
        free(val);
        *out = S_RETRY;
        goto done;
    }
    for (;;) {
        obx_produce_rc_t pr = obx_producer_send(r->prod, row.topic, row.aggregate_id, val, val_len, kh, nkh, ticket,
                                                err, sizeof(err));
        if (pr == OBX_PRODUCE_OK) break;
        if (pr == OBX_PRODUCE_QUEUE_FULL) {
            /* Backpressure: stop reading the slot, keep the connection alive
             * with status updates, wait for acks to drain the queue. */
            if (!r->backpressured) {
                r->backpressured = 1;
                r->n_backpressure++;
                obx_debug("backpressure_on", "Kafka queue full (%d); pausing the slot", obx_producer_outq_len(r->prod));
            }
            obx_producer_poll(r->prod, 50);
            if (check_dr(r, out)) {
                free(val);
                goto done;
            }
            if (maybe_send_status(r, 0, err, sizeof(err)) != 0) {
                obx_warn("pg_lost", "%s", err);
                free(val);
                *out = S_RETRY;
                goto done;
            }
            if (must_stop(r)) {
                free(val);
                *out = S_STOP;
                goto done;
            }
            continue;
        }
        free(val);
        if (pr == OBX_PRODUCE_FAILED) {
            obx_warn("kafka_failed", "producer failed: %s; restarting the pipeline", err);
            *out = S_RETRY;
        } else {
            snprintf(what, sizeof(what), "Kafka refused outbox row id=%s aggregateid=%s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ", xid %u) for topic %s: %s",
                     row.event_id, row.aggregate_id, OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(r->txn_lsn), r->txn_xid, row.topic, err);
            *out = poison(r, what);
        }
        goto done;
    }
    if (r->backpressured) {
        r->backpressured = 0;
        obx_debug("backpressure_off", "Kafka queue drained; reading the slot again");
    }
    r->n_published++;
    r->txn_index++;
    rc = 0;
done:
    for (size_t i = 0; i < nhowned; i++) cJSON_free(howned[i]);
    cJSON_Delete(htree);
    obx_outbox_row_clear(&row);
    return rc;
}

static int handle_change(relay_t *r, const obx_repl_msg_t *m, obx_w2j_change_t *chg, session_rc_t *out)
{
    char err[512];
    if (obx_w2j_parse(m->data, m->len, chg, err, sizeof(err)) != 0) {
        /* The plugin's own output is malformed: nothing a retry fixes. */
        obx_error("wal2json_parse", "at LSN " OBX_LSN_FMT ": %s: %.200s", OBX_LSN_ARGS(m->data_start), err, m->data);
        r->exit_code = OBX_EXIT_FAIL;
        *out = S_FATAL;
        return -1;
    }
    switch (chg->kind) {
    case OBX_CHG_BEGIN:
        if (obx_lsn_ring_begin(r->ring) != 0) {
            obx_error("protocol", "BEGIN inside a transaction at " OBX_LSN_FMT, OBX_LSN_ARGS(chg->lsn));
            *out = S_RETRY;
            return -1;
        }
        r->txn_lsn = chg->lsn;
        r->txn_end = chg->nextlsn;
        r->txn_xid = chg->xid;
        r->txn_time_us = chg->commit_time_us;
        r->txn_index = 0;
        return 0;
    case OBX_CHG_COMMIT:
        if (obx_lsn_ring_commit(r->ring, chg->nextlsn) != 0) {
            obx_error("protocol", "COMMIT outside a transaction at " OBX_LSN_FMT, OBX_LSN_ARGS(chg->lsn));
            *out = S_RETRY;
            return -1;
        }
        if (r->txn_index) r->n_txns++;
        return 0;
    case OBX_CHG_INSERT:
        if (strcmp(chg->schema, r->cfg->outbox_schema) != 0 || strcmp(chg->table, r->cfg->outbox_table) != 0) {
            r->n_ignored++;
            return 0;
        }
        return handle_insert(r, chg, out);
    default:
        /* Updates, deletes, truncates of the outbox are not events. */
        r->n_ignored++;
        return 0;
    }
}

static void end_session(relay_t *r, int final_status)
{
    char err[512];
    if (r->prod) {
        /* Let acks in flight land so they can still be confirmed. */
        int left = obx_producer_flush(r->prod, final_status ? r->cfg->shutdown_timeout_ms : 2000);
        if (left > 0) obx_warn("kafka_unflushed", "%d messages not acked; they will be re-sent after restart", left);
    }
    if (r->repl && r->ring) {
        if (maybe_send_status(r, 1, err, sizeof(err)) == 0 && final_status)
            obx_info("lsn_confirmed", "final confirmed flush LSN " OBX_LSN_FMT, OBX_LSN_ARGS(r->sent_flush));
        if (final_status) obx_repl_end(r->repl, err, sizeof(err));
    }
    if (r->ring && obx_lsn_ring_flush_lsn(r->ring) > r->confirmed) r->confirmed = obx_lsn_ring_flush_lsn(r->ring);
    obx_producer_destroy(r->prod); /* before the ring: purges call dr_cb */
    r->prod = NULL;
    obx_repl_destroy(r->repl);
    r->repl = NULL;
    obx_lsn_ring_destroy(r->ring);
    r->ring = NULL;
}

static session_rc_t session(relay_t *r)
{
    char err[1024];
    session_rc_t out = S_RETRY;
    obx_w2j_change_t chg;
    memset(&chg, 0, sizeof(chg));

    PGconn *pc = obx_pg_connect(r->cfg->pg_conninfo, err, sizeof(err));
    if (!pc) {
        obx_warn("pg_connect", "%s", err);
        return S_RETRY;
    }
    obx_slot_info_t slot;
    int rc = obx_slot_ensure(pc, r->cfg, &slot, err, sizeof(err));
    PQfinish(pc);
    if (rc == OBX_EXIT_FAIL) {
        obx_warn("pg_query", "%s", err);
        return S_RETRY;
    }
    if (rc) {
        obx_error("slot", "%s", err);
        r->exit_code = rc;
        return S_FATAL;
    }
    /* Never send a flush below the slot's own: PG 15 would move it back. */
    if (slot.confirmed_flush > r->confirmed) r->confirmed = slot.confirmed_flush;

    r->repl = obx_repl_connect(r->cfg->pg_conninfo, err, sizeof(err));
    if (!r->repl) {
        obx_warn("pg_connect", "%s", err);
        return S_RETRY;
    }
    r->ring = obx_lsn_ring_new(r->confirmed);
    r->prod = obx_producer_new(r->cfg, dr_cb, r, err, sizeof(err));
    if (!r->ring || !r->prod) {
        obx_error("kafka_producer", "%s", r->ring ? err : "out of memory");
        goto end;
    }
    r->dr_failed = 0;
    r->write_lsn = r->sent_flush = r->confirmed;
    r->backpressured = 0;

    char tables[512];
    if (obx_w2j_escape_table(r->cfg->outbox_schema, r->cfg->outbox_table, tables, sizeof(tables)) != 0) {
        obx_error("config", "outbox table name too long");
        r->exit_code = OBX_EXIT_CONFIG;
        out = S_FATAL;
        goto end;
    }
    const char *opts[] = {
        "format-version", "2", "include-xids", "1", "include-lsn", "1", "include-timestamp", "1",
        "include-typmod", "0", "add-tables", tables,
    };
    if (obx_repl_start(r->repl, r->cfg->slot_name, r->confirmed, opts, sizeof(opts) / sizeof(opts[0]) / 2, err,
                       sizeof(err)) != 0) {
        if (strstr(err, "is active for PID"))
            obx_info("slot_busy", "slot %s is in use by another process (%s); standing by", r->cfg->slot_name, err);
        else
            obx_warn("start_replication", "START_REPLICATION on slot %s failed: %s", r->cfg->slot_name, err);
        goto end;
    }
    obx_info("streaming", "streaming slot %s from " OBX_LSN_FMT " (table %s.%s)", r->cfg->slot_name,
             OBX_LSN_ARGS(r->confirmed), r->cfg->outbox_schema, r->cfg->outbox_table);
    r->last_status_ms = 0;
    if (maybe_send_status(r, 1, err, sizeof(err)) != 0) {
        obx_warn("pg_lost", "%s", err);
        goto end;
    }

    int since_poll = 0;
    r->stop_deadline = 0;
    while (!must_stop(r)) {
        obx_repl_msg_t m;
        int n = obx_repl_next(r->repl, &m, 100, err, sizeof(err));
        if (n < 0) {
            obx_warn("pg_lost", "slot %s: %s", r->cfg->slot_name, err);
            out = S_RETRY;
            goto end;
        }
        if (n == 1) {
            if (m.wal_end > r->write_lsn) r->write_lsn = m.wal_end;
            if (m.kind == OBX_REPL_XLOGDATA) {
                if (m.data_start > r->write_lsn) r->write_lsn = m.data_start;
                if (handle_change(r, &m, &chg, &out) != 0) goto end;
                if (++since_poll >= r->cfg->poll_batch) {
                    since_poll = 0;
                    obx_producer_poll(r->prod, 0);
                }
            } else {
                obx_lsn_ring_keepalive(r->ring, m.wal_end);
                if (m.reply_requested && maybe_send_status(r, 1, err, sizeof(err)) != 0) {
                    obx_warn("pg_lost", "%s", err);
                    goto end;
                }
            }
        } else {
            since_poll = 0;
            obx_producer_poll(r->prod, 0);
        }
        if (check_dr(r, &out)) goto end;
        if (obx_producer_fatal(r->prod, err, sizeof(err))) {
            obx_warn("kafka_fatal", "producer fatal error: %s; restarting the pipeline", err);
            out = S_RETRY;
            goto end;
        }
        if (maybe_send_status(r, 0, err, sizeof(err)) != 0) {
            obx_warn("pg_lost", "%s", err);
            out = S_RETRY;
            goto end;
        }
        progress(r);
    }
    out = S_STOP;
end:
    obx_w2j_change_clear(&chg);
    if (out == S_STOP) obx_info("stopping", "stop requested: flushing Kafka, confirming, ending the stream");
    end_session(r, out != S_RETRY);
    return out;
}

int obx_relay_run(const obx_config_t *cfg, volatile sig_atomic_t *stop)
{
    relay_t r;
    memset(&r, 0, sizeof(r));
    r.cfg = cfg;
    r.stop = stop;
    char err[1024], red[1024];
    obx_conninfo_redact(cfg->pg_conninfo, red, sizeof(red));

    int backoff = 500;
    /* Preflight: configuration problems are fatal, unreachable servers are not. */
    for (;;) {
        PGconn *pc = obx_pg_connect(cfg->pg_conninfo, err, sizeof(err));
        if (pc) {
            int rc = obx_preflight(pc, cfg, &r.pg, err, sizeof(err));
            PQfinish(pc);
            if (rc == 0) break;
            if (rc != OBX_EXIT_FAIL) {
                obx_error("preflight", "%s", err);
                return rc;
            }
        }
        obx_warn("pg_connect", "%s (%s); retrying in %d ms", err, red, backoff);
        for (int w = 0; w < backoff && !*stop; w += 100) sleep_ms(100);
        if (*stop) return OBX_EXIT_OK;
        backoff = backoff * 2 > cfg->reconnect_backoff_max_ms ? cfg->reconnect_backoff_max_ms : backoff * 2;
    }
    obx_info("preflight_ok", "PostgreSQL %d, database %s, outbox %s.%s, slot %s", r.pg.server_version, r.pg.database,
             cfg->outbox_schema, cfg->outbox_table, cfg->slot_name);

    backoff = 500;
    for (;;) {
        uint64_t before = r.n_acked;
        session_rc_t s = session(&r);
        if (s == S_STOP) {
            obx_info("stopped", "%llu events published, %llu acked; confirmed " OBX_LSN_FMT,
                     (unsigned long long)r.n_published, (unsigned long long)r.n_acked, OBX_LSN_ARGS(r.confirmed));
            return OBX_EXIT_OK;
        }
        if (s == S_FATAL) return r.exit_code ? r.exit_code : OBX_EXIT_FAIL;
        if (r.n_acked > before) backoff = 500;
        obx_info("reconnect", "reconnecting in %d ms from confirmed LSN " OBX_LSN_FMT, backoff, OBX_LSN_ARGS(r.confirmed));
        for (int w = 0; w < backoff && !*stop; w += 100) sleep_ms(100);
        if (*stop) return OBX_EXIT_OK;
        backoff = backoff * 2 > cfg->reconnect_backoff_max_ms ? cfg->reconnect_backoff_max_ms : backoff * 2;
    }
}
