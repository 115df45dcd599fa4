#include "metrics.h"
#include "clock.h"

#include <string.h>

#include "lsn.h"

static obx_metrics_t g_metrics;

/* Commit-to-ack latency buckets (seconds), Prometheus `le` bounds. */
static const double lat_bounds[OBX_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1,
                                                   0.25, 0.5, 1, 2.5, 5, 10, 30, 60};

obx_metrics_t *obx_metrics(void) { return &g_metrics; }

static void hist_observe(obx_histogram_t *h, const double *bounds, int64_t us)
{
    if (us < 0) us = 0;
    double s = (double)us / 1e6;
    int i = 0;
    while (i < OBX_HIST_BUCKETS && s > bounds[i]) i++;
    atomic_fetch_add(&h->buckets[i], 1);
    atomic_fetch_add(&h->count, 1);
    atomic_fetch_add(&h->sum_us, (uint64_t)us);
}

/* name without the outboxd_ prefix; one label, key="value". Called through
 * HISTOGRAM(...) so tooling can read the names from this file. */
static void hist_render(FILE *out, const char *name, const char *help, const char *key, const char *value,
                        const obx_histogram_t *h, const double *bounds)
{
    char label[400];
    snprintf(label, sizeof(label), "%s=\"%s\"", key, value);
    fprintf(out, "# HELP outboxd_%s %s\n# TYPE outboxd_%s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < OBX_HIST_BUCKETS; i++) {
        cum += atomic_load(&h->buckets[i]);
        fprintf(out, "outboxd_%s_bucket{%s,le=\"%g\"} %llu\n", name, label, bounds[i], (unsigned long long)cum);
    }
    cum += atomic_load(&h->buckets[OBX_HIST_BUCKETS]);
    fprintf(out, "outboxd_%s_bucket{%s,le=\"+Inf\"} %llu\n", name, label, (unsigned long long)cum);
    fprintf(out, "outboxd_%s_sum{%s} %.6f\n", name, label, (double)atomic_load(&h->sum_us) / 1e6);
    fprintf(out, "outboxd_%s_count{%s} %llu\n", name, label, (unsigned long long)atomic_load(&h->count));
}

#define HISTOGRAM(name, help, key, value, h, bounds) hist_render(out, name, help, key, value, h, bounds)

void obx_metrics_observe_latency(int64_t us) { hist_observe(&g_metrics.commit_to_ack, lat_bounds, us); }

const char *obx_state_name(obx_state_t s)
{
    static const char *const n[] = {"starting", "connecting", "standby", "streaming", "backpressured", "stopping", "halted"};
    return (unsigned)s < sizeof(n) / sizeof(n[0]) ? n[s] : "unknown";
}

static const char *const wal_names[] = {"unknown", "reserved", "extended", "unreserved", "lost"};

obx_wal_status_t obx_wal_status_parse(const char *s)
{
    for (int i = 1; i < 5; i++)
        if (strcmp(s, wal_names[i]) == 0) return (obx_wal_status_t)i;
    return OBX_WAL_UNKNOWN;
}

const char *obx_wal_status_name(obx_wal_status_t s) { return (unsigned)s < 5 ? wal_names[s] : "unknown"; }

int obx_metrics_live(int64_t max_stall_ms)
{
    int64_t last = atomic_load(&g_metrics.last_loop_us);
    return last == 0 || obx_now_us() - last <= max_stall_ms * 1000;
}

int obx_metrics_ready(char *reason, size_t reason_size)
{
    int st = atomic_load(&g_metrics.state);
    if (!obx_metrics_live(30000)) {
        snprintf(reason, reason_size, "stalled: main loop has not run for over 30 s");
        return 0;
    }
    if (st == OBX_STATE_STANDBY) {
        /* Ready as a standby: it does its job (waiting to take over), and a
         * rolling update must be able to count it before stopping the old pod. */
        snprintf(reason, reason_size, "standby: slot %s is active in another process; taking over when it is released",
                 g_metrics.slot);
        return 1;
    }
    if (atomic_load(&g_metrics.apply_mode) && !atomic_load(&g_metrics.apply_in_group) && st != OBX_STATE_HALTED &&
        st != OBX_STATE_STOPPING) {
        /* A process the group never took (a JoinGroup refused, e.g. another
         * partition.assignment.strategy in the group) is no hot spare. */
        snprintf(reason, reason_size, "not a member of consumer group %s: joining, or its assignment was lost "
                 "(kafka_consume or assignment_lost in the log says why)", g_metrics.apply_group);
        return 0;
    }
    if (st != OBX_STATE_STREAMING && st != OBX_STATE_BACKPRESSURED) {
        snprintf(reason, reason_size, "not streaming: %s", obx_state_name((obx_state_t)st));
        return 0;
    }
    if (atomic_load(&g_metrics.kafka_brokers_up) <= 0) {
        snprintf(reason, reason_size, "kafka unreachable: no broker connection up");
        return 0;
    }
    snprintf(reason, reason_size, "ok: %s", obx_state_name((obx_state_t)st));
    return 1;
}

