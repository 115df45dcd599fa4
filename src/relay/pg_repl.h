/* The streaming replication protocol over libpq (replication=database):
 * START_REPLICATION, XLogData/keepalive parsing, standby status updates.
 * Failures come back as obx_err_t with the server's SQLSTATE when the
 * server said one (55006 slot in use, 42704 no such slot, 55000 slot
 * invalidated): callers decide from it, never from the message text.
 * The relay session (stream.c) owns the obx_repl_t. */
#ifndef OBX_PG_REPL_H
#define OBX_PG_REPL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "lsn.h"

typedef struct obx_repl_s obx_repl_t;

typedef enum { OBX_REPL_XLOGDATA = 'w', OBX_REPL_KEEPALIVE = 'k' } obx_repl_kind_t;

/* Points into a buffer the obx_repl_t owns until the next obx_repl_next. */
typedef struct {
    obx_repl_kind_t kind;
    obx_lsn_t data_start; /* 'w' */
    obx_lsn_t wal_end;
    int64_t send_time;    /* microseconds since 2000-01-01 */
    int reply_requested;  /* 'k' */
    const char *data;     /* 'w': the plugin's output (not NUL-terminated) */
    size_t len;
} obx_repl_msg_t;

/* Connects through obx_pg_connect(OBX_PG_REPLICATION) and pins the wire
 * format. NULL with err on failure. The caller owns the result
 * (obx_repl_destroy). */
obx_repl_t *obx_repl_connect(const char *conninfo, obx_err_t *err);
void obx_repl_destroy(obx_repl_t *r);

/* START_REPLICATION SLOT slot LOGICAL start (k1 'v1', ...). opts: n pairs.
 * 0, or -1 with err carrying the server's SQLSTATE. */
int obx_repl_start(obx_repl_t *r, const char *slot, obx_lsn_t start, const char *const *opts,
                   size_t n_opts, obx_err_t *err);

/* 1: *msg filled; 0: nothing within timeout_ms; -1: the connection failed
 * or the server ended the stream (err, with its SQLSTATE if it sent one). */
int obx_repl_next(obx_repl_t *r, obx_repl_msg_t *msg, int timeout_ms, obx_err_t *err);

/* Standby status update 'r'. Only `flush` moves confirmed_flush_lsn. */
int obx_repl_send_status(obx_repl_t *r, obx_lsn_t write, obx_lsn_t flush, obx_lsn_t apply, obx_err_t *err);

/* Ends the COPY cleanly (after the final status update). */
int obx_repl_end(obx_repl_t *r, obx_err_t *err);

/* For poll(): the connection's socket. */
int obx_repl_socket(const obx_repl_t *r);

/* Microseconds since 2000-01-01, the protocol's clock. */
int64_t obx_repl_now(void);

#endif
