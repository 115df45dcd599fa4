/* outboxd apply: the Kafka side. A consumer group member with manual
 * offset commits (offsets move only after the replica's COMMIT), eager or
 * cooperative rebalances that drop the buffered events of revoked
 * partitions, pause/seek-back while the database is down, and the
 * partition table behind the per-partition metrics.
 *
 * The consumer handle and the partition table belong to the obx_apply_t;
 * obx_apply_consumer_close closes the consumer, loop.c frees the table. */
#include "apply_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kconf.h"
#include "log.h"

/* The consumer, for the status thread's high watermark queries. */
static _Atomic(rd_kafka_t *) g_rk;

/* Cached high watermark: librdkafka updates it from fetch responses, so
 * offset lag keeps moving while the loop is blocked in a long statement. */
int64_t obx_apply_hwm(const char *topic, int32_t partition)
{
    rd_kafka_t *rk = atomic_load(&g_rk);
    int64_t lo = -1, hi = -1;
    if (!rk || rd_kafka_get_watermark_offsets(rk, topic, partition, &lo, &hi) != RD_KAFKA_RESP_ERR_NO_ERROR) return -1;
    return hi;
}

int obx_apply_part_index(obx_apply_t *a, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < a->n_parts; i++)
        if (a->parts[i].partition == partition && strcmp(a->parts[i].topic, topic) == 0) return (int)i;
    obx_apply_part_t *p = realloc(a->parts, (a->n_parts + 1) * sizeof(*p));
    if (!p) return -1;
    a->parts = p;
    obx_apply_part_t *n = &a->parts[a->n_parts];
    memset(n, 0, sizeof(*n));
    n->topic = strdup(topic);
    if (!n->topic) return -1;
    n->partition = partition;
    n->seek_to = -1;
    n->mi = obx_metrics_apply_partition(topic, partition);
    if (n->mi < 0 && !a->parts_metrics_full) {
        a->parts_metrics_full = 1;
        obx_warn("metrics", "more than %d partitions seen: %s [%d] and later ones get no "
                 "outboxd_apply_consumer_lag_messages series (outboxd_apply_partitions_owned still counts them)",
                 OBX_APPLY_MAX_PARTS, topic, (int)partition);
    }
    return (int)a->n_parts++;
}

void obx_apply_note_dropped(obx_apply_t *a, const rd_kafka_message_t *m)
{
    int p = obx_apply_part_index(a, rd_kafka_topic_name(m->rkt), m->partition);
    if (p < 0) return;
    if (a->parts[p].seek_to < 0 || m->offset < a->parts[p].seek_to) a->parts[p].seek_to = m->offset;
}

/* Drops the buffered (read, not yet written) events of partitions no longer
 * assigned: nothing of them reached the replica or an offset, and their next
 * owner reads them again from the committed offset. */
static size_t drop_unowned(obx_apply_t *a)
{
    size_t keep = 0, dropped = 0;
    for (size_t i = 0; i < a->n_buf; i++) {
        obx_apply_entry_t *e = &a->batch[i];
        if (e->part >= 0 && a->parts[e->part].assigned) {
            if (keep != i) {
                a->batch[keep] = *e;
                memset(e, 0, sizeof(*e));
            }
            keep++;
        } else {
            obx_apply_entry_clear(a, e);
            dropped++;
        }
    }
    a->n_buf = keep;
    return dropped;
}

static void count_owned(obx_apply_t *a)
{
    int owned = 0;
    for (size_t p = 0; p < a->n_parts; p++) owned += a->parts[p].assigned;
    a->n_owned = owned;
    atomic_store(&a->m->apply_owned, owned);
}

/* Adds (add) or removes parts: incrementally under the cooperative
 * protocol, the whole assignment under the eager one. librdkafka refuses
 * only a call that does not fit its state, a bug: the process stops. */
