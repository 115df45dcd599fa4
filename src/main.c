/* outboxd: CLI, signals and sub-command dispatch. The only file that exits.
 * Parsing fills one cli_t; a command table says what config each command
 * loads (none, unchecked, validated) and which small cmd_* runs it. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apply.h"
#include "config.h"
#include "consume.h"
#include "doctor.h"
#include "evidence.h"
#include "err.h"
#include "exitcodes.h"
#include "log.h"
#include "pg.h"
#include "preflight.h"
#include "relay.h"
#include "snapshot.h"
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
          "  consume [--config FILE] [--brokers B] --topic T [--max N] [--idle-exit-ms MS] [--group G]\n"
          "                              print outbox events from Kafka as JSON lines\n"
          "  verify [--config FILE] [--brokers B] --topic T [--expected IDS_FILE] [--allow-duplicates]\n"
          "         [--idle-exit-ms MS]\n"
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

#define MAX_SETS 16

/* Everything the command line said. */
typedef struct {
    const char *cmd, *verb; /* verb: slot status|create|drop */
    const char *config_path, *previous_path, *expected_path;
    int print_config, allow_dups, snap_restart;
    const char *sets[MAX_SETS]; /* key=value, applied after the file and env */
    char set_buf[MAX_SETS][1024];
    size_t n_sets;
    obx_consume_opts_t co;
} cli_t;

typedef enum {
    CFG_LOAD = 0, /* file + env, checked by the command itself */
    CFG_VALIDATE  /* file + env + --set, then obx_config_validate() */
} cfg_mode_t;

typedef struct {
    const char *name;
    cfg_mode_t cfg;
    int (*run)(cli_t *cli, obx_config_t *cfg);
} cmd_t;

static obx_config_t *load_config(const char *path)
{
    char err[1024];
    obx_config_t *cfg = obx_config_new();
    if (!cfg) {
        fprintf(stderr, "outboxd: out of memory\n");
        exit(OBX_EXIT_FAIL);
    }
    if ((path && obx_config_load_file(cfg, path, err, sizeof(err)) != 0) ||
        obx_config_load_env(cfg, environ, err, sizeof(err)) != 0) {
        obx_error("config", "%s", err);
        obx_config_destroy(cfg);
        exit(OBX_EXIT_CONFIG);
    }
    /* Before any thread: from here on no message carries these values. */
    obx_config_register_secrets(cfg);
    obx_log_level_t lvl = OBX_LOG_INFO;
    obx_log_format_t fmt = OBX_LOG_AUTO;
    obx_log_level_parse(cfg->log_level, &lvl);
    obx_log_format_parse(cfg->log_format, &fmt);
    obx_log_setup(lvl, fmt);
    return cfg;
}

/* --set key=value pairs, then the whole config checked: 0 or an exit code. */
static int apply_sets_and_validate(const cli_t *cli, obx_config_t *cfg)
{
    char kv[1024], err[1024];
    for (size_t i = 0; i < cli->n_sets; i++) {
        snprintf(kv, sizeof(kv), "%s", cli->sets[i]);
        char *eq = strchr(kv, '=');
        if (!eq) {
            /* Not echoed: it may be a secret typed without its key. */
            fprintf(stderr, "outboxd: --set argument %zu: expected key=value\n", i + 1);
            return OBX_EXIT_CONFIG;
        }
        *eq = '\0';
        if (obx_config_set(cfg, kv, eq + 1, "command line", err, sizeof(err)) != 0) {
            obx_error("config", "%s", err);
            return OBX_EXIT_CONFIG;
        }
    }
    obx_config_register_secrets(cfg); /* what --set added */
    if (obx_config_validate(cfg, err, sizeof(err)) != 0) {
        obx_error("config", "%s", err);
        return OBX_EXIT_CONFIG;
    }
    return OBX_EXIT_OK;
}

static int slot_status(PGconn *c, const obx_config_t *cfg)
{
    char err[1024];
    obx_slot_info_t s;
    if (obx_slot_inspect(c, cfg->slot_name, &s, err, sizeof(err)) != 0) {
        obx_error("slot", "%s", err);
        return OBX_EXIT_FAIL;
    }
    if (!s.exists) {
        printf("slot %s: does not exist\n", cfg->slot_name);
        return OBX_EXIT_SLOT;
    }
    printf("slot %s: plugin=%s active=%s pid=%d wal_status=%s confirmed_flush_lsn=" OBX_LSN_FMT
           " restart_lsn=" OBX_LSN_FMT "\n",
           cfg->slot_name, s.plugin, s.active ? "yes" : "no", s.active_pid, s.wal_status,
           OBX_LSN_ARGS(s.confirmed_flush), OBX_LSN_ARGS(s.restart_lsn));
    return OBX_EXIT_OK;
}

static int slot_create(PGconn *c, const obx_config_t *cfg)
{
    char err[1024];
    obx_slot_info_t s;
    int rc = obx_slot_ensure(c, cfg, &s, err, sizeof(err));
    if (rc)
        obx_error("slot", "%s", err);
    else
        printf("slot %s: ready, confirmed_flush_lsn=" OBX_LSN_FMT "\n", cfg->slot_name, OBX_LSN_ARGS(s.confirmed_flush));
    return rc;
}

