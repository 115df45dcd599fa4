/* The signal table's control plane: an INSERT into outbox.signal_table
 * (id, type, data) asks for a snapshot, which runs in its own thread while
 * the relay keeps streaming; the row's status column reports progress.
 * Snapshots cut short by a stop or a crash resume when the relay starts.
 *
 * The relay process owns the obx_signals_t (obx_signals_new/_destroy);
 * cfg and stop are borrowed for its life. */
#ifndef OBX_SIGNALS_H
#define OBX_SIGNALS_H

#include <signal.h>

#include "config.h"

typedef struct obx_signals_s obx_signals_t;

/* NULL on allocation failure. */
obx_signals_t *obx_signals_new(const obx_config_t *cfg, volatile sig_atomic_t *stop);
/* Waits for a running snapshot (it sees *stop and checkpoints), frees. */
void obx_signals_destroy(obx_signals_t *s);

/* Resumes the oldest signal left 'running' or 'interrupted'. */
void obx_signals_resume(obx_signals_t *s);
/* Acts on one signal row: id, type and data as text (NULL for SQL NULL).
 * Unknown types are marked 'ignored', a second snapshot 'rejected'. */
void obx_signals_start(obx_signals_t *s, const char *id, const char *type, const char *data);

#endif
