#include "producer.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lsn.h"
#include "metrics.h"

#include <cjson/cJSON.h>

#define TOPIC_CACHE 64

struct obx_producer_s {
    rd_kafka_t *rk;
    obx_dr_cb_t cb;
    void *opaque;
    struct {
        char *name;
        rd_kafka_topic_t *rkt;
    } topics[TOPIC_CACHE];
    size_t n_topics, next_evict;
};

/* Errors after which a fresh producer session can succeed. Everything else
 * is a property of the message (too large, invalid, not authorized) and
 * would fail again: the row is poison. */
static int err_retriable(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__DESTROY:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER:
    case RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
        return 1;
    default:
        return 0;
    }
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    obx_producer_t *p = opaque;
    char err[256];
    if (m->err)
        snprintf(err, sizeof(err), "%s: %s", rd_kafka_err2name(m->err), rd_kafka_err2str(m->err));
    p->cb(p->opaque, (uint64_t)(uintptr_t)m->_private, m->err ? err : NULL, m->err ? err_retriable(m->err) : 0,
          m->rkt ? rd_kafka_topic_name(m->rkt) : "", m->payload, m->len);
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    obx_log_level_t l = level <= 3 ? OBX_LOG_ERROR : level <= 4 ? OBX_LOG_WARN : level <= 6 ? OBX_LOG_INFO : OBX_LOG_DEBUG;
    /* Deliberate: the gapless guarantee (exactly_once), and outboxd's kafka.*
     * producer defaults that a consumer (apply, dedup) ignores. */
    if (!strcmp(fac, "CONFWARN") && (strstr(buf, "enable.gapless.guarantee") || strstr(buf, "producer property") ||
                                     strstr(buf, "consumer property")))
        l = OBX_LOG_DEBUG;
    obx_log(l, "kafka", "%s: %s", fac, buf);
}

/* Statistics every statistics.interval.ms: how many brokers are UP, for
 * /readyz. Bootstrap entries (nodeid -1) do not count. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk, (void)opaque;
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *brokers = cJSON_GetObjectItemCaseSensitive(root, "brokers"), *b;
    int up = 0;
    cJSON_ArrayForEach(b, brokers) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(b, "state");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(b, "nodeid");
        if (cJSON_IsString(st) && !strcmp(st->valuestring, "UP") && cJSON_IsNumber(id) && id->valuedouble >= 0) up++;
    }
    atomic_store(&obx_metrics()->kafka_brokers_up, up);
    cJSON_Delete(root);
    return 0;
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    (void)opaque;
    /* librdkafka retries these itself; fatal ones are checked in the loop. */
    obx_warn("kafka_error", "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

obx_producer_t *obx_producer_new(const obx_config_t *cfg, obx_dr_cb_t cb, void *opaque,
                                 char *errstr, size_t errstr_size)
{
    obx_producer_t *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    p->cb = cb;
    p->opaque = opaque;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        if (rd_kafka_conf_set(conf, cfg->kafka[i].key, cfg->kafka[i].value, errstr, errstr_size) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            free(p);
            return NULL;
        }
    }
    if (cfg->exactly_once) {
        /* Dedup reads partition tails after a restart: a lost message with a
         * later one written after it would be skipped, so no gaps, ever. */
        if (rd_kafka_conf_set(conf, "enable.gapless.guarantee", "true", errstr, errstr_size) != RD_KAFKA_CONF_OK ||
            (!obx_config_kafka_get(cfg, "message.timeout.ms") &&
             rd_kafka_conf_set(conf, "message.timeout.ms", "0", errstr, errstr_size) != RD_KAFKA_CONF_OK)) {
            rd_kafka_conf_destroy(conf);
            free(p);
            return NULL;
        }
    } else if (!obx_config_kafka_get(cfg, "message.timeout.ms")) {
        rd_kafka_conf_set(conf, "message.timeout.ms", "300000", errstr, errstr_size);
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_conf_set_stats_cb(conf, stats_cb);
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size);
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        free(p);
        return NULL;
    }
    return p;
}

