#include "status_http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "clock.h"
#include "err.h"
#include "log.h"
#include "metrics.h"

struct obx_status_http_s {
    struct MHD_Daemon *d;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *ctype, char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **state)
{
    (void)cls, (void)version, (void)upload, (void)upload_size, (void)state;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        char *b = strdup("method not allowed\n");
        return b ? reply(c, 405, "text/plain", b, strlen(b)) : MHD_NO;
    }
    char *body = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&body, &len);
    if (!f) return MHD_NO;
    unsigned code = 200;
    const char *ctype = "text/plain; charset=utf-8";
    char reason[256];
    if (strcmp(url, "/healthz") == 0) {
        int live = obx_metrics_live(30000);
        code = live ? 200 : 503;
        fputs(live ? "ok\n" : "stalled: main loop has not run for over 30 s\n", f);
    } else if (strcmp(url, "/readyz") == 0) {
        code = obx_metrics_ready(reason, sizeof(reason)) ? 200 : 503;
        fprintf(f, "%s\n", reason);
    } else if (strcmp(url, "/metrics") == 0) {
        ctype = "text/plain; version=0.0.4; charset=utf-8";
        obx_metrics_render_prometheus(f);
    } else if (strcmp(url, "/status") == 0) {
        ctype = "application/json";
        obx_metrics_render_json(f);
    } else if (strcmp(url, "/") == 0) {
        fputs("outboxd: /healthz /readyz /metrics /status\n", f);
    } else {
        code = 404;
        fputs("not found: /healthz /readyz /metrics /status\n", f);
    }
    fclose(f);
    return reply(c, code, ctype, body, len);
}

/* libmicrohttpd's own messages ("Server reached connection limit", one per
 * refused connection) go through the logger at debug level, at most one
 * line a second with a count of the ones left out: never raw to stderr,
 * where a flood of refused probes would bury the JSON log. */
static atomic_llong mhd_last_ms;
static atomic_ulong mhd_dropped;

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    int64_t now = obx_mono_ms();
    long long last = atomic_load(&mhd_last_ms);
    if ((last && now - last < 1000) || !atomic_compare_exchange_strong(&mhd_last_ms, &last, (long long)now)) {
        atomic_fetch_add(&mhd_dropped, 1);
        return;
    }
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    obx_chomp(msg);
    unsigned long dropped = atomic_exchange(&mhd_dropped, 0);
    obx_debug("status_http", "%s (%lu similar messages in the last second not shown)", msg, dropped);
}

/* Room for OBX_STATUS_MAX_CONNECTIONS sockets beside PostgreSQL's and
 * librdkafka's: a low soft RLIMIT_NOFILE (1024 in many shells) would make
 * accept() fail before MHD's own limit applies. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= 4096 || rl.rlim_cur == rl.rlim_max) return;
    rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
    setrlimit(RLIMIT_NOFILE, &rl);
}

int obx_status_listen_parse(const char *listen, char *host, size_t host_size, int *port, char *errstr,
                            size_t errstr_size)
{
    const char *h = listen, *colon;
    size_t hl;
    if (listen[0] == '[') { /* [IPv6]:port */
        const char *close = strchr(listen, ']');
        colon = close && close[1] == ':' ? close + 1 : NULL;
        h = listen + 1;
        hl = close ? (size_t)(close - h) : 0;
    } else {
        colon = strrchr(listen, ':');
        hl = colon ? (size_t)(colon - listen) : 0;
        if (colon && memchr(listen, ':', hl)) colon = NULL; /* a bare IPv6 address needs brackets */
    }
    char *end = NULL;
    long p = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || hl == 0 || hl >= host_size || !isdigit((unsigned char)colon[1]) || *end || p < 1 || p > 65535) {
        snprintf(errstr, errstr_size,
                 "status.listen = \"%s\": use host:port with a port 1-65535, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or "
                 "[::1]:8080 (an empty value turns the status port off)", listen);
        return -1;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

obx_status_http_t *obx_status_http_start(const char *listen, char *errstr, size_t errstr_size)
{
    if (!listen || !*listen) return NULL;
    char host[256], portstr[8];
    int port;
    if (obx_status_listen_parse(listen, host, sizeof(host), &port, errstr, errstr_size) != 0) return NULL;
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (gai != 0) {
        snprintf(errstr, errstr_size, "status.listen = \"%s\": %s", listen, gai_strerror(gai));
        return NULL;
    }
    struct sockaddr_storage sa;
    memcpy(&sa, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    obx_status_http_t *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    raise_fd_limit();
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (sa.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handler, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)OBX_STATUS_IDLE_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)OBX_STATUS_MAX_CONNECTIONS,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)OBX_STATUS_MAX_PER_IP,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!h->d) {
        snprintf(errstr, errstr_size, "status.listen = \"%s\": cannot listen (address in use or not local?)", listen);
        free(h);
        return NULL;
    }
    return h;
}

void obx_status_http_stop(obx_status_http_t *h)
{
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}
