/* outboxd consume: one librdkafka consumer per run, owned here from
 * consumer_new() to the end of obx_consume_run(). */
#include "consume.h"
#include "exitcodes.h"
#include "clock.h"

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "envelope.h"
#include "kconf.h"
#include "log.h"
#include "lsn.h"
#include "outboxd/v1/event.pb-c.h"

/* The bootstrap servers a consume/verify run uses: --brokers, then the
 * config's kafka.bootstrap.servers, then a local broker. */
const char *obx_consume_brokers(const obx_consume_opts_t *o)
{
    const char *b = o->cfg ? obx_config_kafka_get(o->cfg, "bootstrap.servers") : NULL;
    return o->brokers ? o->brokers : b ? b : "127.0.0.1:9092";
}

/* The consumer: every kafka.* setting from the config, then what consume
 * itself means (its own group, from the earliest offset). */
static rd_kafka_t *consumer_new(const obx_consume_opts_t *o, obx_err_t *err)
{
    char group[64], kerr[512];
    if (!o->group) snprintf(group, sizeof(group), "outboxd-consume-%lld", (long long)obx_now_us());
    rd_kafka_conf_t *conf = obx_kconf_new(o->cfg, OBX_KCONF_CONSUMER, err);
    if (!conf) return NULL;
    if (obx_kconf_set(conf, "bootstrap.servers", obx_consume_brokers(o), err) ||
        obx_kconf_set(conf, "group.id", o->group ? o->group : group, err) ||
        obx_kconf_set(conf, "auto.offset.reset", "earliest", err) ||
        obx_kconf_set(conf, "enable.auto.commit", o->group ? "true" : "false", err) ||
        obx_kconf_default(conf, o->cfg, "topic.metadata.refresh.interval.ms", "2000", err) ||
        obx_kconf_set(conf, "enable.partition.eof", "false", err)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "%s", kerr);
    }
    return rk;
}

/* One event as a JSON line; Kafka headers ride along as "kafka_headers"
 * (last value wins). */
static void print_event(FILE *out, const Outboxd__V1__Event *ev, const rd_kafka_message_t *m)
{
    char *js = obx_envelope_to_json(ev, rd_kafka_topic_name(m->rkt), m->partition, m->offset, m->key, m->key_len,
                                    rd_kafka_message_timestamp(m, NULL));
    if (!js) return;
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
    free(js);
}

