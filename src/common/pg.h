/* The one way outboxd talks SQL to PostgreSQL: a connection builder with
 * outboxd's timeouts and keepalives for every conninfo (relay, replication,
 * aux, snapshot, apply, doctor), an exec helper that turns any failure into
 * an obx_err_t classified by SQLSTATE, and identifier quoting.
 *
 * Connections are the caller's: PQfinish() them. Results returned are the
 * caller's: PQclear() them. */
#ifndef OBX_PG_H
#define OBX_PG_H

#include <libpq-fe.h>
#include <stddef.h>

#include "err.h"

typedef enum {
    OBX_PG_NORMAL = 0,
    OBX_PG_REPLICATION /* replication=database, for START_REPLICATION */
} obx_pg_mode_t;

/* Connects with conninfo (a keyword string or a URI; multi-host lists and
 * target_session_attrs work). `key` names the config key in messages
 * ("pg.conninfo", "apply.conninfo"). NULL with err (libpq's message is
 * passed through obx_conninfo_scrub, so it carries neither the conninfo
 * text nor any of its secrets): fatal, exit 2, when the server refused a
 * password (the server asked for one) or, with an sslmode that requires
 * TLS, the TLS handshake failed (CA, certificate, host name), each after
 * two more attempts 0.5 s and 1 s apart; else retriable. libpq gives no
 * SQLSTATE for a failed connection: the class comes from
 * PQconnectionUsedPassword/NeedsPassword and the state a failed attempt
 * was in, never from the message. */
PGconn *obx_pg_connect(const char *conninfo, const char *key, obx_pg_mode_t mode, obx_err_t *err);

/* Runs sql with text parameters. Returns the result when it is TUPLES_OK or
 * COMMAND_OK, else NULL with err filled by obx_pg_error(). */
PGresult *obx_pg_exec(PGconn *c, const char *sql, int nparams, const char *const *params, obx_err_t *err);
/* Runs a command and clears its result: 0, or -1 with err. */
int obx_pg_command(PGconn *c, const char *sql, obx_err_t *err);

/* Fills err from a failed result (r may be NULL: the connection's error):
 * SQLSTATE, class from obx_pg_classify(), the server's message. */
void obx_pg_error(obx_err_t *err, PGconn *c, const PGresult *r);

/* The class of a SQLSTATE. NULL (no server answer, connection gone),
 * connection, shutdown, resources, lock and serialization failures are
 * retriable; data exceptions and integrity violations (22, 23), 21000 and
 * 54000 belong to a row (poison); authorization, unknown objects, syntax
 * and feature errors (28, 3D, 3F, 42, 0A) need an operator (fatal, exit 2). */
obx_err_class_t obx_pg_classify(const char *sqlstate, int connection_ok, int *exit_code);

/* SQLSTATEs outboxd acts on (PostgreSQL's errcodes.txt). */
#define OBX_SQLSTATE_UNDEFINED_OBJECT "42704"  /* e.g. replication slot does not exist */
#define OBX_SQLSTATE_OBJECT_IN_USE "55006"     /* slot active for another PID */
#define OBX_SQLSTATE_NOT_IN_PREREQ "55000"     /* slot invalidated / cannot get changes */
#define OBX_SQLSTATE_DUPLICATE_OBJECT "42710"  /* slot already exists */

/* "name" with embedded quotes doubled, into a malloc'd string the caller
 * frees; NULL on allocation failure. */
char *obx_pg_quote_ident(const char *name);
/* schema.table, each part quoted; malloc'd, NULL on allocation failure. */
char *obx_pg_quote_qualified(const char *schema, const char *table);

#endif
