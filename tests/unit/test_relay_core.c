/* The relay's transaction core (src/relay/txn.c) driven with wal2json
 * lines and a fake sink: what is published, what is confirmed, and when. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "envelope.h"
#include "outboxd/v1/event.pb-c.h"
#include "relset.h"
#include "trace.h"
#include "metrics.h"
#include "txn.h"
#include "wal2json.h"

#define MAX_RECS 512
#define START 0x1000

typedef struct {
    char topic[128], key[64], error_header[256], headers[512];
    uint64_t ticket;
    obx_pos_t pos;
    int dead_letter;
    uint8_t *value; /* a copy, for failure reports */
    size_t value_len;
} rec_t;

typedef struct {
    obx_config_t *cfg;
    obx_metrics_t *m;
    obx_txn_t *t;
    obx_w2j_change_t chg;
    obx_err_t err;
    rec_t recs[MAX_RECS];
    size_t n_recs;
    obx_sink_rc_t script[16]; /* answers for the next produce calls; then SENT */
    size_t n_script;
    int n_signals;
    char signal_id[32], signal_type[32], signal_data[128];
    uint32_t xid;
} fx_t;

static obx_sink_rc_t fake_produce(void *ctx, obx_record_t *rec, obx_err_t *err)
{
    fx_t *f = ctx;
    obx_sink_rc_t rc = OBX_SINK_SENT;
    if (f->n_script) {
        rc = f->script[0];
        memmove(f->script, f->script + 1, --f->n_script * sizeof(f->script[0]));
    }
    if (rc == OBX_SINK_REJECTED) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_POISON, 3, "Broker: Message size too large (MSG_SIZE_TOO_LARGE)");
    } else if (rc == OBX_SINK_FAILED) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "fake pipeline failure");
    }
    if (rc == OBX_SINK_SENT || rc == OBX_SINK_SKIPPED) {
        assert_true(f->n_recs < MAX_RECS);
        rec_t *r = &f->recs[f->n_recs++];
        snprintf(r->topic, sizeof(r->topic), "%s", rec->topic);
        snprintf(r->key, sizeof(r->key), "%s", rec->key);
        r->ticket = rec->ticket;
        r->pos = rec->pos;
        r->dead_letter = rec->dead_letter;
        r->headers[0] = '\0';
        for (size_t i = 0; i < rec->n_headers; i++) {
            size_t hl = strlen(r->headers);
            snprintf(r->headers + hl, sizeof(r->headers) - hl, "%s=%s;", rec->headers[2 * i], rec->headers[2 * i + 1]);
        }
        for (size_t i = 0; i < rec->n_headers; i++)
            if (!strcmp(rec->headers[2 * i], "outboxd-error"))
                snprintf(r->error_header, sizeof(r->error_header), "%s", rec->headers[2 * i + 1]);
        r->value = malloc(rec->value_len);
        assert_non_null(r->value);
        memcpy(r->value, rec->value, rec->value_len);
        r->value_len = rec->value_len;
    }
    free(rec->value); /* the sink owns it whatever it answers */
    return rc;
}

static void fake_signal(void *ctx, const char *id, const char *type, const char *data)
{
    fx_t *f = ctx;
    f->n_signals++;
    snprintf(f->signal_id, sizeof(f->signal_id), "%s", id);
    snprintf(f->signal_type, sizeof(f->signal_type), "%s", type ? type : "NULL");
    snprintf(f->signal_data, sizeof(f->signal_data), "%s", data ? data : "NULL");
}

static void free_recs(fx_t *f)
{
    for (size_t i = 0; i < f->n_recs; i++) free(f->recs[i].value);
    f->n_recs = 0;
}

static void session(fx_t *f, obx_lsn_t confirmed)
{
    free_recs(f);
    obx_txn_sink_t sink = {.ctx = f, .produce = fake_produce, .start_signal = fake_signal};
    assert_int_equal(obx_txn_session_start(f->t, confirmed, sink), 0);
}

static fx_t *make(const char *policy)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->cfg = obx_config_new();
    f->m = calloc(1, sizeof(*f->m));
    assert_non_null(f->cfg);
    assert_non_null(f->m);
    char e[256];
    assert_int_equal(obx_config_set(f->cfg, "poison.policy", policy, "test", e, sizeof(e)), 0);
    f->t = obx_txn_new(f->cfg, "appdb", "7000000000000000001", f->m);
    assert_non_null(f->t);
    session(f, START);
    return f;
}

static int setup_halt(void **state)
{
    *state = make("halt");
    return 0;
}

static int setup_dlq(void **state)
{
    *state = make("dead-letter");
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    free_recs(f);
    obx_txn_destroy(f->t);
    obx_w2j_change_clear(&f->chg);
    obx_config_destroy(f->cfg);
    free(f->m);
    free(f);
    return 0;
}

static int feed(fx_t *f, const char *line)
{
    char e[256];
    assert_int_equal(obx_w2j_parse(line, strlen(line), &f->chg, e, sizeof(e)), 0);
    return obx_txn_change(f->t, &f->chg, &f->err);
}

static void begin(fx_t *f, obx_lsn_t lsn, obx_lsn_t end)
{
    char l[256];
    f->xid++;
    snprintf(l, sizeof(l),
             "{\"action\":\"B\",\"xid\":%u,\"timestamp\":\"2026-11-26 12:15:12.025922+00\",\"lsn\":\"" OBX_LSN_FMT
             "\",\"nextlsn\":\"" OBX_LSN_FMT "\"}",
             f->xid, OBX_LSN_ARGS(lsn), OBX_LSN_ARGS(end));
    assert_int_equal(feed(f, l), 0);
}

