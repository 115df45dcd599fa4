#include "relay.h"
#include "pg.h"
#include "exitcodes.h"
#include "clock.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dedup.h"
#include "envelope.h"
#include "log.h"
#include "lsn_ring.h"
#include "metrics.h"
#include "outbox.h"
#include "outboxd/v1/event.pb-c.h"
#include "pg_repl.h"
#include "preflight.h"
#include "producer.h"
#include "snapshot.h"
#include "status_http.h"
#include "wal2json.h"

#define MAX_KHEADERS (3 + OBX_MAX_HEADERS) /* id, type, content-type + the row's headers */
#define MAX_POISON 64
#define HEARTBEAT_PREFIX "outboxd"

typedef enum { S_STOP = 0, S_RETRY, S_STANDBY, S_FATAL } session_rc_t;

typedef struct {
    const obx_config_t *cfg;
    volatile sig_atomic_t *stop;
    obx_metrics_t *m;
    obx_pg_info_t pg;
    obx_lsn_t confirmed;      /* highest flush LSN known acked; survives sessions */
    int exit_code;            /* for S_FATAL */
    int dead_letter;          /* poison.policy = dead-letter */
    /* Rows Kafka refused for good, to dead-letter when the restarted session
     * meets them again (a gapless producer stops at such a failure). */
    obx_pos_t poison[MAX_POISON];
    char poison_reason[MAX_POISON][256];
    size_t n_poison;

    /* a snapshot started by a signal row, run in its own thread */
    pthread_t snap_thread;
    int snap_started;
    _Atomic int snap_busy;

    /* one session */
    obx_repl_t *repl;
    PGconn *aux;              /* normal connection: heartbeats, slot polling */
    obx_producer_t *prod;
    obx_dedup_t *dedup;
    obx_lsn_ring_t *ring;
    obx_lsn_t write_lsn, sent_flush;
    int64_t last_status_ms, last_progress_ms, last_heartbeat_ms, last_slot_poll_ms;
    int backpressured;
    int64_t stop_deadline;    /* set when a stop request arrives */

    /* the open transaction */
    obx_lsn_t txn_lsn, txn_end;
    uint32_t txn_xid, txn_index;
    int64_t txn_time_us;

    /* first delivery failure of the session */
    int dr_failed, dr_retriable, dr_has_pos;
    obx_pos_t dr_pos;
    char dr_err[1024], dr_reason[256];
} relay_t;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void set_state(relay_t *r, obx_state_t s) { atomic_store(&r->m->state, (int)s); }

static void dr_cb(void *opaque, uint64_t ticket, const char *err, int retriable, const char *topic,
                  const void *value, size_t value_len)
{
    relay_t *r = opaque;
    if (!err) {
        int64_t t = obx_lsn_ring_ticket_time(r->ring, ticket);
        int64_t now = obx_now_us();
        if (t) obx_metrics_observe_latency(now - t);
        if (obx_lsn_ring_ack(r->ring, ticket) != 0)
            obx_error("ack_unknown", "delivery report for unknown ticket %llu", (unsigned long long)ticket);
        atomic_fetch_add(&r->m->events_acked, 1);
        atomic_store(&r->m->last_ack_us, now);
        return;
    }
    atomic_fetch_add(&r->m->events_failed, 1);
    if (r->dr_failed) return; /* the first failure names the row; the rest follow from it */
    r->dr_failed = 1;
    r->dr_retriable = retriable;
    snprintf(r->dr_reason, sizeof(r->dr_reason), "%s", err);
    Outboxd__V1__Event *ev = obx_envelope_decode(value, value_len);
    char cl[24] = "?", chl[24] = "?", el[24] = "?";
    if (ev && ev->source) {
        obx_lsn_format(ev->source->commit_lsn, cl, sizeof(cl));
        obx_lsn_format(ev->source->change_lsn, chl, sizeof(chl));
        obx_lsn_format(ev->source->commit_end_lsn, el, sizeof(el));
        r->dr_pos.commit_lsn = ev->source->commit_lsn;
        r->dr_pos.index = ev->source->index_in_txn;
        r->dr_has_pos = 1;
    }
    snprintf(r->dr_err, sizeof(r->dr_err),
             "Kafka refused outbox row id=%s aggregateid=%s (change LSN %s, commit LSN %s, end %s, xid %u) for topic %s: %s",
             ev ? ev->event_id : "?", ev ? ev->aggregate_id : "?", chl, cl, el, ev && ev->source ? ev->source->xid : 0,
             topic, err);
    obx_envelope_free(ev);
}

/* Standby status: write = highest received, flush = apply = ring flush LSN.
 * Sent at least every status.interval_ms, within 100 ms of the flush moving,
 * and at once when forced (server asked, shutdown). */
