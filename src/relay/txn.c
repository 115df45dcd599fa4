/* The pure transaction core (txn.h): wal2json changes to records, the
 * poison policy, and the flush LSN. */
#include "txn.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "outbox.h"
#include "outboxd/v1/event.pb-c.h"
#include "message.h"
#include "relset.h"

#define MAX_KHEADERS (3 + OBX_MAX_HEADERS) /* id, type, content-type + the row's headers */

/* A row Kafka refused for good; dead-lettered when met again. */
typedef struct {
    obx_pos_t pos;
    char reason[256];
} poison_t;

struct obx_txn_s {
    /* process lifetime */
    const obx_config_t *cfg;
    const char *database, *system_id;
    obx_metrics_t *m;
    int dead_letter; /* poison.policy = dead-letter */
    poison_t *poison;
    size_t n_poison, cap_poison;

    /* the relations that are the outbox (borrowed; NULL: the configured table) */
    const obx_relset_t *outbox;

    /* session */
    obx_txn_sink_t sink;
    obx_lsn_ring_t *ring;

    /* the open transaction */
    obx_lsn_t lsn, end;
    uint32_t xid, index;
    int64_t time_us;

    /* the session's first delivery failure: it names the row; the rest follow */
    int failed, retriable, has_pos;
    obx_pos_t fail_pos;
    char fail_desc[1024], fail_reason[256];
};

obx_txn_t *obx_txn_new(const obx_config_t *cfg, const char *database, const char *system_id, obx_metrics_t *m)
{
    obx_txn_t *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->cfg = cfg;
    t->database = database;
    t->system_id = system_id;
    t->m = m;
    t->dead_letter = strcmp(cfg->poison_policy, "dead-letter") == 0;
    return t;
}

void obx_txn_destroy(obx_txn_t *t)
{
    if (!t) return;
    obx_lsn_ring_destroy(t->ring);
    free(t->poison);
    free(t);
}

void obx_txn_set_outbox(obx_txn_t *t, const obx_relset_t *outbox) { t->outbox = outbox; }

int obx_txn_session_start(obx_txn_t *t, obx_lsn_t confirmed, obx_txn_sink_t sink)
{
    t->sink = sink;
    obx_lsn_ring_destroy(t->ring);
    t->ring = obx_lsn_ring_new(confirmed);
    t->failed = t->retriable = t->has_pos = 0;
    t->fail_desc[0] = t->fail_reason[0] = '\0';
    return t->ring ? 0 : -1;
}

void obx_txn_session_end(obx_txn_t *t)
{
    obx_lsn_ring_destroy(t->ring);
    t->ring = NULL;
}

obx_lsn_t obx_txn_flush_lsn(const obx_txn_t *t) { return t->ring ? obx_lsn_ring_flush_lsn(t->ring) : 0; }
const obx_lsn_ring_t *obx_txn_ring(const obx_txn_t *t) { return t->ring; }
int obx_txn_open(const obx_txn_t *t) { return t->ring && obx_lsn_ring_in_txn(t->ring); }
uint32_t obx_txn_xid(const obx_txn_t *t) { return t->xid; }
size_t obx_txn_poison_count(const obx_txn_t *t) { return t->n_poison; }

static int known_poison(const obx_txn_t *t, obx_pos_t pos)
{
    for (size_t i = 0; i < t->n_poison; i++)
        if (obx_pos_cmp(t->poison[i].pos, pos) == 0) return (int)i;
    return -1;
}

/* Grows as needed: a row forgotten here would halt the relay again. */
static int remember_poison(obx_txn_t *t, obx_pos_t pos, const char *reason)
{
    if (t->n_poison == t->cap_poison) {
        size_t cap = t->cap_poison ? 2 * t->cap_poison : 16;
        poison_t *p = realloc(t->poison, cap * sizeof(*p));
        if (!p) return -1;
        t->poison = p;
        t->cap_poison = cap;
    }
    t->poison[t->n_poison].pos = pos;
    snprintf(t->poison[t->n_poison].reason, sizeof(t->poison[0].reason), "%s", reason);
    t->n_poison++;
    return 0;
}

