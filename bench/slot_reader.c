/* bench_slot_reader: the decoding limit of bench/bench.py, the rate at which
 * one logical slot can be read by a client that does nothing but receive and
 * acknowledge. pg_recvlogical also writes a file and was beaten by outboxd in
 * some runs (issue 18), so it measured its own costs, not the slot's. This is
 * a benchmark program, never part of the daemon.
 *
 *   bench_slot_reader --dsn DSN --slot S --end-lsn X/Y [--option NAME=VALUE]...
 *
 * Streams the slot from its confirmed position, counts XLogData messages and
 * their payload bytes, confirms the received position every 100 ms and when
 * asked, and stops at end-lsn by pg_recvlogical --endpos's rule: an XLogData
 * at or past it, or a keepalive whose walEnd reached it (the walsender sends
 * that only once everything before it is decoded and sent). Prints one JSON
 * object; any error names what failed and exits 1.
 *
 * Ownership: main owns the connection and the START_REPLICATION command and
 * frees both on its one cleanup path.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <libpq-fe.h>

#define SR_STATUS_INTERVAL_US 100000
/* The walsender sends and flushes every message on its own: a reader that
 * wakes for each one (as pg_recvlogical does) spends ~1.2 s of CPU on 200k
 * rows and makes the walsender wake it 200k times. Woken by the kernel only
 * once 64 KiB are queued, it reads in large chunks (half the CPU, measured);
 * the 1 ms poll cap bounds how long a smaller tail (the backlog's last
 * messages, a keepalive asking for a reply) waits. */
#define SR_RCVLOWAT 65536
#define SR_POLL_CAP_US 1000
#define SR_MAX_OPTIONS 64
/* Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01. */
#define SR_PG_EPOCH_US 946684800000000LL

typedef struct {
    const char *dsn, *slot;
    uint64_t end;
    const char *opts[SR_MAX_OPTIONS];
    int nopts;
} sr_args_t;

typedef struct {
    long long messages, bytes;
    uint64_t received;  /* highest position received: written = flushed = applied */
    double t_first, t_last;
    int64_t last_status_us;
} sr_state_t;

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t get_be64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | (unsigned char)p[i];
    return v;
}

static void put_be64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (char)(v & 0xff);
}

static int parse_lsn(const char *s, uint64_t *out)
{
    unsigned int hi, lo;
    int n = 0;
    if (sscanf(s, "%X/%X%n", &hi, &lo, &n) != 2 || s[n] != '\0') return -1;
    *out = ((uint64_t)hi << 32) | lo;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_slot_reader --dsn DSN --slot S --end-lsn X/Y [--option NAME=VALUE]...\n");
}

static int parse_args(int argc, char **argv, sr_args_t *a)
{
    static const struct option opts[] = {{"dsn", required_argument, NULL, 'd'},
                                         {"slot", required_argument, NULL, 's'},
                                         {"end-lsn", required_argument, NULL, 'e'},
                                         {"option", required_argument, NULL, 'o'},
                                         {NULL, 0, NULL, 0}};
    const char *end = NULL;
    int c;
    memset(a, 0, sizeof(*a));
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': a->dsn = optarg; break;
        case 's': a->slot = optarg; break;
        case 'e': end = optarg; break;
        case 'o':
            if (a->nopts == SR_MAX_OPTIONS) return -1;
            a->opts[a->nopts++] = optarg;
            break;
        default: return -1;
        }
    }
    if (optind != argc || !a->dsn || !a->slot || !end) return -1;
    if (parse_lsn(end, &a->end) < 0) {
        fprintf(stderr, "bench_slot_reader: --end-lsn %s is not an LSN (X/Y)\n", end);
        return -1;
    }
    return 0;
}

/* The replication grammar's quoting (repl_scanner.l): "ident" and 'literal',
 * each with its quote doubled; backslashes are literal there, so
 * PQescapeLiteral's E'' form would be wrong. */
static char *append_quoted(char *o, const char *s, size_t len, char q)
{
    *o++ = q;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == q) *o++ = q;
        *o++ = s[i];
    }
    *o++ = q;
    return o;
}

