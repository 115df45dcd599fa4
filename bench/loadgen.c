/* bench_loadgen: the fixed-rate outbox load of bench/bench.py, in C so that
 * it holds its rate on a busy two-core machine beside PostgreSQL, Kafka and
 * the relay (the Python generator it replaces, bench/loadgen.py, lagged up to
 * 154 ms at 10k rows/s; issue 18). It is a benchmark program, never part of
 * the daemon.
 *
 *   bench_loadgen --dsn DSN --table T --aggtype A --step N --rate R
 *                 --seconds S --batch B --pad P --out FILE [--connections C]
 *
 * Commits floor(R*S/B)*B rows in autocommit multi-row INSERTs of B rows, one
 * due every B/R seconds from t0 = start + 50 ms, over C connections in libpq's
 * non-blocking mode: a transaction goes out at its due time on any idle
 * connection, or as soon as one is idle (that delay is its lag). C defaults
 * to 16: the server stalls commits for 10-150 ms now and then on a busy
 * two-core machine, and 4 connections at 1k-3k transactions/s were all busy
 * within such a stall, so lag measured the server, not the generator. Rows are
 * identical to loadgen.py's. Writes "SEQ COMMIT_EPOCH_S" lines to FILE in seq
 * order and one JSON summary to stdout; any error exits 1.
 *
 * Ownership: main owns every allocation and connection; all of it is freed on
 * its one cleanup path.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#define LG_MAX_CONNS 64
#define LG_STMT "lg_insert"

typedef struct {
    const char *dsn, *table, *aggtype, *out;
    long long step;
    double rate, seconds;
    int batch, pad, conns;
} lg_args_t;

typedef struct {
    PGconn *pg;
    long txn;      /* transaction in flight, -1 when idle */
    int flushing;  /* libpq still holds unsent output */
} lg_conn_t;

/* Per-transaction records, indexed by transaction number. */
typedef struct {
    double *lag;     /* sent - due, seconds */
    double *sent;    /* monotonic */
    double *done;    /* monotonic, result read */
    double *commit;  /* CLOCK_REALTIME epoch seconds, result read */
} lg_txns_t;

/* Parameter storage for one transaction, reused: PQsendQueryPrepared copies
 * the values into libpq's output buffer before it returns. */
typedef struct {
    const char **values;
    char *ids, *aggs, *vers, *payloads;
    size_t payload_cap;
} lg_params_t;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_loadgen --dsn DSN --table T --aggtype A --step N --rate R --seconds S\n"
                    "                     --batch B --pad P --out FILE [--connections C (16)]\n");
}

static int parse_args(int argc, char **argv, lg_args_t *a)
{
    static const struct option opts[] = {
        {"dsn", required_argument, NULL, 'd'},     {"table", required_argument, NULL, 't'},
        {"aggtype", required_argument, NULL, 'a'}, {"step", required_argument, NULL, 'n'},
        {"rate", required_argument, NULL, 'r'},    {"seconds", required_argument, NULL, 's'},
        {"batch", required_argument, NULL, 'b'},   {"pad", required_argument, NULL, 'p'},
        {"out", required_argument, NULL, 'o'},     {"connections", required_argument, NULL, 'c'},
        {NULL, 0, NULL, 0}};
    /* loadgen.py's defaults for batch and pad. */
    *a = (lg_args_t){.step = -1, .rate = -1, .seconds = -1, .batch = 1, .pad = 600, .conns = 16};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': a->dsn = optarg; break;
        case 't': a->table = optarg; break;
        case 'a': a->aggtype = optarg; break;
        case 'n': a->step = strtoll(optarg, NULL, 10); break;
        case 'r': a->rate = strtod(optarg, NULL); break;
        case 's': a->seconds = strtod(optarg, NULL); break;
        case 'b': a->batch = atoi(optarg); break;
        case 'p': a->pad = atoi(optarg); break;
        case 'o': a->out = optarg; break;
        case 'c': a->conns = atoi(optarg); break;
        default: return -1;
        }
    }
    /* 5 parameters a row, and the protocol caps a statement at 65535. */
    if (optind != argc || !a->dsn || !a->table || !a->aggtype || !a->out || a->step < 0 ||
        !(a->rate > 0) || !(a->seconds >= 0) || a->batch < 1 || a->batch > 65535 / 5 || a->pad < 0 ||
        a->conns < 1 || a->conns > LG_MAX_CONNS || a->step > 0xffffffffLL)
        return -1;
    return 0;
}

