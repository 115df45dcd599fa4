/* One relay session (stream.h): slot -> core -> Kafka, and the only place
 * that tells the server what may be confirmed. */
#include "stream.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aux.h"
#include "clock.h"
#include "dedup.h"
#include "evidence.h"
#include "kconf.h"
#include "log.h"
#include "pg.h"
#include "pg_repl.h"
#include "pgoutput.h"
#include "producer.h"
#include "publication.h"
#include "relset.h"
#include "wal2json.h"

/* Feedback within this long after the flush LSN moves: the slot keeps up
 * closely (less WAL held, a smaller replay window after a crash). */
#define FEEDBACK_MOVED_MS 100
#define PROGRESS_MS 60000
/* How often the outbox's partitions are re-read; the slot is confirmed no
 * further than the WAL position of the last read that found them unchanged,
 * so while that fence holds confirmation back they are re-read sooner. */
#define RELATIONS_MS 1000
#define RELATIONS_BLOCKED_MS FEEDBACK_MOVED_MS
/* How often the confirmed position is recorded in the slot evidence topic. */
#define EVIDENCE_MS 10000
/* While dedup reads Kafka the server's keepalive requests go unread, so a
 * status update goes out at least this often whatever status.interval_ms
 * says (a wal_sender_timeout below it must not end the session). */
#define READBACK_STATUS_MS 1000

typedef struct {
    obx_relay_proc_t *p;
    const obx_config_t *cfg;
    obx_aux_t *aux;
    obx_repl_t *repl;
    obx_producer_t *prod;
    obx_dedup_t *dedup;
    obx_pgo_t *pgo;           /* decoder = pgoutput: its relation cache */
    int streaming;            /* START_REPLICATION succeeded */
    obx_lsn_t write_lsn, sent_flush;
    int64_t last_status_ms;
    int64_t stop_deadline;    /* set when a stop request arrives mid-transaction */
    int backpressured;
    obx_period_t progress;
    const char *event;        /* log token of the failure, when known */
    /* The outbox's relations (table + leaf partitions) in wal2json's filter,
     * and the fence: no partition committed before it is missing there. */
    obx_relset_t *rels;       /* p->rels, borrowed */
    obx_lsn_t fence;
    obx_period_t rel_check;
    obx_wal_mark_t mark;      /* the fence-to-be, once its transactions ended */
    int mark_pending;
    /* Kafka-kept evidence that this slot has published (evidence.h). */
    obx_evidence_writer_t *evidence;
    obx_lsn_t evidence_lsn;
    obx_lsn_t wal_end;        /* the server's WAL end once the slot was ours (check_wal_end) */
    obx_period_t evidence_period;
    int tick_failed;          /* a status update during the read-back failed: */
    obx_err_t tick_err;       /* ... why; the sink reports it */
    uint64_t sec_acked;       /* events_acked when Kafka refusals were last forgotten */
} session_t;

static void set_state(session_t *s, obx_state_t st) { atomic_store(&s->p->m->state, (int)st); }

static int failed(session_t *s, const char *event)
{
    s->event = event;
    return -1;
}

static void update_gauges(session_t *s)
{
    obx_metrics_t *m = s->p->m;
    const obx_lsn_ring_t *ring = obx_txn_ring(s->p->core);
    atomic_store(&m->last_loop_us, obx_now_us());
    if (!ring) return;
    atomic_store(&m->inflight_events, (int64_t)obx_lsn_ring_inflight_msgs(ring));
    atomic_store(&m->inflight_transactions, (int64_t)obx_lsn_ring_inflight_txns(ring));
    atomic_store(&m->received_lsn, s->write_lsn);
    int64_t ft = obx_lsn_ring_flush_time(ring);
    if (ft > atomic_load(&m->newest_confirmed_commit_us)) atomic_store(&m->newest_confirmed_commit_us, ft);
}

/* The standby status update, like receivelog.c's sendFeedback: write =
 * highest received, flush = apply = the core's flush LSN. Sent at least
 * every status.interval_ms, soon after the flush moves, and at once when
 * forced (server asked, shutdown). */
static int send_feedback(session_t *s, int force, obx_err_t *err)
{
    obx_lsn_t flush = obx_txn_flush_lsn(s->p->core);
    /* Past the fence a partition created since may hold rows the filter
     * did not let through: never confirm what was not classified. */
    if (flush > s->fence) flush = s->fence;
    if (flush < s->sent_flush) flush = s->sent_flush;
    int64_t now = obx_mono_ms(), since = now - s->last_status_ms;
    if (!force && since < s->cfg->status_interval_ms && !(flush != s->sent_flush && since >= FEEDBACK_MOVED_MS))
        return 0;
    if (s->write_lsn < flush) s->write_lsn = flush;
    if (obx_repl_send_status(s->repl, s->write_lsn, flush, flush, err) != 0) return failed(s, "pg_lost");
    if (flush != s->sent_flush) obx_debug("lsn_confirmed", "confirmed flush LSN " OBX_LSN_FMT, OBX_LSN_ARGS(flush));
    s->sent_flush = flush;
    if (flush > s->p->confirmed) s->p->confirmed = flush;
    s->last_status_ms = now;
    atomic_fetch_add(&s->p->m->status_updates, 1);
    atomic_store(&s->p->m->confirmed_lsn, flush);
    return 0;
}

