#include "consume.h"
#include "exitcodes.h"
#include "clock.h"

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "envelope.h"
#include "log.h"
#include "lsn.h"
#include "outboxd/v1/event.pb-c.h"

static int set(rd_kafka_conf_t *c, const char *k, const char *v)
{
    char err[256];
    if (rd_kafka_conf_set(c, k, v, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        obx_error("config", "kafka.%s: %s", k, err);
        return -1;
    }
    return 0;
}

int obx_consume_run(const obx_consume_opts_t *o, FILE *out, volatile sig_atomic_t *stop)
{
    char err[512], group[64];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!o->group) snprintf(group, sizeof(group), "outboxd-consume-%lld", (long long)obx_now_us());
    if (set(conf, "bootstrap.servers", o->brokers) || set(conf, "group.id", o->group ? o->group : group) ||
        set(conf, "auto.offset.reset", "earliest") || set(conf, "enable.auto.commit", o->group ? "true" : "false") ||
        set(conf, "topic.metadata.refresh.interval.ms", "2000") || set(conf, "enable.partition.eof", "false")) {
        rd_kafka_conf_destroy(conf);
        return OBX_EXIT_CONFIG;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!rk) {
        obx_error("kafka_consumer", "%s", err);
        rd_kafka_conf_destroy(conf);
        return OBX_EXIT_FAIL;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(4);
    char *topics = strdup(o->topics), *save = NULL;
    for (char *t = strtok_r(topics, ",", &save); t; t = strtok_r(NULL, ",", &save))
        rd_kafka_topic_partition_list_add(subs, t, RD_KAFKA_PARTITION_UA);
    free(topics);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    int rc = OBX_EXIT_OK;
    if (e) {
        obx_error("kafka_subscribe", "%s", rd_kafka_err2str(e));
        rc = OBX_EXIT_FAIL;
        goto done;
    }
    long n = 0;
    int64_t last = obx_mono_ms();
    while (!*stop && n >= 0 && (o->max_messages == 0 || n < o->max_messages)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m) {
            if (o->idle_exit_ms && obx_mono_ms() - last > o->idle_exit_ms) break;
            continue;
        }
        if (m->err) {
            /* Topics that do not exist yet are normal while producers start. */
            if (m->err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                obx_warn("kafka_consume", "%s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        last = obx_mono_ms();
        Outboxd__V1__Event *ev = obx_envelope_decode(m->payload, m->len);
        if (!ev) {
            obx_error("undecodable", "%s [%d] offset %lld is not an outboxd.v1.Event", rd_kafka_topic_name(m->rkt),
                      (int)m->partition, (long long)m->offset);
            rc = OBX_EXIT_FAIL;
        } else {
            /* JSON only when printing: verify reads the decoded event itself. */
            char *js = o->on_event ? NULL
                                   : obx_envelope_to_json(ev, rd_kafka_topic_name(m->rkt), m->partition, m->offset,
                                                          m->key, m->key_len, rd_kafka_message_timestamp(m, NULL));
            if (o->on_event) {
                if (o->on_event(o->opaque, ev, rd_kafka_topic_name(m->rkt), m->partition, m->offset) != 0) n = o->max_messages ? o->max_messages : -1;
            } else if (js) {
                /* Kafka headers ride along as "kafka_headers" (last value wins). */
                rd_kafka_headers_t *hdrs = NULL;
                size_t l = strlen(js);
                if (!rd_kafka_message_headers(m, &hdrs) && hdrs && l > 1) {
                    cJSON *kh = cJSON_CreateObject();
                    const char *name;
                    const void *val;
                    size_t vsz;
                    for (size_t i = 0; !rd_kafka_header_get_all(hdrs, i, &name, &val, &vsz); i++) {
                        char *v = strndup(val ? val : "", val ? vsz : 0);
                        if (v) {
                            cJSON_DeleteItemFromObjectCaseSensitive(kh, name);
                            cJSON_AddStringToObject(kh, name, v);
                        }
                        free(v);
                    }
                    char *khs = cJSON_PrintUnformatted(kh);
                    cJSON_Delete(kh);
                    js[l - 1] = '\0';
                    fprintf(out, "%s,\"kafka_headers\":%s}\n", js, khs ? khs : "{}");
                    cJSON_free(khs);
                } else {
                    fprintf(out, "%s\n", js);
                }
                fflush(out);
            }
            free(js);
            obx_envelope_free(ev);
        }
        rd_kafka_message_destroy(m);
        n++;
    }
done:
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}
