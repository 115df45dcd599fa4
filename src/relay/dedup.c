#include "dedup.h"
#include "clock.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "exitcodes.h"
#include "kconf.h"
#include "log.h"
#include "metrics.h"
#include "strmap.h"
#include "outboxd/v1/event.pb-c.h"

/* One topic's metadata; a read-back that gets nothing from Kafka this long. */
#define IO_TIMEOUT_MS 10000
/* Longest wait on Kafka between two ticks. */
#define TICK_MS 100
/* A metadata request that did not answer in TICK_MS is asked again with
 * twice the wait, up to this: a slow broker still gets its answer in. */
#define METADATA_STEP_MAX_MS 2000

enum { PART_UNREAD = 0, PART_NONE, PART_FOUND };

typedef struct {
    int32_t n_parts;  /* 0: topic does not exist (yet) */
    uint8_t *state;   /* per partition: PART_* */
    obx_pos_t *tail;  /* per partition: newest position of ours (PART_FOUND) */
    int32_t *tail_parts; /* per partition: partition count the tail was written with (0: not said) */
    rd_kafka_topic_t *rkt;  /* the producer's, for the partitioner */
    rd_kafka_topic_t *crkt; /* the read-back consumer's */
} topic_t;

struct obx_dedup_s {
    rd_kafka_t *prod, *cons;
    obx_partitioner_fn partitioner;
    char slot[64], database[128], system_id[32];
    int scan_max, skew_ms;
    int64_t last_tick;
    obx_strmap_t *topics; /* name -> topic_t *, owned */
    obx_dedup_tick_fn tick;
    void *tick_ctx;
    size_t parts_read;
    obx_lsn_t horizon; /* obx_dedup_set_horizon; 0 none */
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
                           const char *database, const char *system_id, obx_dedup_tick_fn tick, void *tick_ctx, obx_err_t *err)
{
    obx_err_clear(err);
    rd_kafka_conf_t *conf = NULL;
    obx_dedup_t *d = calloc(1, sizeof(*d));
    if (!d || !(d->topics = obx_strmap_new())) {
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        goto fail;
    }
    d->prod = producer;
    d->tick = tick;
    d->tick_ctx = tick_ctx;
    d->scan_max = cfg->dedup_scan_max;
    d->skew_ms = cfg->dedup_clock_skew_ms;
    d->partitioner = obx_partitioner_by_name(obx_config_kafka_get(cfg, "partitioner"));
    snprintf(d->slot, sizeof(d->slot), "%s", slot);
    snprintf(d->database, sizeof(d->database), "%s", database);
    snprintf(d->system_id, sizeof(d->system_id), "%s", system_id ? system_id : "");
    /* Same brokers and security settings as the producer, same logger. */
    if (!(conf = obx_kconf_new(cfg, OBX_KCONF_CONSUMER, err))) goto fail;
    /* read_uncommitted: outboxd's records are not transactional, and
     * read_committed stops at the last stable offset, so one open
     * transaction of another producer would hide every record of ours after
     * it (the whole window sent again). The broker still serves only
     * records below the high watermark (acked with acks=all). A window
     * reaching before the log start begins at the start, and the end of a
     * partition is reported at once, not after a long poll. */
    if (obx_kconf_set(conf, "group.id", "outboxd-dedup", err) != 0 ||
        obx_kconf_set(conf, "enable.auto.commit", "false", err) != 0 ||
        obx_kconf_set(conf, "enable.partition.eof", "true", err) != 0 ||
        obx_kconf_set(conf, "isolation.level", "read_uncommitted", err) != 0 ||
        obx_kconf_set(conf, "auto.offset.reset", "earliest", err) != 0 ||
        obx_kconf_set(conf, "fetch.wait.max.ms", "10", err) != 0)
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
    if (d) obx_strmap_destroy(d->topics, NULL);
    free(d);
    return NULL;
}

static void topic_free(void *v)
{
    topic_t *t = v;
    if (!t) return;
    free(t->state);
    free(t->tail);
    free(t->tail_parts);
    if (t->rkt) rd_kafka_topic_destroy(t->rkt);
    if (t->crkt) rd_kafka_topic_destroy(t->crkt);
    free(t);
}

void obx_dedup_serve_errors(obx_dedup_t *d)
{
    if (d) obx_kconf_serve_errors(d->cons);
}

