/* outboxd: CLI, signals and sub-command dispatch. The only file that exits.
 * Parsing fills one cli_t (options a command does not take, and malformed
 * numbers, are usage errors: exit 64); a command table says what config
 * each command loads (unchecked or validated) and which small cmd_* runs
 * it. Help texts and option sets: src/tools/cli.c. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "apply.h"
#include "cli.h"
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

#define MAX_SETS 32

/* Everything the command line said. */
typedef struct {
    const char *cmd, *verb; /* verb: slot status|create|drop */
    const char *config_path, *previous_path, *previous_env, *env_file, *expected_path;
    int print_config, allow_dups, snap_restart, yes;
    long expect; /* verify --expect; -1: not given */
    const char *sets[MAX_SETS]; /* key=value, applied after the file and env */
    char set_buf[MAX_SETS][1024];
    size_t n_sets;
    obx_consume_opts_t co;
} cli_t;

typedef enum {
    CFG_LOAD = 0, /* file + env + --set/-X, checked by the command itself */
    CFG_VALIDATE  /* the same, then obx_config_validate() */
} cfg_mode_t;

typedef struct {
    const char *name;
    cfg_mode_t cfg;
    int (*run)(cli_t *cli, obx_config_t *cfg);
} cmd_t;

/* A usage error: one log line in the process's format, and where to look. */
static int usage_error(const char *cmd, const char *fmt, const char *arg)
{
    char msg[512];
    snprintf(msg, sizeof(msg), fmt, arg);
    obx_error("usage", "%s; see outboxd %s%s--help", msg, cmd ? cmd : "", cmd ? " " : "");
    return OBX_EXIT_USAGE;
}

