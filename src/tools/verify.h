/* `outboxd verify`: reads outbox topics and checks what a consumer relies
 * on: no event twice, every expected event present, each aggregate in one
 * partition with increasing versions, source positions increasing per
 * partition. For users after an incident and for the chaos suite. */
#ifndef OBX_VERIFY_H
#define OBX_VERIFY_H

#include <signal.h>
#include <stdio.h>

#include "consume.h"
#include "exitcodes.h"

typedef struct {
    obx_consume_opts_t consume;
    const char *expected_path; /* one event id per line; NULL: no missing check */
    int allow_duplicates;      /* at-least-once: duplicates reported, not failed */
    long expect_min;           /* fewer distinct events than this fail (main.c: 1 unless --expect) */
} obx_verify_opts_t;

/* Prints one JSON summary line to out (stdout stays JSON: progress and
 * each problem go to the log on stderr). Returns 0 when every check
 * passed; 1 when one failed, Kafka could not be reached, a topic does not
 * exist (no topic matches a ^regex) or fewer than expect_min events were
 * read ("reason" in the summary says which); another OBX_EXIT_* code on
 * config errors. */
int obx_verify_run(obx_verify_opts_t *o, FILE *out, volatile sig_atomic_t *stop);

#endif
