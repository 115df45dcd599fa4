/* Checks on a normal (non-replication) connection before streaming, each
 * failure naming the problem and the fix; and slot creation/inspection. */
#ifndef OBX_PREFLIGHT_H
#define OBX_PREFLIGHT_H

#include <libpq-fe.h>
#include <stddef.h>

#include "config.h"
#include "err.h"
#include "relset.h"
#include "exitcodes.h"
#include "lsn.h"

typedef struct {
    int server_version;     /* e.g. 150020 */
    char database[128];
    char sysid[32];         /* pg_control_system().system_identifier */
    int has_version_col, has_topic_col, has_headers_col, has_occurred_at_col;
} obx_pg_info_t;

typedef struct {
    int exists;
    char plugin[64];
    int active;
    int active_pid;
    char wal_status[32];
    obx_lsn_t confirmed_flush;
    obx_lsn_t restart_lsn;
    int failover, synced;   /* PostgreSQL 17+ columns; 0 before */
} obx_slot_info_t;

/* Whether the slot is to be a failover slot on a server of this version
 * (slot.failover): 1 or 0, or -1 with errstr when `on` meets a server
 * before 17 (a configuration error). */
int obx_slot_failover_wanted(const obx_config_t *cfg, int server_version, char *errstr, size_t errstr_size);

/* Server settings, privileges and the outbox table. Returns 0, or an
 * OBX_EXIT_* code with errstr saying what is wrong and how to fix it. */
int obx_preflight(PGconn *conn, const obx_config_t *cfg, obx_pg_info_t *info, char *errstr, size_t errstr_size);

/* Only the outbox table and its columns (fills info's has_* flags). */
int obx_preflight_outbox(PGconn *conn, const obx_config_t *cfg, obx_pg_info_t *info, char *errstr, size_t errstr_size);

/* Reads the slot's row from pg_replication_slots. 0, or -1 on query error. */
int obx_slot_inspect(PGconn *conn, const char *slot, obx_slot_info_t *out, char *errstr, size_t errstr_size);

/* Makes sure the slot exists with cfg->decoder's plugin and is not lost
 * (creating it if cfg->slot_create; with pgoutput the publication first;
 * as a failover slot where obx_slot_failover_wanted, and an existing slot
 * without the flag gets it). Returns 0 or an OBX_EXIT_* code with errstr. */
int obx_slot_ensure(PGconn *conn, const obx_config_t *cfg, obx_slot_info_t *out, char *errstr, size_t errstr_size);

/* Drops the slot; for tests and `outboxd slot drop`. */
int obx_slot_drop(PGconn *conn, const char *slot, char *errstr, size_t errstr_size);

/* Only the database name and the system identifier (the slot evidence key). */
int obx_pg_identity(PGconn *conn, obx_pg_info_t *info, obx_err_t *err);

/* A WAL position and the transactions running just after it was read.
 * Once they have all ended for every snapshot (obx_wal_mark_done), each
 * one that committed before lsn is visible: a catalog read then misses no
 * partition created before lsn. The caller frees xids (obx_wal_mark_clear). */
typedef struct {
    obx_lsn_t lsn;
    char *xids; /* text array of xids, e.g. "{750,751}" */
} obx_wal_mark_t;

int obx_wal_mark(PGconn *conn, obx_wal_mark_t *m, obx_err_t *err);

/* How far the server's WAL goes: the insert position on a primary, what it
 * has received or replayed on a standby. *end 0 when unknown. */
int obx_wal_end(PGconn *conn, obx_lsn_t *end, obx_err_t *err);
int obx_wal_mark_done(PGconn *conn, const obx_wal_mark_t *m, int *done, obx_err_t *err);
void obx_wal_mark_clear(obx_wal_mark_t *m);

/* The relations that are the outbox now: the table and, when partitioned,
 * every leaf partition (any schema). Replaces out's members. 0, or -1. */
int obx_outbox_relations(PGconn *conn, const obx_config_t *cfg, obx_relset_t *out, obx_err_t *err);

#endif
