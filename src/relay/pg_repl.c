#include "pg_repl.h"
#include "clock.h"
#include "pg.h"

#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Seconds from 1970-01-01 to 2000-01-01. */
#define PG_EPOCH_OFFSET_US (INT64_C(946684800) * 1000000)

struct obx_repl_s {
    PGconn *conn;
    char *copybuf;
};

int64_t obx_repl_now(void) { return obx_now_us() - PG_EPOCH_OFFSET_US; }

static uint64_t get_u64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | (uint8_t)p[i];
    return v;
}

static void put_u64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (char)(v & 0xff);
        v >>= 8;
    }
}

/* A failure the connection itself reports (no server result). */
static void conn_error(obx_err_t *err, PGconn *c, const char *what)
{
    obx_pg_error(err, c, NULL);
    obx_err_prefix(err, "%s", what);
}

obx_repl_t *obx_repl_connect(const char *conninfo, obx_err_t *err)
{
    obx_repl_t *r = calloc(1, sizeof(*r));
    if (!r) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return NULL;
    }
    r->conn = obx_pg_connect(conninfo, "pg.conninfo", OBX_PG_REPLICATION, err);
    if (!r->conn) {
        obx_err_prefix(err, "replication connection failed");
        obx_repl_destroy(r);
        return NULL;
    }
    /* wal2json prints values with this session's output settings, which a
     * role or database default may change: with bytea_output = escape it
     * strips two real bytes (it expects "\x"), a non-ISO DateStyle makes
     * timestamptz unreadable. Pin the wire format. */
    if (obx_pg_command(r->conn, "SET bytea_output = 'hex'; SET datestyle = 'ISO'; SET timezone = 'UTC'", err) != 0) {
        obx_err_prefix(err, "cannot set the replication session's output format");
        obx_repl_destroy(r);
        return NULL;
    }
    return r;
}

void obx_repl_destroy(obx_repl_t *r)
{
    if (!r) return;
    if (r->copybuf) PQfreemem(r->copybuf);
    if (r->conn) PQfinish(r->conn);
    free(r);
}

int obx_repl_socket(const obx_repl_t *r) { return PQsocket(r->conn); }

/* START_REPLICATION's text: the slot quoted as an identifier, option
 * values as literals with quotes doubled. malloc'd; NULL on OOM. */
static char *start_sql(const char *slot, obx_lsn_t start, const char *const *opts, size_t n_opts)
{
    char *ident = obx_pg_quote_ident(slot);
    if (!ident) return NULL;
    size_t cap = 512 + strlen(ident);
    for (size_t i = 0; i < n_opts; i++) cap += strlen(opts[2 * i]) + 2 * strlen(opts[2 * i + 1]) + 16;
    char *sql = malloc(cap);
    if (!sql) {
        free(ident);
        return NULL;
    }
    size_t n = (size_t)snprintf(sql, cap, "START_REPLICATION SLOT %s LOGICAL " OBX_LSN_FMT, ident, OBX_LSN_ARGS(start));
    free(ident);
    for (size_t i = 0; i < n_opts; i++) {
        n += (size_t)snprintf(sql + n, cap - n, "%s\"%s\" '", i ? ", " : " (", opts[2 * i]);
        for (const char *v = opts[2 * i + 1]; *v; v++) {
            if (*v == '\'') sql[n++] = '\'';
            sql[n++] = *v;
        }
        sql[n++] = '\'';
        sql[n] = '\0';
    }
    if (n_opts) {
        sql[n++] = ')';
        sql[n] = '\0';
    }
    return sql;
}

int obx_repl_start(obx_repl_t *r, const char *slot, obx_lsn_t start, const char *const *opts,
                   size_t n_opts, obx_err_t *err)
{
    char *sql = start_sql(slot, start, opts, n_opts);
    if (!sql) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory");
        return -1;
    }
    PGresult *res = PQexec(r->conn, sql);
    free(sql);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        obx_pg_error(err, r->conn, res); /* SQLSTATE: 55006 in use, 42704 missing, 55000 invalidated */
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

