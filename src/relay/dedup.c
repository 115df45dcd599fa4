#include "dedup.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "kconf.h"
#include "log.h"
#include "outboxd/v1/event.pb-c.h"

#define MAX_TOPICS 256
#define IO_TIMEOUT_MS 10000

typedef struct {
    char *name;
    int32_t n_parts;      /* 0: topic does not exist (yet) */
    obx_pos_t *tail;      /* newest position of ours per partition */
    int *found;
    rd_kafka_topic_t *rkt;
} topic_t;

struct obx_dedup_s {
    rd_kafka_t *prod, *cons;
    obx_partitioner_fn partitioner;
    char slot[64], database[128];
    int scan_max;
    topic_t topics[MAX_TOPICS];
    size_t n_topics;
};

obx_partitioner_fn obx_partitioner_by_name(const char *name)
{
    if (!name || !strcmp(name, "consistent_random")) return rd_kafka_msg_partitioner_consistent_random;
    if (!strcmp(name, "murmur2_random")) return rd_kafka_msg_partitioner_murmur2_random;
    if (!strcmp(name, "murmur2")) return rd_kafka_msg_partitioner_murmur2;
    if (!strcmp(name, "consistent")) return rd_kafka_msg_partitioner_consistent;
    if (!strcmp(name, "fnv1a")) return rd_kafka_msg_partitioner_fnv1a;
    if (!strcmp(name, "fnv1a_random")) return rd_kafka_msg_partitioner_fnv1a_random;
    return NULL;
}

obx_dedup_t *obx_dedup_new(const obx_config_t *cfg, rd_kafka_t *producer, const char *slot,
                           const char *database, obx_err_t *err)
{
    obx_err_clear(err);
    obx_dedup_t *d = calloc(1, sizeof(*d));
    if (!d) {
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return NULL;
    }
    d->prod = producer;
    d->scan_max = cfg->dedup_scan_max;
    d->partitioner = obx_partitioner_by_name(obx_config_kafka_get(cfg, "partitioner"));
    snprintf(d->slot, sizeof(d->slot), "%s", slot);
    snprintf(d->database, sizeof(d->database), "%s", database);
    /* Same brokers and security settings as the producer, same logger. */
    rd_kafka_conf_t *conf = obx_kconf_new(cfg, OBX_KCONF_CONSUMER, err);
    if (!conf) goto fail;
    /* Only what the producer's idempotent writes made durable counts. */
    if (obx_kconf_set(conf, "group.id", "outboxd-dedup", err) != 0 ||
        obx_kconf_set(conf, "enable.auto.commit", "false", err) != 0 ||
        obx_kconf_set(conf, "enable.partition.eof", "true", err) != 0 ||
        obx_kconf_set(conf, "isolation.level", "read_committed", err) != 0)
        goto fail;
    char kerr[512];
    d->cons = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr));
    if (!d->cons) {
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "exactly-once read-back consumer: %s", kerr);
        goto fail;
    }
    return d;
fail:
    if (conf) rd_kafka_conf_destroy(conf);
    free(d);
    return NULL;
}

void obx_dedup_destroy(obx_dedup_t *d)
{
    if (!d) return;
    for (size_t i = 0; i < d->n_topics; i++) {
        free(d->topics[i].name);
        free(d->topics[i].tail);
        free(d->topics[i].found);
        if (d->topics[i].rkt) rd_kafka_topic_destroy(d->topics[i].rkt);
    }
    rd_kafka_destroy(d->cons);
    free(d);
}

/* Reads [start, hi) of one partition; keeps the newest record of ours. */
static int scan(obx_dedup_t *d, const char *topic, int32_t p, int64_t start, int64_t hi, obx_pos_t *best,
                int *found, char *errstr, size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, p)->offset = start;
    rd_kafka_resp_err_t e = rd_kafka_assign(d->cons, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        snprintf(errstr, errstr_size, "reading back %s [%d]: %s", topic, (int)p, rd_kafka_err2str(e));
        return -1;
    }
    int rc = -1;
    int64_t deadline = obx_mono_ms() + IO_TIMEOUT_MS;
    while (obx_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(d->cons, 200);
        if (!m) continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            rd_kafka_message_destroy(m);
            rc = 0;
            break;
        }
        if (m->err) {
            snprintf(errstr, errstr_size, "reading back %s [%d]: %s", topic, (int)p, rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            break;
        }
        Outboxd__V1__Event *ev = obx_envelope_decode(m->payload, m->len);
        if (ev && ev->source && !strcmp(ev->source->slot, d->slot) && !strcmp(ev->source->database, d->database)) {
            obx_pos_t pos = {ev->source->commit_lsn, ev->source->index_in_txn};
            if (!*found || obx_pos_cmp(pos, *best) > 0) *best = pos;
            *found = 1;
        }
        obx_envelope_free(ev);
        int64_t off = m->offset;
        rd_kafka_message_destroy(m);
        if (off >= hi - 1) {
            rc = 0;
            break;
        }
    }
    if (rc != 0 && !errstr[0]) snprintf(errstr, errstr_size, "reading back %s [%d]: timed out", topic, (int)p);
    rd_kafka_assign(d->cons, NULL);
    return rc;
}