/* A stop request waits for the open transaction's COMMIT (bounded by
 * shutdown.timeout_ms): stopping mid-transaction would leave its produced
 * rows unconfirmable, and a restart would send them twice. */
static int must_stop(session_t *s)
{
    if (!*s->p->stop) return 0;
    if (!obx_txn_open(s->p->core)) return 1;
    int64_t now = obx_mono_ms();
    if (!s->stop_deadline) {
        s->stop_deadline = now + s->cfg->shutdown_timeout_ms;
        obx_info("stopping", "stop requested inside transaction xid %u: reading to its commit first",
                 obx_txn_xid(s->p->core));
    }
    return now >= s->stop_deadline;
}

static void dr_cb(void *opaque, uint64_t ticket, const char *err, int retriable, const char *topic, const void *value,
                  size_t value_len)
{
    session_t *s = opaque;
    obx_txn_delivered(s->p->core, ticket, err, retriable, topic, value, value_len);
}

static void backpressure(session_t *s, int on)
{
    if (on == s->backpressured) return;
    s->backpressured = on;
    if (on) {
        atomic_fetch_add(&s->p->m->backpressure_episodes, 1);
        set_state(s, OBX_STATE_BACKPRESSURED);
        obx_debug("backpressure_on", "Kafka queue full (%d); pausing the slot", obx_producer_outq_len(s->prod));
    } else {
        set_state(s, OBX_STATE_STREAMING);
        obx_debug("backpressure_off", "Kafka queue drained; reading the slot again");
    }
}

/* While the queue is full: stop reading the slot, serve delivery reports,
 * keep the connection alive with status updates. */
static obx_sink_rc_t wait_for_room(session_t *s, obx_err_t *err)
{
    backpressure(s, 1);
    obx_producer_poll(s->prod, 50);
    update_gauges(s);
    if (obx_txn_check(s->p->core, err) != 0) return OBX_SINK_FAILED;
    if (send_feedback(s, 0, err) != 0) return OBX_SINK_FAILED;
    if (must_stop(s)) return OBX_SINK_STOPPED;
    return OBX_SINK_SENT;
}

/* dedup's progress callback: acks are served and the server hears from us
 * while the read-back waits on Kafka. A failure stops the read-back. */
static int readback_tick(void *ctx)
{
    session_t *s = ctx;
    if (s->tick_failed) return -1;
    obx_producer_poll(s->prod, 0);
    update_gauges(s);
    if (send_feedback(s, obx_mono_ms() - s->last_status_ms >= READBACK_STATUS_MS, &s->tick_err) != 0) {
        s->tick_failed = 1;
        return -1;
    }
    return 0;
}

