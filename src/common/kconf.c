#include "kconf.h"

#include <cjson/cJSON.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "exitcodes.h"
#include "log.h"
#include "metrics.h"

/* A refusal older than this starts a new episode rather than continuing one. */
#define SECURITY_EPISODE_US (30 * 1000000LL)

/* The newest TLS or SASL refusal any Kafka client of this process saw
 * (error_cb runs on librdkafka's threads; all clients share one config). */
static pthread_mutex_t sec_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int code, count;
    int64_t first_us, last_us;
    char reason[512];
} sec;

static void record_security(int code, const char *reason)
{
    if (code != RD_KAFKA_RESP_ERR__SSL && code != RD_KAFKA_RESP_ERR__AUTHENTICATION) return;
    int64_t now = obx_now_us();
    pthread_mutex_lock(&sec_mu);
    if (!sec.code || now - sec.last_us > SECURITY_EPISODE_US) {
        sec.first_us = now;
        sec.count = 0;
    }
    sec.count++;
    sec.code = code;
    sec.last_us = now;
    snprintf(sec.reason, sizeof(sec.reason), "%s", reason ? reason : "");
    pthread_mutex_unlock(&sec_mu);
}

void obx_kconf_serve_errors(rd_kafka_t *rk)
{
    if (rk) rd_kafka_poll(rk, 0);
}

void obx_kconf_security_clear(void)
{
    pthread_mutex_lock(&sec_mu);
    sec.code = 0;
    pthread_mutex_unlock(&sec_mu);
}

int obx_kconf_security_failed(int min_refusals, obx_err_t *err)
{
    int64_t now = obx_now_us();
    pthread_mutex_lock(&sec_mu);
    int code = sec.code, count = sec.count;
    int64_t first = sec.first_us, last = sec.last_us;
    char reason[sizeof(sec.reason)];
    snprintf(reason, sizeof(reason), "%s", sec.reason);
    pthread_mutex_unlock(&sec_mu);
    if (!code || now - last > SECURITY_EPISODE_US || count < min_refusals) return 0;
    obx_err_clear(err);
    if (code == RD_KAFKA_RESP_ERR__AUTHENTICATION)
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "Kafka SASL authentication failed %d time(s) in %.1f s (%s: %s); check kafka.sasl.mechanisms, "
                    "kafka.sasl.username and kafka.sasl.password, and that the user exists on the cluster",
                    count, (double)(last - first) / 1e6, rd_kafka_err2name((rd_kafka_resp_err_t)code), reason);
    else
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "TLS with Kafka failed %d time(s) in %.1f s (%s: %s); check kafka.ssl.ca.location (the CA that signed "
                    "the brokers' certificates), that those certificates name the hosts outboxd connects to, "
                    "and kafka.ssl.certificate.location / kafka.ssl.key.location",
                    count, (double)(last - first) / 1e6, rd_kafka_err2name((rd_kafka_resp_err_t)code), reason);
    err->kafka_err = code;
    return 1;
}

/* The client certificate, from kafka.ssl.certificate.location (a file) or
 * kafka.ssl.certificate.pem (the PEM text); *key names the one used. NULL
 * when neither is set or readable: librdkafka names a bad one itself. */
static X509 *client_cert(const obx_config_t *cfg, const char **key, const char **where)
{
    const char *path = cfg ? obx_config_kafka_get(cfg, "ssl.certificate.location") : NULL;
    const char *pem = cfg ? obx_config_kafka_get(cfg, "ssl.certificate.pem") : NULL;
    X509 *x = NULL;
    if (path && *path) {
        *key = "kafka.ssl.certificate.location";
        *where = path;
        FILE *f = fopen(path, "r");
        if (!f) return NULL;
        x = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    } else if (pem && *pem) {
        *key = "kafka.ssl.certificate.pem";
        *where = "PEM text";
        BIO *b = BIO_new_mem_buf(pem, -1);
        if (b) x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        BIO_free(b);
    }
    return x;
}

/* A client certificate that is expired (or not yet valid) is refused by
 * every broker, with a TLS alert librdkafka reports as a transport error
 * (retried forever): say so before any connection. */
static int check_client_cert(const obx_config_t *cfg, obx_err_t *err)
{
    const char *key = NULL, *where = NULL;
    X509 *x = client_cert(cfg, &key, &where);
    if (!x) return 0;
    int rc = 0;
    const char *what = NULL;
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) what = "expired";
    else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) what = "is not valid yet";
    if (what) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                    "%s: the client certificate %s (%s); brokers refuse it: renew it from the CA the brokers trust",
                    key, what, where);
        rc = -1;
    }
    X509_free(x);
    return rc;
}

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
    /* librdkafka retries these itself; fatal ones are checked in the loop,
     * TLS and SASL refusals by obx_kconf_security_failed. */
    record_security(err, reason);
    obx_warn("kafka_error", "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void quiet_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk, (void)opaque;
    record_security(err, reason);
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
    if (check_client_cert(cfg, err) != 0) return NULL;
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
