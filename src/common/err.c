#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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