static void commit(fx_t *f, obx_lsn_t lsn, obx_lsn_t end)
{
    char l[256];
    snprintf(l, sizeof(l),
             "{\"action\":\"C\",\"xid\":%u,\"timestamp\":\"2026-11-26 12:15:12.025922+00\",\"lsn\":\"" OBX_LSN_FMT
             "\",\"nextlsn\":\"" OBX_LSN_FMT "\"}",
             f->xid, OBX_LSN_ARGS(lsn), OBX_LSN_ARGS(end));
    assert_int_equal(feed(f, l), 0);
}

/* An INSERT into table; aggid is JSON ("\"a1\"" or "null"). */
static int insert_into(fx_t *f, const char *table, obx_lsn_t lsn, const char *id, const char *aggid)
{
    char l[1024];
    snprintf(l, sizeof(l),
             "{\"action\":\"I\",\"xid\":%u,\"lsn\":\"" OBX_LSN_FMT "\",\"schema\":\"public\",\"table\":\"%s\",\"columns\":["
             "{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"%s\"},"
             "{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"athlete\"},"
             "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":%s},"
             "{\"name\":\"type\",\"type\":\"text\",\"value\":\"AthleteUpdated\"},"
             "{\"name\":\"payload\",\"type\":\"jsonb\",\"value\":\"{}\"}]}",
             f->xid, OBX_LSN_ARGS(lsn), table, id, aggid);
    return feed(f, l);
}

static int insert(fx_t *f, obx_lsn_t lsn, const char *id) { return insert_into(f, "outbox", lsn, id, "\"a1\""); }

static void ack(fx_t *f, size_t i) { obx_txn_delivered(f->t, f->recs[i].ticket, NULL, 0, f->recs[i].topic, NULL, 0); }

static void nack(fx_t *f, size_t i, int retriable)
{
    obx_txn_delivered(f->t, f->recs[i].ticket, "Broker: Message size too large", retriable, f->recs[i].topic,
                      f->recs[i].value, f->recs[i].value_len);
}

static obx_lsn_t flush(fx_t *f) { return obx_txn_flush_lsn(f->t); }

/* Two transactions of two rows; acks out of order across them. */
static void test_flush_waits_for_every_ack_in_wal_order(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    assert_int_equal(insert(f, 0x2020, "e2"), 0);
    commit(f, 0x2000, 0x2100);
    begin(f, 0x3000, 0x3100);
    assert_int_equal(insert(f, 0x3010, "e3"), 0);
    assert_int_equal(insert(f, 0x3020, "e4"), 0);
    assert_int_equal(f->n_recs, 4);
    assert_string_equal(f->recs[0].topic, "outbox.event.athlete");
    assert_string_equal(f->recs[0].key, "a1");
    assert_int_equal(f->recs[1].pos.commit_lsn, 0x2000);
    assert_int_equal(f->recs[1].pos.index, 1);
    /* The second transaction's acks first, before its commit: nothing moves. */
    ack(f, 3);
    ack(f, 2);
    assert_int_equal(flush(f), START);
    commit(f, 0x3000, 0x3100);
    assert_int_equal(flush(f), START);
    ack(f, 1);
    assert_int_equal(flush(f), START);
    ack(f, 0);
    /* Both confirmable now; the end LSN, never the commit's start. */
    assert_int_equal(flush(f), 0x3100);
    assert_int_equal(atomic_load(&f->m->events_published), 4);
    assert_int_equal(atomic_load(&f->m->events_acked), 4);
    assert_int_equal(atomic_load(&f->m->transactions), 2);
}

static void test_commit_alone_confirms_only_when_acked(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    ack(f, 0);
    assert_int_equal(flush(f), START); /* acked, but not committed yet */
    commit(f, 0x2000, 0x2100);
    assert_int_equal(flush(f), 0x2100);
}

static void test_empty_transactions(void **state)
{
    fx_t *f = *state;
    /* Idle: an empty transaction (another table's, filtered out by the
     * server) and one that only updates the outbox confirm at once. */
    begin(f, 0x1800, 0x1900);
    commit(f, 0x1800, 0x1900);
    assert_int_equal(flush(f), 0x1900);
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"U\",\"lsn\":\"0/2010\",\"schema\":\"public\",\"table\":\"outbox\","
                             "\"columns\":[{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"x\"}]}"),
                     0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(flush(f), 0x2100);
    assert_int_equal(f->n_recs, 0);
    assert_int_equal(atomic_load(&f->m->events_ignored), 1);
    assert_int_equal(atomic_load(&f->m->transactions), 0);
    /* Behind an unacked transaction it waits for it. */
    begin(f, 0x3000, 0x3100);
    assert_int_equal(insert(f, 0x3010, "e1"), 0);
    commit(f, 0x3000, 0x3100);
    begin(f, 0x4000, 0x4100);
    commit(f, 0x4000, 0x4100);
    assert_int_equal(flush(f), 0x2100);
    ack(f, 0);
    assert_int_equal(flush(f), 0x4100);
}

static void test_keepalives(void **state)
{
    fx_t *f = *state;
    obx_txn_keepalive(f->t, 0x1800);
    assert_int_equal(flush(f), 0x1800); /* idle: confirmable */
    begin(f, 0x2000, 0x2100);
    obx_txn_keepalive(f->t, 0x1900);
    assert_int_equal(flush(f), 0x1800); /* inside a transaction: not */
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    commit(f, 0x2000, 0x2100);
    obx_txn_keepalive(f->t, 0x5000);
    assert_int_equal(flush(f), 0x1800); /* a message in flight: not */
    ack(f, 0);
    assert_int_equal(flush(f), 0x2100);
    obx_txn_keepalive(f->t, 0x5000);
    assert_int_equal(flush(f), 0x5000);
}

static void test_poison_row_halts_without_confirming(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "good"), 0);
    assert_int_equal(insert_into(f, "outbox", 0x2020, "bad-row", "null"), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
    assert_int_equal(f->err.exit_code, 3);
    assert_non_null(strstr(f->err.msg, "bad-row"));
    assert_non_null(strstr(f->err.msg, "pg_replication_slot_advance"));
    assert_int_equal(f->n_recs, 1); /* the poison row was not published */
    ack(f, 0);
    assert_int_equal(flush(f), START); /* its transaction is never confirmed */
    assert_true(obx_txn_open(f->t));
}