/* A fresh error: no SQLSTATE or Kafka code left from an earlier one. */
static void __attribute__((format(printf, 4, 5))) set_err(obx_err_t *err, obx_err_class_t cls, int exit_code,
                                                          const char *fmt, ...)
{
    char msg[sizeof(err->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    obx_err_clear(err);
    obx_err_set(err, cls, exit_code, "%s", msg);
}

/* Where pg_replication_slot_advance skips the open transaction: its end,
 * or (pgoutput's Begin has no end LSN) just past its commit record's start. */
static obx_lsn_t skip_lsn(const obx_txn_t *t) { return t->end ? t->end : t->lsn + 1; }

/* A row that cannot become an event, with policy halt. */
static int halt_poison(obx_txn_t *t, const char *what, obx_err_t *err)
{
    set_err(err, OBX_ERR_POISON, OBX_EXIT_POISON,
                "%.500s. outboxd stops here and does not confirm past this transaction (slot %s stays at or before "
                OBX_LSN_FMT "). Fix the cause (topic config, the row's producer, outbox.column.* or topic.template) and "
                "restart, or set poison.policy = dead-letter; to skip the whole transaction on purpose: SELECT "
                "pg_replication_slot_advance('%s', '" OBX_LSN_FMT "')",
                what, t->cfg->slot_name, OBX_LSN_ARGS(obx_lsn_ring_flush_lsn(t->ring)), t->cfg->slot_name,
                OBX_LSN_ARGS(skip_lsn(t)));
    return -1;
}

int obx_txn_check(obx_txn_t *t, obx_err_t *err)
{
    if (!t->failed) return 0;
    if (t->retriable) {
        set_err(err, OBX_ERR_RETRIABLE, 0, "%s; restarting the pipeline from the last confirmed LSN", t->fail_desc);
        return -1;
    }
    if (t->dead_letter && t->has_pos && known_poison(t, t->fail_pos) < 0) {
        /* The gapless producer stopped at this row; the next session sends
         * it to the dead-letter topic instead. */
        if (remember_poison(t, t->fail_pos, t->fail_reason) != 0) {
            set_err(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "out of memory remembering poison row: %s", t->fail_desc);
            return -1;
        }
        set_err(err, OBX_ERR_RETRIABLE, 0, "%s; it goes to dead-letter topic %s after a pipeline restart", t->fail_desc,
                t->cfg->dlq_topic);
        return -1;
    }
    set_err(err, OBX_ERR_POISON, OBX_EXIT_POISON,
                "%s%s. outboxd stops here and does not confirm past this transaction. Fix the cause (e.g. raise the "
                "topic's max.message.bytes, grant the topic, fix the row's producer) and restart",
                t->fail_desc, t->dead_letter ? " (the dead-letter topic refused it too)" : "");
    return -1;
}

void obx_txn_delivered(obx_txn_t *t, uint64_t ticket, const char *err, int retriable, const char *topic,
                       const void *value, size_t value_len)
{
    if (!t->ring) return;
    if (!err) {
        int64_t tt = obx_lsn_ring_ticket_time(t->ring, ticket);
        int64_t now = obx_now_us();
        if (tt) obx_metrics_observe_latency(now - tt);
        if (obx_lsn_ring_ack(t->ring, ticket) != 0)
            obx_error("ack_unknown", "delivery report for unknown ticket %llu", (unsigned long long)ticket);
        atomic_fetch_add(&t->m->events_acked, 1);
        atomic_store(&t->m->last_ack_us, now);
        return;
    }
    atomic_fetch_add(&t->m->events_failed, 1);
    if (t->failed) return;
    t->failed = 1;
    t->retriable = retriable;
    snprintf(t->fail_reason, sizeof(t->fail_reason), "%s", err);
    Outboxd__V1__Event *ev = obx_envelope_decode(value, value_len);
    char cl[24] = "?", chl[24] = "?", el[24] = "?";
    if (ev && ev->source) {
        obx_lsn_format(ev->source->commit_lsn, cl, sizeof(cl));
        obx_lsn_format(ev->source->change_lsn, chl, sizeof(chl));
        obx_lsn_format(ev->source->commit_end_lsn, el, sizeof(el));
        t->fail_pos.commit_lsn = ev->source->commit_lsn;
        t->fail_pos.index = ev->source->index_in_txn;
        t->has_pos = 1;
    }
    snprintf(t->fail_desc, sizeof(t->fail_desc),
             "Kafka refused outbox row id=%.150s aggregateid=%.150s (change LSN %s, commit LSN %s, end %s, xid %u) for "
             "topic %.200s: %.200s",
             ev ? ev->event_id : "?", ev ? ev->aggregate_id : "?", chl, cl, el, ev && ev->source ? ev->source->xid : 0,
             topic, err);
    obx_envelope_free(ev);
}

/* Names a row in messages. */
typedef struct {
    const char *what, *event_id, *aggregate_id;
    obx_lsn_t change_lsn;
} row_ref_t;

static const char *describe(const obx_txn_t *t, const row_ref_t *ref, char *buf, size_t size)
{
    snprintf(buf, size, "%s id=%.150s aggregateid=%.150s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ", xid %u)",
             ref->what, ref->event_id, ref->aggregate_id, OBX_LSN_ARGS(ref->change_lsn), OBX_LSN_ARGS(t->lsn), t->xid);
    return buf;
}

/* Hands one record to the sink under a ring ticket. rec->value is the
 * sink's from here on. 0, 1 (stopped) or -1 with err. */
static int produce(obx_txn_t *t, obx_record_t *rec, const row_ref_t *ref, obx_err_t *err)
{
    char desc[600];
    if (obx_lsn_ring_add(t->ring, &rec->ticket) != 0) {
        free(rec->value);
        set_err(err, OBX_ERR_RETRIABLE, 0, "out of memory tracking in-flight transaction");
        return -1;
    }
    rec->partition = -1;
    switch (t->sink.produce(t->sink.ctx, rec, err)) {
    case OBX_SINK_SENT:
        atomic_fetch_add(&t->m->events_published, 1);
        return 0;
    case OBX_SINK_SKIPPED:
        /* Already in Kafka: nothing to wait for, still confirmable. */
        obx_lsn_ring_ack(t->ring, rec->ticket);
        atomic_fetch_add(&t->m->events_skipped_duplicate, 1);
        obx_debug("dedup_skip", "%s already in %s [%d]", describe(t, ref, desc, sizeof(desc)), rec->topic,
                  (int)rec->partition);
        return 0;
    case OBX_SINK_REJECTED:
        /* Refused before sending (e.g. larger than kafka.message.max.bytes):
         * the ticket stays pending, so nothing past it is confirmed. */
        describe(t, ref, desc, sizeof(desc));
        snprintf(t->fail_desc, sizeof(t->fail_desc), "Kafka refused %.300s for topic %.200s: %.200s", desc, rec->topic,
                 err->msg);
        snprintf(t->fail_reason, sizeof(t->fail_reason), "%.250s", err->msg);
        t->failed = 1;
        t->retriable = 0;
        t->fail_pos = rec->pos;
        t->has_pos = 1;
        return obx_txn_check(t, err);
    case OBX_SINK_STOPPED:
        return 1;
    case OBX_SINK_FAILED:
    default:
        return -1;
    }
}

static const char *col_or(const obx_w2j_change_t *chg, const char *name, const char *dflt)
{
    const obx_col_t *c = *name ? obx_w2j_col(chg, name) : NULL;
    return c && c->value ? c->value : dflt;
}

static obx_source_t source_of(const obx_txn_t *t, const obx_w2j_change_t *chg)
{
    obx_source_t src = {
        .commit_lsn = t->lsn, .commit_end_lsn = t->end, .change_lsn = chg->lsn,
        .index_in_txn = t->index, .xid = t->xid, .commit_time_us = t->time_us,
        /* The outbox's identity, also for a row of one of its partitions. */
        .database = t->database, .schema = t->cfg->outbox_schema, .table = t->cfg->outbox_table,
        .slot = t->cfg->slot_name, .system_id = t->system_id,
    };
    (void)chg;
    return src;
}

/* poison.policy = dead-letter: publish what the row has, with the reason.
 * The envelope keeps every readable field; the payload is dropped when it
 * was the problem (too large). */
static int dead_letter(obx_txn_t *t, const obx_w2j_change_t *chg, const char *what, const char *reason,
                       const char *orig_topic, int drop_payload, obx_err_t *err)
{
    const obx_config_t *c = t->cfg;
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
    obx_source_t src = source_of(t, chg);
    obx_record_t rec = {.topic = c->dlq_topic, .dead_letter = 1, .pos = {t->lsn, t->index},
                        .commit_time_us = t->time_us};
    char e[512];
    if (obx_envelope_encode(&row, &src, &rec.value, &rec.value_len, e, sizeof(e)) != 0) {
        set_err(err, OBX_ERR_POISON, OBX_EXIT_POISON, "cannot encode dead letter: %s", e);
        return -1;
    }
    const char *kh[2 * 5] = {"id", row.event_id, "type", row.event_type, "content-type", "text/plain; charset=utf-8",
                             "outboxd-error", reason, "outboxd-original-topic", orig_topic ? orig_topic : ""};
    rec.key = *row.aggregate_id ? row.aggregate_id : row.event_id;
    rec.headers = kh;
    rec.n_headers = 5;
    char refwhat[64];
    snprintf(refwhat, sizeof(refwhat), "dead letter for %s", what);
    row_ref_t ref = {refwhat, row.event_id, row.aggregate_id, chg->lsn};
    obx_warn("dead_letter", "%s id=%s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ") goes to %s: %s", what,
             row.event_id, OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(t->lsn), c->dlq_topic, reason);
    int rc = produce(t, &rec, &ref, err);
    if (rc == 0) atomic_fetch_add(&t->m->events_dead_lettered, 1);
    return rc;
}

