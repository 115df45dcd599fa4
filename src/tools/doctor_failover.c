/* outboxd doctor's failover checks (doctor_failover.h). The standbys are
 * the other hosts of pg.conninfo: the list outboxd itself follows a
 * promotion with, so what doctor checks is what a failover will meet. */
#include "doctor_failover.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"
#include "preflight.h"

#define FIX_FAILOVER_DOC "docs/operations.md, Failover"

typedef struct {
    const obx_config_t *cfg;
    obx_doctor_report_fn report;
    void *ctx;
    char slot_lsn[32]; /* the primary's confirmed_flush_lsn of the slot, "" if none */
    int slot_failover; /* the primary's slot has failover = true */
    int slot_exists;   /* the primary has the slot */
    char sss[1024];    /* the primary's synchronized_standby_slots */
    char started[64];  /* the primary's pg_postmaster_start_time(): which host it is */
} fo_t;

/* Whether the comma-separated list names slot (spaces and quotes trimmed). */
static int lists_slot(const char *list, const char *slot)
{
    size_t n = strlen(slot);
    for (const char *p = list; *p;) {
        p += strspn(p, " \"");
        size_t len = strcspn(p, ",");
        size_t k = len;
        while (k > 0 && (p[k - 1] == ' ' || p[k - 1] == '"')) k--;
        if (k == n && !strncmp(p, slot, n)) return 1;
        p += len;
        if (*p == ',') p++;
    }
    return 0;
}

static void rep(fo_t *f, int ok, int warn_only, const char *what, const char *fix)
{
    f->report(f->ctx, ok, warn_only, what, fix);
}

/* The i-th element of a comma-separated libpq list; a one-element list
 * applies to every host (libpq's rule for port). "" when absent. */
static void nth(const char *list, int i, char *out, size_t size)
{
    out[0] = '\0';
    if (!list || !*list) return;
    int single = strchr(list, ',') == NULL;
    const char *p = list;
    for (int k = 0; k < i && !single; k++) {
        p = strchr(p, ',');
        if (!p) return;
        p++;
    }
    size_t n = strcspn(p, ",");
    snprintf(out, size, "%.*s", (int)(n < size ? n : size - 1), p);
}

static int list_len(const char *list)
{
    if (!list || !*list) return 0;
    int n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    return n;
}

/* key='value' with \ and ' escaped (libpq's conninfo syntax). */
static int append_kv(char **buf, size_t *len, const char *k, const char *v)
{
    size_t need = *len + strlen(k) + 2 * strlen(v) + 5;
    char *nb = realloc(*buf, need);
    if (!nb) return -1;
    *buf = nb;
    char *o = nb + *len;
    o += sprintf(o, "%s='", k);
    for (const char *p = v; *p; p++) {
        if (*p == '\\' || *p == '\'') *o++ = '\\';
        *o++ = *p;
    }
    *o++ = '\'';
    *o++ = ' ';
    *o = '\0';
    *len = (size_t)(o - nb);
    return 0;
}

static const char *opt(const PQconninfoOption *o, const char *k)
{
    for (; o && o->keyword; o++)
        if (!strcmp(o->keyword, k)) return o->val;
    return NULL;
}

/* pg.conninfo narrowed to its i-th host, any session: every other option
 * (user, password, sslmode, ...) as the operator wrote it. malloc'd. */
static char *host_conninfo(const PQconninfoOption *opts, int i)
{
    char *buf = NULL;
    size_t len = 0;
    char one[256];
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val) continue;
        if (!strcmp(o->keyword, "host") || !strcmp(o->keyword, "hostaddr") || !strcmp(o->keyword, "port")) {
            nth(o->val, i, one, sizeof(one));
            if (*one && append_kv(&buf, &len, o->keyword, one) != 0) goto oom;
        } else if (strcmp(o->keyword, "target_session_attrs") != 0 && append_kv(&buf, &len, o->keyword, o->val) != 0) {
            goto oom;
        }
    }
    if (append_kv(&buf, &len, "target_session_attrs", "any") == 0) return buf;
oom:
    free(buf);
    return NULL;
}