static void test_poison_row_dead_lettered(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert_into(f, "outbox", 0x2010, "bad-row", "null"), 0);
    assert_int_equal(insert(f, 0x2020, "good"), 0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(f->n_recs, 2);
    assert_true(f->recs[0].dead_letter);
    assert_string_equal(f->recs[0].topic, "outboxd.deadletter");
    assert_string_equal(f->recs[0].key, "bad-row"); /* no aggregateid: the event id */
    assert_non_null(strstr(f->recs[0].error_header, "is NULL"));
    assert_false(f->recs[1].dead_letter);
    assert_int_equal(f->recs[1].pos.index, 1);
    assert_int_equal(atomic_load(&f->m->events_dead_lettered), 1);
    ack(f, 1);
    assert_int_equal(flush(f), START);
    ack(f, 0);
    assert_int_equal(flush(f), 0x2100);
}

static void test_rows_already_in_kafka_are_skipped(void **state)
{
    fx_t *f = *state;
    f->script[0] = OBX_SINK_SKIPPED;
    f->script[1] = OBX_SINK_SKIPPED;
    f->n_script = 2;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    assert_int_equal(insert(f, 0x2020, "e2"), 0);
    commit(f, 0x2000, 0x2100);
    /* Nothing to wait for: confirmable at its commit. */
    assert_int_equal(flush(f), 0x2100);
    assert_int_equal(atomic_load(&f->m->events_skipped_duplicate), 2);
    assert_int_equal(atomic_load(&f->m->events_published), 0);
    /* A partly published transaction waits only for what was sent. */
    f->script[0] = OBX_SINK_SKIPPED;
    f->n_script = 1;
    begin(f, 0x3000, 0x3100);
    assert_int_equal(insert(f, 0x3010, "e3"), 0);
    assert_int_equal(insert(f, 0x3020, "e4"), 0);
    commit(f, 0x3000, 0x3100);
    assert_int_equal(flush(f), 0x2100);
    ack(f, 3);
    assert_int_equal(flush(f), 0x3100);
    assert_int_equal(atomic_load(&f->m->events_skipped_duplicate), 3);
    assert_int_equal(f->recs[3].pos.index, 1); /* skipped rows keep their index */
}

static void test_retriable_delivery_failure_restarts_from_confirmed(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    commit(f, 0x2000, 0x2100);
    ack(f, 0);
    begin(f, 0x3000, 0x3100);
    assert_int_equal(insert(f, 0x3010, "e2"), 0);
    assert_int_equal(obx_txn_check(f->t, &f->err), 0);
    nack(f, 1, 1);
    assert_int_equal(obx_txn_check(f->t, &f->err), -1);
    assert_int_equal(f->err.cls, OBX_ERR_RETRIABLE);
    assert_non_null(strstr(f->err.msg, "id=e2"));
    commit(f, 0x3000, 0x3100);
    assert_int_equal(flush(f), 0x2100); /* nothing past the failed row */
    assert_int_equal(obx_txn_poison_count(f->t), 0);
    session(f, flush(f));
    assert_int_equal(obx_txn_check(f->t, &f->err), 0); /* a new session starts clean */
    assert_int_equal(flush(f), 0x2100);
}

static void test_permanent_delivery_failure_halts(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    assert_int_equal(insert(f, 0x2020, "big"), 0);
    commit(f, 0x2000, 0x2100);
    ack(f, 0);
    nack(f, 1, 0);
    assert_int_equal(obx_txn_check(f->t, &f->err), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
    assert_int_equal(f->err.exit_code, 3);
    assert_non_null(strstr(f->err.msg, "id=big"));
    assert_int_equal(flush(f), START);
}

static void test_rejected_before_sending_halts(void **state)
{
    fx_t *f = *state;
    f->script[0] = OBX_SINK_REJECTED;
    f->n_script = 1;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "huge"), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
    assert_non_null(strstr(f->err.msg, "huge"));
    assert_non_null(strstr(f->err.msg, "MSG_SIZE_TOO_LARGE"));
    commit(f, 0x2000, 0x2100);
    assert_int_equal(flush(f), START);
}

/* dead-letter policy: the refused row goes to the DLQ after a restart. */
static void test_permanent_failure_dead_lettered_after_restart(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    assert_int_equal(insert(f, 0x2020, "big"), 0);
    commit(f, 0x2000, 0x2100);
    ack(f, 0);
    nack(f, 1, 0);
    assert_int_equal(obx_txn_check(f->t, &f->err), -1);
    assert_int_equal(f->err.cls, OBX_ERR_RETRIABLE);
    assert_non_null(strstr(f->err.msg, "dead-letter topic"));
    assert_int_equal(flush(f), START);
    assert_int_equal(obx_txn_poison_count(f->t), 1);
    session(f, flush(f));
    f->xid = 0;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    assert_int_equal(insert(f, 0x2020, "big"), 0);
    commit(f, 0x2000, 0x2100);
    assert_false(f->recs[0].dead_letter);
    assert_true(f->recs[1].dead_letter);
    assert_string_equal(f->recs[1].topic, "outboxd.deadletter");
    assert_non_null(strstr(f->recs[1].error_header, "too large"));
    ack(f, 0);
    ack(f, 1);
    assert_int_equal(flush(f), 0x2100);
}