/* The row's envelope and Kafka headers; headers parsed once, shared. 0 or
 * -1 with e (the row is poison). */
static int encode_row(obx_txn_t *t, const obx_w2j_change_t *chg, obx_outbox_row_t *row, obx_headers_t *hdrs,
                      obx_record_t *rec, char *e, size_t e_size)
{
    if (row->headers_json && obx_headers_parse(row->headers_json, hdrs, e, e_size) != 0) return -1;
    if (row->trace_props && obx_headers_add_trace(hdrs, row->trace_props, e, e_size) != 0) return -1;
    row->headers = row->headers_json || row->trace_props ? hdrs : NULL;
    obx_source_t src = source_of(t, chg);
    return obx_envelope_encode(row, &src, &rec->value, &rec->value_len, e, e_size);
}

static int reserved_header(const char *k)
{
    return !strcmp(k, "id") || !strcmp(k, "type") || !strcmp(k, "content-type");
}

/* One outbox INSERT, or a message read as one (what names it): map,
 * encode, produce (or dead-letter, or halt). */
static int on_insert(obx_txn_t *t, const obx_w2j_change_t *chg, const char *what_kind, obx_err_t *err)
{
    char e[1024], what[1400];
    obx_pos_t pos = {t->lsn, t->index};
    int pi = known_poison(t, pos), rc;
    obx_outbox_row_t row;
    obx_headers_t hdrs;
    memset(&hdrs, 0, sizeof(hdrs));
    if (obx_outbox_map(t->cfg, chg, &row, e, sizeof(e)) != 0) {
        const obx_col_t *id = obx_w2j_col(chg, t->cfg->col_id);
        if (t->dead_letter) {
            rc = dead_letter(t, chg, what_kind, e, NULL, 0, err);
            goto next;
        }
        snprintf(what, sizeof(what),
                 "%s id=%.200s (change LSN " OBX_LSN_FMT ", commit LSN " OBX_LSN_FMT ", xid %u) cannot become an event: %s",
                 what_kind, id && id->value ? id->value : "NULL", OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(t->lsn), t->xid, e);
        return halt_poison(t, what, err);
    }
    obx_record_t rec = {.topic = row.topic, .key = row.aggregate_id, .pos = pos, .commit_time_us = t->time_us};
    if (pi >= 0) {
        rc = dead_letter(t, chg, what_kind, t->poison[pi].reason, row.topic, 1, err);
    } else if (encode_row(t, chg, &row, &hdrs, &rec, e, sizeof(e)) != 0) {
        if (t->dead_letter) {
            rc = dead_letter(t, chg, what_kind, e, row.topic, 0, err);
        } else {
            snprintf(what, sizeof(what), "%s id=%.200s (change LSN " OBX_LSN_FMT ") cannot be encoded: %s", what_kind,
                     row.event_id, OBX_LSN_ARGS(chg->lsn), e);
            rc = halt_poison(t, what, err);
        }
    } else {
        const char *kh[2 * MAX_KHEADERS] = {"id", row.event_id, "type", row.event_type,
                                            "content-type", obx_payload_content_type(row.payload_kind)};
        size_t nk = 3;
        for (size_t i = 0; i < hdrs.n; i++) {
            /* outboxd's own three stay the only ones of their names: Kafka
             * clients read the last header of a name, so a row's "id" would
             * pass for the event id. The envelope keeps the row's member. */
            if (reserved_header(hdrs.kv[2 * i])) continue;
            kh[2 * nk] = hdrs.kv[2 * i];
            kh[2 * nk + 1] = hdrs.kv[2 * i + 1];
            nk++;
        }
        rec.headers = kh;
        rec.n_headers = nk;
        row_ref_t ref = {what_kind, row.event_id, row.aggregate_id, chg->lsn};
        rc = produce(t, &rec, &ref, err);
    }
    obx_headers_clear(&hdrs);
    obx_outbox_row_clear(&row);
next:
    if (rc == 0) t->index++;
    return rc;
}