static int set_assignment(obx_apply_t *a, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, int coop, int add,
                          const char *names)
{
    rd_kafka_error_t *e = !coop ? NULL : add ? rd_kafka_incremental_assign(rk, parts) : rd_kafka_incremental_unassign(rk, parts);
    rd_kafka_resp_err_t re = coop ? RD_KAFKA_RESP_ERR_NO_ERROR : rd_kafka_assign(rk, add ? parts : NULL);
    if (!e && !re) return 0;
    obx_error(add ? "assign" : "revoke", "group %s: %s %s failed: %s", a->cfg->apply_group,
              add ? "assigning" : "unassigning", names, e ? rd_kafka_error_string(e) : rd_kafka_err2str(re));
    if (e) rd_kafka_error_destroy(e);
    a->kafka_fatal = 1;
    return -1;
}

static void on_assign(obx_apply_t *a, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, int coop, const char *names)
{
    if (set_assignment(a, rk, parts, coop, 1, names) != 0) return;
    for (int i = 0; i < parts->cnt; i++) {
        int p = obx_apply_part_index(a, parts->elems[i].topic, parts->elems[i].partition);
        if (p < 0) continue;
        a->parts[p].assigned = 1;
        a->parts[p].committed_fetched = 0;
        a->parts[p].seek_to = -1;
        obx_metrics_apply_partition_set(a->parts[p].mi, 1, -1);
    }
    /* While the database is down nothing may be consumed. */
    if (a->db_down) rd_kafka_pause_partitions(rk, parts);
    if (a->group_lost) {
        a->group_lost = 0;
        atomic_store(&a->m->apply_in_group, 1);
        if (!a->db_down) atomic_store(&a->m->state, (int)OBX_STATE_STREAMING);
    }
    count_owned(a);
    obx_info("assigned", "group %s: assigned %s (%s); owns %d partitions", a->cfg->apply_group, names,
             coop ? "incremental" : "eager", a->n_owned);
}

/* Eager: every partition goes; cooperative: only those listed. Either way
 * no DB transaction is open here (the loop polls only between batches), so
 * every row written is committed and its offsets were committed right
 * after; what is left is the buffered batch, dropped for the revoked
 * partitions. A lost assignment (session timed out, max.poll.interval.ms
 * exceeded) is handled the same, and the process is not ready until the
 * group assigns it partitions again. */
static void on_revoke(obx_apply_t *a, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, int coop, const char *names)
{
    int lost = rd_kafka_assignment_lost(rk);
    for (int i = 0; i < parts->cnt; i++) {
        int p = obx_apply_part_index(a, parts->elems[i].topic, parts->elems[i].partition);
        if (p >= 0) a->parts[p].assigned = 0;
    }
    if (!coop)
        for (size_t p = 0; p < a->n_parts; p++) a->parts[p].assigned = 0;
    for (size_t p = 0; p < a->n_parts; p++)
        if (!a->parts[p].assigned) {
            a->parts[p].seek_to = -1;
            obx_metrics_apply_partition_set(a->parts[p].mi, 0, -1);
        }
    size_t dropped = drop_unowned(a);
    set_assignment(a, rk, parts, coop, 0, names);
    count_owned(a);
    if (lost) {
        a->group_lost = 1;
        atomic_store(&a->m->apply_in_group, 0);
        if (atomic_load(&a->m->state) == (int)OBX_STATE_STREAMING) atomic_store(&a->m->state, (int)OBX_STATE_CONNECTING);
        obx_warn("assignment_lost", "group %s: lost %s (session timed out, max.poll.interval.ms exceeded, or with "
                 "cooperative-sticky and librdkafka < 2.10 an offset commit that raced a rebalance); %zu buffered "
                 "events dropped, nothing of them committed; rejoining",
                 a->cfg->apply_group, names, dropped);
        return;
    }
    obx_info("revoked", "group %s: revoked %s (%s); %zu buffered events dropped for the next owner; owns %d partitions",
             a->cfg->apply_group, names, coop ? "incremental" : "eager", dropped, a->n_owned);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    obx_apply_t *a = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    obx_apply_sb_t b = {0};
    for (int i = 0; i < parts->cnt; i++)
        obx_apply_sb_printf(&b, "%s%s[%d]", i ? " " : "", parts->elems[i].topic, (int)parts->elems[i].partition);
    const char *names = b.s ? b.s : "(nothing)";
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) on_assign(a, rk, parts, coop, names);
    else on_revoke(a, rk, parts, coop, names);
    free(b.s);
}

