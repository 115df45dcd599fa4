/* dedup.c against librdkafka's in-process mock cluster: no limit on topics
 * (more than the old 256 in one session), the read-back is lazy per
 * partition, and the owner's tick runs while it waits (and can stop it). */
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "clock.h"
#include "config.h"
#include "dedup.h"
#include "envelope.h"
#include "metrics.h"
#include "producer.h"

#define N_TOPICS 300
#define WIDE_PARTS 8

typedef struct {
    int acks, failures;
} dr_t;

static void on_dr(void *opaque, uint64_t ticket, const char *err, int retriable, const char *topic, const void *v,
                  size_t n)
{
    (void)ticket, (void)retriable, (void)topic, (void)v, (void)n;
    dr_t *d = opaque;
    if (err) d->failures++;
    else d->acks++;
}

typedef struct {
    obx_config_t *pcfg, *dcfg;
    obx_producer_t *prod;
    dr_t dr;
} fixture_t;

static void set(obx_config_t *cfg, const char *k, const char *v)
{
    char err[256];
    assert_int_equal(obx_config_set(cfg, k, v, "test", err, sizeof(err)), 0);
}

/* One event of slot "s" in database "d" at (lsn, index) into topic/partition,
 * saying it was partitioned with `parts` partitions (NULL: says nothing). */
static void produce_parts(fixture_t *f, const char *topic, int32_t p, obx_lsn_t lsn, uint32_t index, const char *id,
                          const char *parts)
{
    obx_outbox_row_t row;
    memset(&row, 0, sizeof(row));
    row.event_id = id;
    row.aggregate_type = "a";
    row.aggregate_id = "k";
    row.event_type = "created";
    row.payload = (const unsigned char *)"{}";
    row.payload_len = 2;
    row.payload_kind = OBX_PAYLOAD_JSON;
    obx_source_t src = {.commit_lsn = lsn, .commit_end_lsn = lsn + 1, .change_lsn = lsn, .index_in_txn = index,
                        .database = "d", .schema = "public", .table = "outbox", .slot = "s",
                        .system_id = "42"};
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    assert_int_equal(obx_envelope_encode(&row, &src, &buf, &len, err, sizeof(err)), 0);
    const char *h[] = {OBX_DEDUP_PARTS_HEADER, parts};
    assert_int_equal(obx_producer_send(f->prod, topic, p, "k", buf, len, h, parts ? 1 : 0, 1, err, sizeof(err)),
                     OBX_PRODUCE_OK);
}

static void produce_id(fixture_t *f, const char *topic, int32_t p, obx_lsn_t lsn, uint32_t index, const char *id)
{
    produce_parts(f, topic, p, lsn, index, id, NULL);
}

static void produce(fixture_t *f, const char *topic, int32_t p, obx_lsn_t lsn, uint32_t index)
{
    produce_id(f, topic, p, lsn, index, "00000000-0000-0000-0000-000000000001");
}

/* Another writer's record: not an envelope at all. */
static void produce_foreign(fixture_t *f, const char *topic, int32_t p)
{
    char err[256];
    uint8_t *v = (uint8_t *)strdup("{\"not\": \"an envelope\"}");
    assert_non_null(v);
    assert_int_equal(obx_producer_send(f->prod, topic, p, "k", v, strlen((char *)v), NULL, 0, 1, err, sizeof(err)),
                     OBX_PRODUCE_OK);
}

static void wait_acks(fixture_t *f, int n)
{
    int64_t end = obx_mono_ms() + 30000;
    while (f->dr.acks + f->dr.failures < n && obx_mono_ms() < end) obx_producer_poll(f->prod, 50);
    assert_int_equal(f->dr.acks, n);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    char err[256], name[64];
    f->pcfg = obx_config_new();
    assert_non_null(f->pcfg);
    set(f->pcfg, "kafka.bootstrap.servers", "unused:9092");
    set(f->pcfg, "kafka.test.mock.num.brokers", "1");
    set(f->pcfg, "kafka.linger.ms", "0");
    set(f->pcfg, "kafka.log_level", "0");
    set(f->pcfg, "exactly_once", "true");
    f->prod = obx_producer_new(f->pcfg, on_dr, &f->dr, err, sizeof(err));
    assert_non_null(f->prod);
    rd_kafka_mock_cluster_t *mc = rd_kafka_handle_mock_cluster((rd_kafka_t *)obx_producer_rk(f->prod));
    assert_non_null(mc);
    /* The read-back consumer reaches the same mock brokers. */
    f->dcfg = obx_config_new();
    assert_non_null(f->dcfg);
    set(f->dcfg, "kafka.bootstrap.servers", rd_kafka_mock_cluster_bootstraps(mc));
    set(f->dcfg, "kafka.log_level", "0");
    set(f->dcfg, "exactly_once", "true");
    int sent = 0;
    for (int i = 0; i < N_TOPICS; i++) {
        snprintf(name, sizeof(name), "t%03d", i);
        assert_int_equal(rd_kafka_mock_topic_create(mc, name, 1, 1), 0);
        produce(f, name, 0, 100, (uint32_t)i);
        sent++;
    }
    assert_int_equal(rd_kafka_mock_topic_create(mc, "wide", WIDE_PARTS, 1), 0);
    for (int p = 0; p < WIDE_PARTS; p++, sent++) produce(f, "wide", p, 200, (uint32_t)p);
    int64_t end = obx_mono_ms() + 30000;
    while (f->dr.acks + f->dr.failures < sent && obx_mono_ms() < end) obx_producer_poll(f->prod, 50);
    assert_int_equal(f->dr.acks, sent);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    obx_producer_destroy(f->prod);
    obx_config_destroy(f->pcfg);
    obx_config_destroy(f->dcfg);
    free(f);
    return 0;
}