static int on_begin(obx_txn_t *t, const obx_w2j_change_t *chg, obx_err_t *err)
{
    if (obx_lsn_ring_begin(t->ring) != 0) {
        set_err(err, OBX_ERR_RETRIABLE, 0, "protocol: BEGIN inside a transaction at " OBX_LSN_FMT,
                    OBX_LSN_ARGS(chg->lsn));
        return -1;
    }
    obx_lsn_ring_set_time(t->ring, chg->commit_time_us);
    t->lsn = chg->lsn;
    t->end = chg->nextlsn;
    t->xid = chg->xid;
    t->time_us = chg->commit_time_us;
    t->index = 0;
    return 0;
}

static int on_commit(obx_txn_t *t, const obx_w2j_change_t *chg, obx_err_t *err)
{
    if (obx_lsn_ring_commit(t->ring, chg->nextlsn) != 0) {
        set_err(err, OBX_ERR_RETRIABLE, 0, "protocol: COMMIT outside a transaction at " OBX_LSN_FMT,
                    OBX_LSN_ARGS(chg->lsn));
        return -1;
    }
    if (t->index) atomic_fetch_add(&t->m->transactions, 1);
    return 0;
}

static int is_table(const obx_w2j_change_t *chg, const char *schema, const char *table)
{
    return *table && chg->schema && chg->table && !strcmp(chg->schema, schema) && !strcmp(chg->table, table);
}

