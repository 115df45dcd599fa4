/* `outboxd doctor`'s failover checks (docs/operations.md, Failover).
 * On PostgreSQL 17+: the slot's failover flag, synchronized_standby_slots
 * on the primary, and on every standby named in pg.conninfo's host list
 * (the multi-host conninfo outboxd follows a promotion with) its
 * sync_replication_slots, hot_standby_feedback, primary_slot_name and the
 * synced copy of the slot. On 15 and 16: that failover slots do not exist
 * there, and what protects the slot instead. Connections opened here are
 * closed here; the caller's connection is borrowed. */
#ifndef OBX_DOCTOR_FAILOVER_H
#define OBX_DOCTOR_FAILOVER_H

#include <libpq-fe.h>

#include "config.h"

/* doctor.c's PASS/WARN/FAIL line: warn_only makes a failed check a WARN. */
typedef void (*obx_doctor_report_fn)(void *ctx, int ok, int warn_only, const char *what, const char *fix);

/* c: the doctor's connection to the primary (pg.conninfo). */
void obx_doctor_failover(const obx_config_t *cfg, PGconn *c, obx_doctor_report_fn report, void *ctx);

#endif