/* "INSERT INTO t (...) VALUES ($1::uuid,$2,$3,'Updated',$4,$5::jsonb), ..."
 * with the table name (optionally schema-qualified) quoted per part. */
static char *insert_sql(PGconn *pg, const char *table, int batch)
{
    const char *dot = strchr(table, '.');
    char *schema = NULL, *name = NULL, *sql = NULL;
    if (dot) {
        schema = PQescapeIdentifier(pg, table, (size_t)(dot - table));
        name = PQescapeIdentifier(pg, dot + 1, strlen(dot + 1));
    } else {
        name = PQescapeIdentifier(pg, table, strlen(table));
    }
    size_t cap = 256 + strlen(table) * 2 + (size_t)batch * 64;
    if (!name || (dot && !schema) || !(sql = malloc(cap))) goto out;
    int n = snprintf(sql, cap, "INSERT INTO %s%s%s (id, aggregatetype, aggregateid, type, aggregate_version, "
                               "payload) VALUES ", schema ? schema : "", schema ? "." : "", name);
    for (int r = 0; r < batch; r++) {
        int p = r * 5;
        n += snprintf(sql + n, cap - (size_t)n, "%s($%d::uuid,$%d,$%d,'Updated',$%d,$%d::jsonb)", r ? ", " : "",
                      p + 1, p + 2, p + 3, p + 4, p + 5);
    }
out:
    PQfreemem(schema);
    PQfreemem(name);
    return sql;
}

static void report_pg_error(const char *what, PGconn *pg, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(pg);
    fprintf(stderr, "bench_loadgen: %s failed (SQLSTATE %s): %s", what, state ? state : "none",
            msg && *msg ? msg : "no message\n");
}

static int params_init(lg_params_t *p, const lg_args_t *a)
{
    size_t b = (size_t)a->batch;
    p->payload_cap = (size_t)a->pad + 96;
    p->values = calloc(b * 5, sizeof(*p->values));
    p->ids = malloc(b * 64);
    p->aggs = malloc(b * 24);
    p->vers = malloc(b * 24);
    p->payloads = malloc(b * p->payload_cap);
    if (!p->values || !p->ids || !p->aggs || !p->vers || !p->payloads) return -1;
    /* The pad never changes: write it once per row slot, after the longest
     * possible head, and move only the head in front of it per row. */
    for (size_t r = 0; r < b; r++) {
        char *pl = p->payloads + r * p->payload_cap;
        memset(pl + 80, 'x', (size_t)a->pad);
        memcpy(pl + 80 + a->pad, "\"}", 3);
    }
    return 0;
}

static void params_free(lg_params_t *p)
{
    free(p->values);
    free(p->ids);
    free(p->aggs);
    free(p->vers);
    free(p->payloads);
}

/* The rows of transaction k, byte for byte what loadgen.py sends: json.dumps
 * with its default separators and ensure_ascii, so "Zoë" travels as
 * "Zo\u00eb" (plain ASCII whatever client_encoding is; jsonb stores the same
 * UTF-8 value either way). */
static void params_fill(lg_params_t *p, const lg_args_t *a, long k)
{
    for (int r = 0; r < a->batch; r++) {
        long long seq = (long long)k * a->batch + r;
        char *id = p->ids + r * 64, *agg = p->aggs + r * 24, *ver = p->vers + r * 24;
        char *pl = p->payloads + (size_t)r * p->payload_cap, head[80];
        snprintf(id, 64, "%08llx-0000-4000-8000-%012llx", a->step, seq);
        snprintf(agg, 24, "agg-%lld", seq % 5000);
        snprintf(ver, 24, "%lld", seq);
        int h = snprintf(head, sizeof(head), "{\"n\": %lld, \"name\": \"Zo\\u00eb \\\"q\\\" %lld\", \"pad\": \"",
                         seq, seq);
        memcpy(pl + 80 - h, head, (size_t)h);
        const char **v = p->values + r * 5;
        v[0] = id;
        v[1] = a->aggtype;
        v[2] = agg;
        v[3] = ver;
        v[4] = pl + 80 - h;
    }
}

static int conns_open(lg_conn_t *cs, const lg_args_t *a)
{
    for (int i = 0; i < a->conns; i++) {
        cs[i].txn = -1;
        cs[i].pg = PQconnectdb(a->dsn);
        if (PQstatus(cs[i].pg) != CONNECTION_OK) {
            /* The DSN may carry a password: never print it. */
            fprintf(stderr, "bench_loadgen: cannot connect to PostgreSQL: %s", PQerrorMessage(cs[i].pg));
            return -1;
        }
    }
    return 0;
}