static int is_outbox(const obx_txn_t *t, const obx_w2j_change_t *chg)
{
    if (t->outbox) return obx_relset_has(t->outbox, chg->schema, chg->table);
    return is_table(chg, t->cfg->outbox_schema, t->cfg->outbox_table);
}

static const char *kind_name(obx_chg_kind_t k)
{
    switch (k) {
    case OBX_CHG_INSERT: return "an INSERT into";
    case OBX_CHG_UPDATE: return "an UPDATE of";
    case OBX_CHG_DELETE: return "a DELETE from";
    case OBX_CHG_TRUNCATE: return "a TRUNCATE of";
    default: return "a change of";
    }
}

/* Fail closed: wal2json's filter lets through only the outbox, its
 * partitions, the signal table and outboxd's heartbeat messages, so any
 * other change means filter and classification disagree. It is never
 * confirmed past: the relay halts naming it, whatever the poison policy. */
static int unclassified(obx_txn_t *t, const obx_w2j_change_t *chg, obx_err_t *err)
{
    char what[1024];
    if (chg->kind == OBX_CHG_MESSAGE)
        snprintf(what, sizeof(what), "a logical message with prefix \"%.100s\"", chg->prefix ? chg->prefix : "");
    else
        snprintf(what, sizeof(what), "%s %.120s.%.120s, which is neither the outbox %.120s.%.120s, one of its partitions, "
                 "nor the signal table", kind_name(chg->kind), chg->schema ? chg->schema : "?",
                 chg->table ? chg->table : "?", t->cfg->outbox_schema, t->cfg->outbox_table);
    set_err(err, OBX_ERR_POISON, OBX_EXIT_POISON,
            "cannot classify the change at LSN " OBX_LSN_FMT " (commit LSN " OBX_LSN_FMT ", xid %u): %s. outboxd stops "
            "here and does not confirm past this transaction (slot %s stays at or before " OBX_LSN_FMT "). Report it; "
            "to skip the whole transaction on purpose: SELECT pg_replication_slot_advance('%s', '" OBX_LSN_FMT "')",
            OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(t->lsn), t->xid, what, t->cfg->slot_name,
            OBX_LSN_ARGS(t->ring ? obx_lsn_ring_flush_lsn(t->ring) : 0), t->cfg->slot_name, OBX_LSN_ARGS(skip_lsn(t)));
    return -1;
}

