#include "log.h"

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

void obx_log(obx_log_level_t level, const char *event, const char *fmt, ...)
{
    if (level < g_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

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
        fputs("\",\"msg\":\"", stderr);
        json_escape(stderr, msg);
        fputs("\"}\n", stderr);
    } else {
        fprintf(stderr, "%s %-5s %s: %s\n", ts, level_names[level], event, msg);
    }
    funlockfile(stderr);
}
