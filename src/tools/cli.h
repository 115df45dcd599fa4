/* The command line's words: which options each command takes, and the
 * help text (`outboxd <command> --help`) with its exit codes. main.c parses
 * and dispatches; this file only says what is allowed and prints. Static
 * data, nothing to free. */
#ifndef OBX_CLI_H
#define OBX_CLI_H

#include <stdio.h>

/* One bit per option (or group of snapshot shortcuts). */
enum {
    OBX_OPT_CONFIG = 1u << 0, OBX_OPT_PRINT = 1u << 1, OBX_OPT_SET = 1u << 2, OBX_OPT_BROKERS = 1u << 3,
    OBX_OPT_TOPIC = 1u << 4, OBX_OPT_MAX = 1u << 5, OBX_OPT_IDLE = 1u << 6, OBX_OPT_GROUP = 1u << 7,
    OBX_OPT_PREVIOUS = 1u << 8, OBX_OPT_EXPECTED = 1u << 9, OBX_OPT_DUPS = 1u << 10, OBX_OPT_X = 1u << 11,
    OBX_OPT_SNAPSHOT = 1u << 12, OBX_OPT_YES = 1u << 13, OBX_OPT_EXPECT = 1u << 14, OBX_OPT_ENV_FILE = 1u << 15,
};

/* Options cmd takes; 0 for an unknown command. */
unsigned obx_cli_options(const char *cmd);
/* The overview (`outboxd --help`). */
void obx_cli_usage(FILE *out);
/* cmd's usage, options and exit codes; -1 for an unknown command. */
int obx_cli_help(const char *cmd, FILE *out);

#endif