static char *start_command(const sr_args_t *a)
{
    size_t cap = 64 + 2 * strlen(a->slot);
    for (int i = 0; i < a->nopts; i++) cap += 8 + 2 * strlen(a->opts[i]);
    char *cmd = malloc(cap), *o = cmd;
    if (!cmd) return NULL;
    o += sprintf(o, "START_REPLICATION SLOT ");
    o = append_quoted(o, a->slot, strlen(a->slot), '"');
    o += sprintf(o, " LOGICAL 0/0");
    for (int i = 0; i < a->nopts; i++) {
        const char *opt = a->opts[i], *eq = strchr(opt, '=');
        o += sprintf(o, i ? ", " : " (");
        o = append_quoted(o, opt, eq ? (size_t)(eq - opt) : strlen(opt), '"');
        if (eq) {
            *o++ = ' ';
            o = append_quoted(o, eq + 1, strlen(eq + 1), '\'');
        }
    }
    if (a->nopts) *o++ = ')';
    *o = '\0';
    return cmd;
}

/* 'r' standby status update: write = flush = apply. Queued in non-blocking
 * mode; the loop flushes what the socket did not take. */
static int send_status(PGconn *pg, sr_state_t *st, uint64_t pos)
{
    char msg[1 + 8 * 4 + 1];
    int64_t now_us = mono_us();
    msg[0] = 'r';
    put_be64(msg + 1, pos);
    put_be64(msg + 9, pos);
    put_be64(msg + 17, pos);
    put_be64(msg + 25, (uint64_t)((int64_t)(wall_now() * 1e6) - SR_PG_EPOCH_US));
    msg[33] = 0;
    if (PQputCopyData(pg, msg, sizeof(msg)) <= 0 || PQflush(pg) < 0) {
        fprintf(stderr, "bench_slot_reader: sending a status update failed: %s", PQerrorMessage(pg));
        return -1;
    }
    st->last_status_us = now_us;
    return 0;
}

/* One copy message. Returns 1 when end-lsn is reached, 0 to go on, -1 on a
 * malformed message. */
static int handle_message(PGconn *pg, const sr_args_t *a, sr_state_t *st, const char *buf, int len)
{
    if (buf[0] == 'w' && len >= 25) {
        uint64_t start = get_be64(buf + 1);
        double now = wall_now();
        if (st->messages++ == 0) st->t_first = now;
        st->t_last = now;
        st->bytes += len - 25;
        if (start > st->received) st->received = start;
        return start >= a->end;
    }
    if (buf[0] == 'k' && len >= 18) {
        uint64_t wal_end = get_be64(buf + 1);
        int reached = wal_end >= a->end;
        if (((reached && st->messages > 0) || buf[17]) && send_status(pg, st, st->received) < 0) return -1;
        return reached;
    }
    fprintf(stderr, "bench_slot_reader: unexpected copy message '%c' of %d bytes\n", buf[0], len);
    return -1;
}

/* Reads until end-lsn: drains libpq's buffer, reads the socket once more
 * without waiting (a chunk may hold more than libpq's buffer took), and only
 * then sleeps in ppoll() until 64 KiB are queued, 1 ms passed or the next
 * status update is due. */
static int stream(PGconn *pg, const sr_args_t *a, sr_state_t *st)
{
    int lowat = SR_RCVLOWAT, tried = 0;
    if (setsockopt(PQsocket(pg), SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) < 0) {
        perror("bench_slot_reader: SO_RCVLOWAT");
        return -1;
    }
    st->last_status_us = mono_us();
    for (;;) {
        char *buf = NULL;
        int len = PQgetCopyData(pg, &buf, 1);
        if (len > 0) {
            tried = 0;
            int r = handle_message(pg, a, st, buf, len);
            PQfreemem(buf);
            if (r != 0) return r < 0 ? -1 : 0;
        } else if (len == 0) {
            int64_t now = mono_us(), due = st->last_status_us + SR_STATUS_INTERVAL_US;
            if (now >= due) {
                if (send_status(pg, st, st->received) < 0) return -1;
                continue;
            }
            if (!tried) {
                tried = 1;
            } else {
                tried = 0;
                struct pollfd pfd = {.fd = PQsocket(pg), .events = POLLIN};
                if (PQflush(pg) > 0) pfd.events |= POLLOUT;
                int64_t wait = due - now < SR_POLL_CAP_US ? due - now : SR_POLL_CAP_US;
                struct timespec ts = {.tv_sec = wait / 1000000, .tv_nsec = (wait % 1000000) * 1000};
                if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR) {
                    perror("bench_slot_reader: poll");
                    return -1;
                }
            }
            if (!PQconsumeInput(pg)) {
                fprintf(stderr, "bench_slot_reader: reading the stream failed: %s", PQerrorMessage(pg));
                return -1;
            }
        } else {
            PGresult *res = PQgetResult(pg);
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            fprintf(stderr, "bench_slot_reader: the stream of slot \"%s\" ended before %X/%X (SQLSTATE %s): %s",
                    a->slot, (unsigned)(a->end >> 32), (unsigned)a->end, state ? state : "none",
                    res ? PQresultErrorMessage(res) : PQerrorMessage(pg));
            PQclear(res);
            return -1;
        }
    }
}