/* The core's sink: exactly-once read-back, then librdkafka. */
static obx_sink_rc_t sink_produce(void *ctx, obx_record_t *rec, obx_err_t *err)
{
    session_t *s = ctx;
    char e[1024];
    obx_sink_rc_t rc = OBX_SINK_SENT;
    if (s->dedup) {
        int d = obx_dedup_check(s->dedup, rec->topic, rec->key, rec->pos, rec->commit_time_us, &rec->partition, err);
        if (s->tick_failed) {
            *err = s->tick_err; /* the connection, not Kafka, ended it (send_feedback named it) */
            d = -1;
        } else if (d < 0) {
            failed(s, "dedup");
        }
        if (d != 0) {
            free(rec->value);
            return d < 0 ? OBX_SINK_FAILED : OBX_SINK_SKIPPED;
        }
    }
    /* The partition count the key was mapped with goes along, so a later
     * read-back can tell that partitions were added since (dedup.h). */
    const char *const *hdrs = rec->headers;
    const char **with_parts = NULL;
    size_t n_hdrs = rec->n_headers;
    char parts[16];
    if (s->dedup && rec->partition != RD_KAFKA_PARTITION_UA) {
        if (!(with_parts = malloc(2 * (n_hdrs + 1) * sizeof(*with_parts)))) {
            free(rec->value);
            obx_err_clear(err);
            obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
            return OBX_SINK_FAILED;
        }
        if (n_hdrs) memcpy(with_parts, rec->headers, 2 * n_hdrs * sizeof(*with_parts));
        snprintf(parts, sizeof(parts), "%d", (int)obx_dedup_partition_count(s->dedup, rec->topic));
        with_parts[2 * n_hdrs] = OBX_DEDUP_PARTS_HEADER;
        with_parts[2 * n_hdrs + 1] = parts;
        hdrs = with_parts;
        n_hdrs++;
    }
    for (;;) {
        obx_produce_rc_t pr = obx_producer_send(s->prod, rec->topic, rec->partition, rec->key, rec->value,
                                                rec->value_len, hdrs, n_hdrs, rec->ticket, e, sizeof(e));
        if (pr == OBX_PRODUCE_OK) break;
        if (pr == OBX_PRODUCE_QUEUE_FULL) {
            if ((rc = wait_for_room(s, err)) != OBX_SINK_SENT) break;
            continue;
        }
        obx_err_clear(err);
        if (pr == OBX_PRODUCE_FAILED) {
            obx_err_set(err, OBX_ERR_RETRIABLE, 0, "producer failed: %s; restarting the pipeline", e);
            failed(s, "kafka_failed");
            rc = OBX_SINK_FAILED;
        } else {
            obx_err_set(err, OBX_ERR_POISON, OBX_EXIT_POISON, "%s", e);
            rc = OBX_SINK_REJECTED;
        }
        break;
    }
    free(with_parts);
    if (rc != OBX_SINK_SENT) {
        free(rec->value);
        return rc;
    }
    backpressure(s, 0);
    return OBX_SINK_SENT;
}

static void sink_signal(void *ctx, const char *id, const char *type, const char *data)
{
    session_t *s = ctx;
    obx_signals_start(s->p->signals, id, type, data);
}

/* A failed START_REPLICATION or stream, by SQLSTATE: 55006 slot in use
 * (stand by), 42704 slot gone or 55000 slot invalidated (exit 4); the
 * rest is retried. */
static int slot_failure(session_t *s, obx_err_t *err, const char *what)
{
    char old[sizeof(err->msg)];
    memcpy(old, err->msg, sizeof(old));
    if (obx_err_is_sqlstate(err, OBX_SQLSTATE_OBJECT_IN_USE)) {
        err->cls = OBX_ERR_RETRIABLE;
        return failed(s, "standby");
    }
    if (s->pgo && obx_err_is_sqlstate(err, OBX_SQLSTATE_UNDEFINED_OBJECT) && obx_publication_gone(s->aux ? obx_aux_conn(s->aux) : NULL, s->cfg, old, err))
        return failed(s, "publication");
    if (obx_err_is_sqlstate(err, OBX_SQLSTATE_UNDEFINED_OBJECT) || obx_err_is_sqlstate(err, OBX_SQLSTATE_NOT_IN_PREREQ)) {
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_SLOT,
                    "slot %s cannot stream: %.700s. Recover: outboxd slot drop, restart outboxd (new slot), and re-emit "
                    "current state with a snapshot",
                    s->cfg->slot_name, old);
        return failed(s, "slot_lost");
    }
    obx_err_set(err, OBX_ERR_RETRIABLE, 0, "%s on slot %s failed: %.800s", what, s->cfg->slot_name, old);
    return failed(s, !strcmp(what, "START_REPLICATION") ? "start_replication" : "pg_lost");
}

/* Logical messages the relay reads: the heartbeat's and outbox_emit()'s.
 * wal2json filters by add-msg-prefixes on the server (whole prefixes;
 * add-tables does not filter messages); pgoutput sends every one, so the
 * stream drops the rest: the same set either way. */
static int prefix_wanted(const session_t *s, const char *prefix)
{
    return prefix && (!strcmp(prefix, OBX_HEARTBEAT_PREFIX) || !strcmp(prefix, s->cfg->outbox_message_prefix));
}

/* wal2json: add-tables (the outbox, its partitions, the signal table) and
 * add-msg-prefixes. pgoutput: the publication, logical messages, text
 * values; proto_version 1 is what every server since 10 speaks. */
