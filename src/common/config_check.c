/* Checks of config values that need more than the table's type and range
 * (config.h): run by obx_config_validate() at start and by `outboxd doctor`,
 * so a bad value stops outboxd before the first row, not at it. Also the
 * env-file reader of `config-check` and the log format peek main.c needs
 * before the config is loaded. Owns nothing it is passed. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"
#include "status_http.h"

#define TOPIC_VAR "${aggregatetype}"
/* A sample aggregate type: what the template must make a legal topic of. */
#define SAMPLE_TYPE "order"

static int topic_name_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 249 || !strcmp(t, ".") || !strcmp(t, "..")) return 0;
    return strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

int obx_config_check_template(const char *tmpl, char *errstr, size_t errstr_size)
{
    char out[512];
    size_t n = 0;
    for (const char *p = tmpl; *p;) {
        if (!strncmp(p, TOPIC_VAR, sizeof(TOPIC_VAR) - 1)) {
            n += (size_t)snprintf(out + n, sizeof(out) - n, "%s", SAMPLE_TYPE);
            p += sizeof(TOPIC_VAR) - 1;
        } else if (p[0] == '$' && p[1] == '{') {
            snprintf(errstr, errstr_size,
                     "topic.template = \"%s\": unknown placeholder \"%.*s\"; the only one is " TOPIC_VAR, tmpl,
                     (int)strcspn(p, "}") + (strchr(p, '}') ? 1 : 0), p);
            return -1;
        } else {
            out[n++] = *p++;
        }
        if (n >= sizeof(out) - 16) break;
    }
    out[n] = '\0';
    if (!topic_name_ok(out)) {
        snprintf(errstr, errstr_size,
                 "topic.template = \"%s\": for aggregate type \"" SAMPLE_TYPE "\" it gives \"%s\", not a legal Kafka "
                 "topic name (1-249 of a-z A-Z 0-9 . _ -; a comment after a value needs a space before its #)",
                 tmpl, out);
        return -1;
    }
    return 0;
}

int obx_config_check_values(const obx_config_t *cfg, char *errstr, size_t errstr_size)
{
    if (obx_config_check_template(cfg->topic_template, errstr, errstr_size) != 0) return -1;
    const struct { const char *key, *v; int may_be_empty; } topics[] = {
        {"slot.evidence_topic", cfg->slot_evidence_topic, 0},
        {"poison.dlq_topic", cfg->dlq_topic, strcmp(cfg->poison_policy, "dead-letter") != 0},
        {"snapshot.topic", cfg->snap_topic, 1},
    };
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
        if (topics[i].may_be_empty && !*topics[i].v) continue;
        if (!topic_name_ok(topics[i].v)) {
            snprintf(errstr, errstr_size, "%s = \"%s\": not a legal Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
                     topics[i].key, topics[i].v);
            return -1;
        }
    }
    if (obx_config_check_conninfo("pg.conninfo", cfg->pg_conninfo, errstr, errstr_size) != 0) return -1;
    return obx_config_check_listen(cfg->status_listen, errstr, errstr_size);
}

/* What `run` does with it at start (getaddrinfo, as status_http.c): an
 * address that cannot be resolved is refused now, by doctor too. */
int obx_config_check_listen(const char *listen, char *errstr, size_t errstr_size)
{
    char host[256], portstr[8];
    int port;
    if (!listen || !*listen) return 0;
    if (obx_status_listen_parse(listen, host, sizeof(host), &port, errstr, errstr_size) != 0) return -1;
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (ai) freeaddrinfo(ai);
    if (gai != 0) {
        snprintf(errstr, errstr_size, "status.listen = \"%s\": host %s: %s (use an address of this host, e.g. "
                 "127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080)", listen, host, gai_strerror(gai));
        return -1;
    }
    return 0;
}

/* Edit distance of two short words (a keyword typo is one or two edits). */
static size_t edits(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64];
    if (la >= 63 || lb >= 63) return 99;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The first keyword of a keyword=value conninfo that libpq does not know,
 * walked with libpq's grammar (values '...' or up to a space, \ escapes);
 * the known keyword nearest to it in *near. 0 when every keyword is known. */
static int unknown_keyword(const char *s, char *kw, size_t kw_size, const char **near)
{
    PQconninfoOption *defs = PQconndefaults();
    int found = 0;
    while (defs && *s && !found) {
        while (isspace((unsigned char)*s)) s++;
        const char *k = s;
        while (*s && *s != '=' && !isspace((unsigned char)*s)) s++;
        size_t kl = (size_t)(s - k);
        while (isspace((unsigned char)*s)) s++;
        if (!kl || *s != '=') break; /* libpq's own message says it */
        for (s++; isspace((unsigned char)*s); s++) {}
        int quoted = *s == '\'';
        for (s += quoted; *s && (quoted ? *s != '\'' : !isspace((unsigned char)*s)); s++)
            if (*s == '\\' && s[1]) s++;
        if (quoted && *s) s++;
        snprintf(kw, kw_size, "%.*s", (int)kl, k);
        found = 1;
        size_t best = 99;
        for (PQconninfoOption *o = defs; o->keyword; o++) {
            size_t d = edits(kw, o->keyword);
            if (d == 0) found = 0;
            if (d < best) best = d, *near = o->keyword;
        }
        if (best > 2) *near = NULL;
    }
    PQconninfoFree(defs);
    return found;
}

