/* A string-keyed hash map that grows without limit (open addressing,
 * linear probing, FNV-1a). For per-session caches keyed by topic name:
 * no fixed number of topics anywhere.
 * Ownership: the map copies and frees its keys; values are the caller's
 * (obx_strmap_destroy hands each to `free_value` when given). */
#ifndef OBX_STRMAP_H
#define OBX_STRMAP_H

#include <stddef.h>

typedef struct obx_strmap_s obx_strmap_t;

/* NULL when out of memory. */
obx_strmap_t *obx_strmap_new(void);
/* Frees the map and its keys; free_value(value) for each entry if given. */
void obx_strmap_destroy(obx_strmap_t *m, void (*free_value)(void *));
/* Removes every entry (free_value as above); the map stays usable. */
void obx_strmap_clear(obx_strmap_t *m, void (*free_value)(void *));

/* The value stored under key, or NULL. */
void *obx_strmap_get(const obx_strmap_t *m, const char *key);
/* Stores value (non-NULL) under key, replacing any previous value (which
 * the caller still owns). 0, or -1 when out of memory (map unchanged). */
int obx_strmap_put(obx_strmap_t *m, const char *key, void *value);
size_t obx_strmap_count(const obx_strmap_t *m);

#endif