static int start_replication(session_t *s, obx_err_t *err)
{
    char *arg = s->pgo ? obx_pg_quote_ident(obx_config_publication(s->cfg))
                       : obx_relset_add_tables(s->rels, s->cfg->outbox_schema, s->cfg->signal_table);
    if (!arg) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return failed(s, "oom");
    }
    /* Messages: the heartbeat's and outbox_emit()'s (add-tables does not
     * filter messages; add-msg-prefixes matches whole prefixes). */
    char prefixes[sizeof(OBX_HEARTBEAT_PREFIX) + OBX_MESSAGE_PREFIX_MAX + 1]; /* config bounds the prefix: never cut */
    snprintf(prefixes, sizeof(prefixes), "%s,%s", OBX_HEARTBEAT_PREFIX, s->cfg->outbox_message_prefix);
    const char *w2j[] = {
        "format-version", "2", "include-xids", "1", "include-lsn", "1", "include-timestamp", "1",
        "include-typmod", "0", "add-tables", arg, "add-msg-prefixes", prefixes,
    };
    const char *pgo[] = {"proto_version", "1", "publication_names", arg, "messages", "true"};
    int rc = obx_repl_start(s->repl, s->cfg->slot_name, s->p->confirmed, s->pgo ? pgo : w2j,
                            s->pgo ? sizeof(pgo) / sizeof(pgo[0]) / 2 : sizeof(w2j) / sizeof(w2j[0]) / 2, err);
    free(arg);
    if (rc != 0) return slot_failure(s, err, "START_REPLICATION");
    s->streaming = 1;
    return 0;
}

/* A slot that has published and is gone (failover to a standby without it,
 * an operator's drop) is never replaced silently: Kafka keeps the evidence
 * (evidence.h), and only a slot without any is created. */
static int guard_vanished_slot(session_t *s, obx_err_t *err)
{
    char e[1024], key[512], when[64];
    obx_slot_info_t si;
    if (obx_slot_inspect(obx_aux_conn(s->aux), s->cfg->slot_name, &si, e, sizeof(e)) != 0) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "%s", e);
        return failed(s, "pg_query");
    }
    if (si.exists || !s->cfg->slot_create) return 0;
    obx_evidence_key(s->p->pg.sysid, s->p->pg.database, s->cfg->slot_name, key, sizeof(key));
    obx_evidence_t ev;
    if (obx_evidence_read(s->cfg, key, &ev, err) != 0) {
        obx_err_prefix(err, "slot %s does not exist and Kafka cannot tell whether it has published before (so it "
                       "is not created yet)", s->cfg->slot_name);
        return failed(s, "slot_evidence");
    }
    if (!ev.found) return 0; /* a first start */
    time_t secs = (time_t)(ev.confirmed_at_us / 1000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_SLOT,
                "replication slot %s does not exist on this server, but Kafka topic %s records that it published from "
                "database %s: it had confirmed up to LSN " OBX_LSN_FMT " at %s. Events committed since then (after that "
                "LSN) may be missing from Kafka: the slot was dropped, or this is a promoted standby that never had it. "
                "outboxd does not create a new slot silently. Recover: re-emit the current state of the affected "
                "aggregates with outboxd snapshot (or a reconcile with --where on rows changed since %s), then run "
                "outboxd slot create and start outboxd again",
                s->cfg->slot_name, s->cfg->slot_evidence_topic, s->p->pg.database, OBX_LSN_ARGS(ev.confirmed_lsn), when,
                when);
    return failed(s, "slot_lost");
}

/* The slot exists, uses wal2json and is not lost; its position is ours. */
static int check_slot(session_t *s, obx_err_t *err)
{
    char e[1024];
    obx_slot_info_t slot;
    if (guard_vanished_slot(s, err) != 0) return -1;
    int rc = obx_slot_ensure(obx_aux_conn(s->aux), s->cfg, &slot, e, sizeof(e));
    if (rc) {
        obx_err_clear(err);
        obx_err_set(err, rc == OBX_EXIT_FAIL ? OBX_ERR_RETRIABLE : OBX_ERR_FATAL, rc, "%s", e);
        return failed(s, rc == OBX_EXIT_FAIL ? "pg_query" : rc == OBX_EXIT_SLOT ? "slot_lost" : "slot");
    }
    /* Never send a flush below the slot's own: PG 15 would move it back. */
    if (slot.confirmed_flush > s->p->confirmed) s->p->confirmed = slot.confirmed_flush;
    return 0;
}

/* Once the slot is ours: a position outboxd confirmed past the end of this
 * server's WAL was decoded from WAL it never had (an async standby
 * promoted). Streaming from there would skip the new primary's
 * transactions below it, and the slot would be confirmed past its own WAL:
 * exit 4 instead. The end also bounds the read-back (dedup.h). */
static int check_wal_end(session_t *s, obx_err_t *err)
{
    if (obx_wal_end(obx_aux_conn(s->aux), &s->wal_end, err) != 0) return failed(s, "pg_query");
    if (!s->wal_end || s->p->confirmed <= s->wal_end) return 0;
    s->streaming = 0; /* no status update: it would confirm the slot past this server's WAL */
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_SLOT,
                "slot %s: outboxd has confirmed up to LSN " OBX_LSN_FMT ", but this server's WAL ends at " OBX_LSN_FMT
                ": it lacks WAL outboxd has read (a standby promoted before it received it, or a restored backup). "
                "Events committed after " OBX_LSN_FMT " on the old server may be in Kafka but not in this database, "
                "and this server's new transactions below " OBX_LSN_FMT " would be skipped. outboxd stops rather than "
                "skip them. Recover: docs/operations.md, Failover (a standby that lagged)",
                s->cfg->slot_name, OBX_LSN_ARGS(s->p->confirmed), OBX_LSN_ARGS(s->wal_end),
                OBX_LSN_ARGS(s->wal_end), OBX_LSN_ARGS(s->p->confirmed));
    return failed(s, "slot_diverged");
}

