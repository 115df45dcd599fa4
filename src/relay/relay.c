/* `outboxd run` (relay.h): the process lifetime. Preflight, then sessions
 * (stream.c) with capped backoff until a stop request or a failure that
 * needs an operator. Owns the transaction core and the signal plane. */
#include "relay.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "preflight.h"
#include "status_http.h"
#include "stream.h"

#define BACKOFF_INITIAL_MS 500
#define SLEEP_STEP_MS 50

/* Between sessions nothing else runs: keep /healthz alive. */
static void tick(void *arg)
{
    obx_relay_proc_t *p = arg;
    atomic_store(&p->m->last_loop_us, obx_now_us());
}

/* Configuration problems are fatal (exit 2), an unreachable server is
 * retried with backoff. 0, 1 when stopped while waiting, or an exit code. */
static int preflight(obx_relay_proc_t *p)
{
    const obx_config_t *cfg = p->cfg;
    char red[1024], e[1024];
    obx_conninfo_redact(cfg->pg_conninfo, red, sizeof(red));
    obx_backoff_t backoff;
    obx_backoff_init(&backoff, BACKOFF_INITIAL_MS, cfg->reconnect_backoff_max_ms);
    /* As the runbook says: connecting, with restarts rising per attempt. */
    atomic_store(&p->m->state, (int)OBX_STATE_CONNECTING);
    for (;;) {
        tick(p);
        obx_err_t err;
        PGconn *pc = obx_pg_connect(cfg->pg_conninfo, "pg.conninfo", OBX_PG_NORMAL, &err);
        if (pc) {
            int prc = obx_preflight(pc, cfg, &p->pg, e, sizeof(e));
            PQfinish(pc);
            if (prc == 0) return 0;
            if (prc != OBX_EXIT_FAIL) {
                obx_error("preflight", "%s", e);
                return prc;
            }
            snprintf(err.msg, sizeof(err.msg), "%s", e);
        }
        atomic_fetch_add(&p->m->restarts, 1);
        int wait = obx_backoff_next(&backoff);
        obx_warn("pg_connect", "%s (%s); retrying in %d ms", err.msg, red, wait);
        if (obx_sleep_unless(wait, 100, p->stop, tick, p)) return 1;
    }
}

/* Sessions until a stop request (0) or a fatal failure (its exit code). */
static int run_sessions(obx_relay_proc_t *p)
{
    const obx_config_t *cfg = p->cfg;
    obx_backoff_t backoff;
    obx_backoff_init(&backoff, BACKOFF_INITIAL_MS, cfg->reconnect_backoff_max_ms);
    for (;;) {
        uint64_t before = atomic_load(&p->m->events_acked);
        obx_err_t err;
        if (obx_stream_session(p, &err) == 0) {
            obx_info("stopped", "%llu events published, %llu acked, %llu skipped as already in Kafka; confirmed " OBX_LSN_FMT,
                     (unsigned long long)atomic_load(&p->m->events_published),
                     (unsigned long long)atomic_load(&p->m->events_acked),
                     (unsigned long long)atomic_load(&p->m->events_skipped_duplicate), OBX_LSN_ARGS(p->confirmed));
            return OBX_EXIT_OK;
        }
        if (err.cls != OBX_ERR_RETRIABLE) return obx_err_exit_code(&err);
        int wait;
        if (obx_err_is_sqlstate(&err, OBX_SQLSTATE_OBJECT_IN_USE)) {
            wait = cfg->standby_retry_ms;
        } else {
            atomic_fetch_add(&p->m->restarts, 1);
            if (atomic_load(&p->m->events_acked) > before) obx_backoff_reset(&backoff);
            wait = obx_backoff_next(&backoff);
            obx_info("reconnect", "reconnecting in %d ms from confirmed LSN " OBX_LSN_FMT, wait, OBX_LSN_ARGS(p->confirmed));
        }
        if (obx_sleep_unless(wait, SLEEP_STEP_MS, p->stop, tick, p)) return OBX_EXIT_OK;
    }
}

int obx_relay_run(const obx_config_t *cfg, volatile sig_atomic_t *stop)
{
    obx_relay_proc_t p;
    memset(&p, 0, sizeof(p));
    p.cfg = cfg;
    p.stop = stop;
    p.m = obx_metrics();
    snprintf(p.m->slot, sizeof(p.m->slot), "%s", cfg->slot_name);
    atomic_store(&p.m->started_us, obx_now_us());
    atomic_store(&p.m->slot_safe_wal_size_bytes, -1);
    tick(&p);

    char e[1024];
    obx_status_http_t *http = NULL;
    if (*cfg->status_listen) {
        http = obx_status_http_start(cfg->status_listen, e, sizeof(e));
        if (!http) {
            obx_error("status_http", "%s", e);
            return OBX_EXIT_CONFIG;
        }
        obx_info("status_http", "status port on http://%s (/healthz /readyz /metrics /status)", cfg->status_listen);
    }
    int rc = preflight(&p);
    if (rc == 1) rc = OBX_EXIT_OK;
    else if (rc == 0) {
        obx_info("preflight_ok", "PostgreSQL %d, database %s, outbox %s.%s, slot %s", p.pg.server_version, p.pg.database,
                 cfg->outbox_schema, cfg->outbox_table, cfg->slot_name);
        p.core = obx_txn_new(cfg, p.pg.database, p.pg.sysid, p.m);
        p.signals = obx_signals_new(cfg, stop);
        p.rels = obx_relset_new();
        if (!p.core || !p.signals || !p.rels) {
            obx_error("oom", "out of memory");
            rc = OBX_EXIT_FAIL;
        } else {
            rc = run_sessions(&p);
        }
    }
    obx_signals_destroy(p.signals); /* joins a snapshot: it saw *stop and checkpointed */
    obx_txn_destroy(p.core);
    obx_relset_destroy(p.rels);
    obx_status_http_stop(http);
    return rc;
}