/* More than the old fixed 64 remembered rows: none forgotten. */
static void test_poison_memory_grows(void **state)
{
    fx_t *f = *state;
    for (obx_lsn_t i = 0; i < 100; i++) {
        session(f, START);
        begin(f, 0x10000 + i * 0x100, 0x10000 + i * 0x100 + 0x80);
        assert_int_equal(insert(f, 0x10000 + i * 0x100 + 0x10, "big"), 0);
        nack(f, 0, 0);
        assert_int_equal(obx_txn_check(f->t, &f->err), -1);
        assert_int_equal(f->err.cls, OBX_ERR_RETRIABLE);
    }
    assert_int_equal(obx_txn_poison_count(f->t), 100);
    session(f, START);
    begin(f, 0x10000, 0x10080);
    assert_int_equal(insert(f, 0x10010, "big"), 0);
    commit(f, 0x10000, 0x10080);
    begin(f, 0x10000 + 99 * 0x100, 0x10000 + 99 * 0x100 + 0x80);
    assert_int_equal(insert(f, 0x10000 + 99 * 0x100 + 0x10, "big"), 0);
    assert_true(f->recs[0].dead_letter);
    assert_true(f->recs[1].dead_letter);
}

static void test_signal_rows_start_signals(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    const char *l = "{\"action\":\"I\",\"xid\":1,\"lsn\":\"0/2010\",\"schema\":\"public\",\"table\":\"outboxd_signals\","
                    "\"columns\":[{\"name\":\"id\",\"type\":\"bigint\",\"value\":7},"
                    "{\"name\":\"type\",\"type\":\"text\",\"value\":\"snapshot\"},"
                    "{\"name\":\"data\",\"type\":\"jsonb\",\"value\":\"{}\"}]}";
    assert_int_equal(feed(f, l), 0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(f->n_signals, 1);
    assert_string_equal(f->signal_id, "7");
    assert_string_equal(f->signal_type, "snapshot");
    assert_string_equal(f->signal_data, "{}");
    assert_int_equal(f->n_recs, 0);
    assert_int_equal(flush(f), 0x2100);
}

static void test_stop_and_pipeline_failure_from_the_sink(void **state)
{
    fx_t *f = *state;
    f->script[0] = OBX_SINK_STOPPED;
    f->script[1] = OBX_SINK_FAILED;
    f->n_script = 2;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 1);
    assert_int_equal(insert(f, 0x2010, "e1"), -1);
    assert_int_equal(f->err.cls, OBX_ERR_RETRIABLE);
    assert_string_equal(f->err.msg, "fake pipeline failure");
    commit(f, 0x2000, 0x2100);
    assert_int_equal(flush(f), START);
}

static void test_protocol_errors_are_retriable(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"B\",\"xid\":9,\"lsn\":\"0/3000\",\"nextlsn\":\"0/3100\"}"), -1);
    assert_int_equal(f->err.cls, OBX_ERR_RETRIABLE);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"C\",\"xid\":9,\"lsn\":\"0/3000\",\"nextlsn\":\"0/3100\"}"), -1);
    assert_int_equal(f->err.cls, OBX_ERR_RETRIABLE);
    assert_int_equal(flush(f), 0x2100);
}

/* Fail closed: a change on a relation the relay cannot classify halts,
 * whatever the poison policy, and nothing after it is confirmed. */
static void test_unclassified_relation_halts(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "e1"), 0);
    assert_int_equal(insert_into(f, "other", 0x2020, "x", "\"a\""), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
    assert_int_equal(f->err.exit_code, 3);
    assert_non_null(strstr(f->err.msg, "public.other"));
    assert_non_null(strstr(f->err.msg, "0/2020"));
    ack(f, 0);
    assert_int_equal(flush(f), START);
    /* Not an event either way: an UPDATE of an unknown table halts too. */
    session(f, START);
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"D\",\"lsn\":\"0/2030\",\"schema\":\"s\",\"table\":\"t\",\"identity\":[]}"), -1);
    assert_non_null(strstr(f->err.msg, "a DELETE from s.t"));
}

/* Messages with other prefixes are not events: pgoutput does not filter
 * them, and the heartbeat's empty transaction still advances the slot. */
static void test_foreign_message_ignored_heartbeat_advances(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd\","
                             "\"content\":\"heartbeat\"}"),
                     0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(flush(f), 0x2100);
    begin(f, 0x3000, 0x3100);
    assert_int_equal(feed(f, "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/3010\",\"prefix\":\"other\","
                             "\"content\":\"x\"}"),
                     0);
    assert_int_equal(feed(f, "{\"action\":\"M\",\"transactional\":false,\"lsn\":\"0/3020\",\"prefix\":\"outboxd.event.x\","
                             "\"content\":\"x\"}"),
                     0);
    commit(f, 0x3000, 0x3100);
    assert_int_equal(f->n_recs, 0);
    assert_int_equal(flush(f), 0x3100);
}

/* An outbox_emit() message as deploy/sql/outbox.sql writes it. */
#define EMIT(id, agg, extra)                                                                                            \
    "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/%x\",\"prefix\":\"outboxd.event\",\"content\":"           \
    "\"{\\\"id\\\" : \\\"" id "\\\", \\\"aggregatetype\\\" : \\\"athlete\\\", \\\"aggregateid\\\" : \\\"" agg      \
    "\\\", \\\"type\\\" : \\\"AthleteUpdated\\\", \\\"payload\\\" : \\\"{\\\\\\\"a\\\\\\\": [1.50, 1e30]}\\\", "     \
    "\\\"aggregate_version\\\" : \\\"9007199254740993\\\"" extra "}\"}"

static int emit(fx_t *f, const char *fmt, unsigned lsn)
{
    char l[2048];
    snprintf(l, sizeof(l), fmt, lsn);
    return feed(f, l);
}

static Outboxd__V1__Event *event_of(fx_t *f, size_t i)
{
    Outboxd__V1__Event *ev = obx_envelope_decode(f->recs[i].value, f->recs[i].value_len);
    assert_non_null(ev);
    return ev;
}

/* Rows and messages of one transaction: one sequence of events, in WAL
 * order, and a message maps exactly like a row with the same values. */
