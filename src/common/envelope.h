/* The protobuf envelope (proto/outboxd/v1/event.proto): row -> bytes and back. */
#ifndef OBX_ENVELOPE_H
#define OBX_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "lsn.h"
#include "outbox.h"

typedef struct {
    obx_lsn_t commit_lsn, commit_end_lsn, change_lsn;
    uint32_t index_in_txn;
    uint32_t xid;
    int64_t commit_time_us;
    const char *database, *schema, *table, *slot;
    const char *system_id; /* the producer cluster's system identifier */
} obx_source_t;

/* Encodes into a new malloc'd buffer (*out, *out_len) that the caller owns
 * (or hands to librdkafka with RD_KAFKA_MSG_F_FREE). Returns 0 or -1. */
int obx_envelope_encode(const obx_outbox_row_t *row, const obx_source_t *src,
                        uint8_t **out, size_t *out_len, char *errstr, size_t errstr_size);

/* Decoded envelope: Outboxd__V1__Event from protobuf-c; free with
 * obx_envelope_free. */
struct Outboxd__V1__Event;
struct Outboxd__V1__Event *obx_envelope_decode(const uint8_t *buf, size_t len);
void obx_envelope_free(struct Outboxd__V1__Event *ev);

/* Renders a decoded event as one JSON object (malloc'd string the caller
 * frees with free()); the Kafka record's topic/partition/offset/key/timestamp
 * are added when topic is not NULL. */
char *obx_envelope_to_json(const struct Outboxd__V1__Event *ev, const char *topic,
                           int32_t partition, int64_t offset, const char *key, size_t key_len,
                           int64_t timestamp_ms);

#endif
