/* The pgoutput publication (publication.h). */
#include "publication.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "log.h"
#include "pg.h"
#include "preflight.h"

/* The quoted names: publication, outbox, signal table ("" when it is not
 * configured or does not exist). */
typedef struct {
    char *pub, *outbox, *signal;
} names_t;

static void names_free(names_t *n)
{
    free(n->pub);
    free(n->outbox);
    free(n->signal);
}

static int names_get(const obx_config_t *cfg, int signal_exists, names_t *n)
{
    memset(n, 0, sizeof(*n));
    n->pub = obx_pg_quote_ident(obx_config_publication(cfg));
    n->outbox = obx_pg_quote_qualified(cfg->outbox_schema, cfg->outbox_table);
    n->signal = signal_exists ? obx_pg_quote_qualified(cfg->outbox_schema, cfg->signal_table) : strdup("");
    if (n->pub && n->outbox && n->signal) return 0;
    names_free(n);
    return -1;
}

/* "outbox[, signal]" for FOR TABLE / SET TABLE. */
static void table_list(const names_t *n, char *out, size_t size)
{
    snprintf(out, size, "%s%s%s", n->outbox, *n->signal ? ", " : "", n->signal);
}

/* Reads the publication against what it must be. 0 with *exists and, when
 * it differs, *bad = 1 and errstr; OBX_EXIT_FAIL when the query failed. */
static int inspect(PGconn *conn, const obx_config_t *cfg, int *exists, int *signal_exists, int *bad, char *errstr,
                   size_t errstr_size)
{
    char *qo = obx_pg_quote_qualified(cfg->outbox_schema, cfg->outbox_table);
    char *qs = *cfg->signal_table ? obx_pg_quote_qualified(cfg->outbox_schema, cfg->signal_table) : NULL;
    if (!qo || (*cfg->signal_table && !qs)) {
        free(qo);
        free(qs);
        snprintf(errstr, errstr_size, "out of memory");
        return OBX_EXIT_FAIL;
    }
    int v15 = PQserverVersion(conn) >= 150000;
    char sql[1600];
    /* Schemas (FOR TABLES IN SCHEMA), row filters and column lists: PG 15+. */
    snprintf(sql, sizeof(sql),
             "WITH want AS (SELECT x FROM unnest(ARRAY[to_regclass($2), to_regclass($3)]) x WHERE x IS NOT NULL)"
             " SELECT to_regclass($3) IS NOT NULL, p.oid IS NOT NULL, p.pubinsert,"
             " p.pubupdate OR p.pubdelete OR p.pubtruncate, p.pubviaroot, p.puballtables,"
             " (SELECT count(*) FROM want WHERE x NOT IN (SELECT prrelid FROM pg_publication_rel WHERE prpubid = p.oid)),"
             " (SELECT count(*) FROM pg_publication_rel WHERE prpubid = p.oid AND prrelid NOT IN (SELECT x FROM want))%s"
             " FROM (SELECT 1) one LEFT JOIN pg_publication p ON p.pubname = $1",
             v15 ? " + (SELECT count(*) FROM pg_publication_namespace WHERE pnpubid = p.oid),"
                   " (SELECT count(*) FROM pg_publication_rel WHERE prpubid = p.oid AND"
                   " (prqual IS NOT NULL OR prattrs IS NOT NULL))"
                 : ", 0");
    const char *params[3] = {obx_config_publication(cfg), qo, qs};
    obx_err_t e;
    PGresult *r = obx_pg_exec(conn, sql, 3, params, &e);
    free(qo);
    free(qs);
    if (!r) {
        snprintf(errstr, errstr_size, "reading publication \"%s\": %s", obx_config_publication(cfg), e.msg);
        return OBX_EXIT_FAIL;
    }
#define T(col) (!strcmp(PQgetvalue(r, 0, col), "t"))
    *signal_exists = T(0);
    *exists = T(1);
    *bad = 0;
    if (*exists) {
        const char *why = !T(2) ? "does not publish inserts"
                        : T(3) ? "publishes updates, deletes or truncates too"
                        : !T(4) ? "has publish_via_partition_root = false"
                        : T(5) ? "is FOR ALL TABLES"
                        : atoi(PQgetvalue(r, 0, 6)) ? "lacks the outbox or the signal table"
                        : atoi(PQgetvalue(r, 0, 7)) ? "publishes other tables or schemas"
                        : atoi(PQgetvalue(r, 0, 8)) ? "has a row filter or column list"
                                                    : NULL;
        if (why) {
            *bad = 1;
            snprintf(errstr, errstr_size, "%s", why);
        }
    }
#undef T
    PQclear(r);
    return 0;
}