/* The slot's flag and synchronized_standby_slots. Returns the number of
 * physical slots in use (standbys streaming with a slot), -1 on error. */
static int check_primary(fo_t *f, PGconn *c)
{
    char what[1024], fix[1024];
    obx_err_t err;
    const char *p[1] = {f->cfg->slot_name};
    PGresult *r = obx_pg_exec(c,
                              "SELECT pg_is_in_recovery(), current_setting('synchronized_standby_slots'),"
                              " (SELECT failover FROM pg_replication_slots WHERE slot_name = $1),"
                              " (SELECT coalesce(confirmed_flush_lsn::text, '') FROM pg_replication_slots WHERE slot_name = $1),"
                              " (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical' AND active)::int,"
                              " (SELECT string_agg(s, ', ') FROM unnest(string_to_array("
                              "   current_setting('synchronized_standby_slots'), ',')) u(s) WHERE btrim(s, ' \"') <> ''"
                              "   AND btrim(s, ' \"') NOT IN (SELECT slot_name FROM pg_replication_slots"
                              "   WHERE slot_type = 'physical' AND active)), pg_postmaster_start_time()::text",
                              1, p, &err);
    if (!r) {
        rep(f, 0, 0, "read the failover settings", err.msg);
        return -1;
    }
    int standbys = atoi(PQgetvalue(r, 0, 4));
    if (!strcmp(PQgetvalue(r, 0, 0), "t"))
        rep(f, 0, 0, "pg.conninfo reached a standby, not the primary",
            "add target_session_attrs=read-write to pg.conninfo, so outboxd and doctor find the primary");
    if (!strcmp(f->cfg->slot_failover, "off")) {
        rep(f, 0, 1, "slot.failover = off: the slot is not synchronised to standbys, a promotion loses it (exit 4)",
            "slot.failover = auto");
    } else if (!PQgetisnull(r, 0, 2)) {
        snprintf(what, sizeof(what), "slot %s is a failover slot (failover = %s)", f->cfg->slot_name,
                 !strcmp(PQgetvalue(r, 0, 2), "t") ? "true" : "false");
        snprintf(fix, sizeof(fix), "restart outboxd (slot.failover = auto sets the flag on an idle slot), or run "
                 "ALTER_REPLICATION_SLOT %s (FAILOVER true) on a replication connection", f->cfg->slot_name);
        f->slot_failover = !strcmp(PQgetvalue(r, 0, 2), "t");
        f->slot_exists = 1;
        rep(f, f->slot_failover, 0, what, fix);
        snprintf(f->slot_lsn, sizeof(f->slot_lsn), "%s", PQgetvalue(r, 0, 3));
    }
    const char *sss = PQgetvalue(r, 0, 1);
    snprintf(f->sss, sizeof(f->sss), "%s", sss);
    snprintf(f->started, sizeof(f->started), "%s", PQgetvalue(r, 0, 6));
    if (!*sss) {
        snprintf(what, sizeof(what), "synchronized_standby_slots is empty: outboxd may receive and publish changes no "
                 "standby has yet; after a promotion such events are in Kafka but not in the database, and "
                 "outboxd stops with exit 4 (" FIX_FAILOVER_DOC ", a standby that lagged)");
        rep(f, 0, 1, what, "ALTER SYSTEM SET synchronized_standby_slots = '<physical slot of each standby>'; "
                           "SELECT pg_reload_conf();");
    } else if (!PQgetisnull(r, 0, 5)) {
        snprintf(what, sizeof(what), "synchronized_standby_slots = '%s' names slots no standby streams from here "
                 "(%s: missing, or inactive): logical walsenders wait for them, outboxd stalls", sss, PQgetvalue(r, 0, 5));
        rep(f, 0, 0, what, "start the standby that uses it (or create its physical slot and set its primary_slot_name), or remove "
                "the name");
    } else {
        snprintf(what, sizeof(what), "synchronized_standby_slots = '%s': outboxd gets no change a standby lacks", sss);
        rep(f, 1, 0, what, NULL);
    }
    PQclear(r);
    return standbys;
}

