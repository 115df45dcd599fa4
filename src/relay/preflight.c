#include "preflight.h"
#include "exitcodes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "pg.h"
#include "publication.h"

/* Runs a query with text params; returns the result or NULL (errstr). */
static PGresult *q(PGconn *c, const char *sql, int n, const char *const *params, char *errstr, size_t errstr_size)
{
    obx_err_t err;
    PGresult *r = obx_pg_exec(c, sql, n, params, &err);
    if (!r) snprintf(errstr, errstr_size, "query failed: %s", err.msg);
    return r;
}

/* Why pg_create_logical_replication_slot failed, by SQLSTATE: the plugin's
 * library is missing (58P01 undefined_file), no free slot (53400
 * configuration_limit_exceeded); anything else as the server said it. */
static void create_failed(const obx_config_t *cfg, const obx_err_t *e, char *errstr, size_t errstr_size)
{
    if (obx_err_is_sqlstate(e, "58P01") && !strcmp(cfg->decoder, "wal2json"))
        snprintf(errstr, errstr_size,
                 "creating slot \"%s\": the wal2json plugin is not installed on the server: install "
                 "postgresql-<version>-wal2json (Debian/Ubuntu) or build wal2json (%s)",
                 cfg->slot_name, e->msg);
    else if (obx_err_is_sqlstate(e, "53400"))
        snprintf(errstr, errstr_size, "creating slot \"%s\": raise max_replication_slots and restart Postgres (%s)",
                 cfg->slot_name, e->msg);
    else
        snprintf(errstr, errstr_size,
                 "creating slot \"%s\": %s (if the server has output_plugin_libraries, it must list wal2json: "
                 "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json; SELECT pg_reload_conf();)",
                 cfg->slot_name, e->msg);
}

int obx_preflight(PGconn *conn, const obx_config_t *cfg, obx_pg_info_t *info, char *errstr, size_t errstr_size)
{
    memset(info, 0, sizeof(*info));
    info->server_version = PQserverVersion(conn);
    if (info->server_version < 100000) {
        snprintf(errstr, errstr_size, "PostgreSQL %d is too old: outboxd needs 10 or newer", info->server_version);
        return OBX_EXIT_CONFIG;
    }
    PGresult *r = q(conn,
                    "SELECT current_setting('wal_level'), current_database(),"
                    " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),"
                    " (SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'),"
                    " current_user, (SELECT system_identifier::text FROM pg_control_system())",
                    0, NULL, errstr, errstr_size);
    if (!r) return OBX_EXIT_FAIL;
    snprintf(info->database, sizeof(info->database), "%s", PQgetvalue(r, 0, 1));
    /* The cluster's identity survives a physical failover (same system
     * identifier), so Kafka-kept slot evidence follows it (evidence.h). */
    snprintf(info->sysid, sizeof(info->sysid), "%s", PQgetvalue(r, 0, 5));
    int rc = 0;
    if (strcmp(PQgetvalue(r, 0, 0), "logical") != 0) {
        snprintf(errstr, errstr_size,
                 "wal_level is \"%s\", logical decoding needs \"logical\": set wal_level = logical in postgresql.conf "
                 "(or ALTER SYSTEM SET wal_level = logical) and restart Postgres",
                 PQgetvalue(r, 0, 0));
        rc = OBX_EXIT_CONFIG;
    } else if (strcmp(PQgetvalue(r, 0, 2), "t") != 0) {
        snprintf(errstr, errstr_size,
                 "role \"%s\" lacks the REPLICATION privilege: run ALTER ROLE \"%s\" REPLICATION as a superuser",
                 PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 4));
        rc = OBX_EXIT_CONFIG;
    } else if (!PQgetisnull(r, 0, 3) && !strstr(PQgetvalue(r, 0, 3), cfg->decoder)) {
        /* Only some builds have this GUC; where it exists it gates plugins. */
        snprintf(errstr, errstr_size,
                 "output_plugin_libraries = \"%s\" does not allow %s: run "
                 "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json; SELECT pg_reload_conf();",
                 PQgetvalue(r, 0, 3), cfg->decoder);
        rc = OBX_EXIT_CONFIG;
    }
    PQclear(r);
    if (rc) return rc;
    return obx_preflight_outbox(conn, cfg, info, errstr, errstr_size);
}