static int open_kafka(session_t *s, obx_err_t *err)
{
    char e[1024];
    s->prod = obx_producer_new(s->cfg, dr_cb, s, e, sizeof(e));
    if (!s->prod) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "%s", e);
        return failed(s, "kafka_producer");
    }
    char key[512];
    obx_evidence_key(s->p->pg.sysid, s->p->pg.database, s->cfg->slot_name, key, sizeof(key));
    /* Recorded before the first event: a slot that publishes is known to. */
    if (!(s->evidence = obx_evidence_writer_new(s->cfg, key, err)) ||
        obx_evidence_write_sync(s->evidence, s->p->confirmed, 10000, err) != 0)
        return failed(s, "slot_evidence");
    s->evidence_lsn = s->p->confirmed;
    obx_period_init(&s->evidence_period, EVIDENCE_MS);
    obx_period_touch(&s->evidence_period, obx_mono_ms());
    if (s->cfg->exactly_once) {
        s->dedup = obx_dedup_new(s->cfg, obx_producer_rk(s->prod), s->cfg->slot_name, s->p->pg.database,
                                 s->p->pg.sysid, readback_tick, s, err);
        if (!s->dedup) return failed(s, "kafka_consumer");
        obx_dedup_set_horizon(s->dedup, s->wal_end);
    }
    return 0;
}

static int load_relations(session_t *s, obx_err_t *err);

/* decoder = pgoutput: 1 when the publication changed since this process
 * began to stream (err set, exit 2), 0 unchanged, -1 query error (err). */
static int publication_changed(session_t *s, obx_err_t *err)
{
    if (strcmp(s->cfg->decoder, "pgoutput")) return 0;
    return obx_publication_unchanged(obx_aux_conn(s->aux), s->cfg, s->p->pub_identity, sizeof(s->p->pub_identity),
                                     s->fence, err);
}

/* pgoutput names column types by OID: looked up on the aux connection. */
static int resolve_type(void *ctx, uint32_t oid, char *name, size_t name_size, obx_err_t *err)
{
    session_t *s = ctx;
    return obx_publication_type_name(obx_aux_conn(s->aux), oid, name, name_size, err);
}

static int session_open(session_t *s, obx_err_t *err)
{
    obx_relay_proc_t *p = s->p;
    if (!(s->aux = obx_aux_new(s->cfg, p->m, err))) return failed(s, "pg_connect");
    if (check_slot(s, err) != 0) return -1;
    int pc = publication_changed(s, err);
    if (pc != 0) return failed(s, pc > 0 ? "publication" : "pg_query");
    if (load_relations(s, err) != 0) return -1;
    if (!(s->repl = obx_repl_connect(s->cfg->pg_conninfo, err))) return failed(s, "pg_connect");
    if (!strcmp(s->cfg->decoder, "pgoutput") && !(s->pgo = obx_pgo_new(resolve_type, s))) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return failed(s, "oom");
    }
    obx_txn_sink_t sink = {.ctx = s, .produce = sink_produce, .start_signal = sink_signal};
    if (obx_txn_session_start(p->core, p->confirmed, sink) != 0) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return failed(s, "oom");
    }
    if (start_replication(s, err) != 0 || check_wal_end(s, err) != 0 || open_kafka(s, err) != 0) return -1;
    /* Only the process that holds the slot resumes interrupted snapshots: a
     * hot standby would run a second copy. */
    if (!p->signals_resumed) {
        p->signals_resumed = 1;
        obx_signals_resume(p->signals);
    }
    s->write_lsn = s->sent_flush = p->confirmed;
    obx_period_init(&s->progress, PROGRESS_MS);
    obx_period_touch(&s->progress, obx_mono_ms());
    atomic_store(&p->m->pg_connected, 1);
    atomic_store(&p->m->confirmed_lsn, p->confirmed);
    set_state(s, OBX_STATE_STREAMING);
    obx_kconf_security_clear(); /* the read-back reached Kafka */
    obx_info("streaming", "streaming slot %s from " OBX_LSN_FMT " (table %s.%s, %s)", s->cfg->slot_name,
             OBX_LSN_ARGS(p->confirmed), s->cfg->outbox_schema, s->cfg->outbox_table,
             s->cfg->exactly_once ? "exactly-once" : "at-least-once");
    return send_feedback(s, 1, err);
}

