/* Checks of config values that need more than the table's type and range
 * (config.h): run by obx_config_validate() at start and by `outboxd doctor`,
 * so a bad value stops outboxd before the first row, not at it. Also the
 * env-file reader of `config-check` and the log format peek main.c needs
 * before the config is loaded. Owns nothing it is passed. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
    if (*cfg->status_listen) {
        char host[256];
        int port;
        if (obx_status_listen_parse(cfg->status_listen, host, sizeof(host), &port, errstr, errstr_size) != 0)
            return -1;
    }
    return 0;
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
    while (rc == 0 && getline(&line, &cap, f) != -1) {
        line[strcspn(line, "\r\n")] = '\0';
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (!strncmp(s, "export ", 7)) s += 7;
        if (!*s || *s == '#' || !strchr(s, '=')) continue;
        envp[0] = s;
        rc = obx_config_load_env(cfg, envp, errstr, errstr_size);
    }
    free(line);
    fclose(f);
    return rc;
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