static int refuse(const obx_config_t *cfg, const names_t *n, const char *why, char *errstr, size_t errstr_size)
{
    char tables[600], w[256];
    table_list(n, tables, sizeof(tables));
    snprintf(w, sizeof(w), "%s", why);
    snprintf(errstr, errstr_size,
             "publication \"%s\" %s, so decoder = pgoutput would stream other changes than the outbox's or miss some "
             "of its rows: make it outboxd's with ALTER PUBLICATION %s SET TABLE %s; ALTER PUBLICATION %s SET "
             "(publish = 'insert', publish_via_partition_root = true); (a FOR ALL TABLES one: DROP PUBLICATION %s, outboxd creates it), "
             "or set publication.name to another name",
             obx_config_publication(cfg), w, n->pub, tables, n->pub, n->pub);
    return OBX_EXIT_CONFIG;
}

int obx_publication_check(PGconn *conn, const obx_config_t *cfg, int *exists, char *errstr, size_t errstr_size)
{
    int sig = 0, bad = 0;
    int rc = inspect(conn, cfg, exists, &sig, &bad, errstr, errstr_size);
    if (rc || !bad) return rc;
    names_t n;
    if (names_get(cfg, sig, &n) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        return OBX_EXIT_FAIL;
    }
    char why[256];
    snprintf(why, sizeof(why), "%s", errstr);
    rc = refuse(cfg, &n, why, errstr, errstr_size);
    names_free(&n);
    return rc;
}

int obx_publication_ensure(PGconn *conn, const obx_config_t *cfg, int slot_exists, char *errstr, size_t errstr_size)
{
    int exists = 0, sig = 0, bad = 0;
    int rc = inspect(conn, cfg, &exists, &sig, &bad, errstr, errstr_size);
    if (rc) return rc;
    names_t n;
    if (names_get(cfg, sig, &n) != 0) {
        snprintf(errstr, errstr_size, "out of memory");
        return OBX_EXIT_FAIL;
    }
    char tables[600], sql[1024];
    table_list(&n, tables, sizeof(tables));
    if (exists && bad) {
        char why[256];
        snprintf(why, sizeof(why), "%s", errstr);
        rc = refuse(cfg, &n, why, errstr, errstr_size);
    } else if (!exists && slot_exists) {
        snprintf(errstr, errstr_size,
                 "publication \"%s\" does not exist but slot \"%s\" does: pgoutput cannot decode the slot's changes "
                 "from before a publication created now. Recover: outboxd slot drop, restart outboxd (it creates the "
                 "publication, then a new slot), and re-emit current state with a snapshot; or create it by hand "
                 "(CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert', publish_via_partition_root = true)) "
                 "and accept that changes before it stop the stream",
                 obx_config_publication(cfg), cfg->slot_name, n.pub, tables);
        rc = OBX_EXIT_CONFIG;
    } else if (!exists) {
        snprintf(sql, sizeof(sql),
                 "CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert', publish_via_partition_root = true)",
                 n.pub, tables);
        obx_err_t e;
        if (obx_pg_command(conn, sql, &e) == 0) {
            obx_info("publication_created", "created publication %s for %s (inserts only, via partition root)", n.pub,
                     tables);
        } else if (!obx_err_is_sqlstate(&e, OBX_SQLSTATE_DUPLICATE_OBJECT)) {
            /* Another process created it in between: checked next start. */
            snprintf(errstr, errstr_size,
                     "creating publication \"%s\": %s. The role needs CREATE on the database and ownership of (or "
                     "membership in the owner of) the tables; or create it as their owner: %s",
                     obx_config_publication(cfg), e.msg, sql);
            rc = e.cls == OBX_ERR_RETRIABLE ? OBX_EXIT_FAIL : OBX_EXIT_CONFIG;
        }
    }
    names_free(&n);
    return rc;
}

