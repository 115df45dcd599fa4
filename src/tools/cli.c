/* Help text and the option sets of each command (cli.h). The exit codes
 * printed here are the table in docs/operations.md. */
#include "cli.h"

#include <string.h>

#define COMMON_CFG "  -c, --config FILE      config file (key = value); OUTBOXD_* environment variables override it\n"
#define PRINT_CFG "  --print-config         print the effective config (secrets redacted) and exit\n"
#define SET_CFG "  --set KEY=VALUE        set a config key after the file and environment (repeatable)\n"
#define HELP_OPT "  -h, --help             this help\n"
#define CODES "exit codes:\n  0   ok\n"
#define CODE_CONFIG "  2   bad config (the message names the key)\n"
#define CODE_USAGE "  64  bad command line (unknown or misplaced option, malformed number)\n"

typedef struct {
    const char *name;
    unsigned opts;
    const char *text;
} cmd_help_t;

static const cmd_help_t cmds[] = {
    {"run", OBX_OPT_CONFIG | OBX_OPT_PRINT | OBX_OPT_SET,
     "usage: outboxd run [-c FILE] [--set KEY=VALUE]... [--print-config]\n\n"
     "Relay outbox inserts from the replication slot to Kafka until SIGTERM.\n\n"
     "options:\n" COMMON_CFG SET_CFG PRINT_CFG HELP_OPT "\n" CODES
     "  1   retriable trouble outlasted its budget, or a bug\n" CODE_CONFIG
     "  3   an outbox row cannot become an event (poison.policy = halt)\n"
     "  4   the slot is missing (with evidence it existed, or slot.create = false) or invalidated\n" CODE_USAGE},
    {"slot", OBX_OPT_CONFIG | OBX_OPT_PRINT | OBX_OPT_SET | OBX_OPT_YES,
     "usage: outboxd slot status|create|drop [-c FILE] [--set KEY=VALUE]... [--yes]\n\n"
     "  status   print the slot's plugin, activity, wal_status and LSNs\n"
     "  create   create the slot (the explicit way forward after a slot was lost)\n"
     "  drop     drop the slot and clear its record in slot.evidence_topic; asks for\n"
     "           confirmation on a terminal, needs --yes otherwise\n\n"
     "options:\n" COMMON_CFG SET_CFG "  -y, --yes              drop without asking\n" PRINT_CFG HELP_OPT "\n" CODES
     "  1   PostgreSQL or Kafka unreachable, or a failed statement\n" CODE_CONFIG
     "  4   the slot does not exist (status; drop still clears its Kafka record)\n" CODE_USAGE},
    {"doctor", OBX_OPT_CONFIG | OBX_OPT_SET,
     "usage: outboxd doctor [-c FILE] [--set KEY=VALUE]...\n\n"
     "Check the configuration, PostgreSQL and Kafka; print PASS/WARN/FAIL lines with fixes.\n"
     "A FAIL is something `outboxd run` would stop on.\n\n"
     "options:\n" COMMON_CFG SET_CFG HELP_OPT "\n" CODES "  1   NOT READY: at least one FAIL\n"
     "  2   the config file or environment cannot be read (an invalid value is a FAIL line)\n" CODE_USAGE},
    {"apply", OBX_OPT_CONFIG | OBX_OPT_PRINT,
     "usage: outboxd apply [-c FILE] [--print-config]\n\n"
     "Keep a replica table up to date from outbox topics (apply.* keys, docs/apply.md).\n\n"
     "options:\n" COMMON_CFG PRINT_CFG HELP_OPT "\n" CODES "  1   retriable trouble outlasted its budget, or a bug\n"
     CODE_CONFIG "  3   an event cannot be applied (apply.poison.policy = halt)\n" CODE_USAGE},
    {"config-check", OBX_OPT_CONFIG | OBX_OPT_SET | OBX_OPT_PREVIOUS | OBX_OPT_ENV_FILE,
     "usage: outboxd config-check --previous OLD [--previous-env ENVFILE] [-c NEW] [--env-file ENVFILE]\n\n"
     "Compare the effective configuration (file, then environment) with the previous one and\n"
     "refuse a change of the partition key rule that keeps the topic name. The new side is\n"
     "this process's configuration: -c NEW, the OUTBOXD_* environment, then --env-file; the\n"
     "old side is --previous OLD, then --previous-env. ENVFILE holds KEY=VALUE lines (as `env`\n"
     "prints them, or a Kubernetes ConfigMap's env).\n\n"
     "options:\n" COMMON_CFG "  --previous FILE        the config in force now\n"
     "  --previous-env FILE    OUTBOXD_* variables in force now\n"
     "  --env-file FILE        OUTBOXD_* variables of the new configuration\n" SET_CFG HELP_OPT "\n" CODES
     CODE_CONFIG "  5   refused: the key rule changes without a new topic\n" CODE_USAGE},
    {"snapshot", OBX_OPT_CONFIG | OBX_OPT_PRINT | OBX_OPT_SET | OBX_OPT_SNAPSHOT,
     "usage: outboxd snapshot [-c FILE] --table T [--where SQL] [--name N] [--page-size N]\n"
     "                        [--rate-limit N] [--snapshot-topic T] [--restart] [--set snapshot.KEY=VALUE]...\n\n"
     "Re-emit a table's current state as events (resumable; docs/snapshot.md).\n\n"
     "options:\n" COMMON_CFG "  --table, --where, --name, --page-size, --rate-limit, --snapshot-topic\n"
     "                         shortcuts for --set snapshot.table=... etc.\n"
     "  --restart              ignore the checkpoint and start over\n" SET_CFG PRINT_CFG HELP_OPT "\n" CODES
     "  1   PostgreSQL or Kafka trouble outlasted its budget\n" CODE_CONFIG CODE_USAGE},
    {"consume", OBX_OPT_CONFIG | OBX_OPT_BROKERS | OBX_OPT_TOPIC | OBX_OPT_MAX | OBX_OPT_IDLE | OBX_OPT_GROUP | OBX_OPT_X,
     "usage: outboxd consume [-c FILE] [-b BROKERS] [-X PROP=VALUE]... -t TOPICS [--max N]\n"
     "                       [--idle-exit-ms MS] [--group G]\n\n"
     "Print outbox events from Kafka as JSON lines on stdout (log lines on stderr).\n\n"
     "options:\n" COMMON_CFG
     "  -b, --brokers B        bootstrap servers (over kafka.bootstrap.servers)\n"
     "  -X PROP=VALUE          a librdkafka property (over kafka.PROP), as kcat's -X\n"
     "  -t, --topic TOPICS     comma-separated names, or one ^regex (default ^outbox\\..*)\n"
     "  --max N                stop after N events (0: no limit)\n"
     "  --idle-exit-ms MS      stop after MS without a message (0: never)\n"
     "  --group G              commit offsets in consumer group G (default: a fresh group, from the start)\n"
     HELP_OPT "\n" CODES "  1   an undecodable record or a Kafka error (also: an idle exit before any broker answered)\n" CODE_CONFIG CODE_USAGE},
    {"verify", OBX_OPT_CONFIG | OBX_OPT_BROKERS | OBX_OPT_TOPIC | OBX_OPT_IDLE | OBX_OPT_GROUP | OBX_OPT_X |
                   OBX_OPT_EXPECTED | OBX_OPT_EXPECT | OBX_OPT_DUPS,
     "usage: outboxd verify [-c FILE] [-b BROKERS] [-X PROP=VALUE]... -t TOPICS [--expected IDS_FILE]\n"
     "                      [--expect N] [--allow-duplicates] [--idle-exit-ms MS]\n\n"
     "Check topics: no duplicate event ids, every expected id present, each aggregate in one\n"
     "partition with increasing versions, source positions increasing. Prints one JSON summary\n"
     "on stdout; progress and each problem go to stderr. It fails when Kafka cannot be\n"
     "reached, a named topic (or any topic matching a ^regex) does not exist, or it read\n"
     "fewer events than expected (at least 1 unless --expect 0).\n\n"
     "options:\n" COMMON_CFG
     "  -b, --brokers B        bootstrap servers (over kafka.bootstrap.servers)\n"
     "  -X PROP=VALUE          a librdkafka property (over kafka.PROP), as kcat's -X\n"
     "  -t, --topic TOPICS     comma-separated names, or one ^regex\n"
     "  --expected FILE        event ids (one per line) that must all be present\n"
     "  --expect N             read at least N distinct events (default 1)\n"
     "  --allow-duplicates     report duplicates without failing (at-least-once)\n"
     "  --idle-exit-ms MS      stop after MS without a message (default 5000)\n"
     "  --group G              read in consumer group G\n" HELP_OPT "\n" CODES
     "  1   a check failed, Kafka unreachable, a topic missing, or too few events\n" CODE_CONFIG CODE_USAGE},
    {"config-doc", 0, "usage: outboxd config-doc\n\nPrint the configuration reference (Markdown, docs/configuration.md).\n"},
};