/* Drops the slot and forgets its evidence in Kafka (evidence.h): the
 * operator's deliberate act, after which a start creates a new slot.
 * Idempotent, so a drop that could not reach Kafka can simply be re-run. */
static int slot_drop(PGconn *c, const obx_config_t *cfg)
{
    char err[1024], key[512];
    obx_slot_info_t s;
    obx_pg_info_t info;
    obx_err_t e;
    if (obx_slot_inspect(c, cfg->slot_name, &s, err, sizeof(err)) != 0 ||
        (s.exists && obx_slot_drop(c, cfg->slot_name, err, sizeof(err)) != 0)) {
        obx_error("slot", "%s", err);
        return OBX_EXIT_FAIL;
    }
    printf("slot %s: %s\n", cfg->slot_name, s.exists ? "dropped" : "did not exist");
    int rc = obx_pg_identity(c, &info, &e);
    if (rc == 0) {
        obx_evidence_key(info.sysid, info.database, cfg->slot_name, key, sizeof(key));
        rc = obx_evidence_forget(cfg, key, &e);
    }
    if (rc != 0) {
        obx_error("slot_evidence", "the slot's record in Kafka topic %s could not be cleared (%s): run outboxd slot "
                  "drop again, or outboxd will refuse to create a new slot", cfg->slot_evidence_topic, e.msg);
        return obx_err_exit_code(&e);
    }
    printf("slot %s: its record in Kafka topic %s is cleared; the next start creates a new slot\n", cfg->slot_name,
           cfg->slot_evidence_topic);
    return OBX_EXIT_OK;
}

static int cmd_slot(cli_t *cli, obx_config_t *cfg)
{
    static const struct {
        const char *verb;
        int (*run)(PGconn *, const obx_config_t *);
    } verbs[] = {{"status", slot_status}, {"create", slot_create}, {"drop", slot_drop}};
    if (cli->print_config) {
        obx_config_print(cfg, stdout);
        return OBX_EXIT_OK;
    }
    size_t i = 0;
    while (i < sizeof(verbs) / sizeof(verbs[0]) && strcmp(verbs[i].verb, cli->verb) != 0) i++;
    if (i == sizeof(verbs) / sizeof(verbs[0])) {
        usage(stderr);
        return OBX_EXIT_CONFIG;
    }
    obx_log_set_context("slot", cfg->slot_name);
    obx_err_t err;
    PGconn *c = obx_pg_connect(cfg->pg_conninfo, "pg.conninfo", OBX_PG_NORMAL, &err);
    if (!c) {
        obx_error("pg_connect", "%s", err.msg);
        return obx_err_exit_code(&err);
    }
    int rc = verbs[i].run(c, cfg);
    PQfinish(c);
    return rc;
}

static int cmd_run(cli_t *cli, obx_config_t *cfg)
{
    if (cli->print_config) {
        obx_config_print(cfg, stdout);
        return OBX_EXIT_OK;
    }
    obx_log_set_context("slot", cfg->slot_name);
    obx_info("start", "outboxd %s starting", OBX_VERSION);
    int rc = obx_relay_run(cfg, &g_stop);
    obx_info("exit", "exit code %d", rc);
    return rc;
}

/* apply validates its own keys (apply.*; no producer database, so
 * pg.conninfo is not required). */
static int cmd_apply(cli_t *cli, obx_config_t *cfg)
{
    if (cli->print_config) {
        obx_config_print(cfg, stdout);
        return OBX_EXIT_OK;
    }
    obx_log_set_context("group", cfg->apply_group);
    obx_info("start", "outboxd %s apply starting", OBX_VERSION);
    int rc = obx_apply_run(cfg, &g_stop);
    obx_info("exit", "exit code %d", rc);
    return rc;
}

static int cmd_doctor(cli_t *cli, obx_config_t *cfg)
{
    (void)cli;
    return obx_doctor_run(cfg, stdout);
}

static int cmd_snapshot(cli_t *cli, obx_config_t *cfg)
{
    obx_snapshot_opts_t so;
    obx_snapshot_opts_from_config(cfg, &so);
    so.restart = cli->snap_restart;
    so.progress_bar = isatty(STDERR_FILENO);
    return obx_snapshot_run(cfg, &so, &g_stop);
}

static int cmd_config_check(cli_t *cli, obx_config_t *cfg)
{
    char err[1024];
    if (!cli->previous_path) {
        fprintf(stderr, "outboxd: config-check needs --previous FILE\n");
        return OBX_EXIT_CONFIG;
    }
    int rc = OBX_EXIT_CONFIG;
    obx_config_t *prev = obx_config_new();
    int loaded = prev && obx_config_load_file(prev, cli->previous_path, err, sizeof(err)) == 0;
    if (loaded) obx_config_register_secrets(prev);
    if (!loaded) {
        obx_error("config", "%s", prev ? err : "out of memory");
    } else if (obx_config_check_key_rule(prev, cfg, err, sizeof(err)) != 0) {
        obx_error("key_rule_changed", "%s", err);
    } else {
        printf("config-check: the partition key rule is unchanged or comes with a new topic version\n");
        rc = OBX_EXIT_OK;
    }
    obx_config_destroy(prev);
    return rc;
}

