/* Which configuration values are secrets, and keeping them out of every
 * printed line: the secret part of the config (config.h declares these
 * functions). Secret values are registered with err.c's scrubber, which
 * every log and error path runs. */
#include "config.h"
#include "err.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* librdkafka's properties flagged _RK_SENSITIVE in rdkafka_conf.c (2.x),
 * plus the OIDC client secret; the substrings catch secret properties a
 * later librdkafka adds (passwords, passphrases, private keys, tokens).
 * Not sasl.username: like libpq's user it names who failed to log in. */
static const char *const kafka_secret_props[] = {
    "sasl.password", "sasl.oauthbearer.config", "sasl.oauthbearer.client.secret",
    "ssl.key.location", "ssl.key.password", "ssl.key.pem", "ssl_key", "ssl.ca.pem", "ssl.keystore.password"};
static const char *const secret_needles[] = {"password", "secret", "passphrase", "private.key", "token",
                                             "credential"};

/* libpq's own list: keywords PQconndefaults() marks with dispchar '*'
 * (password, sslpassword, and whatever a newer libpq adds). */
#define MAX_PQ_SECRETS 16
static char pq_secrets[MAX_PQ_SECRETS][32];
static size_t n_pq_secrets;
static pthread_once_t pq_secrets_once = PTHREAD_ONCE_INIT;

static void pq_secrets_load(void)
{
    PQconninfoOption *d = PQconndefaults();
    for (PQconninfoOption *p = d; p && p->keyword; p++)
        if (p->dispchar && p->dispchar[0] == '*' && n_pq_secrets < MAX_PQ_SECRETS)
            snprintf(pq_secrets[n_pq_secrets++], sizeof(pq_secrets[0]), "%s", p->keyword);
    PQconninfoFree(d);
    /* Without defaults (out of memory) fall back to what libpq 15 marks. */
    if (!n_pq_secrets) {
        snprintf(pq_secrets[n_pq_secrets++], sizeof(pq_secrets[0]), "password");
        snprintf(pq_secrets[n_pq_secrets++], sizeof(pq_secrets[0]), "sslpassword");
    }
}

static int pq_keyword_secret(const char *kw)
{
    pthread_once(&pq_secrets_once, pq_secrets_load);
    for (size_t i = 0; i < n_pq_secrets; i++)
        if (!strcmp(pq_secrets[i], kw)) return 1;
    return 0;
}

int obx_config_is_secret(const char *key)
{
    const char *prop = strncmp(key, "kafka.", 6) == 0 ? key + 6 : key;
    for (size_t i = 0; i < sizeof(kafka_secret_props) / sizeof(kafka_secret_props[0]); i++)
        if (!strcmp(prop, kafka_secret_props[i])) return 1;
    for (size_t i = 0; i < sizeof(secret_needles) / sizeof(secret_needles[0]); i++)
        if (strstr(prop, secret_needles[i])) return 1;
    return pq_keyword_secret(key);
}

/* The password of a URI's userinfo as written (percent-encoded), into out;
 * "" when conninfo is no URI or has none. Works on URIs libpq refuses. */
static void uri_password(const char *conninfo, char *out, size_t out_size)
{
    out[0] = '\0';
    const char *p = NULL;
    if (!strncmp(conninfo, "postgresql://", 13)) p = conninfo + 13;
    else if (!strncmp(conninfo, "postgres://", 11)) p = conninfo + 11;
    if (!p) return;
    size_t auth = strcspn(p, "/?");
    const char *at = NULL;
    for (const char *q = p; q < p + auth; q++)
        if (*q == '@') at = q; /* the last one: a password may hold '@' */
    if (!at) return;
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon) return;
    snprintf(out, out_size, "%.*s", (int)(at - colon - 1), colon + 1);
}

/* Calls fn with every secret value of conninfo: each libpq secret keyword's
 * value, and the URI password as written. Returns 0, or -1 when libpq
 * cannot parse conninfo (the URI password is still reported). */
