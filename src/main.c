/* outboxd: CLI, signals and sub-command dispatch. The only file that exits. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "pg.h"
#include "exitcodes.h"
#include "consume.h"
#include "doctor.h"
#include "log.h"
#include "preflight.h"
#include "relay.h"
#include "snapshot.h"
#include "apply.h"
#include "verify.h"

extern char **environ;

/* Signals only set this flag; the loops look at it (pgbouncer style). */
static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f)
{
    fputs("usage: outboxd <command> [options]\n"
          "\n"
          "commands:\n"
          "  run --config FILE           relay outbox inserts from the slot to Kafka\n"
          "  slot status|create|drop --config FILE\n"
          "                              inspect or manage the replication slot\n"
          "  doctor --config FILE        check PostgreSQL and Kafka, print PASS/WARN/FAIL with fixes\n"
          "  apply --config FILE         keep a replica table up to date from outbox topics (apply.* keys)\n"
          "  config-check --previous OLD --config NEW\n"
          "                              refuse a partition key change that keeps the topic name\n"
          "  snapshot --config FILE --table T [--where SQL] [--name N] [--page-size N] [--rate-limit N]\n"
          "           [--snapshot-topic T] [--restart] [--set snapshot.KEY=VALUE]\n"
          "                              re-emit a table's current state as events (resumable)\n"
          "  consume --brokers B --topic T [--max N] [--idle-exit-ms MS] [--group G]\n"
          "                              print outbox events from Kafka as JSON lines\n"
          "  verify --topic T [--expected IDS_FILE] [--allow-duplicates] [--idle-exit-ms MS]\n"
          "                              check topics: duplicates, missing ids, per-aggregate order\n"
          "  config-doc                  print the configuration reference (Markdown)\n"
          "  version                     print the version\n"
          "\n"
          "options:\n"
          "  -c, --config FILE           config file (key = value); OUTBOXD_* env overrides it\n"
          "  --print-config              print the effective config (secrets redacted) and exit\n"
          "\n"
          "exit codes: 0 ok, 1 failure, 2 bad config or usage, 3 poison row, 4 slot missing or lost\n",
          f);
}

static obx_config_t *load_config(const char *path, int validate)
{
    char err[1024];
    obx_config_t *cfg = obx_config_new();
    if (!cfg) {
        fprintf(stderr, "outboxd: out of memory\n");
        exit(OBX_EXIT_FAIL);
    }
    if ((path && obx_config_load_file(cfg, path, err, sizeof(err)) != 0) ||
        obx_config_load_env(cfg, environ, err, sizeof(err)) != 0 ||
        (validate && obx_config_validate(cfg, err, sizeof(err)) != 0)) {
        obx_error("config", "%s", err);
        obx_config_destroy(cfg);
        exit(OBX_EXIT_CONFIG);
    }
    obx_log_level_t lvl = OBX_LOG_INFO;
    obx_log_format_t fmt = OBX_LOG_AUTO;
    obx_log_level_parse(cfg->log_level, &lvl);
    obx_log_format_parse(cfg->log_format, &fmt);
    obx_log_setup(lvl, fmt);
    return cfg;
}

