#include "producer.h"
#include "clock.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kconf.h"
#include "log.h"
#include "lsn.h"
#include "metrics.h"
#include "strmap.h"

/* Topic handles kept at most; past it the cache starts over. A handle
 * dropped with messages in flight is safe: each message holds its own
 * reference to the topic (rd_kafka_topic_destroy only drops the app's). */
#define TOPIC_CACHE_MAX 16384
/* The longest a new topic holds the stream while its leader is asked for. */
#define TOPIC_METADATA_MS 1000

struct obx_producer_s {
    rd_kafka_t *rk;
    obx_dr_cb_t cb;
    void *opaque;
    obx_strmap_t *topics; /* name -> rd_kafka_topic_t *, owned */
};

static void topic_free(void *rkt) { rd_kafka_topic_destroy(rkt); }

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    obx_producer_t *p = opaque;
    char err[256];
    if (m->err)
        snprintf(err, sizeof(err), "%s: %s", rd_kafka_err2name(m->err), rd_kafka_err2str(m->err));
    p->cb(p->opaque, (uint64_t)(uintptr_t)m->_private, m->err ? err : NULL, m->err ? obx_kafka_err_retriable(m->err) : 0,
          m->rkt ? rd_kafka_topic_name(m->rkt) : "", m->payload, m->len);
}

obx_producer_t *obx_producer_new(const obx_config_t *cfg, obx_dr_cb_t cb, void *opaque,
                                 char *errstr, size_t errstr_size)
{
    obx_producer_opts_t o = {.gapless = cfg->exactly_once, .message_timeout_ms = NULL, .brokers_gauge = 1};
    return obx_producer_new_opts(cfg, &o, cb, opaque, errstr, errstr_size);
}

obx_producer_t *obx_producer_new_opts(const obx_config_t *cfg, const obx_producer_opts_t *opts, obx_dr_cb_t cb,
                                      void *opaque, char *errstr, size_t errstr_size)
{
    obx_producer_t *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    p->cb = cb;
    p->opaque = opaque;
    obx_err_t e;
    rd_kafka_conf_t *conf = NULL;
    if (!(p->topics = obx_strmap_new())) {
        obx_err_set(&e, OBX_ERR_RETRIABLE, 0, "out of memory");
        goto fail;
    }
    if (!(conf = obx_kconf_new(cfg, OBX_KCONF_PRODUCER, &e))) goto fail;
    if (opts->gapless) {
        /* Dedup reads partition tails after a restart: a lost message with a
         * later one written after it would be skipped, so no gaps, ever. */
        if (obx_kconf_set(conf, "enable.gapless.guarantee", "true", &e) != 0 ||
            obx_kconf_default(conf, cfg, "message.timeout.ms", "0", &e) != 0)
            goto fail;
    } else if (obx_kconf_default(conf, cfg, "message.timeout.ms",
                                 opts->message_timeout_ms ? opts->message_timeout_ms : "300000", &e) != 0) {
        goto fail;
    }
    if (opts->brokers_gauge) obx_kconf_own_brokers_gauge(conf);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, errstr_size);
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        obx_strmap_destroy(p->topics, NULL);
        free(p);
        return NULL;
    }
    return p;
fail:
    snprintf(errstr, errstr_size, "%s", e.msg);
    if (conf) rd_kafka_conf_destroy(conf);
    obx_strmap_destroy(p->topics, NULL);
    free(p);
    return NULL;
}

void obx_producer_destroy(obx_producer_t *p)
{
    if (!p) return;
    /* Purge so destroy does not block; purged messages report failure,
     * which the relay treats as "not acked". */
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0);
    obx_strmap_destroy(p->topics, topic_free);
    rd_kafka_destroy(p->rk);
    free(p);
}

static rd_kafka_topic_t *topic_get(obx_producer_t *p, const char *name)
{
    rd_kafka_topic_t *rkt = obx_strmap_get(p->topics, name);
    if (rkt) return rkt;
    /* Bounded memory for endless topic names; see TOPIC_CACHE_MAX. */
    if (obx_strmap_count(p->topics) >= TOPIC_CACHE_MAX) obx_strmap_clear(p->topics, topic_free);
    if (!(rkt = rd_kafka_topic_new(p->rk, name, NULL))) return NULL;
    if (obx_strmap_put(p->topics, name, rkt) != 0) {
        rd_kafka_topic_destroy(rkt);
        return NULL;
    }
    /* Ask for the new topic's leader now: librdkafka may otherwise learn it
     * on its periodic topic scan, and the first events of every new topic
     * waited up to a second (bench/run.sh saw p99 509 ms at 10k events/s
     * from that alone). Once per topic; an error is left to the produce. */
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(p->rk, 0, rkt, &md, TOPIC_METADATA_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_metadata_destroy(md);
    return rkt;
}

struct rd_kafka_s *obx_producer_rk(obx_producer_t *p) { return p->rk; }

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

obx_produce_rc_t obx_producer_forward(obx_producer_t *p, const char *topic, const rd_kafka_message_t *m,
                                      const char *const *headers, size_t n_headers, uint64_t ticket, char *errstr,
                                      size_t errstr_size)
{
    rd_kafka_headers_t *orig = NULL, *h;
    h = (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR && orig) ? rd_kafka_headers_copy(orig)
                                                                                 : rd_kafka_headers_new(n_headers);
    for (size_t i = 0; i < n_headers; i++) rd_kafka_header_add(h, headers[2 * i], -1, headers[2 * i + 1], -1);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(m->key, m->key_len),
        RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE((void *)(uintptr_t)ticket),
        RD_KAFKA_V_END);
    if (!err) return OBX_PRODUCE_OK;
    rd_kafka_headers_destroy(h);
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
