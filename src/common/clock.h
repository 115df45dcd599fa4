/* Clocks and timers: wall time for event times, a monotonic clock for
 * every timer, capped exponential backoff, and periodic tasks (one facility,
 * in the spirit of Redis's run_with_period). All values are plain structs
 * owned by the caller; nothing here allocates. */
#ifndef OBX_CLOCK_H
#define OBX_CLOCK_H

#include <signal.h>
#include <stdint.h>

/* Microseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t obx_now_us(void);
/* Milliseconds from a monotonic clock, for timers. */
int64_t obx_mono_ms(void);
void obx_sleep_ms(int ms);

/* Capped exponential backoff: next() returns the wait and doubles it. */
typedef struct {
    int initial_ms, max_ms, cur_ms;
} obx_backoff_t;

void obx_backoff_init(obx_backoff_t *b, int initial_ms, int max_ms);
int obx_backoff_next(obx_backoff_t *b);
void obx_backoff_reset(obx_backoff_t *b);

/* A task due every period_ms; the first call is due at once unless
 * obx_period_touch() marked it done. */
typedef struct {
    int64_t last_ms;
    int period_ms;
    int started;
} obx_period_t;

void obx_period_init(obx_period_t *p, int period_ms);
/* True (and rearmed) when the period has passed since the last run. */
int obx_period_due(obx_period_t *p, int64_t now_ms);
/* Marks the task as just run without asking. */
void obx_period_touch(obx_period_t *p, int64_t now_ms);

/* Sleeps up to total_ms in steps of step_ms, returning early (1) once
 * *stop is set; each step calls tick(arg) when given (gauges stay fresh). */
int obx_sleep_unless(int total_ms, int step_ms, volatile sig_atomic_t *stop, void (*tick)(void *), void *arg);

#endif