static int cmd_slot(const char *verb, obx_config_t *cfg)
{
    char err[1024];
    PGconn *c = obx_pg_connect_str(cfg->pg_conninfo, err, sizeof(err));
    if (!c) {
        obx_error("pg_connect", "%s", err);
        return OBX_EXIT_FAIL;
    }
    int rc = OBX_EXIT_OK;
    obx_slot_info_t s;
    if (strcmp(verb, "status") == 0) {
        if (obx_slot_inspect(c, cfg->slot_name, &s, err, sizeof(err)) != 0) {
            obx_error("slot", "%s", err);
            rc = OBX_EXIT_FAIL;
        } else if (!s.exists) {
            printf("slot %s: does not exist\n", cfg->slot_name);
            rc = OBX_EXIT_SLOT;
        } else {
            printf("slot %s: plugin=%s active=%s pid=%d wal_status=%s confirmed_flush_lsn=" OBX_LSN_FMT
                   " restart_lsn=" OBX_LSN_FMT "\n",
                   cfg->slot_name, s.plugin, s.active ? "yes" : "no", s.active_pid, s.wal_status,
                   OBX_LSN_ARGS(s.confirmed_flush), OBX_LSN_ARGS(s.restart_lsn));
        }
    } else if (strcmp(verb, "create") == 0) {
        rc = obx_slot_ensure(c, cfg, &s, err, sizeof(err));
        if (rc) obx_error("slot", "%s", err);
        else printf("slot %s: ready, confirmed_flush_lsn=" OBX_LSN_FMT "\n", cfg->slot_name, OBX_LSN_ARGS(s.confirmed_flush));
    } else if (strcmp(verb, "drop") == 0) {
        if (obx_slot_drop(c, cfg->slot_name, err, sizeof(err)) != 0) {
            obx_error("slot", "%s", err);
            rc = OBX_EXIT_FAIL;
        } else {
            printf("slot %s: dropped\n", cfg->slot_name);
        }
    } else {
        usage(stderr);
        rc = OBX_EXIT_CONFIG;
    }
    PQfinish(c);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return OBX_EXIT_CONFIG;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return OBX_EXIT_OK;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("outboxd %s\n", OBX_VERSION);
        return OBX_EXIT_OK;
    }
    if (!strcmp(cmd, "config-doc")) {
        obx_config_print_doc(stdout);
        return OBX_EXIT_OK;
    }

    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"print-config", no_argument, NULL, 'p'},
        {"brokers", required_argument, NULL, 'b'}, {"topic", required_argument, NULL, 't'},
        {"max", required_argument, NULL, 'm'}, {"idle-exit-ms", required_argument, NULL, 'i'},
        {"group", required_argument, NULL, 'g'}, {"help", no_argument, NULL, 'h'},
        {"previous", required_argument, NULL, 'P'}, {"expected", required_argument, NULL, 'e'},
        {"allow-duplicates", no_argument, NULL, 'D'},
        /* snapshot: --set key=value for any snapshot.* key, shortcuts below */
        {"set", required_argument, NULL, 'S'}, {"table", required_argument, NULL, 1001},
        {"where", required_argument, NULL, 1002}, {"name", required_argument, NULL, 1003},
        {"page-size", required_argument, NULL, 1004}, {"rate-limit", required_argument, NULL, 1005},
        {"restart", no_argument, NULL, 1006}, {"snapshot-topic", required_argument, NULL, 1007},
        {NULL, 0, NULL, 0}};
    const char *config_path = NULL, *previous_path = NULL, *expected_path = NULL;
    int allow_dups = 0, snap_restart = 0;
    const char *sets[16];
    size_t n_sets = 0;
    int print_config = 0;
    obx_consume_opts_t co = {.brokers = "127.0.0.1:9092", .topics = "^outbox\\..*"};
    int first = 2;
    const char *verb = NULL;
    if (!strcmp(cmd, "slot")) {
        if (argc < 3) {
            usage(stderr);
            return OBX_EXIT_CONFIG;
        }
        verb = argv[2];
        first = 3;
    } else if (cmd[0] == '-') {
        first = 1; /* `outboxd --print-config -c f` */
        cmd = "run";
    }
    optind = first;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:ph", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': config_path = optarg; break;
        case 'p': print_config = 1; break;
        case 'b': co.brokers = optarg; break;
        case 't': co.topics = optarg; break;
        case 'm': co.max_messages = atol(optarg); break;
        case 'i': co.idle_exit_ms = atoi(optarg); break;
        case 'g': co.group = optarg; break;
        case 'P': previous_path = optarg; break;
        case 'e': expected_path = optarg; break;
        case 'D': allow_dups = 1; break;
        case 'S':
        case 1001: case 1002: case 1003: case 1004: case 1005: case 1007: {
            static const char *const keys[] = {"snapshot.table", "snapshot.where", "snapshot.name",
                                               "snapshot.page_size", "snapshot.rate_limit", "", "snapshot.topic"};
            if (n_sets == sizeof(sets) / sizeof(sets[0])) break;
            if (ch == 'S') {
                sets[n_sets++] = optarg;
            } else {
                static char buf[16][1024];
                snprintf(buf[n_sets], sizeof(buf[0]), "%s=%s", keys[ch - 1001], optarg);
                sets[n_sets] = buf[n_sets];
                n_sets++;
            }
            break;
        }
        case 1006: snap_restart = 1; break;
        case 'h': usage(stdout); return OBX_EXIT_OK;
        default: usage(stderr); return OBX_EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "outboxd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return OBX_EXIT_CONFIG;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (!strcmp(cmd, "verify")) {
        obx_log_setup(OBX_LOG_INFO, OBX_LOG_AUTO);
        obx_verify_opts_t vo = {.consume = co, .expected_path = expected_path, .allow_duplicates = allow_dups};
        if (!vo.consume.idle_exit_ms) vo.consume.idle_exit_ms = 5000;
        return obx_verify_run(&vo, stdout, &g_stop);
    }
    if (!strcmp(cmd, "consume")) {
        obx_log_setup(OBX_LOG_INFO, OBX_LOG_AUTO);
        return obx_consume_run(&co, stdout, &g_stop);
    }
    /* apply: the replica side. It validates its own keys (apply.*; no
     * producer database, so pg.conninfo is not required). */
    if (!strcmp(cmd, "apply")) {
        obx_config_t *acfg = load_config(config_path, 0);
        int arc;
        if (print_config) {
            obx_config_print(acfg, stdout);
            arc = OBX_EXIT_OK;
        } else {
            obx_info("start", "outboxd %s apply starting", OBX_VERSION);
            arc = obx_apply_run(acfg, &g_stop);
            obx_info("exit", "exit code %d", arc);
        }
        obx_config_destroy(acfg);
        return arc;
    }
    if (strcmp(cmd, "run") != 0 && strcmp(cmd, "slot") != 0 && strcmp(cmd, "doctor") != 0 &&
        strcmp(cmd, "config-check") != 0 && strcmp(cmd, "snapshot") != 0) {
        fprintf(stderr, "outboxd: unknown command \"%s\"\n", cmd);
        usage(stderr);
        return OBX_EXIT_CONFIG;
    }
    obx_config_t *cfg = load_config(config_path, 0);
    for (size_t i = 0; i < n_sets; i++) {
        char kv[1024], err[1024];
        snprintf(kv, sizeof(kv), "%s", sets[i]);
        char *eq = strchr(kv, '=');
        if (!eq) {
            fprintf(stderr, "outboxd: --set %s: expected key=value\n", sets[i]);
            obx_config_destroy(cfg);
            return OBX_EXIT_CONFIG;
        }
        *eq = '\0';
        if (obx_config_set(cfg, kv, eq + 1, "command line", err, sizeof(err)) != 0) {
            obx_error("config", "%s", err);
            obx_config_destroy(cfg);
            return OBX_EXIT_CONFIG;
        }
    }
    {
        char err[1024];
        if (obx_config_validate(cfg, err, sizeof(err)) != 0) {
            obx_error("config", "%s", err);
            obx_config_destroy(cfg);
            return OBX_EXIT_CONFIG;
        }
    }
    int rc;
    if (!strcmp(cmd, "config-check")) {
        char err[1024];
        if (!previous_path) {
            fprintf(stderr, "outboxd: config-check needs --previous FILE\n");
            rc = OBX_EXIT_CONFIG;
        } else {
            obx_config_t *prev = obx_config_new();
            if (!prev || obx_config_load_file(prev, previous_path, err, sizeof(err)) != 0) {
                obx_error("config", "%s", prev ? err : "out of memory");
                rc = OBX_EXIT_CONFIG;
            } else if (obx_config_check_key_rule(prev, cfg, err, sizeof(err)) != 0) {
                obx_error("key_rule_changed", "%s", err);
                rc = OBX_EXIT_CONFIG;
            } else {
                printf("config-check: the partition key rule is unchanged or comes with a new topic version\n");
                rc = OBX_EXIT_OK;
            }
            obx_config_destroy(prev);
        }
    } else if (!strcmp(cmd, "snapshot")) {
        obx_snapshot_opts_t so;
        obx_snapshot_opts_from_config(cfg, &so);
        so.restart = snap_restart;
        so.progress_bar = isatty(STDERR_FILENO);
        rc = obx_snapshot_run(cfg, &so, &g_stop);
    } else if (!strcmp(cmd, "doctor")) {
        rc = obx_doctor_run(cfg, stdout);
    } else if (print_config) {
        obx_config_print(cfg, stdout);
        rc = OBX_EXIT_OK;
    } else if (verb) {
        rc = cmd_slot(verb, cfg);
    } else {
        obx_info("start", "outboxd %s starting", OBX_VERSION);
        rc = obx_relay_run(cfg, &g_stop);
        obx_info("exit", "exit code %d", rc);
    }
    obx_config_destroy(cfg);
    return rc;
}
