/* Process-wide metrics: written by the program's main thread (and a
 * snapshot thread), read by the status HTTP thread. Plain C11 atomics, no
 * locks; readers may see values a few microseconds apart, never torn ones.
 *
 * One struct serves three programs; each writes only its sections and the
 * renderer picks the relay or the apply series by apply_mode:
 *   shared           state, pg_connected, last_loop_us (liveness),
 *                    started_us (metrics.c), kafka_brokers_up (kconf.c's
 *                    statistics callback, any Kafka client)
 *   outboxd run      events_*, transactions, restarts, backpressure_episodes,
 *                    heartbeats, status_updates, inflight_*, received_lsn,
 *                    confirmed_lsn, newest_confirmed_commit_us, last_ack_us,
 *                    slot_*, commit_to_ack, slot (src/relay)
 *   snapshot         snapshot_* (src/tools/snapshot.c: `outboxd snapshot`,
 *                    or a signal-started snapshot thread inside the relay)
 *   outboxd apply    apply_* (src/apply), rendered instead of the relay's
 *                    series once obx_metrics_apply_start() set apply_mode
 * The fixed char arrays (slot, snapshot_name, apply_group) are written once
 * before anything reads them. */
#ifndef OBX_METRICS_H
#define OBX_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    OBX_STATE_STARTING = 0,
    OBX_STATE_CONNECTING,
    OBX_STATE_STANDBY,      /* the slot is active in another process */
    OBX_STATE_STREAMING,
    OBX_STATE_BACKPRESSURED,
    OBX_STATE_STOPPING,
    OBX_STATE_HALTED        /* poison row, slot lost: needs an operator */
} obx_state_t;

typedef enum {
    OBX_WAL_UNKNOWN = 0, OBX_WAL_RESERVED, OBX_WAL_EXTENDED, OBX_WAL_UNRESERVED, OBX_WAL_LOST
} obx_wal_status_t;

#define OBX_HIST_BUCKETS 16

/* A Prometheus histogram of durations: OBX_HIST_BUCKETS bounds (in
 * metrics.c) plus +Inf. */
typedef struct {
    _Atomic uint64_t buckets[OBX_HIST_BUCKETS + 1], count, sum_us;
} obx_histogram_t;

/* --- outboxd apply (src/apply.c): per-partition offset lag ------------- */
#define OBX_APPLY_MAX_PARTS 1024
/* Append-only: topic and partition are written once, before the entry is
 * published by incrementing apply_n_parts; the rest are atomics. */
typedef struct {
    char topic[192];
    int32_t partition;
    _Atomic int assigned;
    _Atomic int64_t committed; /* next offset committed by this group; -1 unknown */
    _Atomic int64_t lo, hi;    /* watermarks last seen by the apply loop; -1 unknown */
} obx_apply_part_metrics_t;
/* Cached high watermark of a partition (librdkafka's, fresh from fetches
 * even while the loop blocks in a statement); -1 unknown. */
typedef int64_t (*obx_apply_hwm_fn)(const char *topic, int32_t partition);
/* --- end outboxd apply ----------------------------------------------- */

typedef struct {
    /* --- outboxd run (src/relay); state, pg_connected, last_loop_us and
     * kafka_brokers_up are shared (see the top of this file) */
    _Atomic uint64_t events_published, events_acked, events_failed, events_skipped_duplicate,
        events_dead_lettered, events_ignored, transactions, restarts, backpressure_episodes,
        heartbeats, status_updates;
    _Atomic uint64_t exactly_once_fallbacks; /* read-backs that could not use the broker's time index */
    _Atomic int64_t inflight_events, inflight_transactions;
    _Atomic uint64_t received_lsn, confirmed_lsn;
    _Atomic int64_t newest_confirmed_commit_us; /* commit time of the newest confirmed txn or heartbeat */
    _Atomic int64_t last_ack_us, last_loop_us, started_us;
    _Atomic int state;
    _Atomic int pg_connected, kafka_brokers_up;
    _Atomic int64_t slot_retained_wal_bytes, slot_safe_wal_size_bytes;
    _Atomic int slot_wal_status;
    _Atomic int slot_info_valid;
    obx_histogram_t commit_to_ack;
    /* --- snapshot (src/tools/snapshot.c) */
    _Atomic int snapshot_running;
    _Atomic int64_t snapshot_rows_done, snapshot_rows_estimated, snapshot_rows_per_s_milli;
    /* --- outboxd apply: rendered instead of the relay's series when apply_mode is set */
    _Atomic int apply_mode;
    _Atomic uint64_t apply_applied, apply_stale, apply_superseded, apply_skipped, apply_dead_lettered, apply_failed,
        apply_batches, apply_db_errors, apply_offset_commits, apply_offset_commit_failures;
    _Atomic int64_t apply_newest_source_us, apply_newest_replicated_us;
    obx_histogram_t apply_lag;
    _Atomic int apply_n_parts;
    obx_apply_part_metrics_t apply_parts[OBX_APPLY_MAX_PARTS];
    /* Partitions owned now (the table above caps at OBX_APPLY_MAX_PARTS
     * series; this count does not), and whether the process is a member of
     * its group: 0 before its first assignment and after a lost one. */
    _Atomic int apply_owned, apply_in_group;
    _Atomic(obx_apply_hwm_fn) apply_hwm;
    char apply_group[128];
    /* --- end outboxd apply */
    char snapshot_name[128]; /* snapshot */
    char slot[64];           /* outboxd run: the label of every relay series */
} obx_metrics_t;

/* The process's metrics (zeroed at start). */
obx_metrics_t *obx_metrics(void);

/* Records one commit-to-ack latency. */
void obx_metrics_observe_latency(int64_t us);

const char *obx_state_name(obx_state_t s);
obx_wal_status_t obx_wal_status_parse(const char *s);
const char *obx_wal_status_name(obx_wal_status_t s);

/* Liveness: the main loop ran within max_stall_ms. */
int obx_metrics_live(int64_t max_stall_ms);
/* Readiness: streaming with Kafka brokers up, or a healthy hot standby
 * (reason then starts with "standby:"); loop alive; apply: a member of its
 * consumer group. */
int obx_metrics_ready(char *reason, size_t reason_size);

void obx_metrics_render_prometheus(FILE *out);
void obx_metrics_render_json(FILE *out);

/* --- outboxd apply ------------------------------------------------------ */
/* Switches rendering to the apply series, labelled group="<group>". */
void obx_metrics_apply_start(const char *group, obx_apply_hwm_fn hwm);
/* Index of (topic, partition) in apply_parts, adding it; -1 when full. */
int obx_metrics_apply_partition(const char *topic, int32_t partition);
/* committed: next offset, -1 unknown. Index -1 is ignored. */
void obx_metrics_apply_partition_set(int i, int assigned, int64_t committed);
void obx_metrics_apply_partition_wm(int i, int64_t lo, int64_t hi);
/* Raises the newest source_updated_at / replicated_at (Unix microseconds). */
void obx_metrics_apply_fresh(int64_t source_us, int64_t replicated_us);
/* One applied row's replicated_at - source_updated_at. */
void obx_metrics_observe_apply_lag(int64_t us);
/* --- end outboxd apply */

#endif