/* One standby: the settings slot synchronisation needs, and the slot's
 * synced copy (persistent, not behind the primary by much). */
static void check_standby(fo_t *f, PGconn *s, const char *label)
{
    char what[2400], fix[512];
    obx_err_t err;
    const char *p[2] = {f->cfg->slot_name, *f->slot_lsn ? f->slot_lsn : NULL};
    PGresult *r = obx_pg_exec(s,
                              "SELECT current_setting('sync_replication_slots'), current_setting('hot_standby_feedback'),"
                              " current_setting('primary_slot_name'), sl.synced, sl.temporary,"
                              " coalesce(sl.confirmed_flush_lsn::text, ''),"
                              " coalesce(pg_size_pretty(pg_wal_lsn_diff($2::pg_lsn, sl.confirmed_flush_lsn)), '')"
                              " FROM (SELECT 1) one LEFT JOIN pg_replication_slots sl ON sl.slot_name = $1",
                              2, p, &err);
    if (!r) {
        snprintf(what, sizeof(what), "standby %s: read its settings", label);
        rep(f, 0, 0, what, err.msg);
        return;
    }
    static const struct { int col; const char *name, *fix; } on[] = {
        {0, "sync_replication_slots", "ALTER SYSTEM SET sync_replication_slots = on; SELECT pg_reload_conf(); "
                                      "(primary_conninfo must name a dbname)"},
        {1, "hot_standby_feedback", "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();"},
    };
    for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
        snprintf(what, sizeof(what), "standby %s: %s = %s", label, on[i].name, PQgetvalue(r, 0, on[i].col));
        rep(f, !strcmp(PQgetvalue(r, 0, on[i].col), "on"), 0, what, on[i].fix);
    }
    snprintf(what, sizeof(what), "standby %s: primary_slot_name = '%s'", label, PQgetvalue(r, 0, 2));
    rep(f, *PQgetvalue(r, 0, 2) != '\0', 0, what,
        "create a physical slot on the primary, set primary_slot_name to it here and name it in the primary's "
        "synchronized_standby_slots");
    /* Only a listed standby is known to have all that outboxd published. */
    if (*PQgetvalue(r, 0, 2) && !lists_slot(f->sss, PQgetvalue(r, 0, 2))) {
        snprintf(what, sizeof(what), "standby %s: its slot '%s' is not in the primary's synchronized_standby_slots "
                 "('%s'): outboxd may publish events it lacks; promoting it makes outboxd stop with exit 4", label,
                 PQgetvalue(r, 0, 2), f->sss);
        rep(f, 0, 0, what, "add it: ALTER SYSTEM SET synchronized_standby_slots = '<every standby's slot>'; "
                           "SELECT pg_reload_conf(); on the primary (" FIX_FAILOVER_DOC ", a standby that lagged)");
    }
    if (!f->slot_exists)
        snprintf(fix, sizeof(fix), "start outboxd: it creates the slot as a failover slot, synchronised within 30 s");
    else if (!f->slot_failover)
        snprintf(fix, sizeof(fix), "make the primary's slot a failover slot (see above)");
    else
        snprintf(fix, sizeof(fix), "check the standby's log for \"could not synchronize replication slot\"; the slot "
                 "becomes persistent once the primary's copy moves past the standby's horizon (" FIX_FAILOVER_DOC ")");
    if (PQgetisnull(r, 0, 3)) {
        snprintf(what, sizeof(what), "standby %s: slot %s is not synchronised here: a promotion of this standby "
                 "loses it (outboxd stops with exit 4)", label, f->cfg->slot_name);
        rep(f, 0, 0, what, fix);
    } else if (strcmp(PQgetvalue(r, 0, 3), "t") != 0 || strcmp(PQgetvalue(r, 0, 4), "f") != 0) {
        snprintf(what, sizeof(what), "standby %s: slot %s exists but is %s", label, f->cfg->slot_name,
                 strcmp(PQgetvalue(r, 0, 3), "t") ? "not a synced copy (synced = false): not the primary's slot"
                                                  : "still temporary (not yet usable after a promotion)");
        rep(f, 0, 0, what, fix);
    } else {
        snprintf(what, sizeof(what), "standby %s: slot %s is synced (confirmed_flush_lsn %s, %s behind the primary's)",
                 label, f->cfg->slot_name, PQgetvalue(r, 0, 5), *PQgetvalue(r, 0, 6) ? PQgetvalue(r, 0, 6) : "?");
        rep(f, 1, 0, what, NULL);
    }
    PQclear(r);
}