static int on_signal(obx_txn_t *t, const obx_w2j_change_t *chg)
{
    const obx_col_t *id = obx_w2j_col(chg, "id"), *type = obx_w2j_col(chg, "type"), *data = obx_w2j_col(chg, "data");
    if (t->sink.start_signal)
        t->sink.start_signal(t->sink.ctx, id && id->value ? id->value : "?", type ? type->value : NULL,
                             data ? data->value : NULL);
    return 0;
}

/* A non-transactional message with the outbox prefix: not atomic with its
 * producer's transaction (decoded even when it rolled back), so poison.
 * Decoders deliver it outside any transaction: dead-lettering it then takes
 * a transaction of its own, confirmable at the message's LSN, which both
 * decoders report as the record's end: on a restart the server skips a
 * message that starts before the confirmed LSN, and nothing after it. */
static int non_transactional(obx_txn_t *t, const obx_w2j_change_t *chg, obx_message_t *msg, obx_err_t *err)
{
    static const char why[] = "a non-transactional logical message with the outbox prefix: it is not atomic with its "
                              "producer's transaction (emit outbox events with transactional = true, e.g. outbox_emit())";
    const obx_col_t *id = obx_w2j_col(&msg->chg, t->cfg->col_id);
    int own = !obx_lsn_ring_in_txn(t->ring);
    if (own) {
        t->lsn = chg->lsn;
        t->end = chg->lsn;
        t->xid = 0;
        t->index = 0;
    }
    if (!t->dead_letter) {
        char what[1400];
        snprintf(what, sizeof(what), "outbox message id=%.200s at LSN " OBX_LSN_FMT " (prefix \"%.100s\") is %s",
                 id && id->value ? id->value : "?", OBX_LSN_ARGS(chg->lsn), chg->prefix, why);
        return halt_poison(t, what, err);
    }
    if (own && obx_lsn_ring_begin(t->ring) != 0) {
        set_err(err, OBX_ERR_RETRIABLE, 0, "protocol: cannot track the message at " OBX_LSN_FMT, OBX_LSN_ARGS(chg->lsn));
        return -1;
    }
    int rc = dead_letter(t, &msg->chg, "outbox message", why, NULL, 0, err);
    if (rc == 0 && own) {
        t->index++;
        obx_lsn_ring_commit(t->ring, t->end);
    }
    return rc;
}

