#include "evidence.h"

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "kconf.h"
#include "log.h"

#define IO_TIMEOUT_MS 10000

struct obx_evidence_writer_s {
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt; /* held so the leader learned at creation stays known */
    char *topic, *key;
    int failed;            /* last async write failed (logged once) */
    int64_t sync_acked;    /* set by the delivery report of a sync write */
};

void obx_evidence_key(const char *sysid, const char *database, const char *slot, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s/%s", sysid, database, slot);
}

static int parse_value(const void *v, size_t len, obx_evidence_t *out)
{
    cJSON *o = cJSON_ParseWithLength(v, len);
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "confirmed_lsn");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "confirmed_at_us");
    obx_lsn_t lsn;
    int ok = cJSON_IsString(l) && obx_lsn_parse(l->valuestring, &lsn) == 0 && cJSON_IsNumber(t);
    if (ok) {
        out->found = 1;
        out->confirmed_lsn = lsn;
        out->confirmed_at_us = (int64_t)t->valuedouble;
    }
    cJSON_Delete(o);
    return ok ? 0 : -1;
}

/* Reads [lo, hi) of partition p; keeps the last valid record for key. */
static int read_partition(rd_kafka_t *rk, const char *topic, int32_t p, const char *key, obx_evidence_t *out,
                          obx_err_t *err)
{
    int64_t lo, hi;
    rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, IO_TIMEOUT_MS);
    if (e) {
        obx_kafka_error(err, e, "slot evidence: watermarks");
        err->cls = OBX_ERR_RETRIABLE;
        return -1;
    }
    if (hi <= lo) return 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
    e = rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        obx_kafka_error(err, e, "slot evidence: assign");
        err->cls = OBX_ERR_RETRIABLE;
        return -1;
    }
    size_t klen = strlen(key);
    int64_t deadline = obx_mono_ms() + IO_TIMEOUT_MS, last = -1;
    while (last < hi - 1 && obx_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m) continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            rd_kafka_message_destroy(m);
            break;
        }
        if (!m->err) {
            last = m->offset;
            /* A later record for the key wins (compaction keeps the newest);
             * a tombstone is `outboxd slot drop` forgetting the slot. */
            if (m->key_len == klen && !memcmp(m->key, key, klen)) {
                if (m->payload)
                    parse_value(m->payload, m->len, out);
                else
                    memset(out, 0, sizeof(*out));
            }
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(rk, NULL);
    if (last < hi - 1 && obx_mono_ms() >= deadline) {
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "slot evidence: reading %s [%d] timed out", topic, (int)p);
        return -1;
    }
    return 0;
}

int obx_evidence_read(const obx_config_t *cfg, const char *key, obx_evidence_t *out, obx_err_t *err)
{
    memset(out, 0, sizeof(*out));
    rd_kafka_conf_t *conf = obx_kconf_new(cfg, OBX_KCONF_CONSUMER, err);
    if (!conf) return -1;
    if (obx_kconf_set(conf, "group.id", "outboxd-evidence", err) || obx_kconf_set(conf, "enable.auto.commit", "false", err) ||
        obx_kconf_set(conf, "enable.partition.eof", "true", err)) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    char estr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, estr, sizeof(estr));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "slot evidence: %s", estr);
        return -1;
    }
    int rc = -1;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, cfg->slot_evidence_topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rkt ? rd_kafka_metadata(rk, 0, rkt, &md, IO_TIMEOUT_MS) : RD_KAFKA_RESP_ERR__FAIL;
    if (e) {
        obx_kafka_error(err, e, "slot evidence: metadata");
        err->cls = OBX_ERR_RETRIABLE; /* cannot tell a first start: do not create a slot */
        goto out;
    }
    if (md->topic_cnt != 1 || md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        rc = 0; /* no topic: no slot of any server has recorded anything */
        goto out;
    }
    if (md->topics[0].err) {
        obx_kafka_error(err, md->topics[0].err, "slot evidence: topic metadata");
        if (md->topics[0].err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) {
            err->cls = OBX_ERR_FATAL;
            err->exit_code = OBX_EXIT_CONFIG;
        } else {
            err->cls = OBX_ERR_RETRIABLE;
        }
        goto out;
    }
    rc = 0;
    for (int p = 0; p < md->topics[0].partition_cnt && rc == 0; p++)
        rc = read_partition(rk, cfg->slot_evidence_topic, md->topics[0].partitions[p].id, key, out, err);
out:
    if (md) rd_kafka_metadata_destroy(md);
    if (rkt) rd_kafka_topic_destroy(rkt);
    obx_kconf_serve_errors(rk);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    obx_evidence_writer_t *w = opaque;
    if (m->_private) { /* a sync write waits for this */
        *(int *)m->_private = m->err ? -(int)m->err - 1 : 1;
        return;
    }
    if (m->err && !w->failed)
        obx_warn("slot_evidence", "cannot record the confirmed position in %s: %s (retried with the next one)",
                 w->topic, rd_kafka_err2str(m->err));
    w->failed = m->err != 0;
}

