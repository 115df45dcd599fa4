#include "kconf.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

int obx_kafka_err_retriable(rd_kafka_resp_err_t e)
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

void obx_kafka_error(obx_err_t *err, rd_kafka_resp_err_t e, const char *what)
{
    obx_err_clear(err);
    obx_err_set(err, obx_kafka_err_retriable(e) ? OBX_ERR_RETRIABLE : OBX_ERR_POISON, 0, "%s: %s: %s", what,
                rd_kafka_err2name(e), rd_kafka_err2str(e));
    err->kafka_err = (int)e;
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

void obx_kconf_own_brokers_gauge(rd_kafka_conf_t *conf)
{
    rd_kafka_conf_set_stats_cb(conf, stats_cb);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    (void)opaque;
    /* librdkafka retries these itself; fatal ones are checked in the loop. */
    obx_warn("kafka_error", "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void quiet_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk, (void)opaque;
    obx_debug("kafka_error", "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

int obx_kconf_set(rd_kafka_conf_t *conf, const char *key, const char *value, obx_err_t *err)
{
    char kerr[512];
    if (rd_kafka_conf_set(conf, key, value, kerr, sizeof(kerr)) == RD_KAFKA_CONF_OK) return 0;
    obx_err_clear(err);
    /* librdkafka's message may quote the value. */
    if (obx_config_is_secret(key)) obx_scrub_value(kerr, sizeof(kerr), value);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "kafka.%s: %s (fix or remove kafka.%s)", key, kerr, key);
    return -1;
}

int obx_kconf_default(rd_kafka_conf_t *conf, const obx_config_t *cfg, const char *key, const char *value,
                      obx_err_t *err)
{
    if (cfg && obx_config_kafka_get(cfg, key)) return 0;
    return obx_kconf_set(conf, key, value, err);
}

rd_kafka_conf_t *obx_kconf_new(const obx_config_t *cfg, obx_kconf_role_t role, obx_err_t *err)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf) {
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "out of memory");
        return NULL;
    }
    for (size_t i = 0; cfg && i < cfg->n_kafka; i++) {
        if (obx_kconf_set(conf, cfg->kafka[i].key, cfg->kafka[i].value, err) != 0) {
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    /* librdkafka would print to stderr until the handle exists: route the
     * early lines through the log callback too. */
    char ignore[256];
    rd_kafka_conf_set(conf, "log.queue", "false", ignore, sizeof(ignore));
    if (role == OBX_KCONF_ADMIN) {
        rd_kafka_conf_set_error_cb(conf, quiet_error_cb);
        rd_kafka_conf_set(conf, "log_level", "0", ignore, sizeof(ignore));
    } else {
        rd_kafka_conf_set_error_cb(conf, error_cb);
    }
    return conf;
}