/* pg_recvlogical's clean exit: a last confirmation, CopyDone, then whatever
 * the server still sends is read and dropped, errors included. */
static void finish(PGconn *pg, const sr_args_t *a, sr_state_t *st)
{
    char *buf;
    PGresult *res;
    send_status(pg, st, st->received > a->end ? st->received : a->end);
    PQsetnonblocking(pg, 0);
    if (PQputCopyEnd(pg, NULL) <= 0 || PQflush(pg) != 0) return;
    while ((res = PQgetResult(pg)) != NULL) {
        int copy = PQresultStatus(res) == PGRES_COPY_OUT || PQresultStatus(res) == PGRES_COPY_BOTH;
        PQclear(res);
        if (!copy) continue;
        int len;
        while ((len = PQgetCopyData(pg, &buf, 0)) > 0) PQfreemem(buf);
        if (len == -2) return;
    }
}

static void report_start_error(const sr_args_t *a, PGconn *pg, PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(pg), *what = "START_REPLICATION failed";
    /* By SQLSTATE, never by the (possibly translated) message. */
    if (state && strcmp(state, "42704") == 0) what = "does not exist";
    else if (state && strcmp(state, "55006") == 0) what = "is active for another process";
    fprintf(stderr, "bench_slot_reader: slot \"%s\" %s (SQLSTATE %s): %s", a->slot, what, state ? state : "none",
            msg && *msg ? msg : "no message\n");
}

int main(int argc, char **argv)
{
    double t_start = wall_now();
    sr_args_t a;
    if (parse_args(argc, argv, &a) < 0) {
        usage();
        return 2;
    }
    /* The DSN is expanded first, so replication=database after it wins. */
    const char *keys[] = {"dbname", "replication", "fallback_application_name", NULL};
    const char *vals[] = {a.dsn, "database", "bench_slot_reader", NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    PGresult *res = NULL;
    char *cmd = NULL;
    sr_state_t st = {0};
    int rc = 1;
    if (PQstatus(pg) != CONNECTION_OK) {
        /* The DSN may carry a password: never print it. */
        fprintf(stderr, "bench_slot_reader: cannot connect to PostgreSQL: %s", PQerrorMessage(pg));
        goto out;
    }
    if (!(cmd = start_command(&a))) {
        fprintf(stderr, "bench_slot_reader: out of memory\n");
        goto out;
    }
    res = PQexec(pg, cmd);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        report_start_error(&a, pg, res);
        goto out;
    }
    PQclear(res);
    res = NULL;
    if (PQsetnonblocking(pg, 1) != 0 || stream(pg, &a, &st) < 0) goto out;
    /* finish() waits in libpq's poll() without a timeout: a low-water mark
     * above the last few bytes would wait forever. */
    int one = 1;
    setsockopt(PQsocket(pg), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    finish(pg, &a, &st);
    double t_end = wall_now();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"messages\": %lld, \"bytes\": %lld, \"t_start\": %.6f, \"t_first_data\": %.6f, \"t_last_data\": %.6f, "
           "\"t_end\": %.6f, \"wall_s\": %.6f, \"cpu_s\": %.3f, \"peak_rss_kb\": %ld}\n",
           st.messages, st.bytes, t_start, st.t_first, st.t_last, t_end,
           st.messages ? st.t_last - t_start : 0.0, cpu, ru.ru_maxrss);
    rc = 0;
out:
    PQclear(res);
    free(cmd);
    PQfinish(pg);
    return rc;
}
