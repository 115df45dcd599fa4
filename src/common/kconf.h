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
 * kafka.* keys to check, no secret) once at least min_refusals of them
 * came without obx_kconf_security_clear() in between (librdkafka
 * reconnects, with its backoff, between two: a bounded retry that a broker
 * restarting mid-handshake survives); else 0. A
 * client certificate that is expired or not yet valid fails earlier, in
 * obx_kconf_new. */
int obx_kconf_security_failed(int min_refusals, obx_err_t *err);
/* Serves the client's queued error events (so a TLS or SASL refusal is
 * recorded) for a client that never polls, e.g. before it is destroyed
 * after a failed metadata request. Not for a consumer whose main queue
 * is redirected (rd_kafka_poll_set_consumer). */
void obx_kconf_serve_errors(rd_kafka_t *rk);
/* Kafka answered (a session streams, a message arrived): forget refusals. */
void obx_kconf_security_clear(void);
/* The refusals the long-running commands take before exit 2: librdkafka
 * has reconnected at least once (the relay's first session waits up to
 * 10 s for metadata, so this is one or two sessions). */
#define OBX_KAFKA_SECURITY_REFUSALS 2

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