/* Offsets move only after the database committed (see obx_apply_commit_offsets). */
static rd_kafka_conf_t *consumer_conf(obx_apply_t *a, obx_err_t *err)
{
    rd_kafka_conf_t *conf = obx_kconf_new(a->cfg, OBX_KCONF_CONSUMER, err);
    if (!conf) return NULL;
    obx_kconf_own_brokers_gauge(conf); /* apply's /readyz */
    const char *forced[][2] = {{"group.id", a->cfg->apply_group}, {"enable.auto.commit", "false"},
                               {"enable.auto.offset.store", "false"}, {"enable.partition.eof", "false"}};
    int rc = 0;
    for (size_t i = 0; !rc && i < sizeof(forced) / sizeof(forced[0]); i++)
        rc = obx_kconf_set(conf, forced[i][0], forced[i][1], err);
    /* A new group bootstraps from the beginning; the version guard makes the overlap safe. */
    if (!rc) rc = obx_kconf_default(conf, a->cfg, "auto.offset.reset", "earliest", err);
    if (!rc) rc = obx_kconf_default(conf, a->cfg, "topic.metadata.refresh.interval.ms", "10000", err);
    if (rc) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_opaque(conf, a);
    return conf;
}

static int subscribe(obx_apply_t *a, obx_err_t *err)
{
    char **topics = NULL;
    size_t nt = 0;
    if (obx_apply_list_split(a->cfg->apply_topics, &topics, &nt) != 0) {
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "out of memory");
        return -1;
    }
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new((int)nt);
    for (size_t i = 0; i < nt; i++) rd_kafka_topic_partition_list_add(subs, topics[i], RD_KAFKA_PARTITION_UA);
    obx_apply_list_free(topics, nt);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(a->rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (e) {
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "apply.topics = \"%s\": %s", a->cfg->apply_topics, rd_kafka_err2str(e));
        err->kafka_err = (int)e;
        return -1;
    }
    return 0;
}

int obx_apply_consumer_new(obx_apply_t *a, obx_err_t *err)
{
    char kerr[512];
    obx_err_clear(err);
    rd_kafka_conf_t *conf = consumer_conf(a, err);
    if (!conf) {
        err->cls = OBX_ERR_FATAL;
        err->exit_code = OBX_EXIT_CONFIG;
        return -1;
    }
    a->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr));
    if (!a->rk) {
        rd_kafka_conf_destroy(conf);
        obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG, "%s", kerr);
        return -1;
    }
    rd_kafka_poll_set_consumer(a->rk);
    if (subscribe(a, err) != 0) return -1;
    atomic_store(&g_rk, a->rk);
    return 0;
}

void obx_apply_consumer_close(obx_apply_t *a)
{
    atomic_store(&g_rk, NULL);
    if (!a->rk) return;
    rd_kafka_consumer_close(a->rk);
    rd_kafka_destroy(a->rk);
    a->rk = NULL;
}

/* Offsets of the first n entries, committed after their rows are. A failed
 * commit only means those events are read (and ignored as stale) again. */