/* Prepared once per connection, then non-blocking for the run. */
static int conns_prepare(lg_conn_t *cs, const lg_args_t *a, const char *sql)
{
    for (int i = 0; i < a->conns; i++) {
        PGresult *res = PQprepare(cs[i].pg, LG_STMT, sql, 0, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            report_pg_error("PREPARE of the INSERT", cs[i].pg, res);
            PQclear(res);
            return -1;
        }
        PQclear(res);
        if (PQsetnonblocking(cs[i].pg, 1) != 0) {
            report_pg_error("PQsetnonblocking", cs[i].pg, NULL);
            return -1;
        }
    }
    return 0;
}

static int conn_send(lg_conn_t *c, lg_params_t *p, const lg_args_t *a, long k)
{
    params_fill(p, a, k);
    if (!PQsendQueryPrepared(c->pg, LG_STMT, a->batch * 5, p->values, NULL, NULL, 0)) {
        report_pg_error("sending the INSERT", c->pg, NULL);
        return -1;
    }
    c->txn = k;
    c->flushing = PQflush(c->pg);
    if (c->flushing < 0) {
        report_pg_error("sending the INSERT", c->pg, NULL);
        return -1;
    }
    return 0;
}

/* Reads what arrived on a busy connection; it turns idle when its
 * transaction's result and the end of its results have been read. */
static int conn_read(lg_conn_t *c, lg_txns_t *t)
{
    if (!PQconsumeInput(c->pg)) {
        report_pg_error("reading the INSERT's result", c->pg, NULL);
        return -1;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (!res) {
            c->txn = -1;
            return 0;
        }
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            report_pg_error("INSERT", c->pg, res);
            PQclear(res);
            return -1;
        }
        t->done[c->txn] = mono_now();
        t->commit[c->txn] = wall_now();
        PQclear(res);
    }
    return 0;
}

/* The schedule: sends every due transaction on an idle connection, then
 * sleeps in ppoll() until the next one is due or a result arrives. ppoll's
 * nanosecond timeout keeps sub-millisecond intervals (30k rows/s in batches
 * of 10 is one every 333 us) on time without spinning. */
