/* The flush-LSN rule: a ring of in-flight transactions, each with a count of
 * Kafka messages not yet acked. The flush LSN is the end LSN of the newest
 * transaction that, with every transaction before it, is committed and fully
 * acked. Acks arrive out of order across partitions; the ring keeps the
 * confirmation in WAL order. Transactions without outbox rows merge into the
 * newest entry (or confirm at once when nothing is in flight), so the ring
 * holds at most one entry per in-flight transaction that has messages. */
#ifndef OBX_LSN_RING_H
#define OBX_LSN_RING_H

#include <stddef.h>
#include <stdint.h>

#include "lsn.h"

/* A row's position in the WAL: its transaction's commit LSN and its index
 * among the transaction's outbox rows. Orders events within a slot. */
typedef struct {
    obx_lsn_t commit_lsn;
    uint32_t index;
} obx_pos_t;

/* Position order: <0, 0, >0. */
int obx_pos_cmp(obx_pos_t a, obx_pos_t b);

typedef struct obx_lsn_ring_s obx_lsn_ring_t;

/* start_lsn: what is already confirmed. Returns NULL on allocation failure.
 * The caller owns the ring and frees it with obx_lsn_ring_destroy. */
obx_lsn_ring_t *obx_lsn_ring_new(obx_lsn_t start_lsn);
void obx_lsn_ring_destroy(obx_lsn_ring_t *r);

/* A BEGIN was received. Returns -1 if a transaction is already open. */
int obx_lsn_ring_begin(obx_lsn_ring_t *r);
/* One more message of the open transaction is handed to Kafka. Stores the
 * ticket to pass back to obx_lsn_ring_ack in *ticket. -1: no open txn / OOM. */
int obx_lsn_ring_add(obx_lsn_ring_t *r, uint64_t *ticket);
/* The open transaction's COMMIT arrived; end_lsn is its end (nextlsn). */
int obx_lsn_ring_commit(obx_lsn_ring_t *r, obx_lsn_t end_lsn);
/* A message was acked by the broker. -1 on an unknown ticket. */
int obx_lsn_ring_ack(obx_lsn_ring_t *r, uint64_t ticket);
/* A keepalive's walEnd: confirmable only when nothing is in flight. */
void obx_lsn_ring_keepalive(obx_lsn_ring_t *r, obx_lsn_t wal_end);

/* Commit time (us since the Unix epoch) of the open transaction, for
 * latency and source-age metrics; call after obx_lsn_ring_begin. */
void obx_lsn_ring_set_time(obx_lsn_ring_t *r, int64_t commit_time_us);
/* Commit time of the transaction a ticket belongs to; 0 if unknown. */
int64_t obx_lsn_ring_ticket_time(const obx_lsn_ring_t *r, uint64_t ticket);
/* Commit time of the newest confirmed transaction (with or without rows). */
int64_t obx_lsn_ring_flush_time(const obx_lsn_ring_t *r);

obx_lsn_t obx_lsn_ring_flush_lsn(const obx_lsn_ring_t *r);
size_t obx_lsn_ring_inflight_txns(const obx_lsn_ring_t *r);
uint64_t obx_lsn_ring_inflight_msgs(const obx_lsn_ring_t *r);
/* True when no transaction is open and no message is unacked. */
int obx_lsn_ring_idle(const obx_lsn_ring_t *r);
int obx_lsn_ring_in_txn(const obx_lsn_ring_t *r);

#endif