void obx_apply_commit_offsets(obx_apply_t *a, size_t n)
{
    if (!n) return;
    int64_t *next = malloc((a->n_parts ? a->n_parts : 1) * sizeof(int64_t));
    if (!next) return;
    for (size_t p = 0; p < a->n_parts; p++) next[p] = -1;
    for (size_t i = 0; i < n; i++) {
        const obx_apply_entry_t *e = &a->batch[i];
        if (e->part >= 0 && e->msg->offset + 1 > next[e->part]) next[e->part] = e->msg->offset + 1;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    for (size_t p = 0; p < a->n_parts; p++)
        if (next[p] >= 0 && a->parts[p].assigned)
            rd_kafka_topic_partition_list_add(l, a->parts[p].topic, a->parts[p].partition)->offset = next[p];
    if (l->cnt) {
        rd_kafka_resp_err_t err = rd_kafka_commit(a->rk, l, 0);
        for (int i = 0; !err && i < l->cnt; i++) err = l->elems[i].err;
        if (err) {
            atomic_fetch_add(&a->m->apply_offset_commit_failures, 1);
            obx_warn("offset_commit_failed", "group %s: %s; the rows are written, so those events are only read again "
                     "and ignored as stale", a->cfg->apply_group, rd_kafka_err2str(err));
        } else {
            atomic_fetch_add(&a->m->apply_offset_commits, 1);
            for (size_t p = 0; p < a->n_parts; p++)
                if (next[p] >= 0 && a->parts[p].assigned) obx_metrics_apply_partition_set(a->parts[p].mi, 1, next[p]);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    free(next);
}

/* Back to the first event not written on every assigned partition. 0, or
 * -1 (logged; retry later). */
int obx_apply_seek_back(obx_apply_t *a)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    for (size_t p = 0; p < a->n_parts; p++)
        if (a->parts[p].assigned && a->parts[p].seek_to >= 0)
            rd_kafka_topic_partition_list_add(l, a->parts[p].topic, a->parts[p].partition)->offset = a->parts[p].seek_to;
    int rc = 0;
    if (l->cnt) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(a->rk, l, 10000);
        if (e) {
            obx_warn("seek", "seeking back to the first event not written failed: %s; retrying", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            rc = -1;
        }
        for (int i = 0; !rc && i < l->cnt; i++) {
            int p = obx_apply_part_index(a, l->elems[i].topic, l->elems[i].partition);
            if (l->elems[i].err && p >= 0 && a->parts[p].assigned) {
                obx_warn("seek", "%s [%d] to offset %lld: %s; retrying", l->elems[i].topic, (int)l->elems[i].partition,
                         (long long)l->elems[i].offset, rd_kafka_err2str(l->elems[i].err));
                rc = -1;
            }
        }
        for (int i = 0; !rc && i < l->cnt; i++)
            obx_info("seek", "%s [%d]: reading again from offset %lld", l->elems[i].topic, (int)l->elems[i].partition,
                     (long long)l->elems[i].offset);
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (!rc)
        for (size_t p = 0; p < a->n_parts; p++) a->parts[p].seek_to = -1;
    return rc;
}

/* Pausing keeps the group membership while nothing is fetched. */
void obx_apply_pause(obx_apply_t *a, int pause)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rd_kafka_assignment(a->rk, &l) || !l) return;
    if (pause) rd_kafka_pause_partitions(a->rk, l);
    else rd_kafka_resume_partitions(a->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Committed offsets of new assignments, for the consumer lag metric. */
void obx_apply_fetch_committed(obx_apply_t *a)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    for (size_t p = 0; p < a->n_parts; p++)
        if (a->parts[p].assigned && !a->parts[p].committed_fetched)
            rd_kafka_topic_partition_list_add(l, a->parts[p].topic, a->parts[p].partition);
    if (l->cnt && rd_kafka_committed(a->rk, l, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < l->cnt; i++) {
            int p = obx_apply_part_index(a, l->elems[i].topic, l->elems[i].partition);
            if (p < 0 || l->elems[i].err) continue;
            a->parts[p].committed_fetched = 1;
            if (l->elems[i].offset >= 0) obx_metrics_apply_partition_set(a->parts[p].mi, 1, l->elems[i].offset);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* High watermarks of the assigned partitions: from librdkafka's cache, or
 * (query: while paused nothing is fetched) asked from the broker, for up
 * to 2 s in all. */
void obx_apply_update_watermarks(obx_apply_t *a, int query)
{
    int64_t start = obx_mono_ms();
    for (size_t p = 0; p < a->n_parts; p++) {
        if (!a->parts[p].assigned) continue;
        int64_t lo = -1, hi = -1;
        if (query && obx_mono_ms() - start < 2000)
            rd_kafka_query_watermark_offsets(a->rk, a->parts[p].topic, a->parts[p].partition, &lo, &hi, 1000);
        else
            rd_kafka_get_watermark_offsets(a->rk, a->parts[p].topic, a->parts[p].partition, &lo, &hi);
        obx_metrics_apply_partition_wm(a->parts[p].mi, lo, hi);
    }
}