static void test_message_events_mix_with_rows(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(insert(f, 0x2010, "r1"), 0);
    assert_int_equal(emit(f, EMIT("m1", "a1", ", \\\"headers\\\" : \\\"{\\\\\\\"traceparent\\\\\\\": \\\\\\\"tp\\\\\\\", "
                                  "\\\\\\\"n\\\\\\\": 5}\\\", \\\"occurred_at\\\" : \\\"2026-11-29T16:19:00.389657+00:00\\\""),
                          0x2020),
                     0);
    assert_int_equal(insert(f, 0x2030, "r2"), 0);
    assert_int_equal(emit(f, EMIT("m2", "a2", ", \\\"topic\\\" : \\\"custom.topic\\\""), 0x2040), 0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(f->n_recs, 4);
    const char *ids[] = {"r1", "m1", "r2", "m2"};
    for (size_t i = 0; i < 4; i++) {
        Outboxd__V1__Event *ev = event_of(f, i);
        assert_string_equal(ev->event_id, ids[i]);
        assert_int_equal(f->recs[i].pos.commit_lsn, 0x2000);
        assert_int_equal(f->recs[i].pos.index, i);
        assert_int_equal(ev->source->change_lsn, 0x2010 + 0x10 * i);
        assert_string_equal(ev->source->table, "outbox");
        obx_envelope_free(ev);
    }
    assert_string_equal(f->recs[1].topic, "outbox.event.athlete"); /* topic.template, like a row */
    assert_string_equal(f->recs[1].key, "a1");
    assert_string_equal(f->recs[3].topic, "custom.topic");
    assert_string_equal(f->recs[3].key, "a2");
    assert_string_equal(f->recs[1].headers, "id=m1;type=AthleteUpdated;content-type=application/json;traceparent=tp;n=5;");
    Outboxd__V1__Event *ev = event_of(f, 1);
    assert_int_equal(ev->version_case, OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION);
    assert_true(ev->aggregate_version == 9007199254740993LL); /* beyond 2^53, exact */
    assert_int_equal(ev->payload.len, strlen("{\"a\": [1.50, 1e30]}"));
    assert_memory_equal(ev->payload.data, "{\"a\": [1.50, 1e30]}", ev->payload.len); /* jsonb's text, unchanged */
    assert_string_equal(ev->content_type, "application/json");
    assert_true(ev->occurred_at_us == 1795969140389657LL);
    assert_int_equal(ev->n_headers, 2);
    obx_envelope_free(ev);
    for (size_t i = 0; i < 4; i++) ack(f, i);
    assert_int_equal(flush(f), 0x2100);
    assert_int_equal(atomic_load(&f->m->events_published), 4);
}

/* outbox.message_prefix decides which messages are events. */
static void test_message_prefix_configurable(void **state)
{
    fx_t *f = *state;
    char e[256];
    assert_int_equal(obx_config_set(f->cfg, "outbox.message_prefix", "orders.event", "test", e, sizeof(e)), 0);
    begin(f, 0x2000, 0x2100);
    assert_int_equal(emit(f, EMIT("m1", "a1", ""), 0x2010), 0); /* outboxd.event: not ours now */
    assert_int_equal(f->n_recs, 0);
    assert_int_equal(feed(f, "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2020\",\"prefix\":\"orders.event\","
                             "\"content\":\"{\\\"id\\\":\\\"m2\\\",\\\"aggregatetype\\\":\\\"order\\\",\\\"aggregateid\\\":"
                             "\\\"o1\\\",\\\"type\\\":\\\"Placed\\\",\\\"payload\\\":null,\\\"aggregate_version\\\":3}\"}"),
                     0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(f->n_recs, 1);
    assert_string_equal(f->recs[0].topic, "outbox.event.order");
    Outboxd__V1__Event *ev = event_of(f, 0);
    assert_true(ev->aggregate_version == 3);
    assert_int_equal(ev->payload.len, 0);
    obx_envelope_free(ev);
    /* Config validation: wal2json's prefix list cannot hold these (one
     * byte over the bound would be cut from add-msg-prefixes: every event
     * filtered away on the server). */
    obx_config_t *c = obx_config_new();
    char longest[OBX_MESSAGE_PREFIX_MAX + 2];
    memset(longest, 'p', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    const char *bad[] = {"a,b", "a b", "a\\b", "outboxd", "", longest};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(obx_config_set(c, "outbox.message_prefix", bad[i], "test", e, sizeof(e)), 0);
        assert_int_equal(obx_config_set(c, "pg.conninfo", "host=x", "test", e, sizeof(e)), 0);
        assert_int_equal(obx_config_validate(c, e, sizeof(e)), -1);
        assert_non_null(strstr(e, "outbox.message_prefix"));
    }
    longest[OBX_MESSAGE_PREFIX_MAX] = '\0';
    assert_int_equal(obx_config_set(c, "outbox.message_prefix", longest, "test", e, sizeof(e)), 0);
    assert_int_equal(obx_config_set(c, "kafka.bootstrap.servers", "k:9092", "test", e, sizeof(e)), 0);
    if (obx_config_validate(c, e, sizeof(e)) != 0) fail_msg("%s", e);
    obx_config_destroy(c);
}

#define NONTX "{\"action\":\"M\",\"xid\":null,\"transactional\":false,\"lsn\":\"0/%x\",\"prefix\":\"outboxd.event\"," \
              "\"content\":\"{\\\"id\\\":\\\"nt1\\\",\\\"aggregatetype\\\":\\\"athlete\\\",\\\"aggregateid\\\":\\\"a1\\\"," \
              "\\\"type\\\":\\\"T\\\",\\\"payload\\\":\\\"{}\\\"}\"}"

/* Non-transactional: decoded even when its transaction rolled back, so
 * poison; with halt nothing past it is confirmed. */
static void test_message_non_transactional_halts(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(emit(f, NONTX, 0x2200), -1);
    assert_int_equal(f->err.cls, OBX_ERR_POISON);
    assert_int_equal(f->err.exit_code, 3);
    assert_non_null(strstr(f->err.msg, "non-transactional"));
    assert_non_null(strstr(f->err.msg, "nt1"));
    assert_non_null(strstr(f->err.msg, "pg_replication_slot_advance('outboxd', '0/2200')"));
    assert_int_equal(f->n_recs, 0);
    assert_int_equal(flush(f), 0x2100);
}

/* With dead-letter it goes to the dead-letter topic in a transaction of its
 * own, confirmable at its LSN once acked, and not before. */
static void test_message_non_transactional_dead_lettered(void **state)
{
    fx_t *f = *state;
    assert_int_equal(emit(f, NONTX, 0x2200), 0);
    assert_int_equal(f->n_recs, 1);
    assert_true(f->recs[0].dead_letter);
    assert_string_equal(f->recs[0].key, "a1");
    assert_non_null(strstr(f->recs[0].error_header, "non-transactional"));
    assert_int_equal(f->recs[0].pos.commit_lsn, 0x2200);
    assert_false(obx_txn_open(f->t));
    obx_txn_keepalive(f->t, 0x3000);
    assert_int_equal(flush(f), START); /* in flight */
    begin(f, 0x2300, 0x2400);
    assert_int_equal(insert(f, 0x2310, "r1"), 0);
    commit(f, 0x2300, 0x2400);
    ack(f, 1);
    assert_int_equal(flush(f), START);
    ack(f, 0);
    assert_int_equal(flush(f), 0x2400);
    assert_int_equal(atomic_load(&f->m->events_dead_lettered), 1);
}

/* Content that is no outbox event: poison like a row that cannot map. */
static void test_message_malformed_content(void **state)
{
    fx_t *f = *state;
    static const char *bad[] = {
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":\"not json\"}",
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":\"[1]\"}",
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":7,\\\"aggregatetype\\\":\\\"a\\\",\\\"aggregateid\\\":\\\"k\\\",\\\"type\\\":\\\"t\\\"}\"}",
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":\\\"m\\\",\\\"aggregatetype\\\":\\\"a\\\",\\\"type\\\":\\\"t\\\",\\\"payload\\\":\\\"{}\\\"}\"}",
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":\\\"m\\\",\\\"aggregatetype\\\":\\\"a\\\",\\\"aggregateid\\\":\\\"k\\\",\\\"type\\\":\\\"t\\\","
        "\\\"aggregate_version\\\":1.5}\"}",
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":\\\"m\\\",\\\"aggregatetype\\\":\\\"a\\\",\\\"aggregateid\\\":\\\"k\\\",\\\"type\\\":\\\"t\\\","
        "\\\"headers\\\":[1]}\"}",
        /* lenient readings would make the event depend on the parser */
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":\\\"m\\\",\\\"aggregatetype\\\":\\\"a\\\",\\\"aggregateid\\\":\\\"k\\\",\\\"type\\\":\\\"t\\\","
        "\\\"aggregate_version\\\":\\\" +12\\\"}\"}",
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":\\\"m\\\",\\\"aggregatetype\\\":\\\"a\\\",\\\"aggregateid\\\":\\\"k\\\",\\\"type\\\":\\\"t\\\","
        "\\\"aggregate_version\\\":\\\"\\\"}\"}",
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":\\\"m\\\",\\\"aggregatetype\\\":\\\"a\\\",\\\"aggregateid\\\":\\\"k\\\",\\\"type\\\":\\\"t\\\","
        "\\\"aggregateid\\\":\\\"k2\\\"}\"}",
        /* a whole event, then bytes (pgoutput also delivers a NUL and binary
         * after it; wal2json cuts the content at a NUL) */
        "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\",\"content\":"
        "\"{\\\"id\\\":\\\"m\\\",\\\"aggregatetype\\\":\\\"a\\\",\\\"aggregateid\\\":\\\"k\\\",\\\"type\\\":\\\"t\\\"} junk\"}",
    };
    const char *why[] = {"not a JSON object", "not a JSON object", "\"id\" is not a string", "is NULL",
                         "beyond 2^53 or fractional", "\"headers\" is not an object", "not an integer's digits",
                         "not an integer's digits", "\"aggregateid\" appears more than once",
                         "not a JSON object"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        session(f, START);
        begin(f, 0x2000, 0x2100);
        assert_int_equal(feed(f, bad[i]), -1);
        assert_int_equal(f->err.cls, OBX_ERR_POISON);
        assert_int_equal(f->err.exit_code, 3);
        assert_non_null(strstr(f->err.msg, why[i]));
        assert_non_null(strstr(f->err.msg, "outbox message"));
        assert_int_equal(f->n_recs, 0);
    }
}

static void test_message_malformed_dead_lettered(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"M\",\"transactional\":true,\"lsn\":\"0/2010\",\"prefix\":\"outboxd.event\","
                             "\"content\":\"not json\"}"),
                     0);
    assert_int_equal(emit(f, EMIT("m1", "a1", ""), 0x2020), 0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(f->n_recs, 2);
    assert_true(f->recs[0].dead_letter);
    assert_non_null(strstr(f->recs[0].error_header, "not a JSON object"));
    Outboxd__V1__Event *ev = event_of(f, 0);
    assert_int_equal(ev->payload.len, 8); /* the content as it came */
    assert_memory_equal(ev->payload.data, "not json", 8);
    obx_envelope_free(ev);
    assert_false(f->recs[1].dead_letter);
    assert_int_equal(f->recs[1].pos.index, 1);
    ack(f, 0);
    ack(f, 1);
    assert_int_equal(flush(f), 0x2100);
}

/* A row's or a message's headers: members named like outboxd's own Kafka
 * headers (id, type, content-type) stay in the envelope but never become a
 * second Kafka header of that name; non-string values pass as written. */
static void test_headers_reserved_names_and_exact_values(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"I\",\"lsn\":\"0/2010\",\"schema\":\"public\",\"table\":\"outbox\",\"columns\":["
                             "{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"e1\"},"
                             "{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"athlete\"},"
                             "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"a1\"},"
                             "{\"name\":\"type\",\"type\":\"text\",\"value\":\"T\"},"
                             "{\"name\":\"payload\",\"type\":\"jsonb\",\"value\":\"{}\"},"
                             "{\"name\":\"headers\",\"type\":\"jsonb\",\"value\":\"{\\\"k\\\": 12345678901234567890, "
                             "\\\"id\\\": \\\"spoof\\\", \\\"type\\\": 1.10, \\\"content-type\\\": \\\"text/xml\\\"}\"}]}"),
                     0);
    assert_int_equal(emit(f, EMIT("m1", "a1", ", \\\"headers\\\" : {\\\"id\\\": \\\"spoof\\\", "
                                              "\\\"k\\\": 12345678901234567890, \\\"f\\\": 1.10}"),
                          0x2020),
                     0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(f->n_recs, 2);
    assert_string_equal(f->recs[0].headers, "id=e1;type=T;content-type=application/json;k=12345678901234567890;");
    assert_string_equal(f->recs[1].headers,
                        "id=m1;type=AthleteUpdated;content-type=application/json;k=12345678901234567890;f=1.10;");
    Outboxd__V1__Event *ev = event_of(f, 0);
    assert_int_equal(ev->n_headers, 4); /* the envelope keeps every member */
    assert_string_equal(ev->headers[1]->key, "id");
    assert_string_equal(ev->headers[1]->value, "spoof");
    assert_string_equal(ev->headers[2]->value, "1.10");
    obx_envelope_free(ev);
}