static double age_s(int64_t then_us, int64_t now_us) { return then_us ? (double)(now_us - then_us) / 1e6 : -1; }

#define COUNTER(name, help, field) \
    fprintf(out, "# HELP outboxd_" name " " help "\n# TYPE outboxd_" name " counter\noutboxd_" name "%s %llu\n", lbl, \
            (unsigned long long)atomic_load(&m->field))
#define GAUGE(name, help, fmt, val) \
    fprintf(out, "# HELP outboxd_" name " " help "\n# TYPE outboxd_" name " gauge\noutboxd_" name "%s " fmt "\n", lbl, val)

/* --- outboxd apply (src/apply.c) ------------------------------------------ */

/* Apply lag buckets (seconds): from a fast local apply to a producer outage. */
static const double apply_lag_bounds[OBX_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                               2.5, 5, 10, 30, 60, 300, 900, 3600};

void obx_metrics_apply_start(const char *group, obx_apply_hwm_fn hwm)
{
    snprintf(g_metrics.apply_group, sizeof(g_metrics.apply_group), "%s", group);
    atomic_store(&g_metrics.apply_hwm, hwm);
    atomic_store(&g_metrics.started_us, obx_now_us());
    atomic_store(&g_metrics.apply_mode, 1);
}

int obx_metrics_apply_partition(const char *topic, int32_t partition)
{
    int n = atomic_load(&g_metrics.apply_n_parts);
    for (int i = 0; i < n; i++)
        if (g_metrics.apply_parts[i].partition == partition && strcmp(g_metrics.apply_parts[i].topic, topic) == 0) return i;
    if (n == OBX_APPLY_MAX_PARTS) return -1;
    obx_apply_part_metrics_t *p = &g_metrics.apply_parts[n];
    snprintf(p->topic, sizeof(p->topic), "%s", topic);
    p->partition = partition;
    atomic_store(&p->committed, -1);
    atomic_store(&p->lo, -1);
    atomic_store(&p->hi, -1);
    atomic_store(&g_metrics.apply_n_parts, n + 1); /* publishes the entry */
    return n;
}

void obx_metrics_apply_partition_set(int i, int assigned, int64_t committed)
{
    if (i < 0 || i >= OBX_APPLY_MAX_PARTS) return;
    atomic_store(&g_metrics.apply_parts[i].committed, committed);
    atomic_store(&g_metrics.apply_parts[i].assigned, assigned);
}

void obx_metrics_apply_partition_wm(int i, int64_t lo, int64_t hi)
{
    if (i < 0 || i >= OBX_APPLY_MAX_PARTS) return;
    if (lo >= 0) atomic_store(&g_metrics.apply_parts[i].lo, lo);
    if (hi >= 0) atomic_store(&g_metrics.apply_parts[i].hi, hi);
}

void obx_metrics_apply_fresh(int64_t source_us, int64_t replicated_us)
{
    if (source_us > atomic_load(&g_metrics.apply_newest_source_us)) atomic_store(&g_metrics.apply_newest_source_us, source_us);
    if (replicated_us > atomic_load(&g_metrics.apply_newest_replicated_us))
        atomic_store(&g_metrics.apply_newest_replicated_us, replicated_us);
}

void obx_metrics_observe_apply_lag(int64_t us) { hist_observe(&g_metrics.apply_lag, apply_lag_bounds, us); }

/* Messages in the partition not yet written to the replica: high watermark
 * minus the committed offset (the low watermark while nothing is committed). */