static int conninfo_secrets(const char *conninfo, void (*fn)(const char *v, void *arg), void *arg)
{
    char raw[512];
    uri_password(conninfo, raw, sizeof(raw));
    if (*raw) fn(raw, arg);
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(conninfo, &err);
    PQfreemem(err);
    if (!o) return -1;
    for (PQconninfoOption *p = o; p->keyword; p++)
        if (p->val && *p->val && p->dispchar && p->dispchar[0] == '*') fn(p->val, arg);
    PQconninfoFree(o);
    return 0;
}

void obx_conninfo_redact(const char *conninfo, char *out, size_t out_size)
{
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(conninfo, &err);
    if (!o) {
        /* Unparseable: print nothing of it rather than risk a password. */
        snprintf(out, out_size, "<unparseable conninfo>");
        PQfreemem(err);
        return;
    }
    size_t n = 0;
    out[0] = '\0';
    for (PQconninfoOption *p = o; p->keyword; p++) {
        if (!p->val || !*p->val) continue;
        /* dispchar '*' is libpq's own "hide this" mark (password, sslpassword). */
        int secret = (p->dispchar && p->dispchar[0] == '*') || pq_keyword_secret(p->keyword);
        int w = snprintf(out + n, n < out_size ? out_size - n : 0, "%s%s=%s", n ? " " : "", p->keyword,
                         secret ? "[redacted]" : p->val);
        if (w < 0) break;
        n += (size_t)w;
        if (n >= out_size) break;
    }
    PQconninfoFree(o);
}

typedef struct {
    char *msg;
    size_t size;
} scrub_t;

static void scrub_one(const char *v, void *arg)
{
    scrub_t *s = arg;
    obx_scrub_value(s->msg, s->size, v);
}

/* libpq quotes the token it choked on ("missing \"=\" after \"...\""): any
 * quoted part of msg that occurs in the unparseable conninfo goes. */
static void scrub_quoted(char *msg, size_t size, const char *conninfo)
{
    char tok[512];
    for (char *q = strchr(msg, '"'); q;) {
        char *e = strchr(q + 1, '"');
        if (!e) break;
        size_t l = (size_t)(e - q - 1);
        if (l > 1 && l < sizeof(tok)) {
            memcpy(tok, q + 1, l);
            tok[l] = '\0';
            if (strstr(conninfo, tok)) {
                obx_scrub_value(q + 1, size - (size_t)(q + 1 - msg), tok);
                e = strchr(q + 1, '"');
                if (!e) break;
            }
        }
        q = strchr(e + 1, '"');
    }
}

void obx_conninfo_scrub(const char *conninfo, char *msg, size_t msg_size)
{
    if (!conninfo || !*conninfo || !msg_size) return;
    scrub_t s = {msg, msg_size};
    obx_scrub_value(msg, msg_size, conninfo);
    if (conninfo_secrets(conninfo, scrub_one, &s) != 0) scrub_quoted(msg, msg_size, conninfo);
}

static void register_one(const char *v, void *arg)
{
    (void)arg;
    obx_secret_add(v);
}

void obx_config_register_secrets(const obx_config_t *cfg)
{
    const char *conninfos[] = {cfg->pg_conninfo, cfg->apply_conninfo};
    for (size_t i = 0; i < 2; i++) {
        if (!conninfos[i] || !*conninfos[i]) continue;
        /* The whole string too: libpq echoes URIs it cannot parse. */
        if (conninfo_secrets(conninfos[i], register_one, NULL) != 0 || strchr(conninfos[i], '@'))
            obx_secret_add(conninfos[i]);
    }
    for (size_t i = 0; i < cfg->n_kafka; i++)
        if (obx_config_is_secret(cfg->kafka[i].key)) obx_secret_add(cfg->kafka[i].value);
    /* libpq reads it itself; outboxd never prints it, a server might echo it. */
    obx_secret_add(getenv("PGPASSWORD"));
}
