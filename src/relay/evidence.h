/* Evidence, kept in Kafka, that a slot name has published: the guard
 * against a vanished slot. A slot lives on one PostgreSQL server; a failover
 * to a PostgreSQL 15 standby, or an operator, can take it away, and a new slot
 * would start at the current WAL position, skipping whatever was committed
 * in between. Kafka, where outboxd writes anyway, outlives the primary, so
 * the relay records there, per (system identifier, database, slot), that it
 * streams and how far it has confirmed. On start, a missing slot with such a
 * record is a stop (exit 4) naming the position and time; only a slot with
 * no record is created (a first start).
 *
 * The record is a compacted topic (slot.evidence_topic), key
 * "<system id>/<database>/<slot>", value a JSON object:
 * {"confirmed_lsn":"0/16B3748","confirmed_at_us":..., "slot":..., ...}. */
#ifndef OBX_EVIDENCE_H
#define OBX_EVIDENCE_H

#include <stdint.h>

#include "config.h"
#include "err.h"
#include "lsn.h"

typedef struct {
    int found;               /* a record exists for this key */
    obx_lsn_t confirmed_lsn; /* the newest confirmed flush LSN recorded */
    int64_t confirmed_at_us; /* when it was recorded (Unix microseconds) */
} obx_evidence_t;

/* "<sysid>/<database>/<slot>" into buf. */
void obx_evidence_key(const char *sysid, const char *database, const char *slot, char *buf, size_t size);

/* Reads the newest record for key. A missing topic is no record (found=0).
 * -1 with err (retriable) when Kafka cannot be read: the caller must not
 * decide "first start" then. */
int obx_evidence_read(const obx_config_t *cfg, const char *key, obx_evidence_t *out, obx_err_t *err);

typedef struct obx_evidence_writer_s obx_evidence_writer_t;

/* A small producer of its own (idempotent, acks=all); creates the compacted
 * topic if it does not exist. NULL with err. The caller owns the writer. */
obx_evidence_writer_t *obx_evidence_writer_new(const obx_config_t *cfg, const char *key, obx_err_t *err);
void obx_evidence_writer_destroy(obx_evidence_writer_t *w);

/* Records lsn and waits for the broker's ack (up to timeout_ms): 0, or -1
 * with err (retriable). Used before the first event of a session. */
int obx_evidence_write_sync(obx_evidence_writer_t *w, obx_lsn_t lsn, int timeout_ms, obx_err_t *err);
/* Records lsn without waiting (the confirmed position as it moves); a
 * failure is logged and the next write tries again. Serves its reports. */
void obx_evidence_write_async(obx_evidence_writer_t *w, obx_lsn_t lsn);

/* Forgets key (a tombstone record), so the next start may create the slot:
 * `outboxd slot drop`, the operator's deliberate act. 0, or -1 with err. */
int obx_evidence_forget(const obx_config_t *cfg, const char *key, obx_err_t *err);

#endif
