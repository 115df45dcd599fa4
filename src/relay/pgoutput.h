/* Parses pgoutput's binary logical replication protocol (proto_version 1,
 * messages on, no streaming, no binary) into the change struct the
 * transaction core consumes (obx_w2j_change_t), with the same meanings as
 * wal2json's: B/C carry lsn = commit record start, C nextlsn = its end.
 * pgoutput's Begin does not carry the end LSN: B's nextlsn is 0 (unknown)
 * and the core's envelopes say so (commit_end_lsn 0).
 *
 * The decoder keeps what pgoutput sends once: Relation messages (schema,
 * table, columns, type OIDs) per relation OID and Type messages' names.
 * Type names come from a built-in table of common OIDs, else from names
 * learned (Type messages, earlier lookups), else from the caller's resolver
 * (once per OID, e.g. format_type() on the normal connection); otherwise
 * the column's type is NULL (unknown), which the outbox mapping refuses
 * where it needs one (the payload's).
 *
 * Owned by the relay session (stream.c): obx_pgo_new / obx_pgo_destroy.
 * Every pointer of a filled change borrows from the decoder and stays valid
 * until its next obx_pgo_parse. The change's own arena is not used. */
#ifndef OBX_PGOUTPUT_H
#define OBX_PGOUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "lsn.h"
#include "wal2json.h"

typedef struct obx_pgo_s obx_pgo_t;

/* Names type oid into name (NUL-terminated). 0 found, 1 no such type,
 * -1 with err (the lookup failed; the session is retried). */
typedef int (*obx_pgo_type_fn)(void *ctx, uint32_t oid, char *name, size_t name_size, obx_err_t *err);

/* resolver may be NULL (tests, fuzzing). NULL on allocation failure. */
obx_pgo_t *obx_pgo_new(obx_pgo_type_fn resolver, void *ctx);
void obx_pgo_destroy(obx_pgo_t *p);

/* One XLogData payload; data_start is its header's LSN (pgoutput names a
 * row change's LSN only there). Returns 0 with out filled, 1 for a message
 * that is no change (Relation, Type, Origin: remembered), or -1 with err:
 * FATAL (exit 1) for malformed or unexpected output, POISON (exit 3) for
 * what the relay must not pass (a change of a relation never described,
 * an INSERT with an unchanged-TOAST value), RETRIABLE when a type lookup
 * failed or memory ran out. */
int obx_pgo_parse(obx_pgo_t *p, const char *data, size_t len, obx_lsn_t data_start, obx_w2j_change_t *out,
                  obx_err_t *err);

/* The built-in name of a type OID (format_type's spelling), NULL if not in the table. */
const char *obx_pgo_builtin_type(uint32_t oid);

#endif