typedef struct {
    int ticks, stop_after;
} tick_t;

static int on_tick(void *ctx)
{
    tick_t *t = ctx;
    t->ticks++;
    return t->stop_after && t->ticks >= t->stop_after;
}

static obx_dedup_t *mk_dedup(fixture_t *f, tick_t *t)
{
    obx_err_t err;
    obx_dedup_t *d = obx_dedup_new(f->dcfg, (rd_kafka_t *)obx_producer_rk(f->prod), "s", "d", "42", on_tick, t, &err);
    if (!d) fail_msg("dedup: %s", err.msg);
    return d;
}

/* 300 topics in one session (the old table held 256): each one's tail is
 * read once, and events at or before it are skipped. */
static void test_more_than_256_topics(void **state)
{
    fixture_t *f = *state;
    tick_t t = {0};
    obx_dedup_t *d = mk_dedup(f, &t);
    obx_err_t err;
    char name[64];
    int32_t part;
    for (int i = 0; i < N_TOPICS; i++) {
        snprintf(name, sizeof(name), "t%03d", i);
        obx_pos_t at = {100, (uint32_t)i}, after = {100, (uint32_t)i + 1}, before = {99, 7};
        int rc = obx_dedup_check(d, name, "k", at, obx_now_us(), &part, &err);
        if (rc < 0) fail_msg("%s: %s", name, err.msg);
        assert_int_equal(rc, 1);
        assert_int_equal(part, 0);
        assert_int_equal(obx_dedup_check(d, name, "k", before, obx_now_us(), &part, &err), 1);
        assert_int_equal(obx_dedup_check(d, name, "k", after, obx_now_us(), &part, &err), 0);
        assert_int_equal(obx_dedup_partitions_read(d), (size_t)i + 1);
    }
    assert_true(t.ticks > 0);
    obx_dedup_destroy(d);
}

/* Only the partition the key maps to is read, the first time only. */
static void test_read_back_is_per_partition(void **state)
{
    fixture_t *f = *state;
    tick_t t = {0};
    obx_dedup_t *d = mk_dedup(f, &t);
    obx_err_t err;
    int32_t part = -1, again = -1;
    obx_pos_t pos = {200, 0};
    int rc = obx_dedup_check(d, "wide", "some-key", pos, obx_now_us(), &part, &err);
    if (rc < 0) fail_msg("%s", err.msg);
    assert_in_range(part, 0, WIDE_PARTS - 1);
    assert_int_equal(obx_dedup_partitions_read(d), 1);
    /* partition p holds (200, p): at or before it is in Kafka */
    pos.index = (uint32_t)part;
    assert_int_equal(obx_dedup_check(d, "wide", "some-key", pos, obx_now_us(), &again, &err), 1);
    assert_int_equal(again, part);
    pos.index++;
    assert_int_equal(obx_dedup_check(d, "wide", "some-key", pos, obx_now_us(), &again, &err), 0);
    assert_int_equal(obx_dedup_partitions_read(d), 1);
    /* A topic without events: nothing to skip (the mock creates it on
     * metadata requests, a real broker does not for consumers). */
    rc = obx_dedup_check(d, "no-such-topic", "k", pos, obx_now_us(), &part, &err);
    if (rc != 0) fail_msg("no-such-topic: %d %s", rc, err.msg);
    obx_dedup_destroy(d);
}

/* A tick that says stop (the replication connection failed) ends the
 * read-back with a retriable error instead of reading on. */
static void test_tick_can_stop_the_read_back(void **state)
{
    fixture_t *f = *state;
    tick_t t = {.stop_after = 1};
    obx_dedup_t *d = mk_dedup(f, &t);
    obx_err_t err;
    int32_t part;
    obx_pos_t pos = {100, 0};
    assert_int_equal(obx_dedup_check(d, "t000", "k", pos, obx_now_us(), &part, &err), -1);
    assert_int_equal(err.cls, OBX_ERR_RETRIABLE);
    assert_int_equal(obx_dedup_partitions_read(d), 0);
    obx_dedup_destroy(d);
}


/* Ours, then records a read-back must look past: a snapshot's (event id
 * "snapshot:", skipped undecoded even when its envelope claims this slot)
 * and another writer's. The mock cluster keeps no time index (it answers
 * every lookup by time with "none"), which contradicts the newest record's
 * timestamp: the read-back says so (fallback counter) and reads the last
 * exactly_once.scan_max records instead. */