/* Debezium's tracingspancontext column: traceparent and tracestate become
 * headers, unchanged; the headers column wins when it has them. */
static void test_tracingspancontext_column(void **state)
{
    fx_t *f = *state;
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"I\",\"lsn\":\"0/2010\",\"schema\":\"public\",\"table\":\"outbox\",\"columns\":["
                             "{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"e1\"},"
                             "{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"athlete\"},"
                             "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"a1\"},"
                             "{\"name\":\"type\",\"type\":\"text\",\"value\":\"T\"},"
                             "{\"name\":\"payload\",\"type\":\"jsonb\",\"value\":\"{}\"},"
                             "{\"name\":\"tracingspancontext\",\"type\":\"text\",\"value\":\"#Mon Nov 30 10:00:00 UTC 2026\\n"
                             "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\\ntracestate = "
                             "rojo\\\\=00f067aa0ba902b7,congo=t61rcWkgMzE\\n\"}]}"),
                     0);
    assert_int_equal(feed(f, "{\"action\":\"I\",\"lsn\":\"0/2020\",\"schema\":\"public\",\"table\":\"outbox\",\"columns\":["
                             "{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"e2\"},"
                             "{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"athlete\"},"
                             "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"a1\"},"
                             "{\"name\":\"type\",\"type\":\"text\",\"value\":\"T\"},"
                             "{\"name\":\"payload\",\"type\":\"jsonb\",\"value\":\"{}\"},"
                             "{\"name\":\"headers\",\"type\":\"jsonb\",\"value\":\"{\\\"traceparent\\\": \\\"mine\\\"}\"},"
                             "{\"name\":\"tracingspancontext\",\"type\":\"text\",\"value\":\"traceparent:theirs\"}]}"),
                     0);
    commit(f, 0x2000, 0x2100);
    assert_int_equal(f->n_recs, 2);
    assert_string_equal(f->recs[0].headers, "id=e1;type=T;content-type=application/json;"
                                            "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01;"
                                            "tracestate=rojo=00f067aa0ba902b7,congo=t61rcWkgMzE;");
    assert_string_equal(f->recs[1].headers, "id=e2;type=T;content-type=application/json;traceparent=mine;");
    Outboxd__V1__Event *ev = event_of(f, 0);
    assert_int_equal(ev->n_headers, 2); /* in the envelope too */
    obx_envelope_free(ev);
}

