/* Process exit codes, the contract with Kubernetes and operators
 * (docs/operations.md). Only main.c calls exit(); everything else returns. */
#ifndef OBX_EXITCODES_H
#define OBX_EXITCODES_H

#define OBX_EXIT_OK 0
#define OBX_EXIT_FAIL 1     /* retriable trouble outlasted its budget, or a bug */
#define OBX_EXIT_CONFIG 2   /* bad config or usage: fix and restart */
#define OBX_EXIT_POISON 3   /* an outbox row cannot become an event */
#define OBX_EXIT_SLOT 4     /* slot missing/invalidated: needs an operator */

#endif
