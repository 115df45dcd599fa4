/* The relations that are the outbox: the configured table and, when it is
 * partitioned, every leaf partition (logical decoding names the leaf, in
 * whatever schema it lives, never the parent). The transaction core asks
 * "is this change's relation the outbox?"; the stream builds wal2json's
 * add-tables filter from the same set, so filter and classification agree.
 *
 * A plain value container: no I/O. The owner frees it with
 * obx_relset_destroy; names are copied in. */
#ifndef OBX_RELSET_H
#define OBX_RELSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct obx_relset_s obx_relset_t;

obx_relset_t *obx_relset_new(void);
void obx_relset_destroy(obx_relset_t *rs);
/* Adds schema.table (no-op if present). 0, or -1 on allocation failure. */
int obx_relset_add(obx_relset_t *rs, const char *schema, const char *table);
/* A relation that was a leaf and is gone from the partition tree (detached,
 * dropped, renamed): its rows committed before gone_at are still decoded
 * under this name, so it stays until the slot is confirmed past gone_at. */
int obx_relset_add_gone(obx_relset_t *rs, const char *schema, const char *table, uint64_t gone_at);
/* The i-th member (0 <= i < count); gone_at 0 for a present one. */
void obx_relset_get(const obx_relset_t *rs, size_t i, const char **schema, const char **table, uint64_t *gone_at);
int obx_relset_has(const obx_relset_t *rs, const char *schema, const char *table);
size_t obx_relset_count(const obx_relset_t *rs);
/* Same members, in any order. */
int obx_relset_equal(const obx_relset_t *a, const obx_relset_t *b);
/* Replaces dst's members by src's. 0, or -1 on allocation failure (dst unchanged). */
int obx_relset_assign(obx_relset_t *dst, const obx_relset_t *src);
/* out = now (present) plus every member of before missing from now, kept
 * as gone (its own gone_at, else gone_at) unless confirmed is at or past
 * that: all its rows from before it went are then confirmed. 0, or -1. */
int obx_relset_merge(obx_relset_t *out, const obx_relset_t *now, const obx_relset_t *before, uint64_t gone_at,
                     uint64_t confirmed);

/* wal2json's add-tables value for every member (escaped), plus
 * extra_schema.extra_table when extra_table is non-empty: malloc'd, the
 * caller frees it; NULL on allocation failure. */
char *obx_relset_add_tables(const obx_relset_t *rs, const char *extra_schema, const char *extra_table);

#endif
