/* Internal to src/apply (and the row-at-a-time baseline in bench/): the
 * runtime shared by map.c, decode.c, db.c, writer.c, kafka.c and loop.c.
 *
 * Ownership: loop.c owns the obx_apply_t (on obx_apply_run's stack) and
 * everything it points to; it frees them in one place (obx_apply_run's
 * cleanup). Entries own their Kafka message until the batch ends. */
#ifndef OBX_APPLY_INT_H
#define OBX_APPLY_INT_H

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "apply.h"
#include "clock.h"
#include "err.h"
#include "metrics.h"
#include "producer.h"

struct cJSON;

/* ------------------------------------------------------ strings (map.c) */

/* A growing string; oom sticks, the caller checks it once at the end. */
typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} obx_apply_sb_t;

void obx_apply_sb_putn(obx_apply_sb_t *b, const char *s, size_t n);
void obx_apply_sb_puts(obx_apply_sb_t *b, const char *s);
void obx_apply_sb_printf(obx_apply_sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends "schema"."table" (or "table") through obx_pg_quote_*. */
void obx_apply_sb_name(obx_apply_sb_t *b, const char *name);
void obx_apply_sb_ident(obx_apply_sb_t *b, const char *ident);

/* Comma-separated list into trimmed, non-empty, malloc'd items: 0 or -1 (oom). */
int obx_apply_list_split(const char *s, char ***out, size_t *n);
void obx_apply_list_free(char **l, size_t n);
int obx_apply_list_has(char *const *l, size_t n, const char *s);
/* "a string", "a number", ... for messages. */
const char *obx_apply_json_type(const struct cJSON *v);

/* --------------------------------------------------------- the runtime */

enum { OBX_EV_UPSERT = 0, OBX_EV_DELETE, OBX_EV_SKIP, OBX_EV_POISON };
enum { OBX_SRC_COMMIT = 0, OBX_SRC_OCCURRED, OBX_SRC_PAYLOAD };

typedef struct {
    char *name;
    char *type; /* format_type() */
    obx_col_kind_t kind;
    int notnull;
    const obx_apply_map_t *map;
} obx_apply_col_t;

typedef struct {
    rd_kafka_message_t *msg; /* owned until the batch ends */
    int part;                /* index into obx_apply_t.parts */
    int kind;                /* OBX_EV_* */
    char *key;
    int64_t version;
    char *src_ts; /* timestamptz text */
    char **vals;  /* n_maps values, NULL = SQL NULL */
    char *reason; /* OBX_EV_POISON */
    char trace_id[33]; /* from a valid traceparent header, for logs; "" none */
    int dead;     /* published to the dead-letter topic */
} obx_apply_entry_t;

typedef struct {
    char *topic;
    int32_t partition;
    int assigned;
    int committed_fetched; /* asked the group coordinator since the assignment */
    int64_t seek_to;       /* lowest offset dropped unwritten; -1 none */
    int mi;                /* index in the metrics table, -1 none */
} obx_apply_part_t;

typedef struct {
    uint64_t applied, stale, superseded, skipped, dead_lettered;
    int64_t newest_src, newest_rep;
    size_t n_lags;
} obx_apply_stats_t;

typedef struct obx_apply_s obx_apply_t;

/* Writes the first n entries of a->batch. 0, or -1 with err: a row's error
 * (obx_apply_err_data) sends the batch to bisection, a poison
 * error without SQLSTATE (the dead-letter topic refused for good) stops,
 * anything else means the database is down. */
typedef int (*obx_apply_write_fn)(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err);

struct obx_apply_s {
    const obx_config_t *cfg;
    volatile sig_atomic_t *stop;
    obx_metrics_t *m;
    obx_apply_write_fn write;
    const char *mode; /* for the start line: "batch", or the baseline's name */
    obx_apply_map_t *maps;
    size_t n_maps;
    obx_apply_col_t *cols; /* n_maps, same order */
    char *key_type;
    char **up_types, **del_types;
    size_t n_up_types, n_del_types;
    int src_kind;
    const char *src_path;
    int dead_letter, use_tomb;
    char tomb_name[512];
    char *sql_upsert, *sql_delete;

    PGconn *db;
    rd_kafka_t *rk;
    obx_producer_t *dlq;
    obx_apply_part_t *parts;
    size_t n_parts;
    obx_apply_entry_t *batch;
    int64_t *lags; /* apply lags of the open transaction, observed after COMMIT */
    size_t n_buf;  /* entries read into batch and not yet handed to a writer; the
                    * rebalance callback drops those of revoked partitions */
    int n_owned;   /* partitions assigned now */
    int parts_metrics_full; /* the per-partition metrics table overflowed (logged once) */
    int group_lost; /* no member of the group: before the first assignment or after a lost one; not ready */
    int kafka_fatal; /* the consumer cannot go on: stop (exit 1) */
    int db_down;
    obx_backoff_t backoff;
    int64_t next_try_ms, last_kafka_err_ms;
    obx_period_t tick, wm_query, progress;
    size_t dlq_failed;
    int dlq_retriable;
    char dlq_err[256];
};

/* The server answered with an error (a SQLSTATE other than class 08,
 * 53 and 57P01-57P03): bisect to the event responsible, then its poison
 * policy, whatever the class (a trigger's P0001, RLS's 42501, XX000).
 * Errors without SQLSTATE mean the database is down: retry with backoff. */
int obx_apply_err_data(const obx_err_t *e);
/* obx_apply_err_data and the connection still up. */
int obx_apply_err_row(obx_apply_t *a, const obx_err_t *e);
/* 40001, 40P01, 55P03, 57014: the database's load or locks, never an
 * event's fault, so never its poison policy. A single event is tried again
 * OBX_APPLY_TRANSIENT_TRIES times, then the batch is read again after
 * backoff (as when the database is down). */
#define OBX_APPLY_TRANSIENT_TRIES 3
int obx_apply_err_transient(const obx_err_t *e);
/* 40001, 40P01, 55P03: a lock or a concurrent writer; a smaller batch
 * would meet the same lock, so the batch is not bisected. */
int obx_apply_err_busy(const obx_err_t *e);
/* The dead-letter topic refused for good: apply stops (exit 3). */
int obx_apply_err_halt(const obx_err_t *e);

/* decode.c */
void obx_apply_decode(obx_apply_t *a, rd_kafka_message_t *m, obx_apply_entry_t *e);
void obx_apply_poison(obx_apply_entry_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void obx_apply_entry_clear(obx_apply_t *a, obx_apply_entry_t *e);
void obx_apply_batch_free(obx_apply_t *a, size_t n);

/* db.c: 0, or -1 with err (retriable: retry later; fatal: exit_code). */
int obx_apply_db_open(obx_apply_t *a, obx_err_t *err);
void obx_apply_db_close(obx_apply_t *a);
void obx_apply_db_free_sql(obx_apply_t *a);
void obx_apply_db_load_freshness(obx_apply_t *a);

/* writer.c */
int obx_apply_write_batch(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err);
/* After a row's error: bisects the batch into committed parts and poison
 * events. *halt_at: the first poison event under halt, else n. */
int obx_apply_write_isolate(obx_apply_t *a, size_t n, obx_apply_stats_t *st, size_t *halt_at, obx_err_t *err);
/* One prepared statement (upsert, or delete when del) over the entries idx[0..n). */
int obx_apply_write_stmt(obx_apply_t *a, int del, const size_t *idx, size_t n, obx_apply_stats_t *st, obx_err_t *err);
/* Publishes the poison entries among the first n not yet published. */
int obx_apply_dead_letter(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err);

/* kafka.c */
int obx_apply_consumer_new(obx_apply_t *a, obx_err_t *err);
void obx_apply_consumer_close(obx_apply_t *a);
int obx_apply_part_index(obx_apply_t *a, const char *topic, int32_t partition);
void obx_apply_note_dropped(obx_apply_t *a, const rd_kafka_message_t *m);
void obx_apply_commit_offsets(obx_apply_t *a, size_t n);
int obx_apply_seek_back(obx_apply_t *a);
void obx_apply_pause(obx_apply_t *a, int pause);
void obx_apply_fetch_committed(obx_apply_t *a);
void obx_apply_update_watermarks(obx_apply_t *a, int query);
/* High watermark from librdkafka's cache, for the status thread. */
int64_t obx_apply_hwm(const char *topic, int32_t partition);

/* loop.c: obx_apply_run with another writer (the bench baseline). */
int obx_apply_run_with(const obx_config_t *cfg, volatile sig_atomic_t *stop, obx_apply_write_fn write, const char *mode);

#endif