static int subscribe(rd_kafka_t *rk, const char *list)
{
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(4);
    char *topics = strdup(list), *save = NULL;
    for (char *t = topics ? strtok_r(topics, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
        rd_kafka_topic_partition_list_add(subs, t, RD_KAFKA_PARTITION_UA);
    free(topics);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (e) obx_error("kafka_subscribe", "%s", rd_kafka_err2str(e));
    return e ? -1 : 0;
}

/* Kafka did not answer a metadata request (e): a TLS or SASL refusal
 * (exit 2, naming the kafka.* keys) or not reachable at all (exit 1). The
 * main queue is redirected to the consumer's, so its error events (where
 * refusals are recorded) are served by draining that queue; no message
 * can be lost there, nothing was fetched. */
static int unreachable(rd_kafka_t *rk, const obx_consume_opts_t *o, rd_kafka_resp_err_t e, char *why, size_t why_size)
{
    for (rd_kafka_message_t *m; (m = rd_kafka_consumer_poll(rk, 0));) rd_kafka_message_destroy(m);
    obx_err_t sec;
    if (obx_kconf_security_failed(1, &sec)) {
        snprintf(why, why_size, "%s", sec.msg);
        return obx_err_exit_code(&sec);
    }
    snprintf(why, why_size, "cannot reach Kafka at %s: %s", obx_consume_brokers(o), rd_kafka_err2str(e));
    return OBX_EXIT_FAIL;
}

/* The broker answers and every topic named (or one matching a ^regex)
 * exists. A metadata request for all topics never creates one. An exit
 * code, with why set when not OBX_EXIT_OK. */
static int topics_exist(rd_kafka_t *rk, const obx_consume_opts_t *o, char *why, size_t why_size)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, 5000);
    if (e) return unreachable(rk, o, e, why, why_size);
    int rc = OBX_EXIT_OK;
    if (o->topics[0] == '^') {
        regex_t re;
        int found = 0;
        if (regcomp(&re, o->topics, REG_EXTENDED | REG_NOSUB) == 0) {
            for (int i = 0; i < md->topic_cnt && !found; i++) found = !regexec(&re, md->topics[i].topic, 0, NULL, 0);
            regfree(&re);
        } else {
            found = 1; /* librdkafka's regex dialect: let the subscription judge */
        }
        if (!found) snprintf(why, why_size, "no topic matches %s", o->topics);
        rc = found ? OBX_EXIT_OK : OBX_EXIT_FAIL;
    } else {
        char *list = strdup(o->topics), *save = NULL;
        for (char *t = list ? strtok_r(list, ",", &save) : NULL; t && rc == OBX_EXIT_OK;
             t = strtok_r(NULL, ",", &save)) {
            int i = 0;
            while (i < md->topic_cnt && strcmp(md->topics[i].topic, t) != 0) i++;
            if (i == md->topic_cnt || md->topics[i].err) {
                snprintf(why, why_size, "topic %s does not exist", t);
                rc = OBX_EXIT_FAIL;
            }
        }
        free(list);
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

/* At an idle exit with nothing read: an empty topic, or a cluster that was
 * never reached (closed port, wrong security.protocol, a client certificate
 * the brokers refuse, which librdkafka reports as a transport error). Only
 * the first is exit 0. */
static int idle_check(rd_kafka_t *rk, const obx_consume_opts_t *o)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, NULL, &md, 5000);
    if (!e) {
        rd_kafka_metadata_destroy(md);
        return OBX_EXIT_OK;
    }
    char why[1024];
    int rc = unreachable(rk, o, e, why, sizeof(why));
    obx_error(rc == OBX_EXIT_CONFIG ? "kafka_security" : "kafka_unreachable", "%s", why);
    return rc;
}

int obx_consume_run(const obx_consume_opts_t *o, FILE *out, volatile sig_atomic_t *stop)
{
    obx_err_t err;
    rd_kafka_t *rk = consumer_new(o, &err);
    if (!rk) {
        obx_error(err.exit_code == OBX_EXIT_CONFIG ? "config" : "kafka_consumer", "%s", err.msg);
        return obx_err_exit_code(&err);
    }
    rd_kafka_poll_set_consumer(rk);
    char whybuf[512];
    int rc = OBX_EXIT_OK;
    if (o->require_topics)
        rc = topics_exist(rk, o, o->why ? o->why : whybuf, o->why ? o->why_size : sizeof(whybuf));
    if (rc == OBX_EXIT_OK && subscribe(rk, o->topics) != 0)
        rc = OBX_EXIT_FAIL;
    long n = 0;
    int halt = rc != OBX_EXIT_OK;
    int64_t last = obx_mono_ms();
    while (!halt && !*stop && (o->max_messages == 0 || n < o->max_messages)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m) {
            /* Refused by the brokers is not "no events": exit 2, never 0. */
            int idle = o->idle_exit_ms && obx_mono_ms() - last > o->idle_exit_ms;
            if (obx_kconf_security_failed(idle ? 1 : OBX_KAFKA_SECURITY_REFUSALS, &err)) {
                obx_error("kafka_security", "%s", err.msg);
                rc = obx_err_exit_code(&err);
                break;
            }
            if (idle) {
                if (n == 0 && !o->require_topics) rc = idle_check(rk, o);
                break;
            }
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
        obx_kconf_security_clear();
        Outboxd__V1__Event *ev = obx_envelope_decode(m->payload, m->len);
        if (!ev) {
            obx_error("undecodable", "%s [%d] offset %lld is not an outboxd.v1.Event", rd_kafka_topic_name(m->rkt),
                      (int)m->partition, (long long)m->offset);
            rc = OBX_EXIT_FAIL;
        } else if (o->on_event) {
            /* verify reads the decoded event itself: no JSON built. */
            halt = o->on_event(o->opaque, ev, rd_kafka_topic_name(m->rkt), m->partition, m->offset) != 0;
        } else {
            print_event(out, ev, m);
        }
        obx_envelope_free(ev);
        rd_kafka_message_destroy(m);
        n++;
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}