int obx_preflight_outbox(PGconn *conn, const obx_config_t *cfg, obx_pg_info_t *info, char *errstr, size_t errstr_size)
{
    const char *p[2] = {cfg->outbox_schema, cfg->outbox_table};
    PGresult *r;
    r = q(conn,
          "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
          " JOIN pg_namespace n ON n.oid = c.relnamespace"
          " WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
          2, p, errstr, errstr_size);
    if (!r) return OBX_EXIT_FAIL;
    if (PQntuples(r) == 0) {
        snprintf(errstr, errstr_size,
                 "outbox table %s.%s does not exist (or is not visible to this role): create it with "
                 "deploy/sql/outbox.sql, or set outbox.schema / outbox.table",
                 cfg->outbox_schema, cfg->outbox_table);
        PQclear(r);
        return OBX_EXIT_CONFIG;
    }
    const struct { const char *col, *key; int *flag; } cols[] = {
        {cfg->col_id, "outbox.column.id", NULL},
        {cfg->col_aggregatetype, "outbox.column.aggregatetype", NULL},
        {cfg->col_aggregateid, "outbox.column.aggregateid", NULL},
        {cfg->col_type, "outbox.column.type", NULL},
        {cfg->col_payload, "outbox.column.payload", NULL},
        {cfg->col_aggregate_version, "outbox.column.aggregate_version", &info->has_version_col},
        {cfg->col_topic, "outbox.column.topic", &info->has_topic_col},
        {cfg->col_headers, "outbox.column.headers", &info->has_headers_col},
        {cfg->col_occurred_at, "outbox.column.occurred_at", &info->has_occurred_at_col},
    };
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
        int found = 0;
        for (int t = 0; t < PQntuples(r) && *cols[i].col; t++)
            if (strcmp(PQgetvalue(r, t, 0), cols[i].col) == 0) found = 1;
        if (cols[i].flag) {
            *cols[i].flag = found;
            if (!found && *cols[i].col)
                obx_info("outbox_optional_column_missing", "%s.%s has no column \"%s\" (%s): feature off",
                         cfg->outbox_schema, cfg->outbox_table, cols[i].col, cols[i].key);
        } else if (!found) {
            snprintf(errstr, errstr_size,
                     "outbox table %s.%s has no column \"%s\": add it (see deploy/sql/outbox.sql) or set %s to the column's name",
                     cfg->outbox_schema, cfg->outbox_table, cols[i].col, cols[i].key);
            PQclear(r);
            return OBX_EXIT_CONFIG;
        }
    }
    PQclear(r);
    return 0;
}

int obx_slot_inspect(PGconn *conn, const char *slot, obx_slot_info_t *out, char *errstr, size_t errstr_size)
{
    memset(out, 0, sizeof(*out));
    const char *p[1] = {slot};
    /* failover and synced exist from PostgreSQL 17 on. */
    PGresult *r = q(conn,
                    PQserverVersion(conn) >= 170000
                        ? "SELECT plugin, active, coalesce(active_pid, 0), coalesce(wal_status, ''),"
                          " coalesce(confirmed_flush_lsn::text, ''), coalesce(restart_lsn::text, ''),"
                          " database = current_database(), failover, synced"
                          " FROM pg_replication_slots WHERE slot_name = $1"
                        : "SELECT plugin, active, coalesce(active_pid, 0), coalesce(wal_status, ''),"
                          " coalesce(confirmed_flush_lsn::text, ''), coalesce(restart_lsn::text, ''),"
                          " database = current_database(), false, false"
                          " FROM pg_replication_slots WHERE slot_name = $1",
                    1, p, errstr, errstr_size);
    if (!r) return -1;
    if (PQntuples(r) == 1) {
        out->exists = 1;
        snprintf(out->plugin, sizeof(out->plugin), "%s", PQgetvalue(r, 0, 0));
        out->active = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
        out->active_pid = atoi(PQgetvalue(r, 0, 2));
        snprintf(out->wal_status, sizeof(out->wal_status), "%s", PQgetvalue(r, 0, 3));
        obx_lsn_parse(PQgetvalue(r, 0, 4), &out->confirmed_flush);
        obx_lsn_parse(PQgetvalue(r, 0, 5), &out->restart_lsn);
        out->failover = strcmp(PQgetvalue(r, 0, 7), "t") == 0;
        out->synced = strcmp(PQgetvalue(r, 0, 8), "t") == 0;
    }
    PQclear(r);
    return 0;
}