static int maybe_send_status(relay_t *r, int force, char *errstr, size_t errstr_size)
{
    obx_lsn_t flush = obx_lsn_ring_flush_lsn(r->ring);
    int64_t now = obx_mono_ms();
    int64_t since = now - r->last_status_ms;
    /* 100 ms after the flush moves: the slot keeps up closely (less WAL held,
     * a smaller replay window after a crash) for ~10 small messages/s. */
    if (!force && since < r->cfg->status_interval_ms && !(flush != r->sent_flush && since >= 100)) return 0;
    if (r->write_lsn < flush) r->write_lsn = flush;
    if (obx_repl_send_status(r->repl, r->write_lsn, flush, flush, errstr, errstr_size) != 0) return -1;
    if (flush != r->sent_flush) obx_debug("lsn_confirmed", "confirmed flush LSN " OBX_LSN_FMT, OBX_LSN_ARGS(flush));
    r->sent_flush = flush;
    if (flush > r->confirmed) r->confirmed = flush;
    r->last_status_ms = now;
    atomic_fetch_add(&r->m->status_updates, 1);
    atomic_store(&r->m->confirmed_lsn, flush);
    return 0;
}

static void update_gauges(relay_t *r)
{
    atomic_store(&r->m->last_loop_us, obx_now_us());
    if (!r->ring) return;
    atomic_store(&r->m->inflight_events, (int64_t)obx_lsn_ring_inflight_msgs(r->ring));
    atomic_store(&r->m->inflight_transactions, (int64_t)obx_lsn_ring_inflight_txns(r->ring));
    atomic_store(&r->m->received_lsn, r->write_lsn);
    int64_t ft = obx_lsn_ring_flush_time(r->ring);
    if (ft > atomic_load(&r->m->newest_confirmed_commit_us)) atomic_store(&r->m->newest_confirmed_commit_us, ft);
}

static void progress(relay_t *r)
{
    int64_t now = obx_mono_ms();
    if (now - r->last_progress_ms < 60000) return;
    r->last_progress_ms = now;
    obx_info("progress", "slot %s: %llu events published, %llu acked, %llu skipped as already in Kafka, in flight %llu, confirmed " OBX_LSN_FMT,
             r->cfg->slot_name, (unsigned long long)atomic_load(&r->m->events_published),
             (unsigned long long)atomic_load(&r->m->events_acked),
             (unsigned long long)atomic_load(&r->m->events_skipped_duplicate),
             (unsigned long long)obx_lsn_ring_inflight_msgs(r->ring), OBX_LSN_ARGS(obx_lsn_ring_flush_lsn(r->ring)));
}

/* A stop request waits for the open transaction's COMMIT (bounded by
 * shutdown.timeout_ms): stopping mid-transaction would leave its produced
 * rows unconfirmable, and a restart would send them twice. */
static int must_stop(relay_t *r)
{
    if (!*r->stop) return 0;
    if (!r->ring || !obx_lsn_ring_in_txn(r->ring)) return 1;
    int64_t now = obx_mono_ms();
    if (!r->stop_deadline) {
        r->stop_deadline = now + r->cfg->shutdown_timeout_ms;
        obx_info("stopping", "stop requested inside transaction xid %u: reading to its commit first", r->txn_xid);
    }
    return now >= r->stop_deadline;
}

static session_rc_t halt_poison(relay_t *r, const char *what)
{
    obx_error("poison_row",
              "%s. outboxd stops here and does not confirm past this transaction (slot %s stays at or before " OBX_LSN_FMT
              "). Fix the cause (topic config, the row's producer, outbox.column.* or topic.template) and restart, or set "
              "poison.policy = dead-letter; to skip the whole transaction on purpose: SELECT pg_replication_slot_advance('%s', '" OBX_LSN_FMT "')",
              what, r->cfg->slot_name, OBX_LSN_ARGS(obx_lsn_ring_flush_lsn(r->ring)), r->cfg->slot_name,
              OBX_LSN_ARGS(r->txn_end));
    r->exit_code = OBX_EXIT_POISON;
    set_state(r, OBX_STATE_HALTED);
    return S_FATAL;
}

static int known_poison(relay_t *r, obx_pos_t pos)
{
    for (size_t i = 0; i < r->n_poison; i++)
        if (obx_pos_cmp(r->poison[i], pos) == 0) return (int)i;
    return -1;
}

/* Delivery failures seen in the last poll decide the session's fate. */
static int check_dr(relay_t *r, session_rc_t *out)
{
    if (!r->dr_failed) return 0;
    if (r->dr_retriable) {
        obx_warn("kafka_delivery_failed", "%s; restarting the pipeline from the last confirmed LSN", r->dr_err);
        *out = S_RETRY;
        return 1;
    }
    if (r->dead_letter && r->dr_has_pos && known_poison(r, r->dr_pos) < 0 && r->n_poison < MAX_POISON) {
        /* The gapless producer stopped at this row; the next session sends
         * it to the dead-letter topic instead. */
        r->poison[r->n_poison] = r->dr_pos;
        snprintf(r->poison_reason[r->n_poison], sizeof(r->poison_reason[0]), "%s", r->dr_reason);
        r->n_poison++;
        obx_warn("poison_row", "%s; it goes to dead-letter topic %s after a pipeline restart", r->dr_err, r->cfg->dlq_topic);
        *out = S_RETRY;
        return 1;
    }
    obx_error("poison_row",
              "%s%s. outboxd stops here and does not confirm past this transaction. Fix the cause (e.g. raise the "
              "topic's max.message.bytes, grant the topic, fix the row's producer) and restart",
              r->dr_err, r->dead_letter ? " (the dead-letter topic refused it too)" : "");
    r->exit_code = OBX_EXIT_POISON;
    set_state(r, OBX_STATE_HALTED);
    *out = S_FATAL;
    return 1;
}

