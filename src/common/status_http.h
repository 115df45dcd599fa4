/* The status HTTP port (libmicrohttpd, its own thread):
 *   /healthz  200 while the main loop runs (a stalled loop fails it)
 *   /readyz   200 while streaming with Kafka reachable, or as a hot standby
 *             (body "standby: ..."); 503 with the reason otherwise
 *   /metrics  Prometheus text format
 *   /status   the same as JSON
 * Serves only what obx_metrics() holds: no config, no secrets.
 *
 * Probes must get through while other clients misbehave (idle keep-alive
 * connections, a port scanner, a stuck scraper): a connection idle for
 * OBX_STATUS_IDLE_TIMEOUT_S is closed, at most OBX_STATUS_MAX_PER_IP come
 * from one address (MHD accepts and at once closes the rest), and the
 * total is bounded well above what any one address can hold. Kubernetes
 * probes come from the kubelet's (node) address and scrapes from
 * Prometheus' pod address: the kubelet keeps at most one connection per
 * probe (liveness, readiness, startup) open at a time, so a per-address
 * limit of 8 leaves it room even with a scraper on the node's address;
 * see docs/security.md. */
#ifndef OBX_STATUS_HTTP_H
#define OBX_STATUS_HTTP_H

#include <stddef.h>

typedef struct obx_status_http_s obx_status_http_t;

#define OBX_STATUS_IDLE_TIMEOUT_S 2
#define OBX_STATUS_MAX_PER_IP 8
#define OBX_STATUS_MAX_CONNECTIONS 512

/* "host:port" or "[IPv6]:port", port 1-65535: host (without brackets)
 * into host, the port into *port. 0, or -1 with errstr naming the key. */
int obx_status_listen_parse(const char *listen, char *host, size_t host_size, int *port, char *errstr,
                            size_t errstr_size);

/* listen: as obx_status_listen_parse (IPv4, IPv6 or a name); "" disables the port (returns NULL
 * without error). NULL + errstr on failure. Caller owns the result. */
obx_status_http_t *obx_status_http_start(const char *listen, char *errstr, size_t errstr_size);
void obx_status_http_stop(obx_status_http_t *h);

#endif