int obx_slot_failover_wanted(const obx_config_t *cfg, int server_version, char *errstr, size_t errstr_size)
{
    if (!strcmp(cfg->slot_failover, "off")) return 0;
    if (server_version >= 170000) return 1;
    if (!strcmp(cfg->slot_failover, "auto")) return 0;
    snprintf(errstr, errstr_size,
             "slot.failover = on, but PostgreSQL %d has no failover slots (they came with 17): set slot.failover = auto "
             "or off, and keep the slot across a failover another way (docs/operations.md, Failover: Patroni's "
             "permanent slots)",
             server_version);
    return -1;
}

/* An existing slot on 17+ without the failover flag (made by an older
 * outboxd or by hand) gets it: ALTER_REPLICATION_SLOT needs a replication
 * connection and an idle slot. Failing is a warning, doctor names it too. */
static void set_failover(const obx_config_t *cfg)
{
    obx_err_t e;
    PGconn *rc = obx_pg_connect(cfg->pg_conninfo, "pg.conninfo", OBX_PG_REPLICATION, &e);
    char *qslot = obx_pg_quote_ident(cfg->slot_name);
    char sql[256];
    int ok = rc && qslot;
    if (ok) {
        snprintf(sql, sizeof(sql), "ALTER_REPLICATION_SLOT %s ( FAILOVER true )", qslot);
        ok = obx_pg_command(rc, sql, &e) == 0;
    }
    if (ok)
        obx_info("slot_failover", "replication slot %s is now a failover slot (slot.failover)", cfg->slot_name);
    else
        obx_warn("slot_failover", "replication slot %s has failover = false and could not be changed (%s): a failover "
                 "to a standby loses it; run ALTER_REPLICATION_SLOT %s (FAILOVER true) on a replication connection "
                 "while outboxd is stopped, or set slot.failover = off",
                 cfg->slot_name, qslot ? e.msg : "out of memory", cfg->slot_name);
    free(qslot);
    if (rc) PQfinish(rc);
}

/* A slot decodes with the plugin it was made with: the other decoder's
 * output would be unreadable (exit 2, the fix named). */
static int wrong_plugin(const obx_config_t *cfg, const obx_slot_info_t *s, char *errstr, size_t errstr_size)
{
    const char *other = !strcmp(s->plugin, "pgoutput") || !strcmp(s->plugin, "wal2json") ? s->plugin : NULL;
    snprintf(errstr, errstr_size,
             "replication slot \"%s\" uses plugin \"%s\", but decoder = %s: %s%s%suse another slot.name, or drop the "
             "slot (outboxd slot drop) if nothing else uses it",
             cfg->slot_name, s->plugin, cfg->decoder, other ? "set decoder = " : "", other ? other : "",
             other ? " to keep using it, or " : "");
    return OBX_EXIT_CONFIG;
}

