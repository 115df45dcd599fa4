/* Process exit codes, the contract with Kubernetes and operators: one table
 * for every command (docs/operations.md, `outboxd <command> --help`).
 * Only main.c calls exit(); everything else returns. */
#ifndef OBX_EXITCODES_H
#define OBX_EXITCODES_H

#define OBX_EXIT_OK 0
#define OBX_EXIT_FAIL 1     /* retriable trouble outlasted its budget, a check failed (doctor, verify), or a bug */
#define OBX_EXIT_CONFIG 2   /* bad config: fix it and restart */
#define OBX_EXIT_POISON 3   /* an outbox row cannot become an event */
#define OBX_EXIT_SLOT 4     /* slot missing/invalidated: needs an operator (run, slot status, slot drop) */
#define OBX_EXIT_REFUSED 5  /* config-check: the new config changes the key rule without a new topic */
#define OBX_EXIT_USAGE 64   /* bad command line (BSD sysexits EX_USAGE): unknown or misplaced option, bad number */

#endif