static void mixed_topic(fixture_t *f, const char *name, int n_foreign)
{
    rd_kafka_mock_cluster_t *mc = rd_kafka_handle_mock_cluster((rd_kafka_t *)obx_producer_rk(f->prod));
    assert_int_equal(rd_kafka_mock_topic_create(mc, name, 1, 1), 0);
    int before = f->dr.acks;
    produce(f, name, 0, 300, 0);
    for (int i = 0; i < 3; i++) produce_id(f, name, 0, 900, (uint32_t)i, "snapshot:athletes:7:1");
    for (int i = 0; i < n_foreign; i++) produce_foreign(f, name, 0);
    wait_acks(f, before + 1 + 3 + n_foreign);
}

static void test_no_time_index_falls_back_and_skips_snapshots(void **state)
{
    fixture_t *f = *state;
    mixed_topic(f, "mixed", 5);
    tick_t t = {0};
    obx_dedup_t *d = mk_dedup(f, &t);
    obx_err_t err;
    int32_t part;
    uint64_t fb = atomic_load(&obx_metrics()->exactly_once_fallbacks);
    obx_pos_t at = {300, 0}, after = {300, 1};
    int rc = obx_dedup_check(d, "mixed", "k", at, obx_now_us(), &part, &err);
    if (rc < 0) fail_msg("%s", err.msg);
    assert_int_equal(rc, 1);
    /* (900, x) of the snapshot records was not taken for ours */
    assert_int_equal(obx_dedup_check(d, "mixed", "k", after, obx_now_us(), &part, &err), 0);
    assert_int_equal(atomic_load(&obx_metrics()->exactly_once_fallbacks), fb + 1);
    obx_dedup_destroy(d);
}

/* The fallback keeps its record budget: more foreign records than
 * exactly_once.scan_max after ours means nothing of ours is found and the
 * event is sent again (a duplicate, never a loss). An event without a
 * commit time takes the fallback too. */
static void test_fallback_budget_gives_duplicates_not_loss(void **state)
{
    fixture_t *f = *state;
    mixed_topic(f, "crowded", 10);
    set(f->dcfg, "exactly_once.scan_max", "5");
    tick_t t = {0};
    obx_dedup_t *d = mk_dedup(f, &t);
    obx_err_t err;
    int32_t part;
    uint64_t fb = atomic_load(&obx_metrics()->exactly_once_fallbacks);
    obx_pos_t at = {300, 0};
    int rc = obx_dedup_check(d, "crowded", "k", at, 0, &part, &err);
    set(f->dcfg, "exactly_once.scan_max", "1000");
    if (rc < 0) fail_msg("%s", err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(atomic_load(&obx_metrics()->exactly_once_fallbacks), fb + 1);
    obx_dedup_destroy(d);
}

/* Partitions added to a topic change the key -> partition map: events of
 * the replay window may have gone to another partition before, so a newer
 * record of ours here proves nothing about them. Only a newest record
 * written with today's partition count (or one saying none: an older
 * outboxd) is trusted; otherwise the window is sent again (duplicates,
 * never loss) and the fallback is counted. */
static void test_partition_count_changed_since_newest_record_is_not_trusted(void **state)
{
    fixture_t *f = *state;
    rd_kafka_mock_cluster_t *mc = rd_kafka_handle_mock_cluster((rd_kafka_t *)obx_producer_rk(f->prod));
    const char *says[] = {"3", "4", NULL}, *names[] = {"grown", "same", "unsaid"};
    int skip[] = {0, 1, 1};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rd_kafka_mock_topic_create(mc, names[i], 4, 1), 0);
        int before = f->dr.acks;
        for (int p = 0; p < 4; p++)
            produce_parts(f, names[i], p, 500, (uint32_t)p, "00000000-0000-0000-0000-000000000002", says[i]);
        wait_acks(f, before + 4);
    }
    for (int i = 0; i < 3; i++) {
        tick_t t = {0};
        obx_dedup_t *d = mk_dedup(f, &t);
        obx_err_t err;
        int32_t part;
        uint64_t fb = atomic_load(&obx_metrics()->exactly_once_fallbacks);
        obx_pos_t at = {400, 0};
        int rc = obx_dedup_check(d, names[i], "k", at, obx_now_us(), &part, &err);
        if (rc < 0) fail_msg("%s: %s", names[i], err.msg);
        assert_int_equal(rc, skip[i]);
        assert_int_equal(obx_dedup_partition_count(d, names[i]), 4);
        assert_int_equal(atomic_load(&obx_metrics()->exactly_once_fallbacks), fb + (skip[i] ? 0 : 1));
        obx_dedup_destroy(d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_more_than_256_topics),
        cmocka_unit_test(test_read_back_is_per_partition),
        cmocka_unit_test(test_tick_can_stop_the_read_back),
        cmocka_unit_test(test_no_time_index_falls_back_and_skips_snapshots),
        cmocka_unit_test(test_fallback_budget_gives_duplicates_not_loss),
        cmocka_unit_test(test_partition_count_changed_since_newest_record_is_not_trusted),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
