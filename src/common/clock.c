#include "clock.h"

#include <time.h>

int64_t obx_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t obx_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void obx_sleep_ms(int ms)
{
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void obx_backoff_init(obx_backoff_t *b, int initial_ms, int max_ms)
{
    b->initial_ms = initial_ms > 0 ? initial_ms : 1;
    b->max_ms = max_ms > b->initial_ms ? max_ms : b->initial_ms;
    b->cur_ms = b->initial_ms;
}

int obx_backoff_next(obx_backoff_t *b)
{
    int wait = b->cur_ms;
    b->cur_ms = b->cur_ms > b->max_ms / 2 ? b->max_ms : b->cur_ms * 2;
    return wait;
}

void obx_backoff_reset(obx_backoff_t *b)
{
    b->cur_ms = b->initial_ms;
}

void obx_period_init(obx_period_t *p, int period_ms)
{
    p->last_ms = 0;
    p->period_ms = period_ms;
    p->started = 0;
}

int obx_period_due(obx_period_t *p, int64_t now_ms)
{
    if (p->period_ms <= 0) return 0;
    if (p->started && now_ms - p->last_ms < p->period_ms) return 0;
    p->started = 1;
    p->last_ms = now_ms;
    return 1;
}

void obx_period_touch(obx_period_t *p, int64_t now_ms)
{
    p->started = 1;
    p->last_ms = now_ms;
}

int obx_sleep_unless(int total_ms, int step_ms, volatile sig_atomic_t *stop, void (*tick)(void *), void *arg)
{
    for (int w = 0; w < total_ms; w += step_ms) {
        if (stop && *stop) return 1;
        obx_sleep_ms(total_ms - w < step_ms ? total_ms - w : step_ms);
        if (tick) tick(arg);
    }
    return stop && *stop;
}