int obx_publication_type_name(PGconn *conn, uint32_t oid, char *name, size_t name_size, obx_err_t *err)
{
    char o[16];
    snprintf(o, sizeof(o), "%u", oid);
    const char *p[1] = {o};
    PGresult *r = conn ? obx_pg_exec(conn, "SELECT format_type(oid, NULL) FROM pg_type WHERE oid = $1::oid", 1, p, err)
                       : NULL;
    if (!r) {
        if (!conn) {
            obx_err_clear(err);
            obx_err_set(err, OBX_ERR_RETRIABLE, 0, "no connection");
        }
        obx_err_prefix(err, "naming type OID %u of a pgoutput column", oid);
        err->cls = OBX_ERR_RETRIABLE; /* the next session asks again */
        return -1;
    }
    int found = PQntuples(r) == 1;
    if (found) snprintf(name, name_size, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return found ? 0 : 1;
}

int obx_publication_identity(PGconn *conn, const char *name, char *out, size_t out_size, obx_err_t *err)
{
    /* Row versions, not contents: a table dropped from the publication and
     * added back, or an option changed and changed back, leaves a new xmin
     * or oid even though the publication reads the same again. */
    int v15 = PQserverVersion(conn) >= 150000;
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "SELECT md5(p.oid || '/' || p.xmin || ':' || coalesce((SELECT string_agg(r.oid || '/' || r.xmin || '/' || "
             "r.prrelid, ',' ORDER BY r.oid) FROM pg_publication_rel r WHERE r.prpubid = p.oid), '')%s)"
             " FROM pg_publication p WHERE p.pubname = $1",
             v15 ? " || ':' || coalesce((SELECT string_agg(n.oid || '/' || n.xmin, ',' ORDER BY n.oid)"
                   " FROM pg_publication_namespace n WHERE n.pnpubid = p.oid), '')"
                 : "");
    const char *params[1] = {name};
    PGresult *r = obx_pg_exec(conn, sql, 1, params, err);
    if (!r) {
        obx_err_prefix(err, "reading publication \"%s\"", name);
        return -1;
    }
    snprintf(out, out_size, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return 0;
}

int obx_publication_unchanged(PGconn *conn, const obx_config_t *cfg, char *known, size_t known_size, obx_lsn_t before,
                              obx_err_t *err)
{
    char now[64];
    if (obx_publication_identity(conn, obx_config_publication(cfg), now, sizeof(now), err) != 0) return -1;
    if (!known[0]) {
        snprintf(known, known_size, "%s", now);
        return 0;
    }
    if (!strcmp(now, known)) return 0;
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                "publication \"%s\" %s while outboxd streamed slot %s: pgoutput does not send rows written while the "
                "outbox was not in it (or inserts were not published), and no replay can. Stopped before confirming "
                "past " OBX_LSN_FMT ". Never alter the publication outboxd streams. Recover: restore it (outboxd refuses "
                "a wrong one at start and names the fix), restart, and re-emit the outbox's events written since the "
                "change with a snapshot",
                obx_config_publication(cfg), now[0] ? "was altered, re-created or lost a table" : "was dropped",
                cfg->slot_name, OBX_LSN_ARGS(before));
    return 1;
}

int obx_publication_gone(PGconn *c, const obx_config_t *cfg, const char *old, obx_err_t *err)
{
    char e[1024];
    int exists = 1;
    obx_slot_info_t si;
    if (!c || PQstatus(c) != CONNECTION_OK || obx_publication_check(c, cfg, &exists, e, sizeof(e)) == OBX_EXIT_FAIL)
        return 0;
    /* There now and the slot too: it was missing as of the slot's pending
     * changes (dropped, then created again by hand). */
    if (exists && (obx_slot_inspect(c, cfg->slot_name, &si, e, sizeof(e)) != 0 || !si.exists)) return 0;
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_CONFIG,
                "publication \"%s\" %s%s%s (%.600s): %s. Recover: outboxd slot drop, restart outboxd (%s), and "
                "re-emit current state with a snapshot",
                obx_config_publication(cfg), exists ? "did not exist as of changes slot " : "of slot ", cfg->slot_name,
                exists ? " still holds" : " is gone", old,
                exists ? "it was created again after them, and pgoutput reads the publication as of each change"
                       : "pgoutput cannot decode without it",
                exists ? "a new slot" : "publication and slot are created anew");
    return 1;
}
