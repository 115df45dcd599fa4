/* Exactly-once into Kafka without Kafka transactions: after a restart the
 * slot re-sends what Kafka acked but Postgres never heard confirmed. Before
 * the first write to a partition in a session, find the newest event this
 * slot wrote there; an event whose source position (commit LSN, index in
 * transaction) is at or before that is already in Kafka and is skipped.
 *
 * The search is bounded by the replay window, not by other writers'
 * records: the newest record is read first (usually ours); else the broker's
 * time index gives the first record stamped at or after the commit time of
 * the first transaction to write there this session (less
 * exactly_once.clock_skew_ms), and the partition is read from there to its
 * end. Snapshot records (event id "snapshot:") are skipped undecoded. A
 * broker that cannot answer falls back to the last exactly_once.scan_max
 * records (logged, outboxd_exactly_once_fallback_total): duplicates, never
 * loss.
 *
 * The read-back is lazy, per partition. While it waits on Kafka it calls
 * the owner's tick at least every TICK_MS, so the replication connection
 * keeps sending status updates.
 *
 * Sound because, per partition, outboxd writes in position order with an
 * idempotent, gapless producer (a failure stops the producer, so nothing
 * after a lost message lands), and only one outboxd streams a slot at a
 * time: if any record of ours lies after the start offset, the newest one
 * does too, so a start too late finds nothing (resend), never too little.
 * See docs/guarantees.md. */
/* Owned by the relay session (stream.c): one per producer session. */
#ifndef OBX_DEDUP_H
#define OBX_DEDUP_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "lsn_ring.h"

typedef struct obx_dedup_s obx_dedup_t;

/* Called at least every ~100 ms while dedup waits on Kafka (slower only
 * when the broker answers a metadata request slower than that). Nonzero
 * stops the read-back: obx_dedup_check then returns -1. */
typedef int (*obx_dedup_tick_fn)(void *ctx);

/* producer: the session's producer (metadata, partitioner); borrowed.
 * slot/database/system_id: which records count as ours: positions are only
 * comparable within one cluster, so a record of another server with the
 * same database and slot names is never taken for ours (a record without a
 * system id, from an older outboxd, neither: duplicates, never loss). tick/tick_ctx: progress
 * callback (tick may be NULL); kept. The read-back consumer is built by
 * obx_kconf_new (all kafka.* settings, outboxd's logger). NULL with err on
 * failure. The caller owns the result (obx_dedup_destroy). */
obx_dedup_t *obx_dedup_new(const obx_config_t *cfg, rd_kafka_t *producer, const char *slot,
                           const char *database, const char *system_id, obx_dedup_tick_fn tick, void *tick_ctx,
                           obx_err_t *err);
void obx_dedup_destroy(obx_dedup_t *d);
/* Serves the read-back consumer's queued error events, so a TLS or SASL
 * refusal it meets between read-backs is recorded (kconf.h); NULL is a
 * no-op. Its messages stay in their own queue. */
void obx_dedup_serve_errors(obx_dedup_t *d);

/* For an event about to be produced: *partition gets the partition the key
 * maps to (RD_KAFKA_PARTITION_UA if the topic does not exist yet).
 * commit_time_us: the event's commit time (0 unknown: fallback read-back),
 * used by the first check of a partition in this session.
 * Returns 1: already in Kafka, skip it; 0: produce it; -1: Kafka could not
 * be read, or the tick said stop (err, retriable): restart the session. */
int obx_dedup_check(obx_dedup_t *d, const char *topic, const char *key, obx_pos_t pos, int64_t commit_time_us,
                    int32_t *partition, obx_err_t *err);

/* Header on every record produced to a partition chosen here: the
 * partition count of the topic the key was mapped with. A newest record of
 * ours written with another count (partitions added since) is not trusted:
 * the window's events may have gone elsewhere then (resent, never lost). */
#define OBX_DEDUP_PARTS_HEADER "outboxd-partitions"

/* The partition count obx_dedup_check maps topic's keys with in this
 * session; 0 when the topic did not exist at its first check. */
int32_t obx_dedup_partition_count(obx_dedup_t *d, const char *topic);

/* The end of the server's WAL when this session acquired the slot. A
 * record of ours at or past it was decoded from WAL this server never had
 * (a promoted standby that lagged, a restored backup): its position says
 * nothing about this server's transactions, and comparing with it would
 * drop new ones as "already in Kafka". obx_dedup_check then fails with
 * exit 4 (OBX_ERR_FATAL) instead. 0: no check. */
void obx_dedup_set_horizon(obx_dedup_t *d, obx_lsn_t wal_end);

/* Partitions read back so far in this session (logs, tests). */
size_t obx_dedup_partitions_read(const obx_dedup_t *d);

/* The partitioner librdkafka would use for `name` (kafka.partitioner);
 * NULL for names that ignore the key (random), which outboxd refuses. */
typedef int32_t (*obx_partitioner_fn)(const rd_kafka_topic_t *, const void *, size_t, int32_t, void *, void *);
obx_partitioner_fn obx_partitioner_by_name(const char *name);

#endif