/* Names a row in messages; formatted only when a message is written. */
typedef struct {
    const char *what, *event_id, *aggregate_id;
    obx_lsn_t change_lsn;
} row_ref_t;

static const char *describe(const relay_t *r, const row_ref_t *ref, char *buf, size_t size)
{
    snprintf(buf, size, "%s id=%s aggregateid=%s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ", xid %u)",
             ref->what, ref->event_id, ref->aggregate_id, OBX_LSN_ARGS(ref->change_lsn), OBX_LSN_ARGS(r->txn_lsn),
             r->txn_xid);
    return buf;
}

/* Hands one record to Kafka: dedup check, ring ticket, produce, waiting out
 * a full queue (backpressure). Takes ownership of val. 0 or -1 (*out set). */
static int produce_one(relay_t *r, const char *topic, const char *key, uint8_t *val, size_t val_len,
                       const char *const *kh, size_t nkh, obx_pos_t pos, const row_ref_t *ref, session_rc_t *out)
{
    char err[1024], row_desc[600];
    int32_t part = -1; /* RD_KAFKA_PARTITION_UA */
    if (r->dedup) {
        int d = obx_dedup_check(r->dedup, topic, key, pos, &part, err, sizeof(err));
        if (d < 0) {
            obx_warn("dedup", "%s; restarting the pipeline", err);
            free(val);
            *out = S_RETRY;
            return -1;
        }
        if (d == 1) {
            atomic_fetch_add(&r->m->events_skipped_duplicate, 1);
            obx_debug("dedup_skip", "%s already in %s [%d]", describe(r, ref, row_desc, sizeof(row_desc)), topic, (int)part);
            free(val);
            return 0;
        }
    }
    uint64_t ticket;
    if (obx_lsn_ring_add(r->ring, &ticket) != 0) {
        obx_error("oom", "cannot track in-flight transaction");
        free(val);
        *out = S_RETRY;
        return -1;
    }
    for (;;) {
        obx_produce_rc_t pr = obx_producer_send(r->prod, topic, part, key, val, val_len, kh, nkh, ticket, err, sizeof(err));
        if (pr == OBX_PRODUCE_OK) break;
        if (pr == OBX_PRODUCE_QUEUE_FULL) {
            /* Backpressure: stop reading the slot, keep the connection alive
             * with status updates, wait for acks to drain the queue. */
            if (!r->backpressured) {
                r->backpressured = 1;
                atomic_fetch_add(&r->m->backpressure_episodes, 1);
                set_state(r, OBX_STATE_BACKPRESSURED);
                obx_debug("backpressure_on", "Kafka queue full (%d); pausing the slot", obx_producer_outq_len(r->prod));
            }
            obx_producer_poll(r->prod, 50);
            update_gauges(r);
            if (check_dr(r, out)) goto fail;
            if (maybe_send_status(r, 0, err, sizeof(err)) != 0) {
                obx_warn("pg_lost", "%s", err);
                *out = S_RETRY;
                goto fail;
            }
            if (must_stop(r)) {
                *out = S_STOP;
                goto fail;
            }
            continue;
        }
        if (pr == OBX_PRODUCE_FAILED) {
            obx_warn("kafka_failed", "producer failed: %s; restarting the pipeline", err);
            *out = S_RETRY;
            goto fail;
        }
        /* Refused before sending (e.g. larger than kafka.message.max.bytes). */
        describe(r, ref, row_desc, sizeof(row_desc));
        snprintf(r->dr_err, sizeof(r->dr_err), "Kafka refused %.300s for topic %.250s: %.300s", row_desc, topic, err);
        snprintf(r->dr_reason, sizeof(r->dr_reason), "%.250s", err);
        r->dr_failed = 1;
        r->dr_retriable = 0;
        r->dr_pos = pos;
        r->dr_has_pos = 1;
        check_dr(r, out);
        goto fail;
    }
    if (r->backpressured) {
        r->backpressured = 0;
        set_state(r, OBX_STATE_STREAMING);
        obx_debug("backpressure_off", "Kafka queue drained; reading the slot again");
    }
    atomic_fetch_add(&r->m->events_published, 1);
    return 0;
fail:
    free(val);
    return -1;
}

static const char *col_or(const obx_w2j_change_t *chg, const char *name, const char *dflt)
{
    const obx_col_t *c = *name ? obx_w2j_col(chg, name) : NULL;
    return c && c->value ? c->value : dflt;
}

/* poison.policy = dead-letter: publish what the row has, with the reason.
 * The envelope keeps every readable field; the payload is dropped when
 * it was the problem (too large). */