void obx_dedup_destroy(obx_dedup_t *d)
{
    if (!d) return;
    obx_strmap_destroy(d->topics, topic_free);
    obx_kconf_serve_errors(d->cons);
    rd_kafka_destroy(d->cons);
    free(d);
}

size_t obx_dedup_partitions_read(const obx_dedup_t *d) { return d->parts_read; }

int32_t obx_dedup_partition_count(obx_dedup_t *d, const char *topic)
{
    const topic_t *t = obx_strmap_get(d->topics, topic);
    return t ? t->n_parts : 0;
}

/* The owner's tick (at most every TICK_MS / 4: a fast read-back calls
 * here per record); then how long the next wait on Kafka may be (0: the
 * deadline passed), or -1 when the tick said stop. */
static int64_t next_wait(obx_dedup_t *d, int64_t deadline, int64_t step)
{
    int64_t now = obx_mono_ms();
    if (now - d->last_tick >= TICK_MS / 4) {
        d->last_tick = now;
        if (d->tick && d->tick(d->tick_ctx) != 0) return -1;
    }
    int64_t left = deadline - now;
    if (left <= 0) return 0;
    return left < step ? left : step;
}

/* What one scan saw. */
typedef struct {
    int64_t end;     /* the partition's end offset */
    int64_t last_ts; /* timestamp of the newest record read; -1 none */
    int64_t records; /* records read */
} scan_out_t;

/* A snapshot's record (`outboxd snapshot` or a signal's): its event id,
 * field 1 and so first on the wire, starts with "snapshot:". Told apart
 * without decoding; anything else is decoded and compared. */
static int is_snapshot(const rd_kafka_message_t *m)
{
    const uint8_t *b = m->payload;
    size_t n = m->len, i = 1;
    uint64_t len = 0;
    if (!b || n < 2 || b[0] != 0x0a) return 0;
    for (int shift = 0; i < n && shift < 35; shift += 7, i++) {
        len |= (uint64_t)(b[i] & 0x7f) << shift;
        if (!(b[i] & 0x80)) break;
    }
    i++;
    return len >= 9 && i + 9 <= n && !memcmp(b + i, "snapshot:", 9);
}

/* The partition count a record of ours says it was partitioned with
 * (OBX_DEDUP_PARTS_HEADER); 0 when it says none (an older outboxd, or a
 * topic that did not exist yet when its session began). */
static int32_t parts_header(const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    const void *v = NULL;
    size_t n = 0;
    char buf[16];
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(h, OBX_DEDUP_PARTS_HEADER, &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR || !v || !n ||
        n >= sizeof(buf))
        return 0;
    memcpy(buf, v, n);
    buf[n] = 0;
    char *end;
    long parts = strtol(buf, &end, 10);
    return *end || parts <= 0 || parts > INT32_MAX ? 0 : (int32_t)parts;
}

/* Keeps the record if it is ours and newer than what was found. */
static void consider(obx_dedup_t *d, topic_t *t, int32_t p, const rd_kafka_message_t *m)
{
    if (is_snapshot(m)) return;
    Outboxd__V1__Event *ev = obx_envelope_decode(m->payload, m->len);
    if (ev && ev->source && !strcmp(ev->source->slot, d->slot) && !strcmp(ev->source->database, d->database) &&
        *d->system_id && !strcmp(ev->source->system_id, d->system_id)) {
        obx_pos_t pos = {ev->source->commit_lsn, ev->source->index_in_txn};
        if (t->state[p] != PART_FOUND || obx_pos_cmp(pos, t->tail[p]) > 0) {
            t->tail[p] = pos;
            t->tail_parts[p] = parts_header(m);
        }
        t->state[p] = PART_FOUND;
    }
    obx_envelope_free(ev);
}

/* Reads one partition from `start` (an offset, or RD_KAFKA_OFFSET_TAIL(n))
 * until its end, or until offset stop_at was read (-1: the end), keeping
 * the newest record of ours. No record budget: it fails only when Kafka
 * gives nothing for IO_TIMEOUT_MS (or the tick says stop). */
