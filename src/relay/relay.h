/* `outboxd run`: the relay loop. Streams the slot, turns outbox inserts into
 * envelopes, produces them, and confirms LSNs only after the broker acks. */
#ifndef OBX_RELAY_H
#define OBX_RELAY_H

#include <signal.h>

#include "config.h"
#include "exitcodes.h"

/* Runs until *stop is set (exit 0) or a fault that needs an operator.
 * Returns an OBX_EXIT_* code. Reconnects to Postgres and Kafka with capped
 * backoff on its own. cfg is borrowed for the duration. */
int obx_relay_run(const obx_config_t *cfg, volatile sig_atomic_t *stop);

#endif