void obx_producer_destroy(obx_producer_t *p)
{
    if (!p) return;
    /* Purge so destroy does not block; purged messages report failure,
     * which the relay treats as "not acked". */
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0);
    for (size_t i = 0; i < p->n_topics; i++) {
        rd_kafka_topic_destroy(p->topics[i].rkt);
        free(p->topics[i].name);
    }
    rd_kafka_destroy(p->rk);
    free(p);
}

static rd_kafka_topic_t *topic_get(obx_producer_t *p, const char *name)
{
    for (size_t i = 0; i < p->n_topics; i++)
        if (strcmp(p->topics[i].name, name) == 0) return p->topics[i].rkt;
    size_t slot;
    if (p->n_topics < TOPIC_CACHE) {
        slot = p->n_topics++;
    } else {
        /* Round-robin eviction; in-flight messages hold their own reference. */
        slot = p->next_evict++ % TOPIC_CACHE;
        rd_kafka_topic_destroy(p->topics[slot].rkt);
        free(p->topics[slot].name);
    }
    p->topics[slot].name = strdup(name);
    p->topics[slot].rkt = p->topics[slot].name ? rd_kafka_topic_new(p->rk, name, NULL) : NULL;
    if (!p->topics[slot].rkt) {
        free(p->topics[slot].name);
        p->topics[slot] = p->topics[--p->n_topics];
        return NULL;
    }
    return p->topics[slot].rkt;
}

struct rd_kafka_s *obx_producer_rk(obx_producer_t *p) { return p->rk; }

void obx_kafka_conf_callbacks(struct rd_kafka_conf_s *conf)
{
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_stats_cb(conf, stats_cb);
}

obx_produce_rc_t obx_producer_send(obx_producer_t *p, const char *topic, int32_t partition, const char *key,
                                   uint8_t *value, size_t value_len, const char *const *headers,
                                   size_t n_headers, uint64_t ticket, char *errstr, size_t errstr_size)
{
    rd_kafka_topic_t *rkt = topic_get(p, topic);
    if (!rkt) {
        snprintf(errstr, errstr_size, "cannot create topic handle for \"%s\"", topic);
        return OBX_PRODUCE_REJECTED;
    }
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(n_headers);
    for (size_t i = 0; i < n_headers; i++)
        rd_kafka_header_add(hdrs, headers[2 * i], -1, headers[2 * i + 1], -1);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE(value, value_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_HEADERS(hdrs),
        RD_KAFKA_V_OPAQUE((void *)(uintptr_t)ticket), RD_KAFKA_V_END);
    if (!err) return OBX_PRODUCE_OK;
    rd_kafka_headers_destroy(hdrs);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) return OBX_PRODUCE_QUEUE_FULL;
    snprintf(errstr, errstr_size, "%s: %s", rd_kafka_err2name(err), rd_kafka_err2str(err));
    if (err == RD_KAFKA_RESP_ERR__FATAL) return OBX_PRODUCE_FAILED;
    return OBX_PRODUCE_REJECTED;
}

void obx_producer_poll(obx_producer_t *p, int timeout_ms) { rd_kafka_poll(p->rk, timeout_ms); }

int obx_producer_flush(obx_producer_t *p, int timeout_ms)
{
    /* In steps, so a producer that turned fatal (nothing more will be
     * acked) does not hold shutdown for the whole timeout. */
    int64_t deadline = obx_mono_ms() + timeout_ms;
    while (rd_kafka_outq_len(p->rk) > 0 && obx_mono_ms() < deadline) {
        rd_kafka_flush(p->rk, 100);
        if (rd_kafka_fatal_error(p->rk, NULL, 0)) break;
    }
    return rd_kafka_outq_len(p->rk);
}

int obx_producer_outq_len(obx_producer_t *p) { return rd_kafka_outq_len(p->rk); }

int obx_producer_fatal(obx_producer_t *p, char *errstr, size_t errstr_size)
{
    return rd_kafka_fatal_error(p->rk, errstr, errstr_size) != RD_KAFKA_RESP_ERR_NO_ERROR;
}
