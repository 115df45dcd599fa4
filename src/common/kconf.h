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

/* All of cfg's kafka.* properties plus outboxd's log and error callbacks.
 * A property librdkafka refuses is a fatal config error (exit 2) naming
 * the key (its value only when the property is not secret). cfg may be
 * NULL (defaults only). The client leaves kafka_brokers_up alone: see
 * obx_kconf_own_brokers_gauge. */
rd_kafka_conf_t *obx_kconf_new(const obx_config_t *cfg, obx_kconf_role_t role, obx_err_t *err);

/* Makes this client the one whose broker connection states (librdkafka
 * statistics, every statistics.interval.ms) set the process's
 * kafka_brokers_up gauge, and so /readyz. Exactly one client per process
 * calls it: the relay's event producer (obx_producer_new) and apply's
 * consumer. Every other client (a snapshot's producer, dead-letter and
 * evidence clients, consume, verify, doctor) does not, so its own view of
 * the cluster (still connecting, already closing) never overwrites it. */
void obx_kconf_own_brokers_gauge(rd_kafka_conf_t *conf);

/* TLS and SASL refusals (RD_KAFKA_RESP_ERR__SSL, __AUTHENTICATION, as
 * reported to any client's error callback) are configuration errors, but
 * librdkafka retries them forever. 1 with err (fatal, exit 2, naming the
 * kafka.* keys to check, no secret) once such refusals have gone on for at
 * least grace_ms without obx_kconf_security_clear() (a bounded retry: a
 * broker restarting mid-handshake recovers well inside it); else 0. A
 * client certificate that is expired or not yet valid fails earlier, in
 * obx_kconf_new. */
int obx_kconf_security_failed(int grace_ms, obx_err_t *err);
/* Kafka answered (a session streams, a message arrived): forget refusals. */
void obx_kconf_security_clear(void);
/* The grace the long-running commands give refusals before exit 2. */
#define OBX_KAFKA_SECURITY_GRACE_MS 5000

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
