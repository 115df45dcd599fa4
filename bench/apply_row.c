/* bench_apply_row: the naive replica consumer, the baseline that `outboxd
 * apply`'s batched upsert is measured against (tests/e2e/test_apply.py::
 * test_apply_rate_batched_vs_naive_row_at_a_time, docs/apply.md).
 *
 * It is outboxd apply (same config keys, consumer, decoding, replica checks,
 * version guard, tombstones, metrics and status port) with one difference:
 * every event is its own upsert statement and its own transaction
 * (autocommit), in arrival order, with no newest-per-key reduction. It is a
 * benchmark program, never part of the daemon.
 *
 *   bench_apply_row [--config FILE]     (OUTBOXD_* env overrides the file)
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "apply_int.h"
#include "config.h"
#include "log.h"

extern char **environ;

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* One statement, one transaction per event. */
static int write_rows(obx_apply_t *a, size_t n, obx_apply_stats_t *st, obx_err_t *err)
{
    for (size_t i = 0; i < n; i++) {
        const obx_apply_entry_t *e = &a->batch[i];
        if (e->kind == OBX_EV_SKIP) st->skipped++;
        if (e->kind != OBX_EV_UPSERT && e->kind != OBX_EV_DELETE) continue;
        if (obx_apply_write_stmt(a, e->kind == OBX_EV_DELETE, &i, 1, st, err) != 0) return -1;
    }
    return a->dead_letter ? obx_apply_dead_letter(a, n, st, err) : 0;
}

int main(int argc, char **argv)
{
    char err[1024];
    const char *path = NULL;
    if (argc == 3 && (!strcmp(argv[1], "--config") || !strcmp(argv[1], "-c"))) {
        path = argv[2];
    } else if (argc != 1) {
        fprintf(stderr, "usage: bench_apply_row [--config FILE]\n");
        return OBX_EXIT_CONFIG;
    }
    obx_config_t *cfg = obx_config_new();
    if (!cfg) return OBX_EXIT_FAIL;
    if ((path && obx_config_load_file(cfg, path, err, sizeof(err)) != 0) ||
        obx_config_load_env(cfg, environ, err, sizeof(err)) != 0 ||
        /* apply.mode names the daemon's writer; this program is the other one. */
        obx_config_set(cfg, "apply.mode", "batch", "bench_apply_row", err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_apply_row: %s\n", err);
        obx_config_destroy(cfg);
        return OBX_EXIT_CONFIG;
    }
    obx_log_level_t lvl = OBX_LOG_INFO;
    obx_log_format_t fmt = OBX_LOG_AUTO;
    obx_log_level_parse(cfg->log_level, &lvl);
    obx_log_format_parse(cfg->log_format, &fmt);
    obx_log_setup(lvl, fmt);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int rc = obx_apply_run_with(cfg, &g_stop, write_rows, "row (naive baseline)");
    obx_info("exit", "exit code %d", rc);
    obx_config_destroy(cfg);
    return rc;
}