/* traceparent: the trace id of a valid one, nothing of an invalid one. */
static void test_traceparent_trace_id(void **state)
{
    (void)state;
    char id[OBX_TRACE_ID_LEN + 1];
    const char *ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_int_equal(obx_trace_id(ok, strlen(ok), id), 1);
    assert_string_equal(id, "0af7651916cd43dd8448eb211c80319c");
    const char *later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-later";
    assert_int_equal(obx_trace_id(later, strlen(later), id), 1);
    const char *bad[] = {
        "", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", /* 00 has nothing after the flags */
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",     /* upper case */
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",     /* zero trace id */
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",     /* zero parent id */
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",     /* version ff */
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",        /* short */
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(obx_trace_id(bad[i], strlen(bad[i]), id), 0);
        assert_string_equal(id, "");
    }
    assert_int_equal(obx_trace_id(ok, 54, id), 0); /* length, not NUL, ends it */
}

/* A partitioned outbox: rows of any leaf, in any schema, are the outbox's
 * events, under the parent's name. */
static void test_partition_rows_relayed_under_the_parent(void **state)
{
    fx_t *f = *state;
    obx_relset_t *rs = obx_relset_new();
    assert_non_null(rs);
    assert_int_equal(obx_relset_add(rs, "public", "outbox"), 0);
    assert_int_equal(obx_relset_add(rs, "Archive", "Outbox 2026"), 0);
    obx_txn_set_outbox(f->t, rs);
    begin(f, 0x2000, 0x2100);
    assert_int_equal(feed(f, "{\"action\":\"I\",\"lsn\":\"0/2010\",\"schema\":\"Archive\",\"table\":\"Outbox 2026\","
                             "\"columns\":[{\"name\":\"id\",\"type\":\"uuid\",\"value\":\"e1\"},"
                             "{\"name\":\"aggregatetype\",\"type\":\"text\",\"value\":\"athlete\"},"
                             "{\"name\":\"aggregateid\",\"type\":\"text\",\"value\":\"a1\"},"
                             "{\"name\":\"type\",\"type\":\"text\",\"value\":\"T\"},"
                             "{\"name\":\"payload\",\"type\":\"jsonb\",\"value\":\"{}\"}]}"),
                     0);
    /* The parent is in the set too; another leaf name is not. */
    assert_int_equal(insert_into(f, "outbox_2027", 0x2020, "x", "\"a\""), -1);
    obx_txn_set_outbox(f->t, NULL);
    obx_relset_destroy(rs);
    assert_int_equal(f->n_recs, 1);
    Outboxd__V1__Event *ev = obx_envelope_decode(f->recs[0].value, f->recs[0].value_len);
    assert_non_null(ev);
    assert_string_equal(ev->source->schema, "public");
    assert_string_equal(ev->source->table, "outbox");
    assert_string_equal(ev->event_id, "e1");
    obx_envelope_free(ev);
}