/* Every host of pg.conninfo that is in recovery. Returns how many. */
static int check_standbys(fo_t *f, const PQconninfoOption *opts)
{
    const char *hosts = opt(opts, "host"), *addrs = opt(opts, "hostaddr"), *ports = opt(opts, "port");
    int n = list_len(hosts) > list_len(addrs) ? list_len(hosts) : list_len(addrs), found = 0;
    for (int i = 0; i < n; i++) {
        char h[256], port[32], label[300], what[1400];
        nth(hosts && *hosts ? hosts : addrs, i, h, sizeof(h));
        nth(ports, i, port, sizeof(port));
        snprintf(label, sizeof(label), "%s:%s", h, *port ? port : "5432");
        char *ci = host_conninfo(opts, i);
        obx_err_t err;
        int oom = ci == NULL;
        PGconn *s = ci ? obx_pg_connect(ci, "pg.conninfo", OBX_PG_NORMAL, &err) : NULL;
        free(ci);
        if (!s) {
            snprintf(what, sizeof(what), "host %s of pg.conninfo: %s", label, oom ? "out of memory" : err.msg);
            rep(f, 0, 1, what, "a standby doctor cannot reach is not checked: check it by hand");
            continue;
        }
        PGresult *r = obx_pg_exec(s, "SELECT pg_is_in_recovery(), pg_postmaster_start_time()::text", 0, NULL, &err);
        if (r && !strcmp(PQgetvalue(r, 0, 0), "t")) {
            found++;
            check_standby(f, s, label);
        } else if (r && strcmp(PQgetvalue(r, 0, 1), f->started) != 0) {
            /* Another read-write server: an old primary back after a failover. */
            snprintf(what, sizeof(what), "host %s of pg.conninfo is read-write too: two primaries (an old primary "
                     "back after a promotion?); outboxd and the writers go to the first one listed", label);
            rep(f, 0, 0, what, "fence the old primary: stop it, or pg_rewind it into a standby of the new one ("
                               FIX_FAILOVER_DOC ", the old primary coming back)");
        }
        PQclear(r);
        PQfinish(s);
    }
    return found;
}

void obx_doctor_failover(const obx_config_t *cfg, PGconn *c, obx_doctor_report_fn report, void *ctx)
{
    fo_t f = {.cfg = cfg, .report = report, .ctx = ctx};
    char what[512];
    int ver = PQserverVersion(c);
    if (ver < 170000) {
        snprintf(what, sizeof(what), "failover slots: PostgreSQL %d has none (17+): a promoted standby lacks the slot, "
                 "and outboxd stops with exit 4 rather than skip events", ver / 10000);
        rep(&f, 0, 1, what, "keep the slot on the standbys with Patroni's permanent slots, or upgrade to 17+ ("
                            FIX_FAILOVER_DOC ")");
        return;
    }
    int streaming = check_primary(&f, c);
    if (streaming < 0) return;
    PQconninfoOption *opts = PQconninfoParse(cfg->pg_conninfo, NULL);
    if (!opts) return; /* connect already reported it */
    int found = check_standbys(&f, opts);
    if (streaming > found) {
        snprintf(what, sizeof(what), "%d standby(s) stream from the primary with a slot, %d of them are hosts of "
                 "pg.conninfo: outboxd follows a promotion only to a host it lists", streaming, found);
        rep(&f, 0, 1, what, "list every standby: host=primary,standby1 port=5432,5432 target_session_attrs=read-write");
    } else if (!streaming && !found) {
        rep(&f, 1, 0, "no physical standby streams from this server: nothing to fail over to", NULL);
    }
    PQconninfoFree(opts);
}
