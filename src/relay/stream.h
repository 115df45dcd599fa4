/* One relay session, shaped like PostgreSQL's receivelog.c: connect (slot
 * check, START_REPLICATION, producer), then poll, receive, process data,
 * answer keepalives, check stop; one owner of the standby status update.
 * The session's connections and producer live only inside
 * obx_stream_session; what outlives a session is in obx_relay_proc_t. */
#ifndef OBX_STREAM_H
#define OBX_STREAM_H

#include <signal.h>

#include "config.h"
#include "err.h"
#include "lsn.h"
#include "metrics.h"
#include "preflight.h"
#include "signals.h"
#include "txn.h"

/* The process lifetime, owned by obx_relay_run. */
typedef struct {
    const obx_config_t *cfg;
    volatile sig_atomic_t *stop;
    obx_metrics_t *m;
    obx_pg_info_t pg;
    obx_lsn_t confirmed;    /* highest flush LSN known confirmed; survives sessions */
    obx_txn_t *core;        /* the transaction core and its poison memory */
    obx_signals_t *signals; /* the signal table's snapshot thread */
    int signals_resumed;    /* once, by the first session that holds the slot */
    /* decoder = pgoutput: the publication's fingerprint when streaming began
     * (obx_publication_identity); any change since halts the relay. */
    char pub_identity[64];
    /* The outbox's relations in the filter: the partition tree plus leaves
     * that left it while their rows may be unconfirmed (relset.h). */
    struct obx_relset_s *rels;
} obx_relay_proc_t;

/* Runs one session. 0: stopped on request (Kafka flushed, final status
 * sent). -1 with err: RETRIABLE (SQLSTATE 55006: another process streams
 * the slot, stand by), POISON or FATAL (stop with its exit code). The
 * failure is logged here, once. */
int obx_stream_session(obx_relay_proc_t *p, obx_err_t *err);

#endif
