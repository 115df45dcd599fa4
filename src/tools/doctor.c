/* outboxd doctor: one PostgreSQL connection and one admin librdkafka
 * client, each owned by obx_doctor_run() / check_kafka() for the run. */
#include "doctor.h"

#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "doctor_failover.h"
#include "kconf.h"
#include "lsn.h"
#include "pg.h"
#include "preflight.h"
#include "publication.h"
#include "relset.h"

typedef struct {
    FILE *out;
    int failed, warned;
} doc_t;

static void report(doc_t *d, int ok, int warn_only, const char *what, const char *fix)
{
    const char *tag = ok ? "PASS" : warn_only ? "WARN" : "FAIL";
    fprintf(d->out, "%s  %s\n", tag, what);
    if (!ok && fix && *fix) fprintf(d->out, "      fix: %s\n", fix);
    if (!ok && !warn_only) d->failed++;
    if (!ok && warn_only) d->warned++;
}

static PGresult *q1(PGconn *c, const char *sql, int n, const char *const *p)
{
    obx_err_t err;
    return obx_pg_exec(c, sql, n, p, &err);
}

/* wal_level, slot and sender headroom, REPLICATION, the plugin allow-list
 * (where the GUC exists) and the WAL a stuck slot may keep. */
static int check_settings(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    char what[1024], fix[1024];
    obx_err_t err;
    PGresult *r = obx_pg_exec(c,
                              "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
                              " (SELECT count(*) FROM pg_replication_slots)::int, current_setting('max_wal_senders')::int,"
                              " (SELECT count(*) FROM pg_stat_replication)::int,"
                              " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), current_user,"
                              " (SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'),"
                              " current_setting('max_slot_wal_keep_size'), current_setting('wal_sender_timeout')",
                              0, NULL, &err);
    if (!r) {
        report(d, 0, 0, "read server settings", err.msg);
        return -1;
    }
    const char *wal_level = PQgetvalue(r, 0, 0);
    snprintf(what, sizeof(what), "wal_level = %s", wal_level);
    report(d, !strcmp(wal_level, "logical"), 0, what, "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL");
    int max_slots = atoi(PQgetvalue(r, 0, 1)), used = atoi(PQgetvalue(r, 0, 2));
    snprintf(what, sizeof(what), "replication slots: %d of max_replication_slots = %d in use", used, max_slots);
    report(d, used < max_slots, 0, what, "raise max_replication_slots (restart) or drop unused slots");
    int max_snd = atoi(PQgetvalue(r, 0, 3)), snd = atoi(PQgetvalue(r, 0, 4));
    snprintf(what, sizeof(what), "WAL senders: %d of max_wal_senders = %d in use", snd, max_snd);
    report(d, snd < max_snd, 0, what, "raise max_wal_senders (restart)");
    snprintf(what, sizeof(what), "role %s has REPLICATION", PQgetvalue(r, 0, 6));
    char *role = obx_pg_quote_ident(PQgetvalue(r, 0, 6));
    snprintf(fix, sizeof(fix), "ALTER ROLE %s REPLICATION;", role ? role : "\"?\"");
    free(role);
    report(d, !strcmp(PQgetvalue(r, 0, 5), "t"), 0, what, fix);
    if (!PQgetisnull(r, 0, 7)) {
        snprintf(what, sizeof(what), "output_plugin_libraries = '%s' allows %s", PQgetvalue(r, 0, 7), cfg->decoder);
        report(d, strstr(PQgetvalue(r, 0, 7), cfg->decoder) != NULL, 0, what,
               "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json; SELECT pg_reload_conf(); (unquoted list)");
    }
    const char *keep = PQgetvalue(r, 0, 8);
    snprintf(what, sizeof(what), "max_slot_wal_keep_size = %s%s", keep,
             !strcmp(keep, "-1") ? " (unlimited: a stuck slot can fill the disk)" : " (a slot further behind is invalidated: exit 4)");
    report(d, strcmp(keep, "-1") != 0, 1, what,
           "set max_slot_wal_keep_size to what the disk can hold, and alert on outboxd_slot_retained_wal_bytes");
    PQclear(r);
    return 0;
}

