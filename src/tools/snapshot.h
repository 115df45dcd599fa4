/* Snapshots and reconciliation: re-emit the current state of a source table
 * (e.g. `athletes`) as events with the same envelope, topic and key rules as
 * the outbox, without stopping the live stream. Keyset pagination over the
 * primary key; progress is checkpointed in table outboxd_snapshots after each
 * page is acked, so an interrupted snapshot resumes re-sending at most one
 * page. The aggregate version (from a version column) makes snapshot and
 * live events safe to mix: consumers keep the newest version. */
#ifndef OBX_SNAPSHOT_H
#define OBX_SNAPSHOT_H

#include <signal.h>
#include <stdint.h>

#include "config.h"
#include "exitcodes.h"

/* One structured filter term, t.<column> <op> $n: the column is quoted,
 * the value is a parameter and the op comes from a fixed list, so nothing
 * of it is SQL. It is what a signal may carry instead of snapshot.where. */
typedef struct {
    const char *column;
    const char *op;    /* one of obx_snapshot_filter_op()'s names */
    const char *value; /* a text parameter; NULL for "is null" / "is not null" */
} obx_snapshot_filter_t;

#define OBX_SNAPSHOT_MAX_FILTERS 8

/* The SQL operator of a filter op name ("=", "<>", "!=", "<", "<=", ">",
 * ">=", "like", "not like", "is null", "is not null"; case-insensitive), or
 * NULL when it is not on the list. *takes_value: 0 for IS [NOT] NULL. */
const char *obx_snapshot_filter_op(const char *op, int *takes_value);

typedef struct {
    const char *name;          /* checkpoint key; default: the table name */
    const char *table;         /* [schema.]table */
    const char *where;         /* optional SQL filter: the operator's own (CLI/config), never a signal's */
    const obx_snapshot_filter_t *filters; /* structured filter terms, ANDed; at most OBX_SNAPSHOT_MAX_FILTERS */
    size_t n_filters;
    const char *filter_desc;   /* the filters as text, for the checkpoint row and the log */
    const char *topic;         /* optional topic override */
    const char *aggregate_type;/* default: the table name */
    const char *version_column;/* required */
    const char *columns;       /* payload: comma list of columns; NULL: to_jsonb(row) */
    const char *payload_sql;   /* payload: SQL expression over alias t (wins over columns) */
    const char *event_type;    /* default "snapshot" */
    long page_size;            /* > 0 */
    long rate_limit;           /* rows/s, 0 = unlimited */
    int restart;               /* ignore a checkpoint and start over */
    int progress_bar;          /* draw a bar on stderr (a terminal) */
} obx_snapshot_opts_t;

/* Fills opts from cfg's snapshot.* keys (strings borrowed from cfg). */
void obx_snapshot_opts_from_config(const obx_config_t *cfg, obx_snapshot_opts_t *o);

/* Runs one snapshot to the end (or until *stop). Returns an OBX_EXIT_* code;
 * errors are logged with the table, the key and the fix. Thread-safe: uses
 * its own connections and producer (the relay runs it in a thread). */
int obx_snapshot_run(const obx_config_t *cfg, const obx_snapshot_opts_t *o, volatile sig_atomic_t *stop);

#endif
