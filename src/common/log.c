#include "log.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static obx_log_level_t g_level = OBX_LOG_INFO;
static int g_json = 0;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

typedef struct {
    char key[32], value[128];
} ctx_field_t;

typedef struct {
    ctx_field_t f[OBX_LOG_MAX_CONTEXT];
    int n;
} ctx_t;

/* Process fields are read and written under stderr's stdio lock, the one
 * every line already takes; thread fields need no lock. */
static ctx_t g_ctx;
static _Thread_local ctx_t t_ctx;

static void ctx_set(ctx_t *c, const char *key, const char *value)
{
    int i = 0;
    while (i < c->n && strcmp(c->f[i].key, key) != 0) i++;
    if (!value || !*value) {
        if (i < c->n) c->f[i] = c->f[--c->n];
        return;
    }
    if (i == c->n) {
        if (c->n == OBX_LOG_MAX_CONTEXT) return;
        c->n++;
    }
    snprintf(c->f[i].key, sizeof(c->f[i].key), "%s", key);
    snprintf(c->f[i].value, sizeof(c->f[i].value), "%s", value);
}

void obx_log_set_context(const char *key, const char *value)
{
    flockfile(stderr);
    ctx_set(&g_ctx, key, value);
    funlockfile(stderr);
}

void obx_log_set_thread_context(const char *key, const char *value) { ctx_set(&t_ctx, key, value); }

static int ctx_shadowed(const char *key)
{
    for (int i = 0; i < t_ctx.n; i++)
        if (!strcmp(t_ctx.f[i].key, key)) return 1;
    return 0;
}

void obx_log_setup(obx_log_level_t level, obx_log_format_t format)
{
    g_level = level;
    if (format == OBX_LOG_AUTO)
        g_json = !isatty(STDERR_FILENO);
    else
        g_json = (format == OBX_LOG_JSON);
}

int obx_log_level_parse(const char *s, obx_log_level_t *out)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (obx_log_level_t)i;
            return 0;
        }
    return -1;
}

int obx_log_format_parse(const char *s, obx_log_format_t *out)
{
    if (strcasecmp(s, "auto") == 0) *out = OBX_LOG_AUTO;
    else if (strcasecmp(s, "text") == 0) *out = OBX_LOG_TEXT;
    else if (strcasecmp(s, "json") == 0) *out = OBX_LOG_JSON;
    else return -1;
    return 0;
}

int obx_log_enabled(obx_log_level_t level) { return level >= g_level; }

static void json_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
}

/* Context fields of this line, process ones first; caller holds stderr. */
static void put_context(FILE *f, int json)
{
    const ctx_t *all[2] = {&g_ctx, &t_ctx};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < all[k]->n; i++) {
            const ctx_field_t *c = &all[k]->f[i];
            if (k == 0 && ctx_shadowed(c->key)) continue;
            if (json) {
                fputs(",\"", f);
                json_escape(f, c->key);
                fputs("\":\"", f);
                json_escape(f, c->value);
                fputc('"', f);
            } else {
                fprintf(f, "%s=%s ", c->key, c->value);
            }
        }
}

void obx_log(obx_log_level_t level, const char *event, const char *fmt, ...)
{
    if (level < g_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Last line of defence: libpq, librdkafka and servers quote what they
     * were given, secrets included. */
    obx_secret_scrub(msg, sizeof(msg));

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", (long)(tv.tv_usec / 1000));

    /* One fprintf per line under the stdio lock keeps lines whole. */
    flockfile(stderr);
    if (g_json) {
        fprintf(stderr, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":\"", ts, level_names[level]);
        json_escape(stderr, event);
        fputc('"', stderr);
        put_context(stderr, 1);
        fputs(",\"msg\":\"", stderr);
        json_escape(stderr, msg);
        fputs("\"}\n", stderr);
    } else {
        fprintf(stderr, "%s %-5s ", ts, level_names[level]);
        put_context(stderr, 0);
        fprintf(stderr, "%s: %s\n", event, msg);
    }
    funlockfile(stderr);
}