static void progress(session_t *s)
{
    obx_metrics_t *m = s->p->m;
    if (!obx_period_due(&s->progress, obx_mono_ms())) return;
    obx_info("progress",
             "slot %s: %llu events published, %llu acked, %llu skipped as already in Kafka, in flight %llu, confirmed " OBX_LSN_FMT,
             s->cfg->slot_name, (unsigned long long)atomic_load(&m->events_published),
             (unsigned long long)atomic_load(&m->events_acked),
             (unsigned long long)atomic_load(&m->events_skipped_duplicate),
             (unsigned long long)obx_lsn_ring_inflight_msgs(obx_txn_ring(s->p->core)),
             OBX_LSN_ARGS(obx_txn_flush_lsn(s->p->core)));
}

/* One message from the server. 0, 1 (stop requested inside), -1 (err). */
static int process_message(session_t *s, const obx_repl_msg_t *m, obx_w2j_change_t *chg, obx_err_t *err)
{
    if (m->wal_end > s->write_lsn) s->write_lsn = m->wal_end;
    if (m->kind != OBX_REPL_XLOGDATA) {
        obx_txn_keepalive(s->p->core, m->wal_end);
        return m->reply_requested ? send_feedback(s, 1, err) : 0;
    }
    if (m->data_start > s->write_lsn) s->write_lsn = m->data_start;
    char e[512];
    if (s->pgo) {
        int rc = obx_pgo_parse(s->pgo, m->data, m->len, m->data_start, chg, err);
        if (rc < 0) {
            obx_err_prefix(err, "at LSN " OBX_LSN_FMT, OBX_LSN_ARGS(m->data_start));
            return failed(s, err->cls == OBX_ERR_POISON ? "poison_row" : err->cls == OBX_ERR_FATAL ? "pgoutput_parse"
                                                                                                  : "pgoutput");
        }
        /* Relation/Type/Origin, and logical messages wal2json's filter drops. */
        if (rc == 1 || (chg->kind == OBX_CHG_MESSAGE && !prefix_wanted(s, chg->prefix))) return 0;
        return obx_txn_change(s->p->core, chg, err);
    }
    if (obx_w2j_parse(m->data, m->len, chg, e, sizeof(e)) != 0) {
        /* The plugin's own output is malformed: nothing a retry fixes. */
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "at LSN " OBX_LSN_FMT ": %s: %.*s", OBX_LSN_ARGS(m->data_start),
                    e, (int)(m->len < 200 ? m->len : 200), m->data);
        return failed(s, "wal2json_parse");
    }
    return obx_txn_change(s->p->core, chg, err);
}

/* The filter at session start: the partition tree now, plus relations that
 * left it while their rows may still be unconfirmed (carried in p->rels).
 * Nothing past the confirmed LSN is confirmable until a mark completes. */
static int load_relations(session_t *s, obx_err_t *err)
{
    PGconn *c = obx_aux_conn(s->aux);
    obx_relset_t *now = obx_relset_new();
    int rc = -1;
    if (!now) obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
    else if (obx_wal_mark(c, &s->mark, err) == 0 && obx_outbox_relations(c, s->cfg, now, err) == 0 &&
             obx_relset_merge(s->p->rels, now, s->p->rels, s->mark.lsn, s->p->confirmed) == 0)
        rc = 0;
    obx_relset_destroy(now);
    if (rc != 0) return failed(s, "pg_query");
    s->rels = s->p->rels;
    obx_txn_set_outbox(s->p->core, s->rels);
    s->fence = s->p->confirmed;
    s->mark_pending = 1;
    obx_period_init(&s->rel_check, RELATIONS_MS);
    obx_period_touch(&s->rel_check, obx_mono_ms());
    return 0;
}

/* Re-reads the outbox's partitions. Unchanged: the fence moves to the new
 * position. Changed (a partition created, attached or detached): the
 * session restarts from the confirmed LSN with the new filter, so the new
 * leaf's rows, all after the old fence, are decoded again and relayed. */