/* Proves the plugin is installed and allowed for this role. */
static void check_plugin(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    char tmp[64], what[1400];
    obx_err_t err;
    snprintf(tmp, sizeof(tmp), "outboxd_doctor_%d", (int)getpid());
    const char *p2[2] = {tmp, cfg->decoder}, *p1[1] = {tmp};
    PGresult *t = obx_pg_exec(c, "SELECT 1 FROM pg_create_logical_replication_slot($1, $2, true)", 2, p2, &err);
    snprintf(what, sizeof(what), "%s is installed and usable (temporary slot)%s%s", cfg->decoder, t ? "" : ": ",
             t ? "" : err.msg);
    report(d, t != NULL, 0, what,
           !strcmp(cfg->decoder, "wal2json") ? "install postgresql-<version>-wal2json and allow it (see above)"
                                             : "allow pgoutput (see above)");
    if (t) PQclear(q1(c, "SELECT pg_drop_replication_slot($1)", 1, p1));
    PQclear(t);
}

/* decoder = pgoutput: the publication outboxd streams (publication.h). */
static void check_publication(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    char what[2048], err[1536];
    int exists = 0;
    int rc = obx_publication_check(c, cfg, &exists, err, sizeof(err));
    if (rc == OBX_EXIT_FAIL) {
        report(d, 0, 0, "read pg_publication", err);
        return;
    }
    if (!exists) {
        snprintf(what, sizeof(what), "publication %s does not exist%s", obx_config_publication(cfg),
                 cfg->slot_create ? " (outboxd run creates it before the slot)" : "");
        report(d, cfg->slot_create, 1, what, "outboxd slot create (creates publication and slot)");
        return;
    }
    snprintf(what, sizeof(what), "publication %s publishes inserts of the outbox and signal table only, via the "
             "partition root", obx_config_publication(cfg));
    report(d, rc == 0, 0, what, rc ? err : NULL);
}

static void check_slot(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    char what[1024], err[512];
    obx_slot_info_t s;
    if (obx_slot_inspect(c, cfg->slot_name, &s, err, sizeof(err)) != 0) {
        report(d, 0, 0, "read pg_replication_slots", err);
        return;
    }
    if (!s.exists) {
        snprintf(what, sizeof(what), "slot %s does not exist%s", cfg->slot_name,
                 cfg->slot_create ? " (outboxd run creates it; events before that are not captured)" : "");
        /* With slot.create = false, run stops on it with exit 4. */
        report(d, cfg->slot_create, 0, what, "outboxd slot create (or set slot.create = true)");
        return;
    }
    snprintf(what, sizeof(what), "slot %s uses plugin %s", cfg->slot_name, s.plugin);
    report(d, !strcmp(s.plugin, cfg->decoder), 0, what,
           "set decoder to the slot's plugin, use another slot.name, or drop this slot if nothing uses it");
    snprintf(what, sizeof(what), "slot %s wal_status = %s", cfg->slot_name, *s.wal_status ? s.wal_status : "(none)");
    report(d, strcmp(s.wal_status, "lost") != 0 && strcmp(s.wal_status, "unreserved") != 0,
           strcmp(s.wal_status, "unreserved") == 0, what,
           "lost: outboxd slot drop, restart outboxd, re-emit state with a snapshot; unreserved: start outboxd now");
    snprintf(what, sizeof(what), "slot %s is %s", cfg->slot_name,
             s.active ? "active (another outboxd streams it; a new one stands by)" : "inactive");
    report(d, 1, 0, what, NULL);
    PGresult *rw = q1(c, "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)),"
                         " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) < 1073741824"
                         " FROM pg_replication_slots WHERE slot_name = $1", 1, (const char *const[]){cfg->slot_name});
    if (rw && PQntuples(rw) == 1) {
        snprintf(what, sizeof(what), "slot %s retains %s of WAL", cfg->slot_name, PQgetvalue(rw, 0, 0));
        report(d, !strcmp(PQgetvalue(rw, 0, 1), "t"), 1, what,
               "start outboxd (it confirms as Kafka acks, and heartbeats keep an idle slot moving)");
    }
    PQclear(rw);
}