static int dead_letter(relay_t *r, const obx_w2j_change_t *chg, const char *reason, const char *orig_topic,
                       int drop_payload, session_rc_t *out)
{
    const obx_config_t *c = r->cfg;
    obx_outbox_row_t row;
    memset(&row, 0, sizeof(row));
    row.event_id = col_or(chg, c->col_id, "");
    row.aggregate_type = col_or(chg, c->col_aggregatetype, "");
    row.aggregate_id = col_or(chg, c->col_aggregateid, "");
    row.event_type = col_or(chg, c->col_type, "");
    const obx_col_t *p = obx_w2j_col(chg, c->col_payload);
    if (p && p->value && !drop_payload) {
        row.payload = (const unsigned char *)p->value;
        row.payload_len = p->value_len;
    }
    row.payload_kind = OBX_PAYLOAD_TEXT; /* as text, exactly as wal2json gave it */
    obx_source_t src = {
        .commit_lsn = r->txn_lsn, .commit_end_lsn = r->txn_end, .change_lsn = chg->lsn,
        .index_in_txn = r->txn_index, .xid = r->txn_xid, .commit_time_us = r->txn_time_us,
        .database = r->pg.database, .schema = chg->schema, .table = chg->table, .slot = c->slot_name,
    };
    uint8_t *val = NULL;
    size_t val_len = 0;
    char err[512];
    if (obx_envelope_encode(&row, &src, &val, &val_len, err, sizeof(err)) != 0) {
        obx_error("dead_letter", "cannot encode dead letter: %s", err);
        r->exit_code = OBX_EXIT_POISON;
        *out = S_FATAL;
        return -1;
    }
    const char *kh[2 * 5] = {"id", row.event_id, "type", row.event_type, "content-type", "text/plain; charset=utf-8",
                             "outboxd-error", reason, "outboxd-original-topic", orig_topic ? orig_topic : ""};
    obx_pos_t pos = {r->txn_lsn, r->txn_index};
    row_ref_t ref = {"dead letter for outbox row", row.event_id, row.aggregate_id, chg->lsn};
    obx_warn("dead_letter", "outbox row id=%s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ") goes to %s: %s",
             row.event_id, OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(r->txn_lsn), c->dlq_topic, reason);
    if (produce_one(r, c->dlq_topic, *row.aggregate_id ? row.aggregate_id : row.event_id, val, val_len, kh, 5, pos,
                    &ref, out) != 0)
        return -1;
    atomic_fetch_add(&r->m->events_dead_lettered, 1);
    return 0;
}

/* One outbox INSERT: map, encode, produce. */
static int handle_insert(relay_t *r, const obx_w2j_change_t *chg, session_rc_t *out)
{
    char err[1024], what[1400];
    obx_pos_t pos = {r->txn_lsn, r->txn_index};
    int pi = known_poison(r, pos);
    obx_outbox_row_t row;
    obx_headers_t hdrs;
    uint8_t *val = NULL;
    size_t val_len = 0;
    int rc = -1;
    memset(&hdrs, 0, sizeof(hdrs));
    if (obx_outbox_map(r->cfg, chg, &row, err, sizeof(err)) != 0) {
        const obx_col_t *id = obx_w2j_col(chg, r->cfg->col_id);
        if (r->dead_letter) {
            rc = dead_letter(r, chg, err, NULL, 0, out);
            goto next;
        }
        snprintf(what, sizeof(what), "outbox row id=%s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ", xid %u) cannot become an event: %s",
                 id && id->value ? id->value : "NULL", OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(r->txn_lsn), r->txn_xid, err);
        *out = halt_poison(r, what);
        return -1;
    }
    if (pi >= 0) {
        rc = dead_letter(r, chg, r->poison_reason[pi], row.topic, 1, out);
        goto done;
    }
    /* Parsed once: the envelope and the Kafka headers share it. */
    int bad = row.headers_json && obx_headers_parse(row.headers_json, &hdrs, err, sizeof(err)) != 0;
    if (!bad) {
        row.headers = row.headers_json ? &hdrs : NULL;
        obx_source_t src = {
            .commit_lsn = r->txn_lsn, .commit_end_lsn = r->txn_end, .change_lsn = chg->lsn,
            .index_in_txn = r->txn_index, .xid = r->txn_xid, .commit_time_us = r->txn_time_us,
            .database = r->pg.database, .schema = chg->schema, .table = chg->table, .slot = r->cfg->slot_name,
        };
        bad = obx_envelope_encode(&row, &src, &val, &val_len, err, sizeof(err)) != 0;
    }
    if (bad) {
        if (r->dead_letter) {
            rc = dead_letter(r, chg, err, row.topic, 0, out);
            goto done;
        }
        snprintf(what, sizeof(what), "outbox row id=%s (change LSN " OBX_LSN_FMT ") cannot be encoded: %s", row.event_id,
                 OBX_LSN_ARGS(chg->lsn), err);
        *out = halt_poison(r, what);
        goto done;
    }
    const char *kh[2 * MAX_KHEADERS] = {"id", row.event_id, "type", row.event_type,
                                        "content-type", obx_payload_content_type(row.payload_kind)};
    size_t nkh = 3;
    memcpy(kh + 2 * nkh, hdrs.kv, 2 * hdrs.n * sizeof(kh[0]));
    nkh += hdrs.n;
    row_ref_t ref = {"outbox row", row.event_id, row.aggregate_id, chg->lsn};
    rc = produce_one(r, row.topic, row.aggregate_id, val, val_len, kh, nkh, pos, &ref, out);
done:
    obx_headers_clear(&hdrs);
    obx_outbox_row_clear(&row);
