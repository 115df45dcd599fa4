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

typedef struct {
    const char *name;          /* checkpoint key; default: the table name */
    const char *table;         /* [schema.]table */
    const char *where;         /* optional SQL filter (reconcile a subset) */
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