static void check_outbox(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    char what[1024], err[512];
    obx_pg_info_t info;
    memset(&info, 0, sizeof(info));
    int prc = obx_preflight_outbox(c, cfg, &info, err, sizeof(err));
    snprintf(what, sizeof(what), "outbox table %s.%s with columns %s, %s, %s, %s, %s", cfg->outbox_schema,
             cfg->outbox_table, cfg->col_id, cfg->col_aggregatetype, cfg->col_aggregateid, cfg->col_type, cfg->col_payload);
    report(d, prc == 0, 0, what, prc ? err : NULL);
    if (prc != 0) return;
    snprintf(what, sizeof(what), "optional columns: version %s, topic %s, headers %s, occurred_at %s",
             info.has_version_col ? "yes" : "no", info.has_topic_col ? "yes" : "no",
             info.has_headers_col ? "yes" : "no", info.has_occurred_at_col ? "yes" : "no");
    report(d, info.has_version_col, 1, what, "add aggregate_version bigint so consumers can drop stale events");
    /* Logical decoding names leaf partitions: the relay reads them all. */
    obx_relset_t *rs = obx_relset_new();
    obx_err_t e;
    if (rs && obx_outbox_relations(c, cfg, rs, &e) == 0) {
        size_t n = obx_relset_count(rs) - 1;
        if (n) snprintf(what, sizeof(what), "partitioned outbox: %zu leaf partitions, each relayed as %s.%s (new ones "
                        "are picked up while running)", n, cfg->outbox_schema, cfg->outbox_table);
        else snprintf(what, sizeof(what), "outbox is a plain table (not partitioned)");
        report(d, 1, 0, what, NULL);
    } else {
        report(d, 0, 1, "outbox partitions", rs ? e.msg : "out of memory");
    }
    obx_relset_destroy(rs);
}

/* Whoever may INSERT into the signal table starts snapshots as outboxd's
 * role: only its owner (and superusers, who may do anything) should. */
