/* The relay session's auxiliary connection: a normal (non-replication)
 * PostgreSQL connection for the slot check at session start, heartbeats
 * (pg_logical_emit_message, whose empty transaction lets an idle or
 * filtered slot confirm) and polling the slot's WAL status. Timers are
 * obx_period_t; a lost connection is re-made every 5 s.
 *
 * The relay session owns the obx_aux_t; cfg and m are borrowed. */
#ifndef OBX_AUX_H
#define OBX_AUX_H

#include <libpq-fe.h>

#include "config.h"
#include "err.h"
#include "lsn.h"
#include "metrics.h"

#include "txn.h" /* OBX_HEARTBEAT_PREFIX */

typedef struct obx_aux_s obx_aux_t;

/* Connects. NULL with err (retriable) on failure. */
obx_aux_t *obx_aux_new(const obx_config_t *cfg, obx_metrics_t *m, obx_err_t *err);
void obx_aux_destroy(obx_aux_t *a);

/* The connection, for one-off queries (slot check); owned by a. */
PGconn *obx_aux_conn(obx_aux_t *a);

/* Runs what is due: heartbeat, slot poll, reconnect. Its own failures are
 * logged and retried; returns -1 with err (fatal, exit 4) only when the
 * slot is lost. confirmed names the last confirmed LSN in that message. */
int obx_aux_tick(obx_aux_t *a, obx_lsn_t confirmed, obx_err_t *err);

#endif
