/* outboxd apply: the main loop. Reads a batch, writes it, commits its
 * offsets; while the replica database is down it pauses consumption (the
 * group keeps us), reconnects with capped backoff and seeks back to the
 * first event not written.
 *
 * obx_apply_run owns the runtime (on its stack) and frees everything in one
 * cleanup path. */
#include "apply_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kconf.h"
#include "log.h"
#include "pg.h"
#include "status_http.h"

static void set_state(obx_apply_t *a, obx_state_t s) { atomic_store(&a->m->state, (int)s); }

static void account(obx_apply_t *a, const obx_apply_stats_t *st)
{
    obx_metrics_t *m = a->m;
    atomic_fetch_add(&m->apply_applied, st->applied);
    atomic_fetch_add(&m->apply_stale, st->stale);
    atomic_fetch_add(&m->apply_superseded, st->superseded);
    atomic_fetch_add(&m->apply_skipped, st->skipped);
    atomic_fetch_add(&m->apply_dead_lettered, st->dead_lettered);
    atomic_fetch_add(&m->apply_batches, 1);
    for (size_t i = 0; i < st->n_lags; i++) obx_metrics_observe_apply_lag(a->lags[i]);
    obx_metrics_apply_fresh(st->newest_src, st->newest_rep);
}

static void log_poison(obx_apply_t *a, const obx_apply_entry_t *e)
{
    const rd_kafka_message_t *m = e->msg;
    const char *topic = rd_kafka_topic_name(m->rkt);
    obx_error("poison_event",
              "topic %s partition %d offset %lld (trace id %s): %s. outboxd apply stops here (exit 3) without committing this offset: "
              "everything before it is applied and committed, nothing after it in this partition is applied. Fix the "
              "producer or apply.columns and restart, or set apply.poison.policy = dead-letter; to skip it on purpose, "
              "with outboxd apply stopped: kafka-consumer-groups.sh --bootstrap-server %s --group %s --reset-offsets "
              "--topic %s:%d --to-offset %lld --execute",
              topic, (int)m->partition, (long long)m->offset, e->trace_id[0] ? e->trace_id : "none",
              e->reason ? e->reason : "poison",
              obx_config_kafka_get(a->cfg, "bootstrap.servers"), a->cfg->apply_group, topic, (int)m->partition,
              (long long)m->offset + 1);
}

/* The database failed: nothing of the batch is acked. Stop consuming (pause,
 * so the group keeps us), and after reconnecting seek back to the first
 * event not written. */
static void go_down(obx_apply_t *a, size_t n, const char *why)
{
    for (size_t i = 0; i < n; i++) obx_apply_note_dropped(a, a->batch[i].msg);
    atomic_fetch_add(&a->m->apply_failed, n);
    atomic_fetch_add(&a->m->apply_db_errors, 1);
    obx_apply_batch_free(a, n);
    obx_apply_pause(a, 1);
    obx_apply_db_close(a);
    a->db_down = 1;
    int wait = obx_backoff_next(&a->backoff);
    a->next_try_ms = obx_mono_ms() + wait;
    set_state(a, OBX_STATE_CONNECTING);
    obx_warn("pg_lost", "replica database: %s; %zu events not written, their offsets not committed; consumption paused, "
             "retrying in %d ms, then re-reading from the first event not written", why, n, wait);
}

/* While the database is down: keep the group membership (poll), drop
 * whatever still arrives, reconnect with capped backoff. 0, or an exit code. */