static int64_t apply_part_lag(const obx_apply_part_metrics_t *p, int64_t *hi_out)
{
    obx_apply_hwm_fn fn = atomic_load(&g_metrics.apply_hwm);
    int64_t hi = atomic_load(&p->hi), c = atomic_load(&p->committed);
    int64_t cached = fn ? fn(p->topic, p->partition) : -1;
    if (cached > hi) hi = cached;
    if (c < 0) c = atomic_load(&p->lo);
    *hi_out = hi;
    if (hi < 0 || c < 0) return -1;
    return hi > c ? hi - c : 0;
}

/* Partitions assigned to this process (issue 16: several processes share a
 * group), counted by the apply loop: the per-partition table may be full. */
static int apply_owned(obx_metrics_t *m) { return atomic_load(&m->apply_owned); }

static void render_apply_prometheus(FILE *out)
{
    obx_metrics_t *m = &g_metrics;
    int64_t now = obx_now_us();
    char lbl[160];
    snprintf(lbl, sizeof(lbl), "{group=\"%.127s\"}", m->apply_group);
    COUNTER("apply_events_applied_total", "Events whose row the replica took (inserted, updated, or deleted with a tombstone).", apply_applied);
    COUNTER("apply_events_stale_ignored_total", "Events the version guard ignored: the replica already held that version or a newer one.", apply_stale);
    COUNTER("apply_events_superseded_total", "Events dropped inside a batch because the same key came with a higher version in it.", apply_superseded);
    COUNTER("apply_events_skipped_total", "Events of types not in apply.event_types.", apply_skipped);
    COUNTER("apply_events_dead_lettered_total", "Poison events published to apply.poison.dlq_topic.", apply_dead_lettered);
    COUNTER("apply_events_failed_total", "Events of batches the database did not commit (not acked; read again).", apply_failed);
    COUNTER("apply_batches_total", "Transactions committed in the replica.", apply_batches);
    COUNTER("apply_db_errors_total", "Times the replica database failed and consumption paused.", apply_db_errors);
    COUNTER("apply_offset_commits_total", "Offset commits to Kafka after a committed batch.", apply_offset_commits);
    COUNTER("apply_offset_commit_failures_total", "Offset commits Kafka refused (the rows are written; the events are read again).", apply_offset_commit_failures);
    GAUGE("apply_source_age_seconds", "Now minus the newest source_updated_at in the replica (-1 before the first).", "%.3f",
          age_s(atomic_load(&m->apply_newest_source_us), now));
    GAUGE("apply_replicated_age_seconds", "Now minus the newest replicated_at in the replica (-1 before the first).", "%.3f",
          age_s(atomic_load(&m->apply_newest_replicated_us), now));
    HISTOGRAM("apply_lag_seconds", "replicated_at minus source_updated_at, per applied row.", "group", m->apply_group,
              &m->apply_lag, apply_lag_bounds);
    fprintf(out, "# HELP outboxd_apply_consumer_lag_messages Messages in an assigned partition not yet written and committed "
                 "(high watermark minus committed offset; -1 unknown).\n# TYPE outboxd_apply_consumer_lag_messages gauge\n");
    int n = atomic_load(&m->apply_n_parts);
    for (int i = 0; i < n; i++) {
        const obx_apply_part_metrics_t *p = &m->apply_parts[i];
        if (!atomic_load(&p->assigned)) continue;
        int64_t hi;
        fprintf(out, "outboxd_apply_consumer_lag_messages{group=\"%s\",topic=\"%s\",partition=\"%d\"} %lld\n", m->apply_group,
                p->topic, (int)p->partition, (long long)apply_part_lag(p, &hi));
    }
    GAUGE("apply_partitions_owned", "Partitions this process owns in its consumer group now.", "%d", apply_owned(m));
    fprintf(out, "# HELP outboxd_state The process's state (1 for the current one).\n# TYPE outboxd_state gauge\n");
    int st = atomic_load(&m->state);
    for (int i = 0; i <= OBX_STATE_HALTED; i++)
        fprintf(out, "outboxd_state{group=\"%s\",state=\"%s\"} %d\n", m->apply_group, obx_state_name((obx_state_t)i), st == i);
    GAUGE("postgres_connected", "1 while connected to the replica database.", "%d", atomic_load(&m->pg_connected));
    GAUGE("kafka_brokers_up", "Kafka broker connections in state UP (librdkafka statistics, every 5 s).", "%d", atomic_load(&m->kafka_brokers_up));
    char reason[256];
    GAUGE("ready", "1 when /readyz passes.", "%d", obx_metrics_ready(reason, sizeof(reason)));
    GAUGE("start_time_seconds", "Process start, Unix seconds.", "%.3f", (double)atomic_load(&m->started_us) / 1e6);
    /* group: every apply series names its consumer group, so the relay's
     * alerts (which select slot!="") never match an apply pod. */
    fprintf(out, "# HELP outboxd_build_info Version.\n# TYPE outboxd_build_info gauge\n"
                 "outboxd_build_info{group=\"%s\",version=\"%s\"} 1\n",
            m->apply_group, OBX_VERSION);
}