next:
    if (rc == 0) r->txn_index++;
    return rc;
}

/* A snapshot requested by a signal row. Owns copies of everything it
 * reads, since the signal's change is gone when the thread runs. */
typedef struct {
    relay_t *r;
    char *signal_id;
    cJSON *data;
    obx_snapshot_opts_t opts;
} snap_job_t;

static const char *jstr(const cJSON *o, const char *k, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && *v->valuestring ? v->valuestring : dflt;
}

static void signal_status(relay_t *r, const char *id, const char *status, const char *detail)
{
    char err[512], q[600];
    PGconn *c = obx_pg_connect_str(r->cfg->pg_conninfo, err, sizeof(err));
    if (!c) return;
    snprintf(q, sizeof(q), "UPDATE %s.%s SET status = $2, detail = $3, updated_at = now() WHERE id = $1::bigint",
             r->cfg->outbox_schema, r->cfg->signal_table);
    const char *p[3] = {id, status, detail};
    PGresult *res = PQexecParams(c, q, 3, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        obx_warn("signal", "cannot update signal %s to %s: %s", id, status, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
}

static void *snap_main(void *arg)
{
    snap_job_t *j = arg;
    signal_status(j->r, j->signal_id, "running", NULL);
    int rc = obx_snapshot_run(j->r->cfg, &j->opts, j->r->stop);
    const char *st = rc == OBX_EXIT_OK ? (*j->r->stop ? "interrupted" : "done") : "failed";
    char detail[128];
    snprintf(detail, sizeof(detail), "exit code %d; see outboxd_snapshots and the log", rc);
    signal_status(j->r, j->signal_id, st, rc == OBX_EXIT_OK ? NULL : detail);
    cJSON_Delete(j->data);
    free(j->signal_id);
    atomic_store(&j->r->snap_busy, 0);
    free(j);
    return NULL;
}

static void start_signal(relay_t *r, const char *sid, const char *type, const char *data);

static void handle_signal(relay_t *r, const obx_w2j_change_t *chg)
{
    const obx_col_t *id = obx_w2j_col(chg, "id"), *type = obx_w2j_col(chg, "type"), *data = obx_w2j_col(chg, "data");
    start_signal(r, id && id->value ? id->value : "?", type ? type->value : NULL, data ? data->value : NULL);
}

/* Signals whose snapshot was cut short by a crash or a stop resume from
 * their checkpoint when the relay starts again. */
static void resume_signals(relay_t *r)
{
    if (!*r->cfg->signal_table) return;
    char err[512], q[600];
    PGconn *c = obx_pg_connect_str(r->cfg->pg_conninfo, err, sizeof(err));
    if (!c) return;
    snprintf(q, sizeof(q), "SELECT id::text, type, data::text FROM %s.%s WHERE status IN ('running', 'interrupted') ORDER BY id LIMIT 1",
             r->cfg->outbox_schema, r->cfg->signal_table);
    PGresult *res = PQexec(c, q);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        obx_info("signal", "resuming the snapshot of signal %s", PQgetvalue(res, 0, 0));
        start_signal(r, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    PQfinish(c);
}

static void start_signal(relay_t *r, const char *sid, const char *type, const char *data)
{
    if (!type || strcmp(type, "snapshot") != 0) {
        obx_warn("signal", "signal %s of type %s ignored: only \"snapshot\" is known", sid, type ? type : "NULL");
        signal_status(r, sid, "ignored", "unknown type");
        return;
    }
    if (atomic_load(&r->snap_busy)) {
        obx_warn("signal", "signal %s: a snapshot is already running; rejected (insert it again later)", sid);
        signal_status(r, sid, "rejected", "another snapshot is running");
        return;
    }
    snap_job_t *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->r = r;
    j->signal_id = strdup(sid);
    j->data = data ? cJSON_Parse(data) : cJSON_CreateObject();
    if (!j->signal_id || !cJSON_IsObject(j->data)) {
        obx_warn("signal", "signal %s: data is not a JSON object", sid);
        signal_status(r, sid, "failed", "data is not a JSON object");
        cJSON_Delete(j->data);
        free(j->signal_id);
        free(j);
        return;
    }
    obx_snapshot_opts_from_config(r->cfg, &j->opts);
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
    if (r->snap_started) pthread_join(r->snap_thread, NULL);
    atomic_store(&r->snap_busy, 1);
    obx_info("signal", "signal %s: snapshot of %s%s%s", sid, j->opts.table ? j->opts.table : "?",
             j->opts.where ? " where " : "", j->opts.where ? j->opts.where : "");
    if (pthread_create(&r->snap_thread, NULL, snap_main, j) != 0) {
        atomic_store(&r->snap_busy, 0);
        signal_status(r, sid, "failed", "cannot start a thread");
        cJSON_Delete(j->data);
        free(j->signal_id);
        free(j);
        return;
    }
    r->snap_started = 1;
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
        obx_lsn_ring_set_time(r->ring, chg->commit_time_us);
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
        if (r->txn_index) atomic_fetch_add(&r->m->transactions, 1);
        return 0;
    case OBX_CHG_INSERT:
        if (*r->cfg->signal_table && !strcmp(chg->schema, r->cfg->outbox_schema) &&
            !strcmp(chg->table, r->cfg->signal_table)) {
            handle_signal(r, chg);
            return 0;
        }
        if (strcmp(chg->schema, r->cfg->outbox_schema) != 0 || strcmp(chg->table, r->cfg->outbox_table) != 0) {
            atomic_fetch_add(&r->m->events_ignored, 1);
            return 0;
        }
        return handle_insert(r, chg, out);
    case OBX_CHG_MESSAGE:
        /* Our heartbeat: its empty transaction advances the flush LSN. */
        return 0;
    default:
        /* Updates, deletes, truncates of the outbox are not events. */
        atomic_fetch_add(&r->m->events_ignored, 1);
        return 0;
    }
}

/* Heartbeat and slot polling on the normal connection. Failures here are
 * logged and retried; only a lost slot stops the relay. */
static int aux_tick(relay_t *r, session_rc_t *out)
{
    int64_t now = obx_mono_ms();
    char err[1024];
    if (!r->aux || PQstatus(r->aux) != CONNECTION_OK) {
        if (now - r->last_slot_poll_ms < 5000) return 0;
        PQfinish(r->aux);
        r->aux = obx_pg_connect_str(r->cfg->pg_conninfo, err, sizeof(err));
        if (!r->aux) {
            r->last_slot_poll_ms = now;
            obx_warn("pg_connect", "heartbeat/slot connection: %s", err);
            return 0;
        }
    }
    if (r->cfg->heartbeat_interval_ms > 0 && now - r->last_heartbeat_ms >= r->cfg->heartbeat_interval_ms) {
        r->last_heartbeat_ms = now;
        PGresult *res = PQexec(r->aux, "SELECT pg_logical_emit_message(true, '" HEARTBEAT_PREFIX "', 'heartbeat')");
        if (PQresultStatus(res) == PGRES_TUPLES_OK)
            atomic_fetch_add(&r->m->heartbeats, 1);
        else
            obx_warn("heartbeat", "pg_logical_emit_message failed: %s", PQresultErrorMessage(res));
        PQclear(res);
    }
    if (now - r->last_slot_poll_ms >= r->cfg->slot_poll_interval_ms) {
        r->last_slot_poll_ms = now;
        const char *p[1] = {r->cfg->slot_name};
        PGresult *res = PQexecParams(r->aux,
                                     "SELECT coalesce(wal_status, ''), coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,"
                                     " coalesce(safe_wal_size, -1) FROM pg_replication_slots WHERE slot_name = $1",
                                     1, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
            obx_wal_status_t ws = obx_wal_status_parse(PQgetvalue(res, 0, 0));
            atomic_store(&r->m->slot_wal_status, (int)ws);
            atomic_store(&r->m->slot_retained_wal_bytes, atoll(PQgetvalue(res, 0, 1)));
            atomic_store(&r->m->slot_safe_wal_size_bytes, atoll(PQgetvalue(res, 0, 2)));
            atomic_store(&r->m->slot_info_valid, 1);
            if (ws == OBX_WAL_LOST) {
                obx_error("slot_lost",
                          "replication slot %s was invalidated (wal_status = lost, max_slot_wal_keep_size exceeded): WAL "
                          "after " OBX_LSN_FMT " is gone and events committed since cannot be decoded. Recover: outboxd slot "
                          "drop, restart outboxd (new slot), and re-emit current state with a snapshot",
                          r->cfg->slot_name, OBX_LSN_ARGS(r->confirmed));
                r->exit_code = OBX_EXIT_SLOT;
                set_state(r, OBX_STATE_HALTED);
                *out = S_FATAL;
                PQclear(res);
                return -1;
            }
            if (ws == OBX_WAL_UNRESERVED)
                obx_warn("slot_at_risk", "slot %s: wal_status = unreserved, %s bytes of WAL left before invalidation",
                         r->cfg->slot_name, PQgetvalue(res, 0, 2));
        } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            obx_warn("slot_poll", "%s", PQresultErrorMessage(res));
        }
        PQclear(res);
    }
    return 0;
}

static void end_session(relay_t *r, int final_status)
{
    char err[512];
    if (final_status) set_state(r, OBX_STATE_STOPPING);
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
    update_gauges(r);
    obx_dedup_destroy(r->dedup);
    r->dedup = NULL;
    obx_producer_destroy(r->prod); /* before the ring: purges call dr_cb */
    r->prod = NULL;
    obx_repl_destroy(r->repl);
    r->repl = NULL;
    PQfinish(r->aux);
    r->aux = NULL;
    obx_lsn_ring_destroy(r->ring);
    r->ring = NULL;
    atomic_store(&r->m->pg_connected, 0);
    atomic_store(&r->m->kafka_brokers_up, 0);
}

static int slot_lost_error(const char *msg)
{
    return strstr(msg, "invalidated") || strstr(msg, "can no longer get changes") ||
           strstr(msg, "exceeded the maximum reserved size") || strstr(msg, "does not exist");
}

static session_rc_t session(relay_t *r)
{
    char err[1024];
    session_rc_t out = S_RETRY;
    obx_w2j_change_t chg;
    memset(&chg, 0, sizeof(chg));
    /* A standby stays "standby" while it retries, so probes see it steadily. */
    if (atomic_load(&r->m->state) != OBX_STATE_STANDBY) set_state(r, OBX_STATE_CONNECTING);

    r->aux = obx_pg_connect_str(r->cfg->pg_conninfo, err, sizeof(err));
    if (!r->aux) {
        obx_warn("pg_connect", "%s", err);
        return S_RETRY;
    }
    obx_slot_info_t slot;
    int rc = obx_slot_ensure(r->aux, r->cfg, &slot, err, sizeof(err));
    if (rc == OBX_EXIT_FAIL) {
        obx_warn("pg_query", "%s", err);
        goto end;
    }
    if (rc) {
        obx_error(rc == OBX_EXIT_SLOT ? "slot_lost" : "slot", "%s", err);
        r->exit_code = rc;
        out = S_FATAL;
        goto end;
    }
    /* Never send a flush below the slot's own: PG 15 would move it back. */
    if (slot.confirmed_flush > r->confirmed) r->confirmed = slot.confirmed_flush;

    r->repl = obx_repl_connect(r->cfg->pg_conninfo, err, sizeof(err));
    if (!r->repl) {
        obx_warn("pg_connect", "%s", err);
        goto end;
    }
    r->ring = obx_lsn_ring_new(r->confirmed);
    if (!r->ring) {
        obx_error("oom", "out of memory");
        goto end;
    }
    char tables[1024];
    size_t tl;
    if (obx_w2j_escape_table(r->cfg->outbox_schema, r->cfg->outbox_table, tables, sizeof(tables)) != 0 ||
        (*r->cfg->signal_table && ((tl = strlen(tables)) + 2 >= sizeof(tables) ||
                                   (tables[tl] = ',', obx_w2j_escape_table(r->cfg->outbox_schema, r->cfg->signal_table,
                                                                           tables + tl + 1, sizeof(tables) - tl - 1)) != 0))) {
        obx_error("config", "outbox table name too long");
        r->exit_code = OBX_EXIT_CONFIG;
        out = S_FATAL;
        goto end;
    }
    const char *opts[] = {
        "format-version", "2", "include-xids", "1", "include-lsn", "1", "include-timestamp", "1",
        "include-typmod", "0", "add-tables", tables, "add-msg-prefixes", HEARTBEAT_PREFIX,
    };
    if (obx_repl_start(r->repl, r->cfg->slot_name, r->confirmed, opts, sizeof(opts) / sizeof(opts[0]) / 2, err,
                       sizeof(err)) != 0) {
        if (strstr(err, "is active for PID")) {
            /* State first: whoever reads the log line sees the port agree. */
            int was = atomic_exchange(&r->m->state, OBX_STATE_STANDBY);
            if (was != OBX_STATE_STANDBY)
                obx_info("standby", "slot %s is in use by another process (%s); standing by, retrying every %d ms",
                         r->cfg->slot_name, err, r->cfg->standby_retry_ms);
            out = S_STANDBY;
        } else if (slot_lost_error(err)) {
            obx_error("slot_lost", "slot %s cannot stream: %s. Recover: outboxd slot drop, restart outboxd (new slot), "
                      "and re-emit current state with a snapshot", r->cfg->slot_name, err);
            r->exit_code = OBX_EXIT_SLOT;
            out = S_FATAL;
        } else {
            obx_warn("start_replication", "START_REPLICATION on slot %s failed: %s", r->cfg->slot_name, err);
        }
        goto end;
    }
    r->prod = obx_producer_new(r->cfg, dr_cb, r, err, sizeof(err));
    if (!r->prod) {
        obx_error("kafka_producer", "%s", err);
        goto end;
    }
    if (r->cfg->exactly_once) {
        r->dedup = obx_dedup_new(r->cfg, obx_producer_rk(r->prod), r->cfg->slot_name, r->pg.database, err, sizeof(err));
        if (!r->dedup) {
            obx_error("kafka_consumer", "%s", err);
            goto end;
        }
    }
    r->dr_failed = r->dr_has_pos = 0;
    r->dr_err[0] = '\0';
    r->write_lsn = r->sent_flush = r->confirmed;
    r->backpressured = 0;
    r->last_heartbeat_ms = r->last_slot_poll_ms = 0;
    atomic_store(&r->m->pg_connected, 1);
    atomic_store(&r->m->confirmed_lsn, r->confirmed);
    set_state(r, OBX_STATE_STREAMING);
    obx_info("streaming", "streaming slot %s from " OBX_LSN_FMT " (table %s.%s, %s)", r->cfg->slot_name,
             OBX_LSN_ARGS(r->confirmed), r->cfg->outbox_schema, r->cfg->outbox_table,
             r->cfg->exactly_once ? "exactly-once" : "at-least-once");
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
            if (slot_lost_error(err)) {
                obx_error("slot_lost", "slot %s: %s. Recover: outboxd slot drop, restart outboxd (new slot), and re-emit "
                          "current state with a snapshot", r->cfg->slot_name, err);
                r->exit_code = OBX_EXIT_SLOT;
                out = S_FATAL;
            } else {
                obx_warn("pg_lost", "slot %s: %s", r->cfg->slot_name, err);
                out = S_RETRY;
            }
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
                    update_gauges(r);
                }
            } else {
                obx_lsn_ring_keepalive(r->ring, m.wal_end);
                if (m.reply_requested && maybe_send_status(r, 1, err, sizeof(err)) != 0) {
                    obx_warn("pg_lost", "%s", err);
                    goto end;
                }
            }
            if (since_poll != 0) continue; /* drain what is buffered before the timers */
        } else {
            since_poll = 0;
            obx_producer_poll(r->prod, 0);
        }
        update_gauges(r);
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
        if (aux_tick(r, &out) != 0) goto end;
        progress(r);
    }
    out = S_STOP;