static int scan(obx_dedup_t *d, const char *topic, int32_t p, int64_t start, int64_t stop_at, topic_t *t,
                scan_out_t *out, char *errstr, size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, p)->offset = start;
    rd_kafka_resp_err_t e = rd_kafka_assign(d->cons, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        snprintf(errstr, errstr_size, "reading back %s [%d]: %s", topic, (int)p, rd_kafka_err2str(e));
        return -1;
    }
    int rc = 1;
    int64_t deadline = obx_mono_ms() + IO_TIMEOUT_MS;
    while (rc > 0) {
        int64_t wait = next_wait(d, deadline, TICK_MS);
        if (wait <= 0) {
            snprintf(errstr, errstr_size, "reading back %s [%d]: %s", topic, (int)p,
                     wait < 0 ? "interrupted" : "timed out");
            rc = -1;
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(d->cons, (int)wait);
        if (!m) continue;
        deadline = obx_mono_ms() + IO_TIMEOUT_MS;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            out->end = m->offset;
            rc = 0;
        } else if (m->err) {
            snprintf(errstr, errstr_size, "reading back %s [%d]: %s", topic, (int)p, rd_kafka_message_errstr(m));
            rc = -1;
        } else if (m->partition == p && !strcmp(rd_kafka_topic_name(m->rkt), topic)) {
            consider(d, t, p, m);
            out->records++;
            out->last_ts = rd_kafka_message_timestamp(m, NULL);
            if (stop_at >= 0 && m->offset >= stop_at) {
                out->end = m->offset + 1;
                rc = 0;
            }
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(d->cons, NULL);
    return rc;
}

/* The first offset stamped at or after target_ms (*off -1: none), asked in
 * ticks. 0; 1 when the broker cannot answer (why says so); -1 timed out or
 * interrupted (errstr). */
static int offset_for_time(obx_dedup_t *d, const char *topic, int32_t p, int64_t target_ms, int64_t *off,
                           char *why, size_t why_size, char *errstr, size_t errstr_size)
{
    int64_t deadline = obx_mono_ms() + IO_TIMEOUT_MS, step = TICK_MS;
    for (;;) {
        int64_t wait = next_wait(d, deadline, step);
        if (wait <= 0) {
            snprintf(errstr, errstr_size, "looking up %s [%d] by time: %s", topic, (int)p,
                     wait < 0 ? "interrupted" : "timed out");
            return -1;
        }
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = target_ms;
        rd_kafka_resp_err_t e = rd_kafka_offsets_for_times(d->cons, l, (int)wait);
        if (!e) e = l->elems[0].err;
        *off = l->elems[0].offset;
        rd_kafka_topic_partition_list_destroy(l);
        if (!e) return 0;
        if (e != RD_KAFKA_RESP_ERR__TIMED_OUT) {
            snprintf(why, why_size, "the broker did not look up an offset by time (%s)", rd_kafka_err2str(e));
            return 1;
        }
        if ((step *= 2) > METADATA_STEP_MAX_MS) step = METADATA_STEP_MAX_MS;
    }
}

/* The read-back bounded by the replay window: every record of ours that
 * the window may repeat was produced after its first transaction
 * committed, so reading from the first record stamped at or after that
 * commit time (less the clock skew allowance) to the end finds the newest
 * of them, however many foreign records come before. 0; 1 when the broker
 * cannot answer (why); -1 errstr. */
static int read_window(obx_dedup_t *d, const char *name, topic_t *t, int32_t p, int64_t commit_time_us,
                       scan_out_t *sc, char *why, size_t why_size, char *errstr, size_t errstr_size)
{
    if (commit_time_us <= 0) {
        snprintf(why, why_size, "the event carries no commit time");
        return 1;
    }
    int64_t target = commit_time_us / 1000 - d->skew_ms, start = -1, lo = -1, hi = -1;
    int rc = offset_for_time(d, name, p, target, &start, why, why_size, errstr, errstr_size);
    if (rc != 0) return rc;
    if (start < 0 || start >= sc->end) {
        /* Nothing stamped at or after target; the newest record says
         * otherwise when the broker keeps no time index for it. */
        if (sc->last_ts >= target) {
            snprintf(why, why_size, "the broker found no record stamped at or after %lld ms, yet the newest is stamped %lld",
                     (long long)target, (long long)sc->last_ts);
            return 1;
        }
        return 0;
    }
    if (start < sc->end - 1 && scan(d, name, p, start, sc->end - 1, t, sc, errstr, errstr_size) != 0) return -1;
    /* Retention or compaction may have removed part of the window. */
    if (rd_kafka_get_watermark_offsets(d->cons, name, p, &lo, &hi) == RD_KAFKA_RESP_ERR_NO_ERROR && lo > 0 &&
        start <= lo && t->state[p] != PART_FOUND) {
        snprintf(why, why_size, "the replay window may begin before the log start offset %lld (records deleted)",
                 (long long)lo);
        return 2;
    }
    return 0;
}

/* The read-back of one partition. */
static int read_partition(obx_dedup_t *d, const char *name, topic_t *t, int32_t p, int64_t commit_time_us,
                          char *errstr, size_t errstr_size)
{
    int64_t t0 = obx_mono_ms();
    scan_out_t sc = {.end = 0, .last_ts = -1};
    char why[300] = "";
    t->state[p] = PART_NONE;
    /* Usually the newest record is ours (the first one read ends the scan:
     * stop_at 0); else search the replay window. */
    if (scan(d, name, p, RD_KAFKA_OFFSET_TAIL(1), 0, t, &sc, errstr, errstr_size) != 0) goto fail;
    if (t->state[p] != PART_FOUND && sc.end > 1) {
        int rc = read_window(d, name, t, p, commit_time_us, &sc, why, sizeof(why), errstr, errstr_size);
        if (rc < 0) goto fail;
        if (rc > 0) {
            atomic_fetch_add(&obx_metrics()->exactly_once_fallbacks, 1);
            obx_warn("exactly_once_fallback", "%s [%d]: %s%s: events of the replay window may be sent again "
                     "(duplicates, never loss)", name, (int)p, why,
                     rc == 1 ? "; reading back at most exactly_once.scan_max records instead" : "");
        }
        if (rc == 1 && d->scan_max > 1 &&
            scan(d, name, p, sc.end > d->scan_max ? sc.end - d->scan_max : 0, sc.end - 1, t, &sc, errstr,
                 errstr_size) != 0)
            goto fail;
    }
    /* Our newest record was partitioned with another partition count:
     * events of the window may have gone to other partitions then, so a
     * position here says nothing about them. Send them (duplicates). */
    if (t->state[p] == PART_FOUND && t->tail_parts[p] && t->tail_parts[p] != t->n_parts) {
        atomic_fetch_add(&obx_metrics()->exactly_once_fallbacks, 1);
        obx_warn("exactly_once_fallback", "%s [%d]: the topic had %d partitions when this slot's newest record here "
                 "was written and has %d now (the key -> partition map changed): events of the replay window are "
                 "sent again (duplicates, never loss)", name, (int)p, (int)t->tail_parts[p], (int)t->n_parts);
        t->state[p] = PART_NONE;
    }
    d->parts_read++;
    if (t->state[p] == PART_FOUND)
        obx_debug("dedup_tail",
                  "%s [%d]: newest event of slot %s at commit " OBX_LSN_FMT " #%u (%lld records read in %lld ms)",
                  name, (int)p, d->slot, OBX_LSN_ARGS(t->tail[p].commit_lsn), t->tail[p].index,
                  (long long)sc.records, (long long)(obx_mono_ms() - t0));
    else
        obx_debug("dedup_tail", "%s [%d]: no event of slot %s (%lld records read in %lld ms)", name, (int)p, d->slot,
                  (long long)sc.records, (long long)(obx_mono_ms() - t0));
    return 0;
fail:
    t->state[p] = PART_UNREAD;
    return -1;
}

/* Partition count, waiting in ticks. Asked through the consumer so that
 * it knows the partition leaders before it reads (else each first read
 * of a topic waits for the consumer's own metadata refresh). */
static int load_metadata(obx_dedup_t *d, const char *name, topic_t *t, char *errstr, size_t errstr_size)
{
    int64_t deadline = obx_mono_ms() + IO_TIMEOUT_MS, step = TICK_MS;
    const struct rd_kafka_metadata *md = NULL;
    for (;;) {
        int64_t wait = next_wait(d, deadline, step);
        if (wait <= 0) {
            snprintf(errstr, errstr_size, "metadata for %s: %s", name, wait < 0 ? "interrupted" : "timed out");
            return -1;
        }
        rd_kafka_resp_err_t e = rd_kafka_metadata(d->cons, 0, t->crkt, &md, (int)wait);
        if (!e && md->topic_cnt == 1 && md->topics[0].err &&
            md->topics[0].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
            /* An existing topic without a leader just now: "does not
             * exist" would skip its read-back. Ask again. */
            rd_kafka_metadata_destroy(md);
            obx_sleep_ms((int)wait);
            continue;
        }
        if (!e) break;
        if (e != RD_KAFKA_RESP_ERR__TIMED_OUT) {
            snprintf(errstr, errstr_size, "metadata for %s: %s", name, rd_kafka_err2str(e));
            return -1;
        }
        if ((step *= 2) > METADATA_STEP_MAX_MS) step = METADATA_STEP_MAX_MS;
    }
    if (md->topic_cnt == 1 && !md->topics[0].err) t->n_parts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    if (t->n_parts > 0) {
        t->state = calloc((size_t)t->n_parts, sizeof(*t->state));
        t->tail = calloc((size_t)t->n_parts, sizeof(*t->tail));
        t->tail_parts = calloc((size_t)t->n_parts, sizeof(*t->tail_parts));
        if (!t->state || !t->tail || !t->tail_parts) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
    }
    return 0;
}

static topic_t *load_topic(obx_dedup_t *d, const char *name, char *errstr, size_t errstr_size)
{
    topic_t *t = obx_strmap_get(d->topics, name);
    if (t) return t;
    if (!(t = calloc(1, sizeof(*t))) || !(t->rkt = rd_kafka_topic_new(d->prod, name, NULL)) ||
        !(t->crkt = rd_kafka_topic_new(d->cons, name, NULL))) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    if (load_metadata(d, name, t, errstr, errstr_size) != 0) goto fail;
    if (obx_strmap_put(d->topics, name, t) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    return t;
fail:
    topic_free(t);
    return NULL;
}

void obx_dedup_set_horizon(obx_dedup_t *d, obx_lsn_t wal_end)
{
    d->horizon = wal_end;
}

/* A newest record of ours from WAL this server lacks: exit 4, never a skip. */
static int beyond_horizon(const obx_dedup_t *d, const char *topic, int32_t p, obx_pos_t tail, obx_err_t *err)
{
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_SLOT,
                "%s [%d] holds an event of slot %s committed at LSN " OBX_LSN_FMT ", but this server's WAL ends at "
                OBX_LSN_FMT ": the server lacks WAL that outboxd has published from (a standby promoted before it "
                "received it, or a restored backup). Those events are in Kafka but not in this database, and new "
                "events below that LSN would be taken for them. outboxd stops rather than skip them. Recover: "
                "docs/operations.md, Failover (a standby that lagged)",
                topic, (int)p, d->slot, OBX_LSN_ARGS(tail.commit_lsn), OBX_LSN_ARGS(d->horizon));
    return -1;
}

int obx_dedup_check(obx_dedup_t *d, const char *topic, const char *key, obx_pos_t pos, int64_t commit_time_us,
                    int32_t *partition, obx_err_t *err)
{
    char errstr[1024] = "";
    *partition = RD_KAFKA_PARTITION_UA;
    topic_t *t = load_topic(d, topic, errstr, sizeof(errstr));
    if (t && t->n_parts > 0) {
        int32_t p = d->partitioner(t->rkt, key, strlen(key), t->n_parts, NULL, NULL);
        if (p < 0 || p >= t->n_parts) return 0;
        *partition = p;
        if (t->state[p] == PART_UNREAD && read_partition(d, topic, t, p, commit_time_us, errstr, sizeof(errstr)) != 0) t = NULL;
    }
    if (!t) {
        /* Metadata, read-back: all may work on the next try. */
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "%s", errstr);
        return -1;
    }
    /* n_parts 0: not created yet, nothing of ours can be in it. Look again
     * next session; within this one our writes are in order anyway. */
    if (*partition == RD_KAFKA_PARTITION_UA) return 0;
    if (t->state[*partition] != PART_FOUND) return 0;
    if (d->horizon && t->tail[*partition].commit_lsn >= d->horizon)
        return beyond_horizon(d, topic, *partition, t->tail[*partition], err);
    return obx_pos_cmp(pos, t->tail[*partition]) <= 0;
}