static int check_relations(session_t *s, int force, obx_err_t *err)
{
    PGconn *c = s->aux ? obx_aux_conn(s->aux) : NULL;
    if (!c || PQstatus(c) != CONNECTION_OK) return 0;
    int64_t now_ms = obx_mono_ms();
    int blocked = obx_txn_flush_lsn(s->p->core) > s->fence && now_ms - s->rel_check.last_ms >= RELATIONS_BLOCKED_MS;
    if (force || blocked)
        obx_period_touch(&s->rel_check, now_ms);
    else if (!obx_period_due(&s->rel_check, now_ms))
        return 0;
    obx_err_t e;
    int done = 0;
    if (!s->mark_pending) {
        s->mark_pending = obx_wal_mark(c, &s->mark, &e) == 0;
        if (!force || !s->mark_pending) return 0;
    }
    /* Transactions running at the mark may still commit partitions (one
     * waiting for a synchronous standby already has its commit in the WAL). */
    if (obx_wal_mark_done(c, &s->mark, &done, &e) != 0 || !done) return 0;
    /* After the mark: an unchanged publication now covers every change
     * before it, so the fence may move there. */
    int pc = publication_changed(s, &e);
    if (pc > 0) {
        *err = e;
        return failed(s, "publication");
    }
    if (pc < 0) return 0;
    obx_relset_t *now = obx_relset_new(), *next = obx_relset_new();
    int rc = 0;
    if (!now || !next || obx_outbox_relations(c, s->cfg, now, &e) != 0 ||
        obx_relset_merge(next, now, s->rels, s->mark.lsn, s->p->confirmed) != 0) {
        obx_debug("outbox_relations", "%s", now && next ? e.msg : "out of memory"); /* the fence waits */
    } else if (obx_relset_equal(next, s->rels)) {
        if (s->mark.lsn > s->fence) s->fence = s->mark.lsn;
        s->mark_pending = 0;
    } else {
        size_t before = obx_relset_count(s->rels);
        if (obx_relset_assign(s->p->rels, next) == 0) {
            obx_err_clear(err);
            obx_err_set(err, OBX_ERR_RETRIABLE, 0,
                        "the partitions of outbox %s.%s changed (%zu relations in the filter now, %zu before): "
                        "restarting the stream from " OBX_LSN_FMT " with the new filter",
                        s->cfg->outbox_schema, s->cfg->outbox_table, obx_relset_count(next), before,
                        OBX_LSN_ARGS(s->sent_flush));
            rc = failed(s, "outbox_partitions");
        }
    }
    obx_relset_destroy(now);
    obx_relset_destroy(next);
    return rc;
}

static void record_evidence(session_t *s)
{
    if (s->p->confirmed == s->evidence_lsn || !obx_period_due(&s->evidence_period, obx_mono_ms())) return;
    obx_evidence_write_async(s->evidence, s->p->confirmed);
    s->evidence_lsn = s->p->confirmed;
}

/* Between reads: delivery reports, failures, feedback, aux, progress. */
static int housekeeping(session_t *s, obx_err_t *err)
{
    char e[1024];
    update_gauges(s);
    if (obx_txn_check(s->p->core, err) != 0) return -1;
    if (obx_producer_fatal(s->prod, e, sizeof(e))) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "producer fatal error: %s; restarting the pipeline", e);
        return failed(s, "kafka_fatal");
    }
    /* A refusal mid-session (a password rotated on the cluster, a broker
     * reconnecting) never ends the session by itself: exactly_once waits
     * for acks forever. Acks arriving mean some broker still takes us. */
    obx_dedup_serve_errors(s->dedup);
    uint64_t acked = atomic_load(&s->p->m->events_acked);
    if (acked != s->sec_acked) {
        s->sec_acked = acked;
        obx_kconf_security_clear();
    } else if (obx_kconf_security_failed(OBX_KAFKA_SECURITY_REFUSALS, err)) {
        return failed(s, "kafka_security");
    }
    if (send_feedback(s, 0, err) != 0) return -1;
    if (obx_aux_tick(s->aux, s->p->confirmed, err) != 0) return failed(s, "slot_lost");
    if (check_relations(s, 0, err) != 0) return -1;
    record_evidence(s);
    progress(s);
    return 0;
}

/* poll, receive, process, keepalive, check stop (receivelog.c's shape).
 * 0 when stopped on request, -1 with err. */
static int stream_loop(session_t *s, obx_err_t *err)
{
    obx_w2j_change_t chg;
    memset(&chg, 0, sizeof(chg));
    int since_poll = 0, rc = 0;
    while (rc == 0 && !must_stop(s)) {
        obx_repl_msg_t m;
        int n = obx_repl_next(s->repl, &m, 100, err);
        if (n < 0) {
            rc = slot_failure(s, err, "streaming");
            break;
        }
        if (n == 1) {
            if ((rc = process_message(s, &m, &chg, err)) != 0) break;
            if (m.kind == OBX_REPL_XLOGDATA && ++since_poll >= s->cfg->poll_batch) {
                since_poll = 0;
                obx_producer_poll(s->prod, 0);
                update_gauges(s);
            }
            if (since_poll != 0) continue; /* drain what is buffered before the timers */
        } else {
            since_poll = 0;
            obx_producer_poll(s->prod, 0);
        }
        rc = housekeeping(s, err);
    }
    obx_w2j_change_clear(&chg);
    return rc > 0 ? 0 : rc;
}

