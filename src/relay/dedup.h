/* Exactly-once into Kafka without Kafka transactions: after a restart the
 * slot re-sends what Kafka acked but Postgres never heard confirmed. Before
 * the first write to a topic in a session, read back the tail of each of its
 * partitions and find the newest event this slot wrote there; an event whose
 * source position (commit LSN, index in transaction) is at or before that is
 * already in Kafka and is skipped.
 *
 * Sound because, per partition, outboxd writes in position order with an
 * idempotent, gapless producer (a failure stops the producer, so nothing
 * after a lost message lands), and only one outboxd streams a slot at a
 * time. Preconditions are in docs/guarantees.md. */
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

/* producer: the session's producer (metadata, partitioner); borrowed.
 * slot/database: which records count as ours. The read-back consumer is
 * built by obx_kconf_new (all kafka.* settings, outboxd's logger). NULL
 * with err on failure. The caller owns the result (obx_dedup_destroy). */
obx_dedup_t *obx_dedup_new(const obx_config_t *cfg, rd_kafka_t *producer, const char *slot,
                           const char *database, obx_err_t *err);
void obx_dedup_destroy(obx_dedup_t *d);

/* For an event about to be produced: *partition gets the partition the key
 * maps to (RD_KAFKA_PARTITION_UA if the topic does not exist yet).
 * Returns 1: already in Kafka, skip it; 0: produce it; -1: Kafka could not
 * be read (err, retriable): restart the session. */
int obx_dedup_check(obx_dedup_t *d, const char *topic, const char *key, obx_pos_t pos, int32_t *partition,
                    obx_err_t *err);

/* The partitioner librdkafka would use for `name` (kafka.partitioner);
 * NULL for names that ignore the key (random), which outboxd refuses. */
typedef int32_t (*obx_partitioner_fn)(const rd_kafka_topic_t *, const void *, size_t, int32_t, void *, void *);
obx_partitioner_fn obx_partitioner_by_name(const char *name);

#endif