int obx_slot_ensure(PGconn *conn, const obx_config_t *cfg, obx_slot_info_t *out, char *errstr, size_t errstr_size)
{
    int failover = obx_slot_failover_wanted(cfg, PQserverVersion(conn), errstr, errstr_size);
    if (failover < 0) return OBX_EXIT_CONFIG;
    if (obx_slot_inspect(conn, cfg->slot_name, out, errstr, errstr_size) != 0) return OBX_EXIT_FAIL;
    if (out->exists && strcmp(out->plugin, cfg->decoder) != 0) return wrong_plugin(cfg, out, errstr, errstr_size);
    int pgo = !strcmp(cfg->decoder, "pgoutput");
    if (pgo && (out->exists || cfg->slot_create)) {
        /* Before the slot: pgoutput reads the publication as of each change. */
        int rc = obx_publication_ensure(conn, cfg, out->exists, errstr, errstr_size);
        if (rc) return rc;
    }
    if (!out->exists) {
        if (!cfg->slot_create) {
            snprintf(errstr, errstr_size,
                     "replication slot \"%s\" does not exist and slot.create = false: create it with "
                     "SELECT pg_create_logical_replication_slot('%s', '%s') or set slot.create = true",
                     cfg->slot_name, cfg->slot_name, cfg->decoder);
            return OBX_EXIT_SLOT;
        }
        const char *p[3] = {cfg->slot_name, cfg->decoder, failover ? "true" : "false"};
        obx_err_t e;
        /* The five-argument form (failover last) exists from 17 on. */
        PGresult *r = failover ? obx_pg_exec(conn,
                                             "SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2, false, "
                                             "false, $3::boolean)",
                                             3, p, &e)
                               : obx_pg_exec(conn, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)", 2,
                                             p, &e);
        if (!r) {
            /* Lost connection or server shutdown: try again later. */
            if (e.cls == OBX_ERR_RETRIABLE && !e.sqlstate[0]) {
                snprintf(errstr, errstr_size, "creating slot \"%s\": %s", cfg->slot_name, e.msg);
                return OBX_EXIT_FAIL;
            }
            /* Another process created it in between: use it. */
            if (!obx_err_is_sqlstate(&e, OBX_SQLSTATE_DUPLICATE_OBJECT)) {
                create_failed(cfg, &e, errstr, errstr_size);
                return OBX_EXIT_CONFIG;
            }
        } else {
            obx_info("slot_created", "created replication slot %s (%s%s) at %s", cfg->slot_name, cfg->decoder,
                     failover ? ", failover" : "", PQgetvalue(r, 0, 0));
            PQclear(r);
        }
        if (obx_slot_inspect(conn, cfg->slot_name, out, errstr, errstr_size) != 0) return OBX_EXIT_FAIL;
    }
    if (strcmp(out->plugin, cfg->decoder) != 0) return wrong_plugin(cfg, out, errstr, errstr_size);
    if (strcmp(out->wal_status, "lost") == 0) {
        snprintf(errstr, errstr_size,
                 "replication slot \"%s\" is invalidated (wal_status = lost, max_slot_wal_keep_size exceeded): "
                 "WAL after its confirmed position " OBX_LSN_FMT " is gone, so events committed since then cannot be "
                 "decoded. Recover: outboxd slot drop, restart outboxd (it creates a new slot), and re-emit current state with a snapshot",
                 cfg->slot_name, OBX_LSN_ARGS(out->confirmed_flush));
        return OBX_EXIT_SLOT;
    }
    /* A synced copy on a standby is the primary's to change. */
    if (failover && !out->failover && !out->synced) {
        set_failover(cfg);
        if (obx_slot_inspect(conn, cfg->slot_name, out, errstr, errstr_size) != 0) return OBX_EXIT_FAIL;
    }
    return 0;
}

int obx_slot_drop(PGconn *conn, const char *slot, char *errstr, size_t errstr_size)
{
    const char *p[1] = {slot};
    PGresult *r = q(conn, "SELECT pg_drop_replication_slot($1)", 1, p, errstr, errstr_size);
    if (!r) return -1;
    PQclear(r);
    return 0;
}

