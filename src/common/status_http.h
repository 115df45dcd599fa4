/* The status HTTP port (libmicrohttpd, its own thread):
 *   /healthz  200 while the main loop runs (a stalled loop fails it)
 *   /readyz   200 while streaming with Kafka reachable, or as a hot standby
 *             (body "standby: ..."); 503 with the reason otherwise
 *   /metrics  Prometheus text format
 *   /status   the same as JSON
 * Serves only what obx_metrics() holds: no config, no secrets. */
#ifndef OBX_STATUS_HTTP_H
#define OBX_STATUS_HTTP_H

#include <stddef.h>

typedef struct obx_status_http_s obx_status_http_t;

/* listen: "host:port" (IPv4 or a name); "" disables the port (returns NULL
 * without error). NULL + errstr on failure. Caller owns the result. */
obx_status_http_t *obx_status_http_start(const char *listen, char *errstr, size_t errstr_size);
void obx_status_http_stop(obx_status_http_t *h);

#endif