end:
    obx_w2j_change_clear(&chg);
    if (out == S_STOP) obx_info("stopping", "stop requested: flushing Kafka, confirming, ending the stream");
    end_session(r, out == S_STOP || out == S_FATAL);
    if (out == S_FATAL) set_state(r, OBX_STATE_HALTED);
    else if (out == S_STANDBY) set_state(r, OBX_STATE_STANDBY);
    else if (out == S_RETRY && atomic_load(&r->m->state) != OBX_STATE_STANDBY) set_state(r, OBX_STATE_CONNECTING);
    return out;
}

int obx_relay_run(const obx_config_t *cfg, volatile sig_atomic_t *stop)
{
    relay_t r;
    memset(&r, 0, sizeof(r));
    r.cfg = cfg;
    r.stop = stop;
    r.m = obx_metrics();
    r.dead_letter = strcmp(cfg->poison_policy, "dead-letter") == 0;
    snprintf(r.m->slot, sizeof(r.m->slot), "%s", cfg->slot_name);
    atomic_store(&r.m->started_us, obx_now_us());
    atomic_store(&r.m->slot_safe_wal_size_bytes, -1);
    update_gauges(&r);
    char err[1024], red[1024];
    obx_conninfo_redact(cfg->pg_conninfo, red, sizeof(red));

    obx_status_http_t *http = NULL;
    if (*cfg->status_listen) {
        http = obx_status_http_start(cfg->status_listen, err, sizeof(err));
        if (!http) {
            obx_error("status_http", "%s", err);
            return OBX_EXIT_CONFIG;
        }
        obx_info("status_http", "status port on http://%s (/healthz /readyz /metrics /status)", cfg->status_listen);
    }

    int rc = OBX_EXIT_OK;
    int backoff = 500;
    /* Preflight: configuration problems are fatal, unreachable servers are not. */
    for (;;) {
        update_gauges(&r);
        PGconn *pc = obx_pg_connect_str(cfg->pg_conninfo, err, sizeof(err));
        if (pc) {
            int prc = obx_preflight(pc, cfg, &r.pg, err, sizeof(err));
            PQfinish(pc);
            if (prc == 0) break;
            if (prc != OBX_EXIT_FAIL) {
                obx_error("preflight", "%s", err);
                rc = prc;
                goto out;
            }
        }
        obx_warn("pg_connect", "%s (%s); retrying in %d ms", err, red, backoff);
        for (int w = 0; w < backoff && !*stop; w += 100) {
            sleep_ms(100);
            update_gauges(&r);
        }
        if (*stop) goto out;
        backoff = backoff * 2 > cfg->reconnect_backoff_max_ms ? cfg->reconnect_backoff_max_ms : backoff * 2;
    }
    obx_info("preflight_ok", "PostgreSQL %d, database %s, outbox %s.%s, slot %s", r.pg.server_version, r.pg.database,
             cfg->outbox_schema, cfg->outbox_table, cfg->slot_name);
    resume_signals(&r);

    backoff = 500;
    for (;;) {
        uint64_t before = atomic_load(&r.m->events_acked);
        session_rc_t s = session(&r);
        if (s == S_STOP) {
            obx_info("stopped", "%llu events published, %llu acked, %llu skipped as already in Kafka; confirmed " OBX_LSN_FMT,
                     (unsigned long long)atomic_load(&r.m->events_published),
                     (unsigned long long)atomic_load(&r.m->events_acked),
                     (unsigned long long)atomic_load(&r.m->events_skipped_duplicate), OBX_LSN_ARGS(r.confirmed));
            break;
        }
        if (s == S_FATAL) {
            rc = r.exit_code ? r.exit_code : OBX_EXIT_FAIL;
            break;
        }
        int wait = backoff;
        if (s == S_STANDBY) {
            wait = cfg->standby_retry_ms;
        } else {
            atomic_fetch_add(&r.m->restarts, 1);
            if (atomic_load(&r.m->events_acked) > before) backoff = 500;
            wait = backoff;
            obx_info("reconnect", "reconnecting in %d ms from confirmed LSN " OBX_LSN_FMT, wait, OBX_LSN_ARGS(r.confirmed));
            backoff = backoff * 2 > cfg->reconnect_backoff_max_ms ? cfg->reconnect_backoff_max_ms : backoff * 2;
        }
        for (int w = 0; w < wait && !*stop; w += 50) {
            sleep_ms(50);
            update_gauges(&r);
        }
        if (*stop) break;
    }
out:
    if (r.snap_started) pthread_join(r.snap_thread, NULL); /* it saw *stop and checkpointed */
    obx_status_http_stop(http);
    return rc;
}