static void render_apply_json(FILE *out)
{
    obx_metrics_t *m = &g_metrics;
    int64_t now = obx_now_us();
    char reason[256];
    int ready = obx_metrics_ready(reason, sizeof(reason));
    uint64_t lc = atomic_load(&m->apply_lag.count);
    fprintf(out,
            "{\"version\":\"%s\",\"mode\":\"apply\",\"group\":\"%s\",\"state\":\"%s\",\"ready\":%s,\"ready_reason\":\"%s\","
            "\"live\":%s,\"postgres_connected\":%s,\"kafka_brokers_up\":%d,"
            "\"source_age_seconds\":%.3f,\"replicated_age_seconds\":%.3f,"
            "\"events\":{\"applied\":%llu,\"stale_ignored\":%llu,\"superseded\":%llu,\"skipped\":%llu,\"dead_lettered\":%llu,\"failed\":%llu},"
            "\"batches\":%llu,\"db_errors\":%llu,\"offset_commits\":%llu,\"offset_commit_failures\":%llu,"
            "\"apply_lag\":{\"count\":%llu,\"mean_seconds\":%.6f},\"partitions_owned\":%d,\"partitions\":[",
            OBX_VERSION, m->apply_group, obx_state_name((obx_state_t)atomic_load(&m->state)), ready ? "true" : "false", reason,
            obx_metrics_live(30000) ? "true" : "false", atomic_load(&m->pg_connected) ? "true" : "false",
            atomic_load(&m->kafka_brokers_up), age_s(atomic_load(&m->apply_newest_source_us), now),
            age_s(atomic_load(&m->apply_newest_replicated_us), now), (unsigned long long)atomic_load(&m->apply_applied),
            (unsigned long long)atomic_load(&m->apply_stale), (unsigned long long)atomic_load(&m->apply_superseded),
            (unsigned long long)atomic_load(&m->apply_skipped), (unsigned long long)atomic_load(&m->apply_dead_lettered),
            (unsigned long long)atomic_load(&m->apply_failed), (unsigned long long)atomic_load(&m->apply_batches),
            (unsigned long long)atomic_load(&m->apply_db_errors), (unsigned long long)atomic_load(&m->apply_offset_commits),
            (unsigned long long)atomic_load(&m->apply_offset_commit_failures), (unsigned long long)lc,
            lc ? (double)atomic_load(&m->apply_lag.sum_us) / 1e6 / (double)lc : 0.0, apply_owned(m));
    int n = atomic_load(&m->apply_n_parts), first = 1;
    for (int i = 0; i < n; i++) {
        const obx_apply_part_metrics_t *p = &m->apply_parts[i];
        if (!atomic_load(&p->assigned)) continue;
        int64_t hi, lag = apply_part_lag(p, &hi);
        fprintf(out, "%s{\"topic\":\"%s\",\"partition\":%d,\"committed\":%lld,\"high_watermark\":%lld,\"lag\":%lld}",
                first ? "" : ",", p->topic, (int)p->partition, (long long)atomic_load(&p->committed), (long long)hi,
                (long long)lag);
        first = 0;
    }
    fputs("]}\n", out);
}
/* --- end outboxd apply */