static void check_signals(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    if (!*cfg->signal_table) return;
    char what[1400], fix[1400];
    char *qt = obx_pg_quote_qualified(cfg->outbox_schema, cfg->signal_table);
    obx_err_t err;
    const char *p[1] = {qt};
    PGresult *r = qt ? obx_pg_exec(c,
                                   "SELECT t.relowner::regrole::text, (SELECT string_agg(quote_ident(r.rolname), ', '"
                                   " ORDER BY r.rolname) FROM pg_roles r WHERE r.oid <> t.relowner AND NOT r.rolsuper"
                                   " AND r.rolname !~ '^pg_' AND has_table_privilege(r.oid, t.oid, 'INSERT'))"
                                   " FROM pg_class t WHERE t.oid = to_regclass($1)", 1, p, &err)
                     : NULL;
    if (!r) {
        report(d, 0, 1, "signal table privileges", qt ? err.msg : "out of memory");
    } else if (PQntuples(r) == 0) {
        snprintf(what, sizeof(what), "signal table %s does not exist: signals are off", qt);
        report(d, 1, 0, what, NULL);
    } else if (PQgetisnull(r, 0, 1)) {
        snprintf(what, sizeof(what), "signal table %s: only its owner %s (and superusers) may INSERT", qt,
                 PQgetvalue(r, 0, 0));
        report(d, 1, 0, what, NULL);
    } else {
        snprintf(what, sizeof(what), "signal table %s: roles other than its owner %s may INSERT (%s); a signal "
                 "starts a snapshot of the tables in snapshot.table and signal.allowed_tables as outboxd's role", qt,
                 PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
        snprintf(fix, sizeof(fix), "REVOKE INSERT ON %s FROM %s; (and check role memberships: a member of the owner "
                 "role may INSERT too)", qt, PQgetvalue(r, 0, 1));
        report(d, 0, 1, what, fix);
    }
    PQclear(r);
    free(qt);
}

/* outbox_emit() reads its prefix from the PostgreSQL setting
 * outboxd.message_prefix; wal2json drops messages with any other prefix
 * before outboxd sees them, so a mismatch loses events without a trace.
 * Warn only: another outboxd may read that prefix on purpose. */
static void check_message_prefix(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    char what[1400], fix[1400];
    obx_err_t err;
    const char *p[1] = {cfg->outbox_message_prefix};
    PGresult *r = obx_pg_exec(c,
                              "SELECT coalesce('role ' || quote_ident(r.rolname), 'every role') || ' in ' ||"
                              " coalesce('database ' || quote_ident(d.datname), 'every database'), v"
                              " FROM pg_db_role_setting x LEFT JOIN pg_roles r ON r.oid = x.setrole"
                              " LEFT JOIN pg_database d ON d.oid = x.setdatabase,"
                              " unnest(x.setconfig) s, substr(s, 24) v"
                              " WHERE x.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))"
                              " AND s LIKE 'outboxd.message\\_prefix=%' AND coalesce(nullif(v, ''), 'outboxd.event') <> $1"
                              " UNION ALL SELECT 'the server configuration', setting FROM pg_settings"
                              " WHERE name = 'outboxd.message_prefix' AND source = 'configuration file'"
                              " AND coalesce(nullif(setting, ''), 'outboxd.event') <> $1 ORDER BY 1",
                              1, p, &err);
    if (!r) {
        report(d, 0, 1, "outbox_emit() prefix settings", err.msg);
        return;
    }
    if (PQntuples(r) == 0) {
        snprintf(what, sizeof(what), "no database or role setting outboxd.message_prefix differs from "
                 "outbox.message_prefix = %.300s (outbox_emit() events reach this relay)", cfg->outbox_message_prefix);
        report(d, 1, 0, what, NULL);
    }
    for (int i = 0; i < PQntuples(r); i++) {
        snprintf(what, sizeof(what), "outboxd.message_prefix = '%.300s' for %.300s, but outbox.message_prefix = %.300s: "
                 "its outbox_emit() events are skipped by this relay", PQgetvalue(r, i, 1), PQgetvalue(r, i, 0),
                 cfg->outbox_message_prefix);
        snprintf(fix, sizeof(fix), "set the same prefix on both sides (ALTER DATABASE/ROLE ... SET "
                 "outboxd.message_prefix, or outbox.message_prefix), unless another outboxd reads '%.300s'",
                 PQgetvalue(r, i, 1));
        report(d, 0, 1, what, fix);
    }
    PQclear(r);
}

static void report_cb(void *d, int ok, int warn_only, const char *what, const char *fix)
{
    report(d, ok, warn_only, what, fix);
}

/* The sslmode libpq actually used (keyword, else PGSSLMODE, else prefer).
 * A keyword in pg.conninfo silently beats a stronger PGSSLMODE (the
 * Kubernetes pg-verify-full component sets the variable): name that. */
static void check_pg_tls(doc_t *d, PGconn *c)
{
    const char *host = PQhost(c);
    if (host && host[0] == '/') return; /* a Unix socket: no TLS to check */
    char mode[32] = "prefer", what[512], fix[512];
    PQconninfoOption *o = PQconninfo(c);
    for (PQconninfoOption *i = o; i && i->keyword; i++)
        if (!strcmp(i->keyword, "sslmode") && i->val) snprintf(mode, sizeof(mode), "%s", i->val);
    PQconninfoFree(o);
    const char *env = getenv("PGSSLMODE");
    int ok = !strcmp(mode, "verify-full");
    snprintf(what, sizeof(what), "PostgreSQL connection: sslmode=%s, %s%s%s%s", mode,
             PQsslInUse(c) ? "TLS" : "no TLS", ok ? "" : " (not verify-full: a server whose certificate names another host is accepted)",
             env && strcmp(env, mode) ? "; pg.conninfo's sslmode overrides PGSSLMODE=" : "",
             env && strcmp(env, mode) ? env : "");
    snprintf(fix, sizeof(fix), "use sslmode=verify-full with sslrootcert=<the server's CA>%s",
             env && strcmp(env, mode) ? " (or remove sslmode from pg.conninfo so PGSSLMODE applies)" : "");
    report(d, ok, 1, what, fix);
}

static void check_pg(doc_t *d, const obx_config_t *cfg, PGconn *c)
{
    char what[64];
    int ver = PQserverVersion(c);
    snprintf(what, sizeof(what), "server version %d.%d", ver / 10000, ver % 10000);
    /* 13: pg_replication_slots.wal_status/safe_wal_size and max_slot_wal_keep_size. */
    report(d, ver >= 130000, 0, what, "upgrade PostgreSQL to 13 or newer (outboxd reads wal_status and "
           "max_slot_wal_keep_size, new in 13)");
    if (ver < 130000) return;
    if (check_settings(d, cfg, c) != 0) return;
    check_plugin(d, cfg, c);
    if (!strcmp(cfg->decoder, "pgoutput")) check_publication(d, cfg, c);
    check_slot(d, cfg, c);
    check_outbox(d, cfg, c);
    check_signals(d, cfg, c);
    obx_doctor_failover(cfg, c, report_cb, d);
    check_message_prefix(d, cfg, c);
}

/* Does the broker create topics on first write? 1, 0, or -1 unknown. */
static int broker_autocreate(rd_kafka_t *rk, int32_t broker)
{
    int autocreate = -1;
    char bid[16];
    snprintf(bid, sizeof(bid), "%d", (int)broker);
    rd_kafka_ConfigResource_t *res = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_BROKER, bid);
    rd_kafka_queue_t *qu = rd_kafka_queue_new(rk);
    rd_kafka_DescribeConfigs(rk, &res, 1, NULL, qu);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(qu, 5000);
    if (ev && !rd_kafka_event_error(ev)) {
        size_t nres;
        const rd_kafka_ConfigResource_t **rs =
            rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &nres);
        for (size_t i = 0; i < nres; i++) {
            size_t nc;
            const rd_kafka_ConfigEntry_t **ce = rd_kafka_ConfigResource_configs(rs[i], &nc);
            for (size_t j = 0; j < nc; j++)
                if (!strcmp(rd_kafka_ConfigEntry_name(ce[j]), "auto.create.topics.enable"))
                    autocreate = rd_kafka_ConfigEntry_value(ce[j]) && !strcmp(rd_kafka_ConfigEntry_value(ce[j]), "true");
        }
    }
    if (ev) rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(qu);
    rd_kafka_ConfigResource_destroy(res);
    return autocreate;
}

