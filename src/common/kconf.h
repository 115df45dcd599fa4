/* The one librdkafka configuration builder. Every Kafka client outboxd
 * makes (relay producer, exactly-once read-back consumer, snapshot
 * producer, apply consumer and dead-letter producer, consume, verify,
 * doctor) starts from obx_kconf_new(), so every kafka.* setting, security
 * included, reaches all of them, and every client logs through outboxd's
 * logger (never raw to stderr).
 *
 * The returned conf is the caller's until rd_kafka_new() takes it; on
 * rd_kafka_new() failure the caller destroys it. */
#ifndef OBX_KCONF_H
#define OBX_KCONF_H

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "err.h"

typedef enum {
    OBX_KCONF_PRODUCER = 0,
    OBX_KCONF_CONSUMER,
    OBX_KCONF_ADMIN /* metadata queries only (doctor): quiet logs */
} obx_kconf_role_t;

/* All of cfg's kafka.* properties plus outboxd's log, error and statistics
 * callbacks. A property librdkafka refuses is a fatal config error (exit 2)
 * naming the key. cfg may be NULL (defaults only). */
rd_kafka_conf_t *obx_kconf_new(const obx_config_t *cfg, obx_kconf_role_t role, obx_err_t *err);

/* Sets one property; 0, or -1 with err (fatal, exit 2) naming kafka.<key>. */
int obx_kconf_set(rd_kafka_conf_t *conf, const char *key, const char *value, obx_err_t *err);
/* Sets key only when the user did not set kafka.<key>. */
int obx_kconf_default(rd_kafka_conf_t *conf, const obx_config_t *cfg, const char *key, const char *value,
                      obx_err_t *err);

/* Errors after which a new client session can succeed (transport, timeouts,
 * leadership, purges). Everything else is a property of the message or the
 * topic (too large, invalid, not authorized): poison. */
int obx_kafka_err_retriable(rd_kafka_resp_err_t e);
/* Fills err from a librdkafka error code with context. */
void obx_kafka_error(obx_err_t *err, rd_kafka_resp_err_t e, const char *what);

#endif