/* A compacted topic, so the newest record per key is kept forever. */
static void create_topic(obx_evidence_writer_t *w)
{
    char estr[256];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(w->topic, 1, -1, estr, sizeof(estr));
    if (!nt) return;
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    rd_kafka_queue_t *q = rd_kafka_queue_new(w->rk);
    rd_kafka_CreateTopics(w->rk, &nt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, IO_TIMEOUT_MS);
    if (ev) {
        size_t n = 0;
        const rd_kafka_topic_result_t **res = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        rd_kafka_resp_err_t e = n ? rd_kafka_topic_result_error(res[0]) : rd_kafka_event_error(ev);
        if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            obx_warn("slot_evidence", "cannot create compacted topic %s (%s): create it with cleanup.policy=compact",
                     w->topic, rd_kafka_err2str(e));
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
}

/* The topic's leader before the first record: a new client otherwise
 * learns it on librdkafka's 1 s topic scan, which held every start and
 * every session restart for a second. A failure here is the first
 * write's to report. */
static void learn_leader(obx_evidence_writer_t *w)
{
    const struct rd_kafka_metadata *md = NULL;
    if (!(w->rkt = rd_kafka_topic_new(w->rk, w->topic, NULL))) return;
    if (rd_kafka_metadata(w->rk, 0, w->rkt, &md, IO_TIMEOUT_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_metadata_destroy(md);
}

obx_evidence_writer_t *obx_evidence_writer_new(const obx_config_t *cfg, const char *key, obx_err_t *err)
{
    obx_evidence_writer_t *w = calloc(1, sizeof(*w));
    rd_kafka_conf_t *conf = NULL;
    char estr[512];
    if (!w || !(w->topic = strdup(cfg->slot_evidence_topic)) || !(w->key = strdup(key))) {
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "out of memory");
        goto fail;
    }
    if (!(conf = obx_kconf_new(cfg, OBX_KCONF_PRODUCER, err)) ||
        obx_kconf_set(conf, "enable.idempotence", "true", err) ||
        obx_kconf_set(conf, "message.timeout.ms", "30000", err))
        goto fail;
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_conf_set_opaque(conf, w);
    if (!(w->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, estr, sizeof(estr)))) {
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "slot evidence producer: %s", estr);
        goto fail;
    }
    create_topic(w);
    learn_leader(w);
    return w;
fail:
    if (conf && !(w && w->rk)) rd_kafka_conf_destroy(conf);
    obx_evidence_writer_destroy(w);
    return NULL;
}

void obx_evidence_writer_destroy(obx_evidence_writer_t *w)
{
    if (!w) return;
    if (w->rk) {
        rd_kafka_flush(w->rk, 2000);
        if (w->rkt) rd_kafka_topic_destroy(w->rkt);
        rd_kafka_destroy(w->rk);
    }
    free(w->topic);
    free(w->key);
    free(w);
}

static int wait_for(obx_evidence_writer_t *w, int *done, int timeout_ms, obx_err_t *err);

int obx_evidence_forget(const obx_config_t *cfg, const char *key, obx_err_t *err)
{
    obx_evidence_writer_t *w = obx_evidence_writer_new(cfg, key, err);
    if (!w) return -1;
    int done = 0;
    rd_kafka_resp_err_t e = rd_kafka_producev(w->rk, RD_KAFKA_V_TOPIC(w->topic), RD_KAFKA_V_KEY(w->key, strlen(w->key)),
                                              RD_KAFKA_V_VALUE(NULL, 0), RD_KAFKA_V_OPAQUE(&done), RD_KAFKA_V_END);
    int rc = -1;
    if (e) {
        obx_kafka_error(err, e, "slot evidence");
        err->cls = OBX_ERR_RETRIABLE;
    } else {
        rc = wait_for(w, &done, IO_TIMEOUT_MS, err);
    }
    obx_evidence_writer_destroy(w);
    return rc;
}

static int produce(obx_evidence_writer_t *w, obx_lsn_t lsn, int *done)
{
    char lb[32], val[256];
    obx_lsn_format(lsn, lb, sizeof(lb));
    int n = snprintf(val, sizeof(val), "{\"confirmed_lsn\":\"%s\",\"confirmed_at_us\":%lld}", lb,
                     (long long)obx_now_us());
    return rd_kafka_producev(w->rk, RD_KAFKA_V_TOPIC(w->topic), RD_KAFKA_V_KEY(w->key, strlen(w->key)),
                             RD_KAFKA_V_VALUE(val, (size_t)n), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_OPAQUE(done), RD_KAFKA_V_END);
}

int obx_evidence_write_sync(obx_evidence_writer_t *w, obx_lsn_t lsn, int timeout_ms, obx_err_t *err)
{
    int done = 0;
    rd_kafka_resp_err_t e = produce(w, lsn, &done);
    if (e) {
        obx_kafka_error(err, e, "slot evidence");
        err->cls = OBX_ERR_RETRIABLE;
        return -1;
    }
    return wait_for(w, &done, timeout_ms, err);
}

/* Waits for the report of a record whose opaque is done. */
static int wait_for(obx_evidence_writer_t *w, int *done_p, int timeout_ms, obx_err_t *err)
{
    volatile int *done = done_p;
    int64_t deadline = obx_mono_ms() + timeout_ms;
    while (!*done && obx_mono_ms() < deadline) rd_kafka_poll(w->rk, 100);
    if (*done == 1) return 0;
    if (!*done) {
        /* Purge so the report never writes to this stack frame later. */
        rd_kafka_purge(w->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        while (!*done) rd_kafka_poll(w->rk, 100);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "slot evidence: no ack from Kafka for topic %s within %d ms", w->topic,
                    timeout_ms);
        return -1;
    }
    obx_kafka_error(err, (rd_kafka_resp_err_t)(-*done - 1), "slot evidence: recording in topic");
    if (err->cls == OBX_ERR_POISON) {
        err->cls = OBX_ERR_FATAL; /* e.g. not authorized: the operator must act */
        err->exit_code = OBX_EXIT_CONFIG;
    }
    return -1;
}

void obx_evidence_write_async(obx_evidence_writer_t *w, obx_lsn_t lsn)
{
    rd_kafka_resp_err_t e = produce(w, lsn, NULL);
    if (e && !w->failed) obx_warn("slot_evidence", "cannot record the confirmed position: %s", rd_kafka_err2str(e));
    rd_kafka_poll(w->rk, 0);
}