void obx_metrics_render_prometheus(FILE *out)
{
    obx_metrics_t *m = &g_metrics;
    int64_t now = obx_now_us();
    if (atomic_load(&m->apply_mode)) {
        render_apply_prometheus(out); /* outboxd apply */
        return;
    }
    char lbl[96];
    snprintf(lbl, sizeof(lbl), "{slot=\"%s\"}", m->slot);
    COUNTER("events_published_total", "Outbox events handed to Kafka.", events_published);
    COUNTER("events_acked_total", "Outbox events acknowledged by the broker (acks=all).", events_acked);
    COUNTER("events_failed_total", "Delivery failures reported by the producer (not acked; re-sent or halted).", events_failed);
    COUNTER("events_skipped_duplicate_total", "Re-decoded events already found in Kafka and not sent again (exactly-once).", events_skipped_duplicate);
    COUNTER("exactly_once_fallback_total", "Partition read-backs that could not start at the replay window's commit time (broker without a time index, records deleted): the replay window may be sent again.", exactly_once_fallbacks);
    COUNTER("events_dead_lettered_total", "Poison rows published to the dead-letter topic.", events_dead_lettered);
    COUNTER("changes_ignored_total", "Updates, deletes and other changes of the outbox table that are not events.", events_ignored);
    COUNTER("transactions_total", "Transactions with at least one outbox event.", transactions);
    COUNTER("restarts_total", "Pipeline restarts after a lost connection or a retriable delivery failure.", restarts);
    COUNTER("backpressure_episodes_total", "Times the Kafka queue filled and reading the slot paused.", backpressure_episodes);
    COUNTER("heartbeats_total", "Heartbeat messages written with pg_logical_emit_message.", heartbeats);
    COUNTER("status_updates_total", "Standby status updates sent to PostgreSQL.", status_updates);
    GAUGE("inflight_events", "Events handed to Kafka and not yet acked.", "%lld", (long long)atomic_load(&m->inflight_events));
    GAUGE("inflight_transactions", "Transactions with unacked events.", "%lld", (long long)atomic_load(&m->inflight_transactions));
    GAUGE("received_lsn", "Highest WAL position received from the slot (bytes).", "%llu", (unsigned long long)atomic_load(&m->received_lsn));
    GAUGE("confirmed_lsn", "Flush position confirmed to PostgreSQL (bytes): everything before it is acked.", "%llu", (unsigned long long)atomic_load(&m->confirmed_lsn));
    double sa = age_s(atomic_load(&m->newest_confirmed_commit_us), now);
    GAUGE("source_age_seconds", "Now minus the commit time of the newest transaction or heartbeat confirmed end to end (-1 before the first).", "%.3f", sa);
    double la = age_s(atomic_load(&m->last_ack_us), now);
    GAUGE("seconds_since_last_ack", "Seconds since the broker last acked an event (-1 before the first).", "%.3f", la);
    GAUGE("slot_retained_wal_bytes", "WAL the slot keeps on the server (pg_current_wal_lsn - restart_lsn), polled every 10 s (-1 unknown).", "%lld",
          atomic_load(&m->slot_info_valid) ? (long long)atomic_load(&m->slot_retained_wal_bytes) : -1LL);
    GAUGE("slot_safe_wal_size_bytes", "WAL that can still be written before the slot is at risk of invalidation (-1 unlimited or unknown).", "%lld",
          (long long)atomic_load(&m->slot_safe_wal_size_bytes));
    fprintf(out, "# HELP outboxd_slot_wal_status The slot's wal_status (1 for the current one).\n# TYPE outboxd_slot_wal_status gauge\n");
    int ws = atomic_load(&m->slot_wal_status);
    for (int i = 0; i < 5; i++)
        fprintf(out, "outboxd_slot_wal_status{slot=\"%s\",status=\"%s\"} %d\n", m->slot, wal_names[i], ws == i);
    fprintf(out, "# HELP outboxd_state The relay's state (1 for the current one).\n# TYPE outboxd_state gauge\n");
    int st = atomic_load(&m->state);
    for (int i = 0; i <= OBX_STATE_HALTED; i++)
        fprintf(out, "outboxd_state{slot=\"%s\",state=\"%s\"} %d\n", m->slot, obx_state_name((obx_state_t)i), st == i);
    GAUGE("postgres_connected", "1 while the replication connection is streaming.", "%d", atomic_load(&m->pg_connected));
    GAUGE("kafka_brokers_up", "Kafka broker connections in state UP (librdkafka statistics, every 5 s).", "%d", atomic_load(&m->kafka_brokers_up));
    char reason[256];
    GAUGE("ready", "1 when /readyz passes.", "%d", obx_metrics_ready(reason, sizeof(reason)));
    GAUGE("start_time_seconds", "Process start, Unix seconds.", "%.3f", (double)atomic_load(&m->started_us) / 1e6);
    HISTOGRAM("commit_to_ack_seconds", "Commit in PostgreSQL to ack by the broker, per event.", "slot", m->slot,
              &m->commit_to_ack, lat_bounds);
    GAUGE("snapshot_running", "1 while a snapshot runs in this process.", "%d", atomic_load(&m->snapshot_running));
    GAUGE("snapshot_rows_done", "Rows of the current (or last) snapshot acked by Kafka and checkpointed.", "%lld",
          (long long)atomic_load(&m->snapshot_rows_done));
    GAUGE("snapshot_rows_estimated", "Rows the current (or last) snapshot is expected to send.", "%lld",
          (long long)atomic_load(&m->snapshot_rows_estimated));
    GAUGE("snapshot_rows_per_second", "Rate of the current (or last) snapshot.", "%.1f",
          (double)atomic_load(&m->snapshot_rows_per_s_milli) / 1000.0);
    fprintf(out, "# HELP outboxd_build_info Version.\n# TYPE outboxd_build_info gauge\n"
                 "outboxd_build_info{slot=\"%s\",version=\"%s\"} 1\n",
            m->slot, OBX_VERSION);
}

