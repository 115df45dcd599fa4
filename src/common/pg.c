#include "pg.h"
#include "config.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Server notices (e.g. "there is no transaction in progress") go through
 * the logger, in the process's one format, never raw to stderr. The level
 * comes from the non-localized severity, not the (translated) text. */
static void on_notice(void *arg, const PGresult *res)
{
    (void)arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
    msg[strcspn(msg, "\n")] = '\0';
    obx_log_level_t lvl = sev && !strcmp(sev, "WARNING") ? OBX_LOG_WARN
                          : sev && (!strcmp(sev, "DEBUG") || !strcmp(sev, "LOG")) ? OBX_LOG_DEBUG : OBX_LOG_INFO;
    if (obx_log_enabled(lvl)) obx_log(lvl, "pg_notice", "%s", msg);
}

PGconn *obx_pg_connect(const char *conninfo, const char *key, obx_pg_mode_t mode, obx_err_t *err)
{
    /* dbname=<conninfo> with expand_dbname lets conninfo override every
     * default here; the defaults keep a dead server from hanging us. */
    const char *keys[] = {"connect_timeout", "keepalives_idle", "keepalives_interval", "keepalives_count",
                          "tcp_user_timeout", "fallback_application_name", "dbname",
                          mode == OBX_PG_REPLICATION ? "replication" : NULL, NULL};
    const char *vals[] = {"10", "10", "5", "3", "30000", "outboxd", conninfo ? conninfo : "", "database", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        /* libpq quotes a URI it cannot parse whole, password included:
         * nothing of conninfo's secrets leaves this function. */
        char msg[sizeof(err->msg)];
        snprintf(msg, sizeof(msg), "%s", c ? PQerrorMessage(c) : "out of memory");
        obx_conninfo_scrub(conninfo, msg, sizeof(msg));
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, OBX_EXIT_FAIL, "cannot connect to PostgreSQL (%s): %s", key ? key : "conninfo",
                    msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeReceiver(c, on_notice, NULL);
    return c;
}

obx_err_class_t obx_pg_classify(const char *st, int connection_ok, int *exit_code)
{
    *exit_code = OBX_EXIT_FAIL;
    if (!st || !*st || !connection_ok) return OBX_ERR_RETRIABLE;
    if (!strncmp(st, "22", 2) || !strncmp(st, "23", 2) || !strcmp(st, "21000") || !strcmp(st, "54000")) {
        *exit_code = OBX_EXIT_POISON;
        return OBX_ERR_POISON;
    }
    if (!strncmp(st, "28", 2) || !strncmp(st, "3D", 2) || !strncmp(st, "3F", 2) || !strncmp(st, "42", 2) ||
        !strncmp(st, "0A", 2)) {
        *exit_code = OBX_EXIT_CONFIG;
        return OBX_ERR_FATAL;
    }
    return OBX_ERR_RETRIABLE;
}

void obx_pg_error(obx_err_t *err, PGconn *c, const PGresult *r)
{
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r && *PQresultErrorMessage(r) ? PQresultErrorMessage(r) : c ? PQerrorMessage(c) : "no connection";
    int code;
    obx_err_clear(err);
    obx_err_class_t cls = obx_pg_classify(st, c && PQstatus(c) == CONNECTION_OK, &code);
    obx_err_set(err, cls, code, "%s", msg);
    if (st) snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", st);
}

PGresult *obx_pg_exec(PGconn *c, const char *sql, int nparams, const char *const *params, obx_err_t *err)
{
    PGresult *r = nparams ? PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK) return r;
    obx_pg_error(err, c, r);
    PQclear(r);
    return NULL;
}

int obx_pg_command(PGconn *c, const char *sql, obx_err_t *err)
{
    PGresult *r = obx_pg_exec(c, sql, 0, NULL, err);
    if (!r) return -1;
    PQclear(r);
    return 0;
}

char *obx_pg_quote_ident(const char *name)
{
    size_t n = 2;
    for (const char *p = name; *p; p++) n += *p == '"' ? 2 : 1;
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    *o++ = '"';
    for (const char *p = name; *p; p++) {
        if (*p == '"') *o++ = '"';
        *o++ = *p;
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

char *obx_pg_quote_qualified(const char *schema, const char *table)
{
    char *s = obx_pg_quote_ident(schema), *t = obx_pg_quote_ident(table), *out = NULL;
    if (s && t && (out = malloc(strlen(s) + strlen(t) + 2))) sprintf(out, "%s.%s", s, t);
    free(s);
    free(t);
    return out;
}
