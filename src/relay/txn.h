/* The relay's pure transaction core: decoded changes and delivery reports
 * in, records to publish out through a sink, and the flush LSN that may be
 * confirmed (the core owns the lsn_ring). No libpq, no librdkafka: the
 * stream loop (stream.c) feeds it from the slot and the producer, and unit
 * tests feed it with a fake sink.
 *
 * Lifetimes: an obx_txn_t lives as long as the process (it remembers rows
 * Kafka refused for good, to dead-letter them after a pipeline restart);
 * between obx_txn_session_start and obx_txn_session_end it also holds one
 * session's ring, open transaction and first delivery failure.
 *
 * Failures come back as obx_err_t: RETRIABLE (restart the session from the
 * last confirmed LSN), POISON (exit 3: halt, nothing past it confirmed),
 * FATAL (stop with exit_code). The core logs nothing it returns. */
#ifndef OBX_TXN_H
#define OBX_TXN_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "lsn_ring.h"
#include "metrics.h"
#include "wal2json.h"

typedef enum {
    OBX_SINK_SENT = 0, /* handed to Kafka; a delivery report follows */
    OBX_SINK_SKIPPED,  /* already in Kafka (exactly-once read-back): no report */
    OBX_SINK_REJECTED, /* Kafka refused this record for good (err says why) */
    OBX_SINK_FAILED,   /* the pipeline failed (err, decided): end the session */
    OBX_SINK_STOPPED   /* a stop request interrupted the wait for room */
} obx_sink_rc_t;

/* One record to publish. Borrowed by the sink for the call, except value. */
typedef struct {
    const char *topic, *key;
    uint8_t *value; /* malloc'd envelope; the sink takes ownership whatever it returns */
    size_t value_len;
    const char *const *headers; /* n_headers key/value pairs */
    size_t n_headers;
    obx_pos_t pos;   /* source position, for exactly-once read-back */
    int64_t commit_time_us; /* the transaction's commit time (0 unknown): where the read-back starts */
    uint64_t ticket; /* pass back to obx_txn_delivered */
    int dead_letter; /* 1: a poison row going to the dead-letter topic */
    int32_t partition; /* out: where it went, for messages; -1 unknown */
} obx_record_t;

/* Where decisions go. ctx is the sink's; the core borrows the functions. */
typedef struct {
    void *ctx;
    obx_sink_rc_t (*produce)(void *ctx, obx_record_t *rec, obx_err_t *err);
    /* An INSERT into the signal table (id, type, data as text; NULL for
     * SQL NULL). Fire and forget: the control plane reports on the row. */
    void (*start_signal)(void *ctx, const char *id, const char *type, const char *data);
} obx_txn_sink_t;

/* Prefix of outboxd's heartbeat messages (pg_logical_emit_message). */
#define OBX_HEARTBEAT_PREFIX "outboxd"

struct obx_relset_s;
typedef struct obx_txn_s obx_txn_t;

/* cfg, database and system_id (name the source in envelopes) are borrowed for the
 * core's life; m receives the counters. NULL on allocation failure. */
obx_txn_t *obx_txn_new(const obx_config_t *cfg, const char *database, const char *system_id, obx_metrics_t *m);
void obx_txn_destroy(obx_txn_t *t);

/* The relations that are the outbox (the table and its leaf partitions),
 * borrowed until replaced; NULL means the configured table alone. A change
 * on any relation that is neither in it nor the signal table halts. */
void obx_txn_set_outbox(obx_txn_t *t, const struct obx_relset_s *outbox);

/* A new session starting at the confirmed LSN, publishing to sink: a fresh
 * ring, no open transaction, no failure. 0, or -1 on allocation failure. */
int obx_txn_session_start(obx_txn_t *t, obx_lsn_t confirmed, obx_txn_sink_t sink);
/* Drops the session's ring; delivery reports after this are ignored. */
void obx_txn_session_end(obx_txn_t *t);

/* One decoded change from the slot. 0; 1 when a stop request interrupted
 * it (the change is not done); -1 with err. */
int obx_txn_change(obx_txn_t *t, const obx_w2j_change_t *chg, obx_err_t *err);
/* A keepalive's walEnd: confirmable only when nothing is in flight. */
void obx_txn_keepalive(obx_txn_t *t, obx_lsn_t wal_end);
/* A delivery report: err NULL on ack; otherwise the broker's reason,
 * whether a new producer session may succeed, and the record's value (the
 * envelope, to name the row). */
void obx_txn_delivered(obx_txn_t *t, uint64_t ticket, const char *err, int retriable, const char *topic,
                       const void *value, size_t value_len);
/* Decides on delivery failures reported so far: 0 none, -1 with err. */
int obx_txn_check(obx_txn_t *t, obx_err_t *err);

/* The LSN that may be confirmed: every transaction up to it is acked. */
obx_lsn_t obx_txn_flush_lsn(const obx_txn_t *t);
/* The session's ring (gauges); NULL outside a session. */
const obx_lsn_ring_t *obx_txn_ring(const obx_txn_t *t);
/* Inside a BEGIN .. COMMIT; its xid. */
int obx_txn_open(const obx_txn_t *t);
uint32_t obx_txn_xid(const obx_txn_t *t);
/* Rows remembered to be dead-lettered after a restart. */
size_t obx_txn_poison_count(const obx_txn_t *t);

#endif