static int down_step(obx_apply_t *a)
{
    rd_kafka_message_t *m = rd_kafka_consumer_poll(a->rk, 100);
    if (m) {
        if (!m->err) obx_apply_note_dropped(a, m);
        rd_kafka_message_destroy(m);
    }
    if (obx_mono_ms() < a->next_try_ms) return 0;
    if (!a->db) {
        obx_err_t err;
        if (obx_apply_db_open(a, &err) != 0) {
            if (err.cls == OBX_ERR_FATAL) {
                obx_error("replica_table", "%s", err.msg);
                return obx_err_exit_code(&err);
            }
            int wait = obx_backoff_next(&a->backoff);
            a->next_try_ms = obx_mono_ms() + wait;
            obx_warn("pg_connect", "%s; retrying in %d ms", err.msg, wait);
            return 0;
        }
    }
    if (obx_apply_seek_back(a) != 0) {
        a->next_try_ms = obx_mono_ms() + 1000;
        return 0;
    }
    obx_apply_pause(a, 0);
    a->db_down = 0;
    obx_backoff_reset(&a->backoff);
    /* A lost assignment stays not ready until the group assigns again. */
    if (!a->group_lost) set_state(a, OBX_STATE_STREAMING);
    obx_info("pg_recovered", "replica database is back; consuming again");
    return 0;
}

static void log_progress(const obx_apply_t *a, const char *event, const char *head)
{
    obx_metrics_t *m = a->m;
    obx_info(event, "group %s: %llu applied, %llu stale ignored, %llu superseded in batch, %llu skipped, %llu dead-lettered%s",
             a->cfg->apply_group, (unsigned long long)atomic_load(&m->apply_applied),
             (unsigned long long)atomic_load(&m->apply_stale), (unsigned long long)atomic_load(&m->apply_superseded),
             (unsigned long long)atomic_load(&m->apply_skipped), (unsigned long long)atomic_load(&m->apply_dead_lettered),
             head);
}

/* Once a second: liveness, committed offsets of new assignments, high
 * watermarks (queried from the broker while paused: nothing is fetched). */
static void tick(obx_apply_t *a)
{
    int64_t now = obx_mono_ms();
    atomic_store(&a->m->last_loop_us, obx_now_us());
    if (!obx_period_due(&a->tick, now)) return;
    obx_apply_fetch_committed(a);
    obx_apply_update_watermarks(a, a->db_down && obx_period_due(&a->wm_query, now));
    if (obx_period_due(&a->progress, now)) {
        char batches[64];
        snprintf(batches, sizeof(batches), ", %llu batches", (unsigned long long)atomic_load(&a->m->apply_batches));
        log_progress(a, "progress", batches);
    }
}

static void kafka_msg_error(obx_apply_t *a, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
        /* A consumer's only fatal error: its group.instance.id fenced by another. */
        char why[512];
        rd_kafka_fatal_error(a->rk, why, sizeof(why));
        obx_error("kafka_fatal", "group %s: %s; stopping (exit 1)", a->cfg->apply_group, why);
        a->kafka_fatal = 1;
        return;
    }
    int64_t now = obx_mono_ms();
    /* Topics that do not exist yet are normal while producers start. */
    if (now - a->last_kafka_err_ms < 10000) return;
    a->last_kafka_err_ms = now;
    obx_warn("kafka_consume", "%s", rd_kafka_message_errstr(m));
}

/* Reads one batch: up to apply.batch_max events, or what arrived within
 * apply.batch_wait_ms of the first. *cut: a poison event under halt ends
 * the batch; it sits at index n, not counted. The batch grows in a->n_buf
 * so that a revocation served inside the poll can drop the events of the
 * partitions it takes away (kafka.c). */
