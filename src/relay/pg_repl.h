/* The streaming replication protocol over libpq (replication=database):
 * START_REPLICATION, XLogData/keepalive parsing, standby status updates. */
#ifndef OBX_PG_REPL_H
#define OBX_PG_REPL_H

#include <stddef.h>
#include <stdint.h>

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

/* Connects with `replication=database` added to conninfo. NULL + errstr on
 * failure. The caller owns the result (obx_repl_destroy). */
obx_repl_t *obx_repl_connect(const char *conninfo, char *errstr, size_t errstr_size);
void obx_repl_destroy(obx_repl_t *r);

/* START_REPLICATION SLOT slot LOGICAL start (k1 'v1', ...). opts: n pairs. */
int obx_repl_start(obx_repl_t *r, const char *slot, obx_lsn_t start, const char *const *opts,
                   size_t n_opts, char *errstr, size_t errstr_size);

/* 1: *msg filled; 0: nothing within timeout_ms; -1: error (errstr);
 * -2: the server ended the stream. */
int obx_repl_next(obx_repl_t *r, obx_repl_msg_t *msg, int timeout_ms, char *errstr, size_t errstr_size);

/* Standby status update 'r'. Only `flush` moves confirmed_flush_lsn. */
int obx_repl_send_status(obx_repl_t *r, obx_lsn_t write, obx_lsn_t flush, obx_lsn_t apply,
                         char *errstr, size_t errstr_size);

/* Ends the COPY cleanly (after the final status update). */
int obx_repl_end(obx_repl_t *r, char *errstr, size_t errstr_size);

/* For poll(): the connection's socket. */
int obx_repl_socket(const obx_repl_t *r);

/* Microseconds since 2000-01-01, the protocol's clock. */
int64_t obx_repl_now(void);

#endif
