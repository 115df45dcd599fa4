/* Process-wide metrics: written by the relay thread, read by the status HTTP
 * thread. Plain C11 atomics, no locks; readers may see values a few
 * microseconds apart, never torn ones. */
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

#define OBX_LAT_BUCKETS 16

typedef struct {
    _Atomic uint64_t events_published, events_acked, events_failed, events_skipped_duplicate,
        events_dead_lettered, events_ignored, transactions, restarts, backpressure_episodes,
        heartbeats, status_updates;
    _Atomic int64_t inflight_events, inflight_transactions;
    _Atomic uint64_t received_lsn, confirmed_lsn;
    _Atomic int64_t newest_confirmed_commit_us; /* commit time of the newest confirmed txn or heartbeat */
    _Atomic int64_t last_ack_us, last_loop_us, started_us;
    _Atomic int state;
    _Atomic int pg_connected, kafka_brokers_up;
    _Atomic int64_t slot_retained_wal_bytes, slot_safe_wal_size_bytes;
    _Atomic int slot_wal_status;
    _Atomic int slot_info_valid;
    _Atomic uint64_t lat_buckets[OBX_LAT_BUCKETS + 1], lat_count, lat_sum_us;
    _Atomic int snapshot_running;
    _Atomic int64_t snapshot_rows_done, snapshot_rows_estimated, snapshot_rows_per_s_milli;
    char snapshot_name[128];
    char slot[64];
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
 * (reason then starts with "standby:"); loop alive. */
int obx_metrics_ready(char *reason, size_t reason_size);

void obx_metrics_render_prometheus(FILE *out);
void obx_metrics_render_json(FILE *out);

#endif
