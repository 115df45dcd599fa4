/* The content of an outbox_emit() message (deploy/sql/outbox.sql): a JSON
 * object with an outbox row's fields, read into a change that looks like
 * that row's INSERT, so obx_outbox_map maps it exactly like a row (same
 * key, topic rule, headers, version, poison checks).
 *
 * Content: {"id": text, "aggregatetype": text, "aggregateid": text,
 * "type": text, "payload": jsonb's text as a JSON string or null,
 * "aggregate_version": integer, digits as a string, or null, "topic": text
 * or null, "headers": object, its text as a string, or null, "occurred_at":
 * timestamptz text or null, "tracingspancontext": text or null}. Other
 * members are ignored. Decoder-neutral: it reads bytes, not wal2json. */
#ifndef OBX_MESSAGE_H
#define OBX_MESSAGE_H

#include <stddef.h>

#include "config.h"
#include "lsn.h"
#include "wal2json.h"

#define OBX_MESSAGE_FIELDS 10

/* Owns everything chg points to; obx_message_clear frees it. */
typedef struct {
    obx_w2j_change_t chg; /* kind INSERT, lsn the message's, columns named by outbox.column.* */
    obx_col_t cols[OBX_MESSAGE_FIELDS];
    void *tree;       /* cJSON root */
    char *headers;    /* printed headers object, when it came as an object */
    char version[32]; /* a numeric aggregate_version as text */
} obx_message_t;

/* Parses content (len bytes, need not end in NUL). 0, or -1 with errstr
 * when it is not such an object (poison); then m->chg holds only the raw
 * content as a text payload column, for a dead letter. Either way call
 * obx_message_clear. m need not be initialised. */
int obx_message_parse(const obx_config_t *cfg, const char *content, size_t len, obx_lsn_t lsn, obx_message_t *m,
                      char *errstr, size_t errstr_size);
void obx_message_clear(obx_message_t *m);

#endif