int obx_wal_end(PGconn *conn, obx_lsn_t *end, obx_err_t *err)
{
    *end = 0;
    PGresult *r = obx_pg_exec(conn,
                              "SELECT coalesce((CASE WHEN pg_is_in_recovery() THEN greatest(pg_last_wal_receive_lsn(),"
                              " pg_last_wal_replay_lsn()) ELSE pg_current_wal_insert_lsn() END)::text, '')",
                              0, NULL, err);
    if (!r) return -1;
    if (*PQgetvalue(r, 0, 0)) obx_lsn_parse(PQgetvalue(r, 0, 0), end);
    PQclear(r);
    return 0;
}

int obx_wal_mark(PGconn *conn, obx_wal_mark_t *m, obx_err_t *err)
{
    /* The position first, the running transactions after (their own
     * statement). Each holds the lock on its own id until it has ended for
     * every snapshot: also one waiting for a synchronous standby, whose
     * commit is already in the WAL (and which txid snapshots may place at or
     * above their xmax, so their lists miss it). */
    PGresult *r = obx_pg_exec(conn, "SELECT pg_current_wal_lsn()::text", 0, NULL, err);
    if (!r) return -1;
    int bad = obx_lsn_parse(PQgetvalue(r, 0, 0), &m->lsn) != 0;
    PQclear(r);
    if (bad) {
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "cannot read the WAL position");
        return -1;
    }
    r = obx_pg_exec(conn,
                    "SELECT coalesce(array_agg(transactionid)::text, '{}') FROM pg_locks"
                    " WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted",
                    0, NULL, err);
    if (!r) return -1;
    free(m->xids);
    m->xids = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!m->xids) {
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return -1;
    }
    return 0;
}

int obx_wal_mark_done(PGconn *conn, const obx_wal_mark_t *m, int *done, obx_err_t *err)
{
    if (!m->xids || !strcmp(m->xids, "{}")) {
        *done = 1;
        return 0;
    }
    const char *p[1] = {m->xids};
    PGresult *r = obx_pg_exec(conn,
                              "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'transactionid'"
                              " AND mode = 'ExclusiveLock' AND granted AND transactionid = ANY($1::xid[]))",
                              1, p, err);
    if (!r) return -1;
    *done = !strcmp(PQgetvalue(r, 0, 0), "t");
    PQclear(r);
    return 0;
}

void obx_wal_mark_clear(obx_wal_mark_t *m)
{
    free(m->xids);
    m->xids = NULL;
    m->lsn = 0;
}

int obx_outbox_relations(PGconn *conn, const obx_config_t *cfg, obx_relset_t *out, obx_err_t *err)
{
    char *qname = obx_pg_quote_qualified(cfg->outbox_schema, cfg->outbox_table);
    if (!qname) {
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return -1;
    }
    const char *p[1] = {qname};
    PGresult *r = obx_pg_exec(conn,
                              "SELECT n.nspname, c.relname FROM pg_partition_tree(to_regclass($1)) t"
                              " JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace"
                              " WHERE t.isleaf",
                              1, p, err);
    free(qname);
    if (!r) return -1;
    obx_relset_t *rs = obx_relset_new();
    /* The table itself always: a plain table has no partition tree. */
    int rc = rs && obx_relset_add(rs, cfg->outbox_schema, cfg->outbox_table) == 0 ? 0 : -1;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) rc = obx_relset_add(rs, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    PQclear(r);
    if (rc == 0) rc = obx_relset_assign(out, rs);
    obx_relset_destroy(rs);
    if (rc != 0) obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
    return rc;
}

int obx_pg_identity(PGconn *conn, obx_pg_info_t *info, obx_err_t *err)
{
    PGresult *r = obx_pg_exec(conn, "SELECT current_database(), (SELECT system_identifier::text FROM pg_control_system())",
                              0, NULL, err);
    if (!r) return -1;
    snprintf(info->database, sizeof(info->database), "%s", PQgetvalue(r, 0, 0));
    snprintf(info->sysid, sizeof(info->sysid), "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    return 0;
}
