/* One error type for every module. A failure carries a class that decides
 * what the caller does (retry, poison policy, stop), the exit code a fatal
 * one ends the process with, and its origin: the server's SQLSTATE or
 * librdkafka's error code. Callers decide from cls, exit_code, sqlstate or
 * kafka_err, never from msg: servers may speak German.
 *
 * An obx_err_t is a plain value (no heap): the caller owns it, usually on
 * its stack, and passes a pointer down. Log it once, where it is handled. */
#ifndef OBX_ERR_H
#define OBX_ERR_H

#include <stddef.h>

#include "exitcodes.h"

typedef enum {
    OBX_ERR_NONE = 0,
    OBX_ERR_RETRIABLE, /* the same work may succeed later: reconnect, back off */
    OBX_ERR_POISON,    /* one row or event causes it: follow the poison policy */
    OBX_ERR_FATAL      /* needs an operator: stop with exit_code */
} obx_err_class_t;

typedef struct {
    obx_err_class_t cls;
    int exit_code;    /* OBX_EXIT_*; meaningful for OBX_ERR_FATAL and POISON */
    char sqlstate[6]; /* "" unless PostgreSQL said it */
    int kafka_err;    /* rd_kafka_resp_err_t; 0 unless librdkafka said it */
    char msg[1024];   /* for humans: names the thing and the fix, no secrets */
} obx_err_t;

void obx_err_clear(obx_err_t *e);
/* Sets class, exit code (0 picks the class's default) and message. */
void obx_err_set(obx_err_t *e, obx_err_class_t cls, int exit_code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Puts context in front of the message: "what: <old message>". */
void obx_err_prefix(obx_err_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True when PostgreSQL reported exactly this SQLSTATE. */
int obx_err_is_sqlstate(const obx_err_t *e, const char *sqlstate);
/* Default exit code of a class: retriable and fatal 1, poison 3. */
int obx_err_exit_code(const obx_err_t *e);
const char *obx_err_class_name(obx_err_class_t cls);

/* One log line from a libpq message: trailing newlines and spaces go,
 * inner newlines and tabs become spaces (DETAIL/HINT lines). */
void obx_chomp(char *s);

/* Secret values (passwords, keys, tokens) that must never leave the
 * process in a message, whoever wrote the message (libpq, librdkafka, a
 * server). obx_err_set, obx_err_prefix and obx_log replace every occurrence
 * of a registered value with "***". main.c registers the config's secrets
 * (obx_config_register_secrets) once, before any thread starts; the list is
 * only read afterwards, so readers take no lock. Values shorter than
 * OBX_SECRET_MIN_LEN are not registered: they would blank out ordinary
 * words, and every structured print path redacts them anyway. */
#define OBX_SECRET_MIN_LEN 4
#define OBX_SECRET_MAX 64
/* Copies value; 0, or -1 when the list is full or memory is short. */
int obx_secret_add(const char *value);
/* Replaces every registered value in s (NUL-terminated, buffer of size). */
void obx_secret_scrub(char *s, size_t size);
/* Forgets every registered value (unit tests). */
void obx_secret_reset(void);
/* Replaces every occurrence of needle in s with "***", and a prefix of
 * needle (3 bytes or more) cut off at the end of a full buffer. */
void obx_scrub_value(char *s, size_t size, const char *needle);

#endif
