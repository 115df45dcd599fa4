#include "relset.h"

#include <stdlib.h>
#include <string.h>

#include "wal2json.h"

typedef struct {
    char *schema, *table;
    uint64_t gone_at; /* 0: in the partition tree now */
} rel_t;

struct obx_relset_s {
    rel_t *v;
    size_t n, cap;
    size_t last; /* rows of one transaction usually hit the same leaf */
};

obx_relset_t *obx_relset_new(void)
{
    return calloc(1, sizeof(obx_relset_t));
}

static void clear(obx_relset_t *rs)
{
    for (size_t i = 0; i < rs->n; i++) {
        free(rs->v[i].schema);
        free(rs->v[i].table);
    }
    rs->n = rs->last = 0;
}

void obx_relset_destroy(obx_relset_t *rs)
{
    if (!rs) return;
    clear(rs);
    free(rs->v);
    free(rs);
}

static int find(const obx_relset_t *rs, const char *schema, const char *table)
{
    if (rs->last < rs->n && !strcmp(rs->v[rs->last].table, table) && !strcmp(rs->v[rs->last].schema, schema))
        return (int)rs->last;
    for (size_t i = 0; i < rs->n; i++)
        if (!strcmp(rs->v[i].table, table) && !strcmp(rs->v[i].schema, schema)) {
            ((obx_relset_t *)rs)->last = i; /* a cache, not state */
            return (int)i;
        }
    return -1;
}

int obx_relset_add(obx_relset_t *rs, const char *schema, const char *table)
{
    return obx_relset_add_gone(rs, schema, table, 0);
}

void obx_relset_get(const obx_relset_t *rs, size_t i, const char **schema, const char **table, uint64_t *gone_at)
{
    *schema = rs->v[i].schema;
    *table = rs->v[i].table;
    *gone_at = rs->v[i].gone_at;
}

int obx_relset_add_gone(obx_relset_t *rs, const char *schema, const char *table, uint64_t gone_at)
{
    int i = find(rs, schema, table);
    if (i >= 0) {
        /* Present wins over gone; of two gone marks the later one. */
        if (rs->v[i].gone_at && (!gone_at || gone_at > rs->v[i].gone_at)) rs->v[i].gone_at = gone_at;
        return 0;
    }
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 4;
        rel_t *v = realloc(rs->v, cap * sizeof(*v));
        if (!v) return -1;
        rs->v = v;
        rs->cap = cap;
    }
    rel_t r = {strdup(schema), strdup(table), gone_at};
    if (!r.schema || !r.table) {
        free(r.schema);
        free(r.table);
        return -1;
    }
    rs->v[rs->n++] = r;
    return 0;
}

int obx_relset_has(const obx_relset_t *rs, const char *schema, const char *table)
{
    return schema && table && find(rs, schema, table) >= 0;
}

size_t obx_relset_count(const obx_relset_t *rs) { return rs->n; }

int obx_relset_equal(const obx_relset_t *a, const obx_relset_t *b)
{
    if (a->n != b->n) return 0;
    for (size_t i = 0; i < a->n; i++)
        if (find(b, a->v[i].schema, a->v[i].table) < 0) return 0;
    return 1;
}

int obx_relset_assign(obx_relset_t *dst, const obx_relset_t *src)
{
    obx_relset_t tmp = {0};
    for (size_t i = 0; i < src->n; i++)
        if (obx_relset_add_gone(&tmp, src->v[i].schema, src->v[i].table, src->v[i].gone_at) != 0) {
            clear(&tmp);
            free(tmp.v);
            return -1;
        }
    clear(dst);
    free(dst->v);
    *dst = tmp;
    return 0;
}

/* Escaped, a name can at most double in length (wal2json's backslashes). */
static size_t escaped_max(const char *schema, const char *table)
{
    return 2 * (strlen(schema) + strlen(table)) + 3;
}

char *obx_relset_add_tables(const obx_relset_t *rs, const char *extra_schema, const char *extra_table)
{
    size_t size = 1;
    for (size_t i = 0; i < rs->n; i++) size += escaped_max(rs->v[i].schema, rs->v[i].table) + 1;
    if (extra_table && *extra_table) size += escaped_max(extra_schema, extra_table) + 1;
    char *out = malloc(size), *o = out;
    if (!out) return NULL;
    *o = '\0';
    for (size_t i = 0; i <= rs->n; i++) {
        const char *s = i < rs->n ? rs->v[i].schema : extra_schema, *t = i < rs->n ? rs->v[i].table : extra_table;
        if (i == rs->n && !(t && *t)) break;
        if (o != out) *o++ = ',';
        if (obx_w2j_escape_table(s, t, o, size - (size_t)(o - out)) != 0) {
            free(out);
            return NULL;
        }
        o += strlen(o);
    }
    return out;
}

int obx_relset_merge(obx_relset_t *out, const obx_relset_t *now, const obx_relset_t *before, uint64_t gone_at,
                     uint64_t confirmed)
{
    obx_relset_t tmp = {0};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < now->n; i++) rc = obx_relset_add(&tmp, now->v[i].schema, now->v[i].table);
    for (size_t i = 0; rc == 0 && before && i < before->n; i++) {
        const rel_t *r = &before->v[i];
        if (find(now, r->schema, r->table) >= 0) continue;
        uint64_t at = r->gone_at ? r->gone_at : gone_at;
        if (at > confirmed) rc = obx_relset_add_gone(&tmp, r->schema, r->table, at);
    }
    if (rc == 0) rc = obx_relset_assign(out, &tmp);
    clear(&tmp);
    free(tmp.v);
    return rc;
}