static topic_t *load_topic(obx_dedup_t *d, const char *name, char *errstr, size_t errstr_size)
{
    for (size_t i = 0; i < d->n_topics; i++)
        if (!strcmp(d->topics[i].name, name)) return &d->topics[i];
    if (d->n_topics == MAX_TOPICS) {
        snprintf(errstr, errstr_size, "more than %d topics in one session", MAX_TOPICS);
        return NULL;
    }
    topic_t *t = &d->topics[d->n_topics];
    memset(t, 0, sizeof(*t));
    t->rkt = rd_kafka_topic_new(d->prod, name, NULL);
    t->name = strdup(name);
    if (!t->rkt || !t->name) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(d->prod, 0, t->rkt, &md, IO_TIMEOUT_MS);
    if (e) {
        snprintf(errstr, errstr_size, "metadata for %s: %s", name, rd_kafka_err2str(e));
        goto fail;
    }
    if (md->topic_cnt == 1 && !md->topics[0].err) t->n_parts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    if (t->n_parts > 0) {
        t->tail = calloc((size_t)t->n_parts, sizeof(*t->tail));
        t->found = calloc((size_t)t->n_parts, sizeof(*t->found));
        if (!t->tail || !t->found) {
            snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
    }
    for (int32_t p = 0; p < t->n_parts; p++) {
        int64_t lo, hi;
        e = rd_kafka_query_watermark_offsets(d->cons, name, p, &lo, &hi, IO_TIMEOUT_MS);
        if (e) {
            snprintf(errstr, errstr_size, "watermarks of %s [%d]: %s", name, (int)p, rd_kafka_err2str(e));
            goto fail;
        }
        if (hi <= lo) continue;
        /* Usually the newest record is ours; else look further back. */
        if (scan(d, name, p, hi - 1, hi, &t->tail[p], &t->found[p], errstr, errstr_size) != 0) goto fail;
        if (!t->found[p] && hi - lo > 1 &&
            scan(d, name, p, hi - d->scan_max > lo ? hi - d->scan_max : lo, hi, &t->tail[p], &t->found[p], errstr,
                 errstr_size) != 0)
            goto fail;
        if (t->found[p])
            obx_debug("dedup_tail", "%s [%d]: newest event of slot %s at commit " OBX_LSN_FMT " #%u", name, (int)p,
                      d->slot, OBX_LSN_ARGS(t->tail[p].commit_lsn), t->tail[p].index);
    }
    d->n_topics++;
    return t;
fail:
    free(t->name);
    free(t->tail);
    free(t->found);
    if (t->rkt) rd_kafka_topic_destroy(t->rkt);
    memset(t, 0, sizeof(*t));
    return NULL;
}

int obx_dedup_check(obx_dedup_t *d, const char *topic, const char *key, obx_pos_t pos, int32_t *partition,
                    obx_err_t *err)
{
    char errstr[1024] = "";
    topic_t *t = load_topic(d, topic, errstr, sizeof(errstr));
    if (!t) {
        /* Metadata, watermarks, read-back: all may work on the next try. */
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "%s", errstr);
        return -1;
    }
    *partition = RD_KAFKA_PARTITION_UA;
    if (t->n_parts == 0) {
        /* Not created yet: nothing of ours can be in it. Look again next
         * session; within this one our writes are in order anyway. */
        return 0;
    }
    *partition = d->partitioner(t->rkt, key, strlen(key), t->n_parts, NULL, NULL);
    if (*partition < 0 || *partition >= t->n_parts) *partition = RD_KAFKA_PARTITION_UA;
    if (*partition == RD_KAFKA_PARTITION_UA) return 0;
    return t->found[*partition] && obx_pos_cmp(pos, t->tail[*partition]) <= 0;
}
