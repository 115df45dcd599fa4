/* `outboxd consume`: reads outbox topics and prints each envelope decoded as
 * one JSON line (for people, the demo and the end-to-end tests). */
#ifndef OBX_CONSUME_H
#define OBX_CONSUME_H

#include <signal.h>
#include "exitcodes.h"
#include <stdint.h>
#include <stdio.h>

#include "config.h"

struct Outboxd__V1__Event;

/* Called per decoded event instead of printing; non-zero stops the loop. */
typedef int (*obx_event_cb_t)(void *opaque, const struct Outboxd__V1__Event *ev, const char *topic,
                              int32_t partition, int64_t offset);

typedef struct {
    const obx_config_t *cfg; /* kafka.* (security included); NULL: defaults only */
    const char *brokers;  /* overrides kafka.bootstrap.servers; NULL: the config's, else 127.0.0.1:9092 */
    const char *topics;   /* comma-separated names, or one ^regex */
    const char *group;    /* NULL: a fresh group, from the earliest offset */
    long max_messages;    /* stop after this many; 0 = no limit */
    int idle_exit_ms;     /* stop after this long without a message; 0 = never */
    obx_event_cb_t on_event; /* NULL: print JSON lines to out */
    void *opaque;
    int require_topics;   /* verify: fail (1) when Kafka is unreachable or no topic exists */
    char *why;            /* with require_topics: the failure, for the caller's summary */
    size_t why_size;
} obx_consume_opts_t;

/* Returns an OBX_EXIT_* code; errors go to the log. The consumer is built
 * by obx_kconf_new(cfg, OBX_KCONF_CONSUMER) so it reaches a secured
 * cluster like every other outboxd client. */
/* --brokers, else the config's kafka.bootstrap.servers, else 127.0.0.1:9092. */
const char *obx_consume_brokers(const obx_consume_opts_t *o);

int obx_consume_run(const obx_consume_opts_t *o, FILE *out, volatile sig_atomic_t *stop);

#endif