/* The COPY ended: the server's final result says why (with its SQLSTATE). */
static void stream_ended(obx_repl_t *r, obx_err_t *err)
{
    PGresult *res = PQgetResult(r->conn);
    if (res && PQresultStatus(res) != PGRES_COMMAND_OK) {
        obx_pg_error(err, r->conn, res);
        obx_err_prefix(err, "the server ended the stream");
    } else {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "the server ended the stream");
    }
    PQclear(res);
}

int obx_repl_next(obx_repl_t *r, obx_repl_msg_t *msg, int timeout_ms, obx_err_t *err)
{
    if (r->copybuf) {
        PQfreemem(r->copybuf);
        r->copybuf = NULL;
    }
    for (int waited = 0;; waited = 1) {
        int len = PQgetCopyData(r->conn, &r->copybuf, 1);
        if (len == 0) {
            if (waited) return 0;
            struct pollfd pfd = {.fd = PQsocket(r->conn), .events = POLLIN};
            int pr = poll(&pfd, 1, timeout_ms);
            if (pr < 0) return 0; /* EINTR: let the caller look at its flags */
            if (pr == 0) return 0;
            if (!PQconsumeInput(r->conn)) {
                conn_error(err, r->conn, "reading from the slot");
                return -1;
            }
            continue;
        }
        if (len == -1) {
            stream_ended(r, err);
            return -1;
        }
        if (len < 0) {
            conn_error(err, r->conn, "reading from the slot");
            return -1;
        }
        const char *b = r->copybuf;
        if (b[0] == 'w' && len >= 25) {
            msg->kind = OBX_REPL_XLOGDATA;
            msg->data_start = get_u64(b + 1);
            msg->wal_end = get_u64(b + 9);
            msg->send_time = (int64_t)get_u64(b + 17);
            msg->reply_requested = 0;
            msg->data = b + 25;
            msg->len = (size_t)len - 25;
            return 1;
        }
        if (b[0] == 'k' && len >= 18) {
            msg->kind = OBX_REPL_KEEPALIVE;
            msg->data_start = 0;
            msg->wal_end = get_u64(b + 1);
            msg->send_time = (int64_t)get_u64(b + 9);
            msg->reply_requested = b[17] != 0;
            msg->data = NULL;
            msg->len = 0;
            return 1;
        }
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_RETRIABLE, 0, "unexpected replication message '%c' of %d bytes", b[0], len);
        return -1;
    }
}

int obx_repl_send_status(obx_repl_t *r, obx_lsn_t write, obx_lsn_t flush, obx_lsn_t apply, obx_err_t *err)
{
    char buf[1 + 8 * 4 + 1];
    buf[0] = 'r';
    put_u64(buf + 1, write);
    put_u64(buf + 9, flush);
    put_u64(buf + 17, apply);
    put_u64(buf + 25, (uint64_t)obx_repl_now());
    buf[33] = 0;
    if (PQputCopyData(r->conn, buf, sizeof(buf)) <= 0 || PQflush(r->conn) != 0) {
        conn_error(err, r->conn, "sending status update");
        return -1;
    }
    return 0;
}

int obx_repl_end(obx_repl_t *r, obx_err_t *err)
{
    if (PQputCopyEnd(r->conn, NULL) <= 0 || PQflush(r->conn) != 0) {
        conn_error(err, r->conn, "ending the stream");
        return -1;
    }
    /* Drain what the server still sends until it confirms the end of COPY. */
    int64_t deadline = obx_mono_ms() + 5000;
    for (;;) {
        char *buf = NULL;
        int len = PQgetCopyData(r->conn, &buf, 1);
        if (buf) PQfreemem(buf);
        if (len > 0) continue;
        if (len == -1) break;
        if (len < -1 || obx_mono_ms() > deadline) {
            conn_error(err, r->conn, "ending the stream");
            return -1;
        }
        struct pollfd pfd = {.fd = PQsocket(r->conn), .events = POLLIN};
        if (poll(&pfd, 1, 100) > 0 && !PQconsumeInput(r->conn)) {
            conn_error(err, r->conn, "ending the stream");
            return -1;
        }
    }
    PGresult *res;
    while ((res = PQgetResult(r->conn)) != NULL) PQclear(res);
    return 0;
}