/* Topics under the template's fixed prefix, the dead-letter topic, and
 * whether missing ones would be created. */
static void check_topics(doc_t *d, const obx_config_t *cfg, rd_kafka_t *rk, const struct rd_kafka_metadata *md)
{
    char what[1024], prefix[256];
    snprintf(prefix, sizeof(prefix), "%s", cfg->topic_template);
    char *var = strstr(prefix, "${");
    if (var) *var = '\0';
    int n = 0, dlq = 0;
    for (int i = 0; i < md->topic_cnt; i++) {
        if (!strncmp(md->topics[i].topic, prefix, strlen(prefix))) {
            if (n < 10) fprintf(d->out, "      topic %s: %d partition(s)\n", md->topics[i].topic, md->topics[i].partition_cnt);
            n++;
        }
        if (!strcmp(md->topics[i].topic, cfg->dlq_topic)) dlq = 1;
    }
    int autocreate = broker_autocreate(rk, md->broker_cnt ? md->brokers[0].id : -1);
    snprintf(what, sizeof(what), "%d topic(s) match %s*; broker auto.create.topics.enable = %s", n, prefix,
             autocreate < 0 ? "unknown" : autocreate ? "true" : "false");
    report(d, n > 0 || autocreate == 1, 0, what,
           "create the topics for each aggregate type (with the partition count you will keep: it is part of the key rule) or enable auto.create.topics.enable");
    if (!strcmp(cfg->poison_policy, "dead-letter")) {
        /* Listed from metadata (never auto-created by asking); auto-creation
         * would give it the broker's default partitions and retention. */
        snprintf(what, sizeof(what), "dead-letter topic %s exists", cfg->dlq_topic);
        report(d, dlq, 0, what, "create it with the retention you need to inspect poison rows "
               "(kafka-topics.sh --create --topic <poison.dlq_topic>)");
    }
}

