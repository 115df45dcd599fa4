/* The Kafka side: an idempotent librdkafka producer, a topic handle cache,
 * delivery reports handed to a callback with the message's ring ticket. */
#ifndef OBX_PRODUCER_H
#define OBX_PRODUCER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct obx_producer_s obx_producer_t;

typedef enum {
    OBX_PRODUCE_OK = 0,
    OBX_PRODUCE_QUEUE_FULL = 1, /* poll and retry; the payload stays the caller's */
    OBX_PRODUCE_REJECTED = 2,   /* this message can never be sent (errstr says why) */
    OBX_PRODUCE_FAILED = 3      /* the producer is unusable; restart it */
} obx_produce_rc_t;

/* Delivery report. err is NULL on ack; otherwise it names the broker error,
 * `retriable` says whether a new producer session may succeed, and value/
 * value_len are the message value (the envelope) for naming the row. */
typedef void (*obx_dr_cb_t)(void *opaque, uint64_t ticket, const char *err, int retriable,
                            const char *topic, const void *value, size_t value_len);

/* Returns NULL with errstr set on failure. The producer keeps `cb`/`opaque`.
 * With cfg->exactly_once the producer is gapless (a failed message stops it)
 * and, unless kafka.message.timeout.ms is set, never times messages out. */
obx_producer_t *obx_producer_new(const obx_config_t *cfg, obx_dr_cb_t cb, void *opaque,
                                 char *errstr, size_t errstr_size);
/* Producers beside the relay's event stream (apply's dead-letter topic,
 * snapshots): gapless as above when set, else kafka.message.timeout.ms
 * defaults to message_timeout_ms (NULL: 300000); brokers_gauge makes this
 * producer's broker states the kafka_brokers_up gauge (kconf.h).
 * obx_producer_new, the relay's producer, is this with gapless =
 * cfg->exactly_once and brokers_gauge = 1. */
typedef struct {
    int gapless;
    const char *message_timeout_ms;
    int brokers_gauge;
} obx_producer_opts_t;
obx_producer_t *obx_producer_new_opts(const obx_config_t *cfg, const obx_producer_opts_t *opts, obx_dr_cb_t cb,
                                      void *opaque, char *errstr, size_t errstr_size);
/* Destroys without waiting: unacked messages are purged (reported failed). */
void obx_producer_destroy(obx_producer_t *p);

/* Hands one record to librdkafka. On OBX_PRODUCE_OK the producer takes
 * ownership of `value` (malloc'd) and frees it; otherwise the caller keeps it.
 * headers: n pairs of NUL-terminated key/value. */
obx_produce_rc_t obx_producer_send(obx_producer_t *p, const char *topic, int32_t partition, const char *key,
                                   uint8_t *value, size_t value_len, const char *const *headers,
                                   size_t n_headers, uint64_t ticket, char *errstr, size_t errstr_size);

/* Sends a copy of a consumed record (key, value and headers, binary safe) to
 * topic (partitioner's choice), with n_headers extra NUL-terminated key/value
 * pairs appended. Nothing of m or headers is taken. Same return codes as
 * obx_producer_send. */
struct rd_kafka_message_s;
obx_produce_rc_t obx_producer_forward(obx_producer_t *p, const char *topic, const struct rd_kafka_message_s *m,
                                      const char *const *headers, size_t n_headers, uint64_t ticket, char *errstr,
                                      size_t errstr_size);

/* The librdkafka handle, for dedup's metadata queries; owned by p. */
struct rd_kafka_s;
struct rd_kafka_s *obx_producer_rk(obx_producer_t *p);

/* Serves delivery reports for up to timeout_ms. */
void obx_producer_poll(obx_producer_t *p, int timeout_ms);
/* Waits up to timeout_ms for all messages to be acked or failed; returns the
 * number still in flight. */
int obx_producer_flush(obx_producer_t *p, int timeout_ms);
int obx_producer_outq_len(obx_producer_t *p);
/* A fatal producer error (idempotence broken) was raised: restart needed. */
int obx_producer_fatal(obx_producer_t *p, char *errstr, size_t errstr_size);

#endif
