#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *key; /* NULL: empty slot (no deletes, so no tombstones) */
    void *value;
    uint32_t hash;
} entry_t;

struct obx_strmap_s {
    entry_t *slots;
    size_t cap, count; /* cap is a power of two */
};

#define INITIAL_CAP 64

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

obx_strmap_t *obx_strmap_new(void)
{
    obx_strmap_t *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->slots = calloc(INITIAL_CAP, sizeof(*m->slots));
    if (!m->slots) {
        free(m);
        return NULL;
    }
    m->cap = INITIAL_CAP;
    return m;
}

void obx_strmap_clear(obx_strmap_t *m, void (*free_value)(void *))
{
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        if (free_value) free_value(m->slots[i].value);
        free(m->slots[i].key);
    }
    memset(m->slots, 0, m->cap * sizeof(*m->slots));
    m->count = 0;
}

void obx_strmap_destroy(obx_strmap_t *m, void (*free_value)(void *))
{
    if (!m) return;
    obx_strmap_clear(m, free_value);
    free(m->slots);
    free(m);
}

static entry_t *find(const obx_strmap_t *m, const char *key, uint32_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        entry_t *e = &m->slots[i];
        if (!e->key || (e->hash == h && !strcmp(e->key, key))) return e;
    }
}

void *obx_strmap_get(const obx_strmap_t *m, const char *key)
{
    entry_t *e = find(m, key, fnv1a(key));
    return e->key ? e->value : NULL;
}

/* Doubles the table; entries keep their keys (no copies). */
static int grow(obx_strmap_t *m)
{
    obx_strmap_t n = {.cap = m->cap * 2, .count = m->count};
    if (n.cap < m->cap || !(n.slots = calloc(n.cap, sizeof(*n.slots)))) return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key) *find(&n, m->slots[i].key, m->slots[i].hash) = m->slots[i];
    free(m->slots);
    *m = n;
    return 0;
}

int obx_strmap_put(obx_strmap_t *m, const char *key, void *value)
{
    uint32_t h = fnv1a(key);
    entry_t *e = find(m, key, h);
    if (e->key) {
        e->value = value;
        return 0;
    }
    /* Keep the load under 3/4 so probes stay short and always end. */
    if ((m->count + 1) * 4 > m->cap * 3) {
        if (grow(m) != 0) return -1;
        e = find(m, key, h);
    }
    char *k = strdup(key);
    if (!k) return -1;
    *e = (entry_t){.key = k, .value = value, .hash = h};
    m->count++;
    return 0;
}

size_t obx_strmap_count(const obx_strmap_t *m) { return m->count; }
