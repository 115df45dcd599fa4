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

typedef struct obx_relset_s obx_relset_t;

obx_relset_t *obx_relset_new(void);
void obx_relset_destroy(obx_relset_t *rs);
/* Adds schema.table (no-op if present). 0, or -1 on allocation failure. */
int obx_relset_add(obx_relset_t *rs, const char *schema, const char *table);
int obx_relset_has(const obx_relset_t *rs, const char *schema, const char *table);
size_t obx_relset_count(const obx_relset_t *rs);
/* Same members, in any order. */
int obx_relset_equal(const obx_relset_t *a, const obx_relset_t *b);
/* Replaces dst's members by src's. 0, or -1 on allocation failure (dst unchanged). */
int obx_relset_assign(obx_relset_t *dst, const obx_relset_t *src);
/* wal2json's add-tables value for every member (escaped), plus
 * extra_schema.extra_table when extra_table is non-empty: malloc'd, the
 * caller frees it; NULL on allocation failure. */
char *obx_relset_add_tables(const obx_relset_t *rs, const char *extra_schema, const char *extra_table);

#endif