static int run(lg_conn_t *cs, const lg_args_t *a, lg_params_t *p, lg_txns_t *t, long ntxn, double t0)
{
    double interval = a->batch / a->rate;
    long next = 0, finished = 0;
    struct pollfd pfd[LG_MAX_CONNS];
    int who[LG_MAX_CONNS];
    while (finished < ntxn) {
        double now = mono_now();
        int idle = 0;
        for (int i = 0; i < a->conns; i++) {
            if (cs[i].txn >= 0) continue;
            if (next < ntxn && t0 + next * interval <= now) {
                double lag = now - (t0 + next * interval);
                t->lag[next] = lag > 0 ? lag : 0;
                t->sent[next] = now;
                if (conn_send(&cs[i], p, a, next) < 0) return -1;
                next++;
                now = mono_now();
            } else {
                idle++;
            }
        }
        int n = 0;
        for (int i = 0; i < a->conns; i++) {
            if (cs[i].txn < 0) continue;
            pfd[n] = (struct pollfd){.fd = PQsocket(cs[i].pg), .events = POLLIN | (cs[i].flushing ? POLLOUT : 0)};
            who[n++] = i;
        }
        /* Only an idle connection can take the next transaction: with none,
         * wait for a result (the wait is that transaction's lag). */
        double wait = 1.0;
        if (idle && next < ntxn) wait = t0 + next * interval - now;
        if (wait < 0) wait = 0;
        struct timespec ts = {.tv_sec = (time_t)wait, .tv_nsec = (long)((wait - (time_t)wait) * 1e9)};
        int rc = ppoll(pfd, (nfds_t)n, &ts, NULL);
        if (rc < 0) {
            if (errno == EINTR) continue;
            perror("bench_loadgen: ppoll");
            return -1;
        }
        for (int j = 0; j < n && rc > 0; j++) {
            lg_conn_t *c = &cs[who[j]];
            if (!pfd[j].revents) continue;
            if (c->flushing && (pfd[j].revents & (POLLOUT | POLLERR | POLLHUP)) && (c->flushing = PQflush(c->pg)) < 0) {
                report_pg_error("sending the INSERT", c->pg, NULL);
                return -1;
            }
            if (pfd[j].revents & (POLLIN | POLLERR | POLLHUP)) {
                long k = c->txn;
                if (conn_read(c, t) < 0) return -1;
                if (c->txn < 0 && k >= 0) finished++;
            }
        }
    }
    return 0;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Nearest-rank percentile of a sorted array, in ms. */
static double pct_ms(const double *v, long n, double q)
{
    if (n == 0) return 0;
    long i = (long)ceil(q * (double)n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i] * 1000.0;
}

static int write_out(const lg_args_t *a, const lg_txns_t *t, long ntxn)
{
    FILE *f = fopen(a->out, "w");
    if (!f) {
        fprintf(stderr, "bench_loadgen: cannot write %s: %s\n", a->out, strerror(errno));
        return -1;
    }
    for (long k = 0; k < ntxn; k++)
        for (int r = 0; r < a->batch; r++) fprintf(f, "%lld %.6f\n", (long long)k * a->batch + r, t->commit[k]);
    if (fclose(f) != 0) {
        fprintf(stderr, "bench_loadgen: cannot write %s: %s\n", a->out, strerror(errno));
        return -1;
    }
    return 0;
}

static void print_summary(const lg_args_t *a, lg_txns_t *t, long ntxn, double t0)
{
    double last = t0;
    for (long k = 0; k < ntxn; k++) {
        if (t->done[k] > last) last = t->done[k];
        t->sent[k] = t->done[k] - t->sent[k]; /* now send -> result */
    }
    qsort(t->lag, (size_t)ntxn, sizeof(double), cmp_double);
    qsort(t->sent, (size_t)ntxn, sizeof(double), cmp_double);
    long long rows = (long long)ntxn * a->batch;
    double secs = last - t0, lmax = pct_ms(t->lag, ntxn, 1.0);
    printf("{\"rows\": %lld, \"seconds\": %.3f, \"achieved_rate\": %.1f, \"target_rate\": %.10g, \"batch\": %d, "
           "\"connections\": %d, \"lag_ms\": {\"p50\": %.3f, \"p99\": %.3f, \"max\": %.3f}, \"max_behind_ms\": %.3f, "
           "\"commit_ms\": {\"p50\": %.3f, \"p99\": %.3f, \"max\": %.3f}}\n",
           rows, secs, secs > 0 ? rows / secs : 0.0, a->rate, a->batch, a->conns, pct_ms(t->lag, ntxn, 0.5),
           pct_ms(t->lag, ntxn, 0.99), lmax, lmax, pct_ms(t->sent, ntxn, 0.5), pct_ms(t->sent, ntxn, 0.99),
           pct_ms(t->sent, ntxn, 1.0));
}

int main(int argc, char **argv)
{
    lg_args_t a;
    if (parse_args(argc, argv, &a) < 0) {
        usage();
        return 2;
    }
    /* floor(R*S) rows, then whole transactions, as loadgen.py counts. */
    long long total = (long long)floor(a.rate * a.seconds) / a.batch * a.batch;
    long ntxn = (long)(total / a.batch);
    int rc = 1;
    lg_conn_t cs[LG_MAX_CONNS] = {0};
    lg_params_t p = {0};
    lg_txns_t t = {0};
    char *sql = NULL;
    size_t sz = (size_t)(ntxn ? ntxn : 1) * sizeof(double);
    if (!(t.lag = malloc(sz)) || !(t.sent = malloc(sz)) || !(t.done = malloc(sz)) || !(t.commit = malloc(sz)) ||
        params_init(&p, &a) < 0) {
        fprintf(stderr, "bench_loadgen: out of memory\n");
        goto out;
    }
    if (conns_open(cs, &a) < 0) goto out;
    if (!(sql = insert_sql(cs[0].pg, a.table, a.batch))) {
        fprintf(stderr, "bench_loadgen: cannot build the INSERT: %s", PQerrorMessage(cs[0].pg));
        goto out;
    }
    if (conns_prepare(cs, &a, sql) < 0) goto out;
    double t0 = mono_now() + 0.05;
    if (run(cs, &a, &p, &t, ntxn, t0) < 0 || write_out(&a, &t, ntxn) < 0) goto out;
    print_summary(&a, &t, ntxn, t0);
    rc = 0;
out:
    for (int i = 0; i < a.conns; i++) PQfinish(cs[i].pg);
    free(sql);
    params_free(&p);
    free(t.lag);
    free(t.sent);
    free(t.done);
    free(t.commit);
    return rc;
}