/* An outbox_emit() message: read as the row it stands for, then relayed
 * like one (malformed content is poison like a row that cannot map). */
static int on_message(obx_txn_t *t, const obx_w2j_change_t *chg, obx_err_t *err)
{
    char e[512], what[1024];
    obx_message_t msg;
    size_t len = chg->content_len ? chg->content_len : (chg->content ? strlen(chg->content) : 0);
    int parsed = obx_message_parse(t->cfg, chg->content, len, chg->lsn, &msg, e, sizeof(e)), rc;
    if (!chg->transactional) {
        rc = non_transactional(t, chg, &msg, err);
    } else if (parsed == 0) {
        rc = on_insert(t, &msg.chg, "outbox message", err);
    } else if (t->dead_letter) {
        rc = dead_letter(t, &msg.chg, "outbox message", e, NULL, 0, err);
        if (rc == 0) t->index++;
    } else {
        snprintf(what, sizeof(what), "outbox message at LSN " OBX_LSN_FMT " (commit LSN " OBX_LSN_FMT ", xid %u) cannot "
                 "become an event: %s", OBX_LSN_ARGS(chg->lsn), OBX_LSN_ARGS(t->lsn), t->xid, e);
        rc = halt_poison(t, what, err);
    }
    obx_message_clear(&msg);
    return rc;
}

int obx_txn_change(obx_txn_t *t, const obx_w2j_change_t *chg, obx_err_t *err)
{
    const obx_config_t *c = t->cfg;
    switch (chg->kind) {
    case OBX_CHG_BEGIN:
        return on_begin(t, chg, err);
    case OBX_CHG_COMMIT:
        return on_commit(t, chg, err);
    case OBX_CHG_MESSAGE:
        /* outbox_emit()'s events; anything else (our heartbeat, whose empty
         * transaction advances the flush LSN, or another tool's messages,
         * which pgoutput does not filter) is not ours. */
        if (chg->prefix && !strcmp(chg->prefix, c->outbox_message_prefix)) return on_message(t, chg, err);
        return 0;
    case OBX_CHG_INSERT:
    case OBX_CHG_UPDATE:
    case OBX_CHG_DELETE:
    case OBX_CHG_TRUNCATE:
        if (is_table(chg, c->outbox_schema, c->signal_table))
            return chg->kind == OBX_CHG_INSERT ? on_signal(t, chg) : 0;
        if (!is_outbox(t, chg)) return unclassified(t, chg, err);
        if (chg->kind == OBX_CHG_INSERT) return on_insert(t, chg, "outbox row", err);
        /* Updates, deletes, truncates of the outbox are not events. */
        atomic_fetch_add(&t->m->events_ignored, 1);
        return 0;
    default:
        return unclassified(t, chg, err);
    }
}

void obx_txn_keepalive(obx_txn_t *t, obx_lsn_t wal_end)
{
    if (t->ring) obx_lsn_ring_keepalive(t->ring, wal_end);
}