static obx_config_t *load_config(const char *path)
{
    char err[1024];
    obx_config_t *cfg = obx_config_new();
    if (!cfg) {
        obx_error("oom", "out of memory");
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

/* --set key=value (and -X prop=value as kafka.prop=value): 0 or an exit code. */
static int apply_sets(const cli_t *cli, obx_config_t *cfg)
{
    char kv[1024], err[1024];
    for (size_t i = 0; i < cli->n_sets; i++) {
        snprintf(kv, sizeof(kv), "%s", cli->sets[i]);
        char *eq = strchr(kv, '=');
        if (!eq) {
            /* Not echoed: it may be a secret typed without its key. */
            obx_error("config", "--set/-X argument %zu: expected key=value", i + 1);
            return OBX_EXIT_CONFIG;
        }
        *eq = '\0';
        if (obx_config_set(cfg, kv, eq + 1, "command line", err, sizeof(err)) != 0) {
            obx_error("config", "%s", err);
            return OBX_EXIT_CONFIG;
        }
    }
    obx_config_register_secrets(cfg); /* what --set added */
    return OBX_EXIT_OK;
}

static int validate(obx_config_t *cfg)
{
    char err[1024];
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
    /* A missing slot is 4 for every slot verb (status too). */
    return s.exists ? OBX_EXIT_OK : OBX_EXIT_SLOT;
}

/* Dropping a slot loses what it retains: on a terminal ask, elsewhere
 * (scripts, CI) insist on --yes. */
static int confirm_drop(const cli_t *cli, const obx_config_t *cfg)
{
    if (cli->yes) return 1;
    if (!isatty(STDIN_FILENO)) {
        obx_error("usage", "slot drop needs --yes when stdin is not a terminal: it drops slot %s and the WAL it "
                  "retains; see outboxd slot --help", cfg->slot_name);
        return 0;
    }
    fprintf(stderr, "Drop slot %s and clear its record in %s? Events not yet relayed are lost. [y/N] ",
            cfg->slot_name, cfg->slot_evidence_topic);
    char line[16] = "";
    return fgets(line, sizeof(line), stdin) && (line[0] == 'y' || line[0] == 'Y');
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
    if (i == sizeof(verbs) / sizeof(verbs[0])) return OBX_EXIT_USAGE; /* main.c checked the verb */
    if (!strcmp(cli->verb, "drop") && !confirm_drop(cli, cfg)) return OBX_EXIT_USAGE;
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

/* doctor reports an invalid config as a FAIL among its other checks. */
static int cmd_doctor(cli_t *cli, obx_config_t *cfg)
{
    (void)cli;
    return obx_doctor_run(cfg, stdout);
}

static int cmd_snapshot(cli_t *cli, obx_config_t *cfg)
{
    if (cli->print_config) {
        obx_config_print(cfg, stdout);
        return OBX_EXIT_OK;
    }
    obx_snapshot_opts_t so;
    obx_snapshot_opts_from_config(cfg, &so);
    so.restart = cli->snap_restart;
    so.progress_bar = isatty(STDERR_FILENO);
    return obx_snapshot_run(cfg, &so, &g_stop);
}

/* Compares effective configurations: the new one is this process's (file,
 * environment, --env-file); the old one --previous plus --previous-env. */
static int cmd_config_check(cli_t *cli, obx_config_t *cfg)
{
    char err[1024];
    if (!cli->previous_path) return usage_error("config-check", "config-check needs --previous FILE%s", "");
    if (cli->env_file && obx_config_load_env_file(cfg, cli->env_file, err, sizeof(err)) != 0) {
        obx_error("config", "%s", err);
        return OBX_EXIT_CONFIG;
    }
    obx_config_register_secrets(cfg);
    int rc = validate(cfg);
    if (rc) return rc;
    obx_config_t *prev = obx_config_new();
    int loaded = prev && obx_config_load_file(prev, cli->previous_path, err, sizeof(err)) == 0 &&
                 (!cli->previous_env || obx_config_load_env_file(prev, cli->previous_env, err, sizeof(err)) == 0);
    if (prev) obx_config_register_secrets(prev);
    rc = OBX_EXIT_CONFIG;
    if (!loaded) {
        obx_error("config", "%s", prev ? err : "out of memory");
    } else if (obx_config_check_key_rule(prev, cfg, err, sizeof(err)) != 0) {
        obx_error("key_rule_changed", "%s", err);
        rc = OBX_EXIT_REFUSED;
    } else {
        printf("config-check: the partition key rule is unchanged or comes with a new topic version\n");
        rc = OBX_EXIT_OK;
    }
    obx_config_destroy(prev);
    return rc;
}

/* consume and verify: the config's kafka.* (security included) with
 * --brokers over bootstrap.servers and -X over kafka.*; no other key is
 * needed. */
static int cmd_consume(cli_t *cli, obx_config_t *cfg)
{
    cli->co.cfg = cfg;
    return obx_consume_run(&cli->co, stdout, &g_stop);
}

static int cmd_verify(cli_t *cli, obx_config_t *cfg)
{
    cli->co.cfg = cfg;
    obx_verify_opts_t vo = {.consume = cli->co, .expected_path = cli->expected_path,
                            .allow_duplicates = cli->allow_dups, .expect_min = cli->expect < 0 ? 1 : cli->expect};
    if (!vo.consume.idle_exit_ms) vo.consume.idle_exit_ms = 5000;
    return obx_verify_run(&vo, stdout, &g_stop);
}

static const cmd_t commands[] = {
    {"run", CFG_VALIDATE, cmd_run},
    {"slot", CFG_VALIDATE, cmd_slot},
    {"doctor", CFG_LOAD, cmd_doctor},
    {"config-check", CFG_LOAD, cmd_config_check},
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

/* --set, -X and the snapshot shortcuts all become key=value pairs. */
static int add_set(cli_t *cli, int ch, const char *arg)
{
    static const char *const keys[] = {"snapshot.table", "snapshot.where", "snapshot.name",
                                       "snapshot.page_size", "snapshot.rate_limit", "", "snapshot.topic"};
    if (cli->n_sets == MAX_SETS) return usage_error(cli->cmd, "more than 32 --set/-X options%s", "");
    char *buf = cli->set_buf[cli->n_sets];
    size_t size = sizeof(cli->set_buf[0]);
    if (ch == 'X') snprintf(buf, size, "kafka.%s", arg);
    else if (ch == 'S') snprintf(buf, size, "%s", arg);
    else snprintf(buf, size, "%s=%s", keys[ch - 1001], arg);
    cli->sets[cli->n_sets++] = buf;
    return -1;
}

/* A whole non-negative decimal number, or -1. */
static long parse_count(const char *s)
{
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    return (errno || end == s || *end || n < 0 || !isdigit((unsigned char)*s)) ? -1 : n;
}

/* Which cli.h option bit a getopt code belongs to. */
static unsigned option_bit(int ch)
{
    switch (ch) {
    case 'c': return OBX_OPT_CONFIG;
    case 'p': return OBX_OPT_PRINT;
    case 'S': return OBX_OPT_SET;
    case 'b': return OBX_OPT_BROKERS;
    case 't': return OBX_OPT_TOPIC;
    case 'm': return OBX_OPT_MAX;
    case 'i': return OBX_OPT_IDLE;
    case 'g': return OBX_OPT_GROUP;
    case 'P': case 'Q': return OBX_OPT_PREVIOUS;
    case 'E': return OBX_OPT_ENV_FILE;
    case 'e': return OBX_OPT_EXPECTED;
    case 'n': return OBX_OPT_EXPECT;
    case 'D': return OBX_OPT_DUPS;
    case 'X': return OBX_OPT_X;
    case 'y': return OBX_OPT_YES;
    default: return ch >= 1001 && ch <= 1007 ? OBX_OPT_SNAPSHOT : 0;
    }
}

static const struct option longopts[] = {
    {"config", required_argument, NULL, 'c'}, {"print-config", no_argument, NULL, 'p'},
    {"brokers", required_argument, NULL, 'b'}, {"topic", required_argument, NULL, 't'},
    {"max", required_argument, NULL, 'm'}, {"idle-exit-ms", required_argument, NULL, 'i'},
    {"group", required_argument, NULL, 'g'}, {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'},
    {"previous", required_argument, NULL, 'P'}, {"previous-env", required_argument, NULL, 'Q'},
    {"env-file", required_argument, NULL, 'E'}, {"expected", required_argument, NULL, 'e'},
    {"expect", required_argument, NULL, 'n'}, {"allow-duplicates", no_argument, NULL, 'D'},
    {"yes", no_argument, NULL, 'y'},
    /* snapshot: --set key=value for any snapshot.* key, shortcuts below */
    {"set", required_argument, NULL, 'S'}, {"table", required_argument, NULL, 1001},
    {"where", required_argument, NULL, 1002}, {"name", required_argument, NULL, 1003},
    {"page-size", required_argument, NULL, 1004}, {"rate-limit", required_argument, NULL, 1005},
    {"restart", no_argument, NULL, 1006}, {"snapshot-topic", required_argument, NULL, 1007},
    {NULL, 0, NULL, 0}};

/* One option's value into cli: -1 to go on, else an exit code. */
static int take_option(cli_t *cli, int ch, const char *arg)
{
    long n = 0;
    if ((ch == 'm' || ch == 'i' || ch == 'n' || ch == 1004 || ch == 1005) && ((n = parse_count(arg)) < 0 ||
                                                                              (ch == 'i' && n > 86400000)))
        return usage_error(cli->cmd, "\"%s\" is not a whole number >= 0 (in range)", arg);
    switch (ch) {
    case 'c': cli->config_path = arg; break;
    case 'p': cli->print_config = 1; break;
    case 'b': cli->co.brokers = arg; break;
    case 't': cli->co.topics = arg; break;
    case 'm': cli->co.max_messages = n; break;
    case 'i': cli->co.idle_exit_ms = (int)n; break;
    case 'g': cli->co.group = arg; break;
    case 'P': cli->previous_path = arg; break;
    case 'Q': cli->previous_env = arg; break;
    case 'E': cli->env_file = arg; break;
    case 'e': cli->expected_path = arg; break;
    case 'n': cli->expect = n; break;
    case 'D': cli->allow_dups = 1; break;
    case 'y': cli->yes = 1; break;
    case 1006: cli->snap_restart = 1; break;
    default: return add_set(cli, ch, arg);
    }
    return -1;
}

/* -V/--version: outboxd's version and the libraries it runs with. */
static void print_version(void)
{
    int pq = PQlibVersion();
    printf("outboxd %s (librdkafka %s, libpq %d.%d)\n", OBX_VERSION, rd_kafka_version_str(), pq / 10000, pq % 10000);
}

/* Options after the command (and the slot verb). -1 to go on, else an
 * exit code. */
static int parse_options(cli_t *cli, int argc, char **argv, int first)
{
    unsigned allowed = obx_cli_options(cli->cmd);
    optind = first;
    opterr = 0; /* our own messages, in the log format */
    int ch, rc, li = -1;
    while ((ch = getopt_long(argc, argv, ":c:phVb:t:X:y", longopts, &li)) != -1) {
        char opt[64];
        if (li >= 0) snprintf(opt, sizeof(opt), "--%s", longopts[li].name);
        else if (ch == '?' || ch == ':') snprintf(opt, sizeof(opt), "%s", argv[optind - 1]);
        else snprintf(opt, sizeof(opt), "-%c", ch);
        li = -1;
        if (ch == 'h') return obx_cli_help(cli->cmd, stdout), OBX_EXIT_OK;
        if (ch == 'V') return print_version(), OBX_EXIT_OK;
        if (ch == '?') return usage_error(cli->cmd, "unknown option \"%s\"", opt);
        if (ch == ':') return usage_error(cli->cmd, "option \"%s\" needs a value", opt);
        if (!(option_bit(ch) & allowed)) return usage_error(cli->cmd, "option \"%s\" does not apply to this command", opt);
        if ((rc = take_option(cli, ch, optarg)) >= 0) return rc;
    }
    if (optind < argc) return usage_error(cli->cmd, "unexpected argument \"%s\"", argv[optind]);
    if ((allowed & OBX_OPT_TOPIC) && !*cli->co.topics) return usage_error(cli->cmd, "--topic must not be empty%s", "");
    return -1;
}

/* Commands that need no options and no config. -1 when cmd is not one. */
static int run_simple(int argc, char **argv)
{
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        if (argc > 2 && obx_cli_help(argv[2], stdout) == 0) return OBX_EXIT_OK;
        obx_cli_usage(stdout);
        return OBX_EXIT_OK;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        print_version();
        return OBX_EXIT_OK;
    }
    if (!strcmp(cmd, "config-doc")) {
        if (argc == 2) obx_config_print_doc(stdout);
        else if (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")) obx_cli_help("config-doc", stdout);
        else return usage_error("config-doc", "config-doc takes no option (\"%s\")", argv[2]);
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

/* One log format from the first line: what the config will ask for, read
 * before it is parsed, so an early error looks like every later line. */
static void early_log_setup(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) path = argv[i + 1];
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], "--config=", 9)) path = argv[i] + 9;
    obx_log_setup(OBX_LOG_INFO, (obx_log_format_t)obx_config_peek_log_format(path, environ));
}

int main(int argc, char **argv)
{
    static cli_t cli = {.co = {.topics = "^outbox\\..*"}, .expect = -1};
    early_log_setup(argc, argv);
    if (argc < 2) {
        obx_cli_usage(stderr);
        return OBX_EXIT_USAGE;
    }
    int rc = run_simple(argc, argv);
    if (rc >= 0) return rc;
    cli.cmd = argv[1];
    int first = 2;
    if (cli.cmd[0] == '-') {
        first = 1; /* `outboxd --print-config -c f` */
        cli.cmd = "run";
    }
    const cmd_t *c = find_command(cli.cmd);
    if (!c) return usage_error(NULL, "unknown command \"%s\"", cli.cmd);
    if (!strcmp(cli.cmd, "slot")) {
        if (argc < 3 || argv[2][0] == '-') {
            if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")))
                return obx_cli_help("slot", stdout), OBX_EXIT_OK;
            return usage_error("slot", "slot needs a verb: status, create or drop%s", "");
        }
        cli.verb = argv[2];
        first = 3;
        if (strcmp(cli.verb, "status") && strcmp(cli.verb, "create") && strcmp(cli.verb, "drop"))
            return usage_error("slot", "unknown slot verb \"%s\": use status, create or drop", cli.verb);
    }
    if ((rc = parse_options(&cli, argc, argv, first)) >= 0) return rc;
    if (cli.yes && strcmp(cli.verb, "drop") != 0) return usage_error("slot", "--yes is for slot drop only%s", "");
    install_signals();
    obx_config_t *cfg = load_config(cli.config_path);
    rc = apply_sets(&cli, cfg);
    if (rc == OBX_EXIT_OK && c->cfg == CFG_VALIDATE) rc = validate(cfg);
    if (rc == OBX_EXIT_OK) rc = c->run(&cli, cfg);
    obx_config_destroy(cfg);
    return rc;
}