static const cmd_help_t *find(const char *cmd)
{
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (!strcmp(cmds[i].name, cmd)) return &cmds[i];
    return NULL;
}

unsigned obx_cli_options(const char *cmd)
{
    const cmd_help_t *c = find(cmd);
    return c ? c->opts : 0;
}

int obx_cli_help(const char *cmd, FILE *out)
{
    const cmd_help_t *c = find(cmd);
    if (!c) return -1;
    fputs(c->text, out);
    return 0;
}

void obx_cli_usage(FILE *out)
{
    fputs("usage: outboxd <command> [options]\n"
          "\n"
          "commands:\n"
          "  run                 relay outbox inserts from the slot to Kafka\n"
          "  slot status|create|drop\n"
          "                      inspect or manage the replication slot\n"
          "  doctor              check config, PostgreSQL and Kafka: PASS/WARN/FAIL with fixes\n"
          "  apply               keep a replica table up to date from outbox topics\n"
          "  config-check        refuse a partition key change that keeps the topic name\n"
          "  snapshot            re-emit a table's current state as events (resumable)\n"
          "  consume             print outbox events from Kafka as JSON lines\n"
          "  verify              check topics: duplicates, missing ids, per-aggregate order\n"
          "  config-doc          print the configuration reference (Markdown)\n"
          "  version, -V         print the version\n"
          "\n"
          "`outboxd <command> --help` shows a command's options and exit codes.\n"
          "Every command but config-doc reads -c/--config FILE and OUTBOXD_* environment variables.\n"
          "\n"
          "exit codes: 0 ok, 1 failure, 2 bad config, 3 poison row, 4 slot missing or lost,\n"
          "            5 config-check refused, 64 bad command line (docs/operations.md)\n",
          out);
}