void obx_metrics_render_json(FILE *out)
{
    obx_metrics_t *m = &g_metrics;
    if (atomic_load(&m->apply_mode)) {
        render_apply_json(out); /* outboxd apply */
        return;
    }
    int64_t now = obx_now_us();
    char rl[24], cl[24], reason[256];
    int ready = obx_metrics_ready(reason, sizeof(reason));
    obx_lsn_format(atomic_load(&m->received_lsn), rl, sizeof(rl));
    obx_lsn_format(atomic_load(&m->confirmed_lsn), cl, sizeof(cl));
    fprintf(out,
            "{\"version\":\"%s\",\"slot\":\"%s\",\"state\":\"%s\",\"ready\":%s,\"ready_reason\":\"%s\","
            "\"live\":%s,\"postgres_connected\":%s,\"kafka_brokers_up\":%d,"
            "\"received_lsn\":\"%s\",\"confirmed_lsn\":\"%s\","
            "\"source_age_seconds\":%.3f,\"seconds_since_last_ack\":%.3f,"
            "\"events\":{\"published\":%llu,\"acked\":%llu,\"failed\":%llu,\"skipped_duplicate\":%llu,\"dead_lettered\":%llu,\"inflight\":%lld},"
            "\"inflight_transactions\":%lld,\"transactions\":%llu,\"restarts\":%llu,\"backpressure_episodes\":%llu,"
            "\"heartbeats\":%llu,"
            "\"slot_wal\":{\"status\":\"%s\",\"retained_bytes\":%lld,\"safe_wal_size_bytes\":%lld},"
            "\"commit_to_ack\":{\"count\":%llu,\"mean_seconds\":%.6f}}\n",
            OBX_VERSION, m->slot, obx_state_name((obx_state_t)atomic_load(&m->state)), ready ? "true" : "false", reason,
            obx_metrics_live(30000) ? "true" : "false", atomic_load(&m->pg_connected) ? "true" : "false",
            atomic_load(&m->kafka_brokers_up), rl, cl, age_s(atomic_load(&m->newest_confirmed_commit_us), now),
            age_s(atomic_load(&m->last_ack_us), now), (unsigned long long)atomic_load(&m->events_published),
            (unsigned long long)atomic_load(&m->events_acked), (unsigned long long)atomic_load(&m->events_failed),
            (unsigned long long)atomic_load(&m->events_skipped_duplicate),
            (unsigned long long)atomic_load(&m->events_dead_lettered), (long long)atomic_load(&m->inflight_events),
            (long long)atomic_load(&m->inflight_transactions), (unsigned long long)atomic_load(&m->transactions),
            (unsigned long long)atomic_load(&m->restarts), (unsigned long long)atomic_load(&m->backpressure_episodes),
            (unsigned long long)atomic_load(&m->heartbeats),
            obx_wal_status_name((obx_wal_status_t)atomic_load(&m->slot_wal_status)),
            atomic_load(&m->slot_info_valid) ? (long long)atomic_load(&m->slot_retained_wal_bytes) : -1LL,
            (long long)atomic_load(&m->slot_safe_wal_size_bytes), (unsigned long long)atomic_load(&m->commit_to_ack.count),
            atomic_load(&m->commit_to_ack.count) ? (double)atomic_load(&m->commit_to_ack.sum_us) / 1e6 / (double)atomic_load(&m->commit_to_ack.count) : 0.0);
}