static void test_relset_add_tables_option(void **state)
{
    (void)state;
    obx_relset_t *a = obx_relset_new(), *b = obx_relset_new();
    char name[32];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "leaf,%03d", i);
        assert_int_equal(obx_relset_add(a, "s.x", name), 0);
        assert_int_equal(obx_relset_add(b, "s.x", name), 0);
    }
    assert_int_equal(obx_relset_add(a, "s.x", "leaf,007"), 0); /* no duplicates */
    assert_int_equal(obx_relset_count(a), 300);
    assert_true(obx_relset_equal(a, b));
    assert_int_equal(obx_relset_add(b, "s", "other"), 0);
    assert_false(obx_relset_equal(a, b));
    char *opt = obx_relset_add_tables(a, "public", "signals");
    assert_non_null(opt);
    assert_non_null(strstr(opt, "s\\.x.leaf\\,299,"));
    assert_non_null(strstr(opt, ",public.signals"));
    free(opt);
    assert_int_equal(obx_relset_assign(a, b), 0);
    assert_true(obx_relset_equal(a, b));
    obx_relset_destroy(a);
    obx_relset_destroy(b);
}

/* Leaves that left the partition tree stay in the filter until the slot is
 * confirmed past the point they left: their earlier rows are decoded under
 * their old names. */
static void test_relset_merge_keeps_gone_leaves_until_confirmed(void **state)
{
    (void)state;
    obx_relset_t *before = obx_relset_new(), *now = obx_relset_new(), *out = obx_relset_new();
    assert_int_equal(obx_relset_add(before, "public", "outbox"), 0);
    assert_int_equal(obx_relset_add(before, "public", "outbox_b"), 0);
    assert_int_equal(obx_relset_add(now, "public", "outbox"), 0);
    assert_int_equal(obx_relset_add(now, "public", "outbox_c"), 0);
    assert_int_equal(obx_relset_merge(out, now, before, 0x5000, 0x4000), 0);
    assert_int_equal(obx_relset_count(out), 3);
    assert_true(obx_relset_has(out, "public", "outbox_b"));
    const char *sc, *tb;
    uint64_t gone = 0;
    for (size_t i = 0; i < obx_relset_count(out); i++) {
        obx_relset_get(out, i, &sc, &tb, &gone);
        if (!strcmp(tb, "outbox_b")) break;
    }
    assert_int_equal(gone, 0x5000);
    /* A later check keeps its first gone_at; once confirmed past it, it goes. */
    obx_relset_t *again = obx_relset_new();
    assert_int_equal(obx_relset_merge(again, now, out, 0x9000, 0x4fff), 0);
    assert_true(obx_relset_has(again, "public", "outbox_b"));
    assert_int_equal(obx_relset_merge(again, now, out, 0x9000, 0x5000), 0);
    assert_false(obx_relset_has(again, "public", "outbox_b"));
    assert_int_equal(obx_relset_count(again), 2);
    obx_relset_destroy(before);
    obx_relset_destroy(now);
    obx_relset_destroy(out);
    obx_relset_destroy(again);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_flush_waits_for_every_ack_in_wal_order, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_commit_alone_confirms_only_when_acked, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_empty_transactions, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_keepalives, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_poison_row_halts_without_confirming, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_poison_row_dead_lettered, setup_dlq, teardown),
        cmocka_unit_test_setup_teardown(test_rows_already_in_kafka_are_skipped, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_retriable_delivery_failure_restarts_from_confirmed, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_permanent_delivery_failure_halts, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_rejected_before_sending_halts, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_permanent_failure_dead_lettered_after_restart, setup_dlq, teardown),
        cmocka_unit_test_setup_teardown(test_poison_memory_grows, setup_dlq, teardown),
        cmocka_unit_test_setup_teardown(test_signal_rows_start_signals, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_stop_and_pipeline_failure_from_the_sink, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_protocol_errors_are_retriable, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_unclassified_relation_halts, setup_dlq, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_message_ignored_heartbeat_advances, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_headers_reserved_names_and_exact_values, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_message_events_mix_with_rows, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_message_prefix_configurable, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_message_non_transactional_halts, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_message_non_transactional_dead_lettered, setup_dlq, teardown),
        cmocka_unit_test_setup_teardown(test_message_malformed_content, setup_halt, teardown),
        cmocka_unit_test_setup_teardown(test_message_malformed_dead_lettered, setup_dlq, teardown),
        cmocka_unit_test_setup_teardown(test_tracingspancontext_column, setup_halt, teardown),
        cmocka_unit_test(test_traceparent_trace_id),
        cmocka_unit_test_setup_teardown(test_partition_rows_relayed_under_the_parent, setup_halt, teardown),
        cmocka_unit_test(test_relset_add_tables_option),
        cmocka_unit_test(test_relset_merge_keeps_gone_leaves_until_confirmed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