/* libpq refuses a conninfo it cannot parse at every connect: that is a
 * configuration error (exit 2) now, not a retry loop. libpq's message
 * quotes the token it choked on, which may be a password: the unknown
 * keyword is named only when it is one or two edits from a real one. */
int obx_config_check_conninfo(const char *key, const char *conninfo, char *errstr, size_t errstr_size)
{
    char *perr = NULL, kw[64], msg[512];
    const char *near = NULL;
    if (!conninfo || !*conninfo) return 0;
    PQconninfoOption *o = PQconninfoParse(conninfo, &perr);
    if (o) {
        PQconninfoFree(o);
        return 0;
    }
    snprintf(msg, sizeof(msg), "%s", perr ? perr : "out of memory");
    PQfreemem(perr);
    msg[strcspn(msg, "\n")] = '\0';
    int uri = !strncmp(conninfo, "postgresql://", 13) || !strncmp(conninfo, "postgres://", 11);
    if (!uri && unknown_keyword(conninfo, kw, sizeof(kw), &near) && near)
        snprintf(errstr, errstr_size, "%s: unknown libpq keyword \"%s\" (did you mean \"%s\"?)", key, kw, near);
    else {
        obx_conninfo_scrub(conninfo, msg, sizeof(msg));
        snprintf(errstr, errstr_size, "%s cannot be parsed by libpq: %s (tokens from the value are shown as ***)", key,
                 msg);
    }
    return -1;
}

/* KEY=VALUE lines (`export ` allowed, `#` lines and blanks skipped), as
 * `env`, a .env file or a Kubernetes env dump gives them. */
int obx_config_load_env_file(obx_config_t *cfg, const char *path, char *errstr, size_t errstr_size)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(errstr, errstr_size, "cannot open environment file %s: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL, *envp[2] = {NULL, NULL};
    size_t cap = 0;
    int rc = 0;
    for (int lineno = 1; rc == 0 && getline(&line, &cap, f) != -1; lineno++) {
        line[strcspn(line, "\r\n")] = '\0';
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (!strncmp(s, "export ", 7)) s += 7;
        if (!*s || *s == '#') continue;
        /* A skipped line would be a variable compared as unset: refuse it.
         * The line is not echoed (its value may be a secret). */
        size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_");
        if (n == 0 || isdigit((unsigned char)*s) || s[n] != '=') {
            snprintf(errstr, errstr_size, "%s:%d: not a NAME=VALUE line (no spaces around =; a ConfigMap's YAML "
                     "`NAME: value` must be converted, e.g. kubectl set env deploy/NAME --list --resolve)", path, lineno);
            rc = -1;
            break;
        }
        envp[0] = s;
        rc = obx_config_load_env(cfg, envp, errstr, errstr_size);
    }
    free(line);
    fclose(f);
    return rc;
}

int obx_config_env_service_link(const char *name)
{
    const char *p = strstr(name, "_SERVICE_");
    if (p && (!strcmp(p, "_SERVICE_HOST") || !strncmp(p, "_SERVICE_PORT", 13))) return 1;
    size_t n = strlen(name);
    if (n >= 5 && !strcmp(name + n - 5, "_PORT")) return 1;
    for (p = strstr(name, "_PORT_"); p; p = strstr(p + 1, "_PORT_"))
        if (isdigit((unsigned char)p[6])) return 1; /* _PORT_8080_TCP... */
    return 0;
}

/* The format the config will ask for, read before it is loaded (errors
 * ignored: loading reports them, in this format). */
int obx_config_peek_log_format(const char *path, char **envp)
{
    obx_log_format_t fmt = OBX_LOG_AUTO;
    char *line = NULL;
    size_t cap = 0;
    FILE *f = path ? fopen(path, "r") : NULL;
    while (f && getline(&line, &cap, f) != -1) {
        char *s = line, *e;
        if (!strncmp(s, "\xEF\xBB\xBF", 3)) s += 3; /* a BOM, as obx_config_load_file skips it */
        while (isspace((unsigned char)*s)) s++;
        if (strncmp(s, "log.format", 10) != 0) continue;
        for (s += 10; isspace((unsigned char)*s); s++) {}
        if (*s++ != '=') continue;
        while (isspace((unsigned char)*s) || *s == '"') s++;
        for (e = s; isalpha((unsigned char)*e); e++) {}
        *e = '\0';
        obx_log_format_parse(s, &fmt);
    }
    free(line);
    if (f) fclose(f);
    for (char **p = envp; p && *p; p++)
        if (!strncmp(*p, "OUTBOXD_LOG_FORMAT=", 19)) obx_log_format_parse(*p + 19, &fmt);
    return (int)fmt;
}
