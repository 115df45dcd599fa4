/* Heartbeats and slot polling on the auxiliary connection (aux.h). */
#include "aux.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "clock.h"
#include "log.h"
#include "pg.h"

#define RECONNECT_MS 5000

struct obx_aux_s {
    const obx_config_t *cfg;
    obx_metrics_t *m;
    PGconn *conn;
    obx_period_t heartbeat, slot_poll, reconnect;
};

static void local_commits(obx_aux_t *a);

obx_aux_t *obx_aux_new(const obx_config_t *cfg, obx_metrics_t *m, obx_err_t *err)
{
    obx_aux_t *a = calloc(1, sizeof(*a));
    if (!a) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return NULL;
    }
    a->cfg = cfg;
    a->m = m;
    obx_period_init(&a->heartbeat, cfg->heartbeat_interval_ms);
    obx_period_init(&a->slot_poll, cfg->slot_poll_interval_ms);
    obx_period_init(&a->reconnect, RECONNECT_MS);
    a->conn = obx_pg_connect(cfg->pg_conninfo, "pg.conninfo", OBX_PG_NORMAL, err);
    if (!a->conn) {
        free(a);
        return NULL;
    }
    local_commits(a);
    return a;
}

void obx_aux_destroy(obx_aux_t *a)
{
    if (!a) return;
    PQfinish(a->conn);
    free(a);
}

PGconn *obx_aux_conn(obx_aux_t *a) { return a->conn; }

/* The heartbeat needs no synchronous standby: with one unreachable, a
 * waiting heartbeat would stall the relay's loop, which runs it. */
static void local_commits(obx_aux_t *a)
{
    obx_err_t e;
    if (a->conn && obx_pg_command(a->conn, "SET synchronous_commit = local", &e) != 0)
        obx_warn("aux", "SET synchronous_commit = local: %s", e.msg);
}

static void heartbeat(obx_aux_t *a)
{
    obx_err_t err;
    PGresult *res =
        obx_pg_exec(a->conn, "SELECT pg_logical_emit_message(true, '" OBX_HEARTBEAT_PREFIX "', 'heartbeat')", 0, NULL, &err);
    if (res)
        atomic_fetch_add(&a->m->heartbeats, 1);
    else
        obx_warn("heartbeat", "pg_logical_emit_message failed: %s", err.msg);
    PQclear(res);
}

/* WAL status and retained WAL for the status port; a lost slot stops. */
static int poll_slot(obx_aux_t *a, obx_lsn_t confirmed, obx_err_t *err)
{
    const char *p[1] = {a->cfg->slot_name};
    PGresult *res = obx_pg_exec(a->conn,
                                "SELECT coalesce(wal_status, ''), coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,"
                                " coalesce(safe_wal_size, -1) FROM pg_replication_slots WHERE slot_name = $1",
                                1, p, err);
    if (!res) {
        obx_warn("slot_poll", "%s", err->msg);
        return 0;
    }
    int rc = 0;
    if (PQntuples(res) == 1) {
        obx_wal_status_t ws = obx_wal_status_parse(PQgetvalue(res, 0, 0));
        atomic_store(&a->m->slot_wal_status, (int)ws);
        atomic_store(&a->m->slot_retained_wal_bytes, atoll(PQgetvalue(res, 0, 1)));
        atomic_store(&a->m->slot_safe_wal_size_bytes, atoll(PQgetvalue(res, 0, 2)));
        atomic_store(&a->m->slot_info_valid, 1);
        if (ws == OBX_WAL_LOST) {
            obx_err_clear(err);
            obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_SLOT,
                        "replication slot %s was invalidated (wal_status = lost, max_slot_wal_keep_size exceeded): WAL "
                        "after " OBX_LSN_FMT " is gone and events committed since cannot be decoded. Recover: outboxd slot "
                        "drop, restart outboxd (new slot), and re-emit current state with a snapshot",
                        a->cfg->slot_name, OBX_LSN_ARGS(confirmed));
            rc = -1;
        } else if (ws == OBX_WAL_UNRESERVED) {
            obx_warn("slot_at_risk", "slot %s: wal_status = unreserved, %s bytes of WAL left before invalidation",
                     a->cfg->slot_name, PQgetvalue(res, 0, 2));
        }
    }
    PQclear(res);
    return rc;
}

int obx_aux_tick(obx_aux_t *a, obx_lsn_t confirmed, obx_err_t *err)
{
    int64_t now = obx_mono_ms();
    if (!a->conn || PQstatus(a->conn) != CONNECTION_OK) {
        if (!obx_period_due(&a->reconnect, now)) return 0;
        PQfinish(a->conn);
        a->conn = obx_pg_connect(a->cfg->pg_conninfo, "pg.conninfo", OBX_PG_NORMAL, err);
        if (!a->conn) {
            obx_warn("pg_connect", "heartbeat/slot connection: %s", err->msg);
            return 0;
        }
        local_commits(a);
    }
    if (a->cfg->heartbeat_interval_ms > 0 && obx_period_due(&a->heartbeat, now)) heartbeat(a);
    if (obx_period_due(&a->slot_poll, now)) return poll_slot(a, confirmed, err);
    return 0;
}