/* consume and verify: the config's kafka.* (security included) with
 * --brokers over bootstrap.servers; no other key is needed. */
static int cmd_consume(cli_t *cli, obx_config_t *cfg)
{
    cli->co.cfg = cfg;
    return obx_consume_run(&cli->co, stdout, &g_stop);
}

static int cmd_verify(cli_t *cli, obx_config_t *cfg)
{
    cli->co.cfg = cfg;
    obx_verify_opts_t vo = {.consume = cli->co, .expected_path = cli->expected_path,
                            .allow_duplicates = cli->allow_dups};
    if (!vo.consume.idle_exit_ms) vo.consume.idle_exit_ms = 5000;
    return obx_verify_run(&vo, stdout, &g_stop);
}

static const cmd_t commands[] = {
    {"run", CFG_VALIDATE, cmd_run},
    {"slot", CFG_VALIDATE, cmd_slot},
    {"doctor", CFG_VALIDATE, cmd_doctor},
    {"config-check", CFG_VALIDATE, cmd_config_check},
    {"snapshot", CFG_VALIDATE, cmd_snapshot},
    {"apply", CFG_LOAD, cmd_apply},
    {"consume", CFG_LOAD, cmd_consume},
    {"verify", CFG_LOAD, cmd_verify},
};

static const cmd_t *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(commands[i].name, name)) return &commands[i];
    return NULL;
}

/* snapshot shortcuts become --set snapshot.KEY=VALUE. */
static void add_set(cli_t *cli, int ch, const char *arg)
{
    static const char *const keys[] = {"snapshot.table", "snapshot.where", "snapshot.name",
                                       "snapshot.page_size", "snapshot.rate_limit", "", "snapshot.topic"};
    if (cli->n_sets == MAX_SETS) return;
    if (ch == 'S') {
        cli->sets[cli->n_sets++] = arg;
        return;
    }
    snprintf(cli->set_buf[cli->n_sets], sizeof(cli->set_buf[0]), "%s=%s", keys[ch - 1001], arg);
    cli->sets[cli->n_sets] = cli->set_buf[cli->n_sets];
    cli->n_sets++;
}

/* Options after the command (and the slot verb). -1 to go on, else an
 * exit code. */
static int parse_options(cli_t *cli, int argc, char **argv, int first)
{
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
    optind = first;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:ph", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': cli->config_path = optarg; break;
        case 'p': cli->print_config = 1; break;
        case 'b': cli->co.brokers = optarg; break;
        case 't': cli->co.topics = optarg; break;
        case 'm': cli->co.max_messages = atol(optarg); break;
        case 'i': cli->co.idle_exit_ms = atoi(optarg); break;
        case 'g': cli->co.group = optarg; break;
        case 'P': cli->previous_path = optarg; break;
        case 'e': cli->expected_path = optarg; break;
        case 'D': cli->allow_dups = 1; break;
        case 'S': case 1001: case 1002: case 1003: case 1004: case 1005: case 1007: add_set(cli, ch, optarg); break;
        case 1006: cli->snap_restart = 1; break;
        case 'h': usage(stdout); return OBX_EXIT_OK;
        default: usage(stderr); return OBX_EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "outboxd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return OBX_EXIT_CONFIG;
    }
    return -1;
}

/* Commands that need no options and no config. -1 when cmd is not one. */
static int run_simple(const char *cmd)
{
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
    return -1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int main(int argc, char **argv)
{
    static cli_t cli = {.co = {.topics = "^outbox\\..*"}};
    if (argc < 2) {
        usage(stderr);
        return OBX_EXIT_CONFIG;
    }
    int rc = run_simple(argv[1]);
    if (rc >= 0) return rc;
    cli.cmd = argv[1];
    int first = 2;
    if (!strcmp(cli.cmd, "slot")) {
        if (argc < 3) {
            usage(stderr);
            return OBX_EXIT_CONFIG;
        }
        cli.verb = argv[2];
        first = 3;
    } else if (cli.cmd[0] == '-') {
        first = 1; /* `outboxd --print-config -c f` */
        cli.cmd = "run";
    }
    if ((rc = parse_options(&cli, argc, argv, first)) >= 0) return rc;
    install_signals();
    const cmd_t *c = find_command(cli.cmd);
    if (!c) {
        fprintf(stderr, "outboxd: unknown command \"%s\"\n", cli.cmd);
        usage(stderr);
        return OBX_EXIT_CONFIG;
    }
    obx_config_t *cfg = load_config(cli.config_path);
    rc = c->cfg == CFG_VALIDATE ? apply_sets_and_validate(&cli, cfg) : OBX_EXIT_OK;
    if (rc == OBX_EXIT_OK) rc = c->run(&cli, cfg);
    obx_config_destroy(cfg);
    return rc;
}
