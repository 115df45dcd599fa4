/* pgoutput's catalog side: the type names its resolver needs, and the
 * publication it streams (decoder = pgoutput): outboxd creates
 * it when missing, FOR TABLE the outbox and the signal table (when that
 * exists), publish = 'insert', publish_via_partition_root = true, and
 * refuses one that differs, naming the ALTER PUBLICATION that fixes it.
 * It never alters a publication itself: one may be shared, and what it
 * publishes decides what the slot sends.
 *
 * The caller owns the connection (a normal one). */
#ifndef OBX_PUBLICATION_H
#define OBX_PUBLICATION_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "lsn.h"

/* Makes sure the publication exists as described above. slot_exists: the
 * slot is already there, so a missing publication is refused (pgoutput
 * reads publications as of each change's time: changes from before the
 * publication existed cannot be decoded). 0, or an OBX_EXIT_* code with
 * errstr (OBX_EXIT_FAIL: query failed, retry; OBX_EXIT_CONFIG: fix it). */
int obx_publication_ensure(PGconn *conn, const obx_config_t *cfg, int slot_exists, char *errstr, size_t errstr_size);

/* Only checks. *exists says whether it is there; 0 when it is missing or
 * as outboxd needs it, else an OBX_EXIT_* code with errstr (what differs
 * and the fix). For doctor. */
int obx_publication_check(PGconn *conn, const obx_config_t *cfg, int *exists, char *errstr, size_t errstr_size);

/* A fingerprint of the publication's catalog rows (itself, its tables and
 * schemas), "" when it does not exist; it changes with any ALTER, drop or
 * re-create, even one undone since. 0, or -1 with err. */
int obx_publication_identity(PGconn *conn, const char *name, char *out, size_t out_size, obx_err_t *err);

/* pgoutput decodes each change against the publication as of that change:
 * rows written while the outbox was out of it (ALTER PUBLICATION ... DROP
 * TABLE, the outbox dropped and re-created, publish changed) are not sent,
 * nothing in the stream says so, and no replay brings them back. known: the
 * fingerprint when streaming began ("" = take it now). 0 unchanged, 1
 * changed (err: FATAL, exit 2, naming `before`, the last position known
 * safe), -1 query error (err). */
int obx_publication_unchanged(PGconn *conn, const obx_config_t *cfg, char *known, size_t known_size, obx_lsn_t before,
                              obx_err_t *err);

/* pgoutput's resolver (pgoutput.h): format_type() of a type OID, as
 * wal2json names types. 0 found, 1 no such type, -1 with err (retriable). */
int obx_publication_type_name(PGconn *conn, uint32_t oid, char *name, size_t name_size, obx_err_t *err);

/* A stream that failed with 42704 (undefined object) under pgoutput: the
 * slot or the publication may be gone, and pgoutput names both alike. 1
 * when it is the publication (err set: fatal, exit 2, with the recovery);
 * 0 when it is not, or cannot be told (c NULL or down): the caller goes on
 * as for a missing slot. old: the stream's error text, quoted. */
int obx_publication_gone(PGconn *c, const obx_config_t *cfg, const char *old, obx_err_t *err);

#endif
