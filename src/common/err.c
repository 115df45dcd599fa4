#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Written only before threads start (see err.h), read by every thread. */
static char *g_secrets[OBX_SECRET_MAX];
static size_t g_n_secrets;

void obx_err_clear(obx_err_t *e)
{
    memset(e, 0, sizeof(*e));
}

void obx_err_set(obx_err_t *e, obx_err_class_t cls, int exit_code, const char *fmt, ...)
{
    e->cls = cls;
    e->exit_code = exit_code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    obx_chomp(e->msg);
    obx_secret_scrub(e->msg, sizeof(e->msg));
}

void obx_err_prefix(obx_err_t *e, const char *fmt, ...)
{
    char head[512], old[sizeof(e->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof(head), fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof(old));
    /* Truncation is fine: the head names the thing, the tail the detail. */
    size_t hl = strlen(head);
    if (hl + 2 >= sizeof(e->msg)) hl = sizeof(e->msg) - 3;
    memcpy(e->msg, head, hl);
    memcpy(e->msg + hl, ": ", 2);
    size_t room = sizeof(e->msg) - hl - 3, ol = strlen(old);
    if (ol > room) ol = room;
    memcpy(e->msg + hl + 2, old, ol);
    e->msg[hl + 2 + ol] = '\0';
    obx_secret_scrub(e->msg, sizeof(e->msg));
}

int obx_err_is_sqlstate(const obx_err_t *e, const char *sqlstate)
{
    return e->sqlstate[0] && strcmp(e->sqlstate, sqlstate) == 0;
}

int obx_err_exit_code(const obx_err_t *e)
{
    if (e->exit_code) return e->exit_code;
    return e->cls == OBX_ERR_POISON ? OBX_EXIT_POISON : e->cls == OBX_ERR_NONE ? OBX_EXIT_OK : OBX_EXIT_FAIL;
}

const char *obx_err_class_name(obx_err_class_t cls)
{
    switch (cls) {
    case OBX_ERR_NONE: return "none";
    case OBX_ERR_RETRIABLE: return "retriable";
    case OBX_ERR_POISON: return "poison";
    case OBX_ERR_FATAL: return "fatal";
    }
    return "?";
}

void obx_chomp(char *s)
{
    size_t l = strlen(s);
    while (l && (s[l - 1] == '\n' || s[l - 1] == ' ' || s[l - 1] == '\r')) s[--l] = '\0';
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\t' || *p == '\r') *p = ' ';
}

void obx_scrub_value(char *s, size_t size, const char *needle)
{
    static const char mask[] = "***";
    size_t nl = needle ? strlen(needle) : 0, len = strlen(s);
    if (!nl || size < sizeof(mask)) return;
    int full = len + 1 >= size; /* the writer may have cut a secret short */
    for (char *hit = strstr(s, needle); hit; hit = strstr(hit + 3, needle)) {
        size_t at = (size_t)(hit - s), tail = len - at - nl, room = size - 1 - at;
        if (room < 3) { /* no room for the mask: cut the line here */
            s[at] = '\0';
            return;
        }
        if (tail > room - 3) tail = room - 3;
        memmove(hit + 3, hit + nl, tail);
        memcpy(hit, mask, 3);
        len = at + 3 + tail;
        s[len] = '\0';
    }
    if (!full) return;
    for (size_t k = nl - 1 < len ? nl - 1 : len; k >= 3; k--)
        if (!memcmp(s + len - k, needle, k)) {
            memcpy(s + len - k, mask, 3);
            s[len - k + 3] = '\0';
            return;
        }
}

int obx_secret_add(const char *value)
{
    if (!value || strlen(value) < OBX_SECRET_MIN_LEN) return 0;
    for (size_t i = 0; i < g_n_secrets; i++)
        if (!strcmp(g_secrets[i], value)) return 0;
    if (g_n_secrets == OBX_SECRET_MAX || !(g_secrets[g_n_secrets] = strdup(value))) return -1;
    g_n_secrets++;
    return 0;
}

void obx_secret_scrub(char *s, size_t size)
{
    for (size_t i = 0; i < g_n_secrets; i++) obx_scrub_value(s, size, g_secrets[i]);
}

void obx_secret_reset(void)
{
    for (size_t i = 0; i < g_n_secrets; i++) free(g_secrets[i]);
    g_n_secrets = 0;
}