static size_t read_batch(obx_apply_t *a, int *cut)
{
    int64_t first = 0;
    *cut = 0;
    a->n_buf = 0;
    while (a->n_buf < (size_t)a->cfg->apply_batch_max && !*a->stop && !a->kafka_fatal) {
        int timeout = 100;
        if (a->n_buf) {
            int64_t left = first + a->cfg->apply_batch_wait_ms - obx_mono_ms();
            if (left <= 0) break;
            timeout = left < 100 ? (int)left : 100;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(a->rk, timeout);
        if (!m) {
            if (!a->n_buf) break;
            continue;
        }
        if (m->err) {
            kafka_msg_error(a, m);
            rd_kafka_message_destroy(m);
            continue;
        }
        obx_kconf_security_clear();
        obx_apply_entry_t *e = &a->batch[a->n_buf];
        obx_apply_decode(a, m, e);
        if (e->kind == OBX_EV_POISON && !a->dead_letter) {
            *cut = 1;
            break;
        }
        if (!a->n_buf) first = obx_mono_ms();
        a->n_buf++;
    }
    /* From here on the caller owns them: no poll until they are written. */
    size_t n = a->n_buf;
    a->n_buf = 0;
    return n;
}

/* A missing table or column, a type or privilege that changed, the wrong
 * database: what obx_pg_classify calls fatal, but 42501, which is also a
 * row-level security check on one row. */
static int replica_changed(const obx_err_t *e)
{
    return e->cls == OBX_ERR_FATAL && e->sqlstate[0] && strcmp(e->sqlstate, "42501") != 0;
}

/* Debug, one line per event written (poison ones log a warning or error
 * where they are handled): its trace id joins the relay's trace. */
static void log_applied(const obx_apply_t *a, size_t n)
{
    static const char *const kinds[] = {"upsert", "delete", "skipped (apply.event_types)"};
    if (!obx_log_enabled(OBX_LOG_DEBUG)) return;
    for (size_t i = 0; i < n; i++) {
        const obx_apply_entry_t *e = &a->batch[i];
        if (e->kind == OBX_EV_POISON) continue;
        obx_debug("applied", "%s [%d] offset %lld: key %s version %lld %s (trace id %s)",
                  rd_kafka_topic_name(e->msg->rkt), (int)e->msg->partition, (long long)e->msg->offset,
                  e->key ? e->key : "?", (long long)e->version, kinds[e->kind], e->trace_id[0] ? e->trace_id : "none");
    }
}

/* Writes and acknowledges one batch of n (+ cut) events. 0 to go on, or an
 * exit code. */
static int apply_batch(obx_apply_t *a, size_t n, int cut)
{
    obx_apply_stats_t st = {0};
    obx_err_t err;
    size_t halt_at = n;
    int rc = a->write(a, n, &st, &err);
    if (rc && replica_changed(&err)) {
        /* Not one event's fault: every event would fail the same way, and
         * a dead-letter policy would empty the topic into the DLQ. */
        obx_error("replica_schema", "the replica refuses every write (SQLSTATE %s: %s): its table, columns or "
                  "privileges no longer match apply.*; nothing of the batch is committed. Fix the replica or the "
                  "configuration and restart", err.sqlstate, err.msg);
        obx_apply_batch_free(a, n + (size_t)cut);
        set_state(a, OBX_STATE_HALTED);
        return OBX_EXIT_CONFIG;
    }
    if (rc && obx_apply_err_row(a, &err) && !obx_apply_err_busy(&err)) {
        obx_err_t ignore;
        if (PQtransactionStatus(a->db) != PQTRANS_IDLE) obx_pg_command(a->db, "ROLLBACK", &ignore);
        obx_warn("data_error", "SQLSTATE %s: %s; nothing of the batch committed; finding the events the database "
                 "refuses by bisecting the batch", err.sqlstate, err.msg);
        /* Dead-lettered before the failed COMMIT: sent, never again. */
        uint64_t dead = st.dead_lettered;
        memset(&st, 0, sizeof(st));
        st.dead_lettered = dead;
        rc = obx_apply_write_isolate(a, n, &st, &halt_at, &err);
    }
    if (rc && obx_apply_err_halt(&err)) {
        /* The dead-letter topic refused for good. */
        obx_error("poison_event", "%s", err.msg);
        obx_apply_batch_free(a, n + (size_t)cut);
        set_state(a, OBX_STATE_HALTED);
        return OBX_EXIT_POISON;
    }
    if (rc) {
        char why[sizeof(err.msg) + 128];
        if (obx_apply_err_transient(&err))
            snprintf(why, sizeof(why), "busy (SQLSTATE %s, a lock, a concurrent writer or a statement timeout; no "
                     "event's fault): %s", err.sqlstate, err.msg);
        else
            snprintf(why, sizeof(why), "%s", err.msg);
        go_down(a, n + (size_t)cut, why);
        return 0;
    }
    account(a, &st);
    log_applied(a, halt_at);
    obx_apply_commit_offsets(a, halt_at);
    if (halt_at < n || cut) {
        log_poison(a, &a->batch[halt_at]);
        obx_apply_batch_free(a, n + (size_t)cut);
        set_state(a, OBX_STATE_HALTED);
        return OBX_EXIT_POISON;
    }
    obx_apply_batch_free(a, n);
    return 0;
}

static int loop(obx_apply_t *a)
{
    while (!*a->stop) {
        tick(a);
        int rc = 0;
        if (a->kafka_fatal) {
            set_state(a, OBX_STATE_HALTED);
            return OBX_EXIT_FAIL;
        }
        if (a->db_down) {
            rc = down_step(a);
        } else {
            int cut;
            size_t n = read_batch(a, &cut);
            if (n || cut) rc = apply_batch(a, n, cut);
        }
        if (rc) return rc;
        obx_err_t err;
        if (obx_kconf_security_failed(OBX_KAFKA_SECURITY_REFUSALS, &err)) {
            obx_error("kafka_security", "%s", err.msg);
            return obx_err_exit_code(&err);
        }
    }
    return OBX_EXIT_OK;
}

/* The apply.* keys into the runtime. 0, or an exit code (logged). */
static int setup(obx_apply_t *a, const obx_config_t *cfg)
{
    char err[1024];
    a->dead_letter = !strcmp(cfg->apply_poison_policy, "dead-letter");
    a->src_kind = !strcmp(cfg->apply_source_time, "commit_time")   ? OBX_SRC_COMMIT
                  : !strcmp(cfg->apply_source_time, "occurred_at") ? OBX_SRC_OCCURRED
                                                                   : OBX_SRC_PAYLOAD;
    a->src_path = a->src_kind == OBX_SRC_PAYLOAD ? cfg->apply_source_time + 8 : NULL;
    if (*cfg->apply_tombstone_table) snprintf(a->tomb_name, sizeof(a->tomb_name), "%s", cfg->apply_tombstone_table);
    else snprintf(a->tomb_name, sizeof(a->tomb_name), "%s_tombstones", cfg->apply_table);
    obx_backoff_init(&a->backoff, 500, cfg->reconnect_backoff_max_ms);
    obx_period_init(&a->tick, 1000);
    obx_period_init(&a->wm_query, 5000);
    obx_period_init(&a->progress, 60000);
    if (obx_apply_parse_columns(cfg->apply_columns, &a->maps, &a->n_maps, err, sizeof(err)) != 0 ||
        obx_apply_list_split(cfg->apply_event_types, &a->up_types, &a->n_up_types) != 0 ||
        obx_apply_list_split(cfg->apply_delete_types, &a->del_types, &a->n_del_types) != 0) {
        obx_error("config", "%s", err);
        return OBX_EXIT_CONFIG;
    }
    a->use_tomb = a->n_del_types > 0;
    a->batch = calloc((size_t)cfg->apply_batch_max + 1, sizeof(obx_apply_entry_t));
    a->lags = calloc((size_t)cfg->apply_batch_max + 1, sizeof(int64_t));
    if (!a->batch || !a->lags) {
        obx_error("oom", "out of memory for a batch of %d", cfg->apply_batch_max);
        return OBX_EXIT_FAIL;
    }
    return 0;
}

static void touch_loop(void *arg)
{
    obx_apply_t *a = arg;
    atomic_store(&a->m->last_loop_us, obx_now_us());
}

/* The replica first: a table that does not fit is a configuration error,
 * an unreachable server is retried. 0 (connected, or *stop), or an exit code. */
static int connect_first(obx_apply_t *a)
{
    char red[1024];
    obx_conninfo_redact(a->cfg->apply_conninfo, red, sizeof(red));
    obx_backoff_t b;
    obx_backoff_init(&b, 500, a->cfg->reconnect_backoff_max_ms);
    for (;;) {
        obx_err_t err;
        touch_loop(a);
        if (obx_apply_db_open(a, &err) == 0) return 0;
        if (err.cls == OBX_ERR_FATAL) {
            obx_error("replica_table", "%s", err.msg);
            return obx_err_exit_code(&err);
        }
        int wait = obx_backoff_next(&b);
        obx_warn("pg_connect", "%s (%s); retrying in %d ms", err.msg, red, wait);
        if (obx_sleep_unless(wait, 100, a->stop, touch_loop, a)) return 0;
    }
}

/* Connects, consumes until *stop or an exit. */
static int run(obx_apply_t *a)
{
    const obx_config_t *cfg = a->cfg;
    set_state(a, OBX_STATE_CONNECTING);
    int rc = connect_first(a);
    if (rc || *a->stop) return rc;
    obx_apply_db_load_freshness(a);
    obx_err_t err;
    if (obx_apply_consumer_new(a, &err) != 0) {
        obx_error("kafka_consumer", "%s", err.msg);
        return obx_err_exit_code(&err);
    }
    obx_info("applying", "group %s: topics %s -> table %s (%zu mapped columns, %s mode, batches of up to %d, deletes %s)",
             cfg->apply_group, cfg->apply_topics, cfg->apply_table, a->n_maps, a->mode, cfg->apply_batch_max,
             a->use_tomb ? a->tomb_name : "off");
    /* Streaming (and ready) once the group has assigned it, maybe nothing. */
    a->group_lost = 1;
    rc = loop(a);
    if (rc == OBX_EXIT_OK) set_state(a, OBX_STATE_STOPPING);
    log_progress(a, "stopped", "");
    return rc;
}

int obx_apply_run_with(const obx_config_t *cfg, volatile sig_atomic_t *stop, obx_apply_write_fn write, const char *mode)
{
    char err[1024];
    if (obx_apply_validate(cfg, err, sizeof(err)) != 0) {
        obx_error("config", "%s", err);
        return OBX_EXIT_CONFIG;
    }
    obx_apply_t a;
    memset(&a, 0, sizeof(a));
    a.cfg = cfg;
    a.stop = stop;
    a.m = obx_metrics();
    a.write = write;
    a.mode = mode;
    int rc = OBX_EXIT_OK;
    obx_status_http_t *http = NULL;
    if ((rc = setup(&a, cfg)) != 0) goto out;
    obx_metrics_apply_start(cfg->apply_group, obx_apply_hwm);
    set_state(&a, OBX_STATE_STARTING);
    if (*cfg->status_listen) {
        http = obx_status_http_start(cfg->status_listen, err, sizeof(err));
        if (!http) {
            obx_error("status_http", "%s", err);
            rc = OBX_EXIT_CONFIG;
            goto out;
        }
        obx_info("status_http", "status port on http://%s (/healthz /readyz /metrics /status)", cfg->status_listen);
    }
    rc = run(&a);
out:
    /* The status thread reads the consumer's watermarks: stop it first. */
    obx_status_http_stop(http);
    obx_apply_consumer_close(&a);
    if (a.dlq) {
        obx_producer_flush(a.dlq, 5000);
        obx_producer_destroy(a.dlq);
    }
    if (a.db) PQfinish(a.db);
    obx_apply_db_free_sql(&a);
    obx_apply_maps_free(a.maps, a.n_maps);
    obx_apply_list_free(a.up_types, a.n_up_types);
    obx_apply_list_free(a.del_types, a.n_del_types);
    for (size_t p = 0; p < a.n_parts; p++) free(a.parts[p].topic);
    free(a.parts);
    free(a.batch);
    free(a.lags);
    return rc;
}

int obx_apply_run(const obx_config_t *cfg, volatile sig_atomic_t *stop)
{
    return obx_apply_run_with(cfg, stop, obx_apply_write_batch, "batch");
}