/* One teardown for every way a session ends. final: the process stops
 * (wait longer for acks, end the COPY cleanly). */
static void session_close(session_t *s, int final)
{
    obx_err_t err;
    if (final) set_state(s, OBX_STATE_STOPPING);
    if (s->prod) {
        /* Let acks in flight land so they can still be confirmed. */
        int left = obx_producer_flush(s->prod, final ? s->cfg->shutdown_timeout_ms : 2000);
        if (left > 0) obx_warn("kafka_unflushed", "%d messages not acked; they will be re-sent after restart", left);
    }
    if (s->streaming) {
        /* A current fence, so a clean stop confirms all that was acked: the
         * first check may only complete a mark taken earlier (a halt in the
         * session's first second confirmed nothing past the slot's start);
         * the second takes one now. */
        if (final && s->rels) {
            check_relations(s, 1, &err);
            if (obx_txn_flush_lsn(s->p->core) > s->fence) check_relations(s, 1, &err);
        }
        if (send_feedback(s, 1, &err) == 0 && final)
            obx_info("lsn_confirmed", "final confirmed flush LSN " OBX_LSN_FMT, OBX_LSN_ARGS(s->sent_flush));
        if (final) obx_repl_end(s->repl, &err);
    }
    /* The next session starts here: never past the fence (see send_feedback). */
    obx_lsn_t flush = obx_txn_flush_lsn(s->p->core);
    if (flush > s->fence) flush = s->fence;
    if (flush > s->p->confirmed) s->p->confirmed = flush;
    update_gauges(s);
    if (s->evidence && s->p->confirmed != s->evidence_lsn) obx_evidence_write_async(s->evidence, s->p->confirmed);
    obx_evidence_writer_destroy(s->evidence); /* waits up to 2 s for that record */
    obx_dedup_destroy(s->dedup);
    obx_producer_destroy(s->prod); /* before the ring: purges report failures to the core */
    obx_repl_destroy(s->repl);
    obx_pgo_destroy(s->pgo);
    obx_aux_destroy(s->aux);
    obx_txn_session_end(s->p->core);
    obx_txn_set_outbox(s->p->core, NULL);
    obx_wal_mark_clear(&s->mark);
    atomic_store(&s->p->m->pg_connected, 0);
    atomic_store(&s->p->m->kafka_brokers_up, 0);
}

/* The one place a session's failure is logged. */
static void report(session_t *s, const obx_err_t *err)
{
    if (obx_err_is_sqlstate(err, OBX_SQLSTATE_OBJECT_IN_USE)) {
        /* State first: whoever reads the log line sees the port agree. */
        int was = atomic_exchange(&s->p->m->state, OBX_STATE_STANDBY);
        if (was != OBX_STATE_STANDBY)
            obx_info("standby", "slot %s is in use by another process (%s); standing by, retrying every %d ms",
                     s->cfg->slot_name, err->msg, s->cfg->standby_retry_ms);
        return;
    }
    const char *ev = s->event ? s->event
                     : err->cls == OBX_ERR_POISON ? "poison_row"
                     : err->cls == OBX_ERR_FATAL ? "relay_fatal"
                                                 : "kafka_delivery_failed";
    if (err->cls == OBX_ERR_RETRIABLE)
        obx_warn(ev, "%s", err->msg);
    else
        obx_error(ev, "%s", err->msg);
}

int obx_stream_session(obx_relay_proc_t *p, obx_err_t *err)
{
    session_t s;
    memset(&s, 0, sizeof(s));
    s.p = p;
    s.cfg = p->cfg;
    obx_err_clear(err);
    /* A standby stays "standby" while it retries, so probes see it steadily. */
    if (atomic_load(&p->m->state) != OBX_STATE_STANDBY) set_state(&s, OBX_STATE_CONNECTING);
    int rc = session_open(&s, err);
    if (rc == 0) rc = stream_loop(&s, err);
    int fatal = rc != 0 && err->cls != OBX_ERR_RETRIABLE;
    if (rc == 0) obx_info("stopping", "stop requested: flushing Kafka, confirming, ending the stream");
    else report(&s, err);
    session_close(&s, rc == 0 || fatal);
    if (fatal)
        set_state(&s, OBX_STATE_HALTED);
    else if (rc != 0 && obx_err_is_sqlstate(err, OBX_SQLSTATE_OBJECT_IN_USE))
        set_state(&s, OBX_STATE_STANDBY);
    else if (rc != 0 && atomic_load(&p->m->state) != OBX_STATE_STANDBY)
        set_state(&s, OBX_STATE_CONNECTING);
    return rc;
}