static void check_kafka(doc_t *d, const obx_config_t *cfg)
{
    char kerr[512], what[1024];
    obx_err_t err;
    rd_kafka_conf_t *conf = obx_kconf_new(cfg, OBX_KCONF_ADMIN, &err);
    rd_kafka_t *rk = conf ? rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr)) : NULL;
    if (!rk) {
        if (conf) rd_kafka_conf_destroy(conf);
        report(d, 0, 0, "Kafka client", conf ? kerr : err.msg);
        return;
    }
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, 5000);
    snprintf(what, sizeof(what), "Kafka %s reachable%s%s", obx_config_kafka_get(cfg, "bootstrap.servers"),
             e ? ": " : "", e ? rd_kafka_err2str(e) : "");
    obx_err_t sec;
    obx_kconf_serve_errors(rk);
    /* A TLS or SASL refusal names its own fix (the kafka.* keys to check). */
    if (e && obx_kconf_security_failed(1, &sec)) report(d, 0, 0, what, sec.msg);
    else report(d, !e, 0, what, "check kafka.bootstrap.servers, network policy and kafka.security.* settings");
    if (!e) {
        snprintf(what, sizeof(what), "%d broker(s), %d topic(s) visible", md->broker_cnt, md->topic_cnt);
        report(d, md->broker_cnt > 0, 0, what, NULL);
        check_topics(d, cfg, rk, md);
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_destroy(rk);
}

int obx_doctor_run(const obx_config_t *cfg, FILE *out)
{
    doc_t d = {.out = out};
    char red[1024], cerr[1024], cwhat[1200];
    obx_err_t err;
    /* The same checks as `outboxd run` at start (exit 2 there). */
    int valid = obx_config_validate(cfg, cerr, sizeof(cerr)) == 0;
    snprintf(cwhat, sizeof(cwhat), "configuration is valid%s%s", valid ? "" : ": ", valid ? "" : cerr);
    report(&d, valid, 0, cwhat, "fix the key named above (outboxd run would exit 2)");
    obx_conninfo_redact(cfg->pg_conninfo, red, sizeof(red));
    PGconn *c = obx_pg_connect(cfg->pg_conninfo, "pg.conninfo", OBX_PG_NORMAL, &err);
    char what[2200];
    snprintf(what, sizeof(what), "connect to PostgreSQL (%s)%s%s", red, c ? "" : ": ", c ? "" : err.msg);
    report(&d, c != NULL, 0, what, "check pg.conninfo, pg_hba.conf and the password");
    if (c) {
        check_pg_tls(&d, c);
        check_pg(&d, cfg, c);
        PQfinish(c);
    }
    check_kafka(&d, cfg);
    fprintf(out, "\n%s: %d failed, %d warning(s)\n", d.failed ? "NOT READY" : "READY", d.failed, d.warned);
    return d.failed ? 1 : 0;
}
