/* `outboxd doctor`: every preflight check at once, each printed as PASS,
 * WARN or FAIL with the fix. Nothing is changed on the server except a
 * temporary slot (dropped with the session) to prove wal2json works. */
#ifndef OBX_DOCTOR_H
#define OBX_DOCTOR_H

#include <stdio.h>

#include "config.h"

/* Returns 0 when nothing failed, 1 otherwise. */
int obx_doctor_run(const obx_config_t *cfg, FILE *out);

#endif
