#include "wal2json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parse trees live in a per-change bump arena: cJSON allocates a node for
 * every value, and malloc/free of those nodes was a third of the relay's CPU
 * (perf, 200k-row drain). cJSON's hooks are process-wide, so the arena is
 * selected per thread and only while obx_w2j_parse runs; everything else
 * (and every other thread) still gets plain malloc/free. The hooks are
 * installed once, at process start (hooks_install), never while another
 * thread (a snapshot, librdkafka's statistics) may be inside cJSON. */
#define ARENA_CHUNKS 24

typedef struct {
    char *chunk[ARENA_CHUNKS];
    size_t cap[ARENA_CHUNKS];
    int n, cur;
    size_t used;
} arena_t;

static _Thread_local arena_t *tl_arena;

static int in_arena(const arena_t *a, const void *p)
{
    for (int i = 0; a && i < a->n; i++)
        if ((const char *)p >= a->chunk[i] && (const char *)p < a->chunk[i] + a->cap[i]) return 1;
    return 0;
}

static void *arena_alloc(arena_t *a, size_t n)
{
    if (n > ((size_t)1 << 40)) return NULL; /* beyond any line; keeps the rounding below from wrapping */
    n = (n + 15) & ~(size_t)15;
    while (a->cur < a->n && a->used + n > a->cap[a->cur]) {
        a->cur++;
        a->used = 0;
    }
    if (a->cur == a->n) {
        if (a->n == ARENA_CHUNKS) return NULL;
        size_t cap = a->n ? a->cap[a->n - 1] * 2 : 64 * 1024;
        while (cap < n) cap *= 2;
        a->chunk[a->n] = malloc(cap);
        if (!a->chunk[a->n]) return NULL;
        a->cap[a->n++] = cap;
        a->used = 0;
    }
    void *p = a->chunk[a->cur] + a->used;
    a->used += n;
    return p;
}

static void *arena_malloc(size_t n) { return tl_arena ? arena_alloc(tl_arena, n) : malloc(n); }

static void arena_free(void *p)
{
    /* Arena memory goes back all at once, when the change is reset. */
    if (!p || in_arena(tl_arena, p)) return;
    free(p);
}

/* A constructor runs before main() and so before any thread: cJSON_InitHooks
 * writes cJSON's global hooks unlocked, and installing them lazily at the
 * first parse raced with a snapshot thread already inside cJSON. Every
 * program that links this parser gets them, the daemon and the tests alike. */
__attribute__((constructor)) static void hooks_install(void)
{
    cJSON_Hooks h = {arena_malloc, arena_free};
    cJSON_InitHooks(&h);
}

/* Forgets the fields and the tree, keeps the arena's chunks for reuse. */
static void change_reset(obx_w2j_change_t *c)
{
    arena_t *a = c->arena;
    memset(c, 0, offsetof(obx_w2j_change_t, arena));
    c->arena = a;
    if (a) {
        a->cur = 0;
        a->used = 0;
    }
}

void obx_w2j_change_clear(obx_w2j_change_t *c)
{
    arena_t *a = c->arena;
    change_reset(c);
    if (a) {
        for (int i = 0; i < a->n; i++) free(a->chunk[i]);
        free(a);
    }
    c->arena = NULL;
}

static const char *str_member(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int lsn_member(const cJSON *o, const char *k, obx_lsn_t *out, int required,
                      char *errstr, size_t errstr_size)
{
    const char *s = str_member(o, k);
    if (!s) {
        if (!required) return 0;
        snprintf(errstr, errstr_size, "wal2json change has no \"%s\" (is include-lsn on?)", k);
        return -1;
    }
    if (obx_lsn_parse(s, out) != 0) {
        snprintf(errstr, errstr_size, "wal2json \"%s\" is not an LSN: \"%.40s\"", k, s);
        return -1;
    }
    return 0;
}

/* One element of "columns" into out->cols[out->ncols]. 0 or -1. */
static int parse_column(obx_w2j_change_t *out, const cJSON *c, char *errstr, size_t errstr_size)
{
    obx_col_t *col = &out->cols[out->ncols];
    col->inexact = 0;
    col->name = col->type = NULL;
    const cJSON *v = NULL;
    /* One pass over the member list (GetObjectItem would rescan it
     * for each of the three keys). */
    for (const cJSON *mb = c->child; mb; mb = mb->next) {
        const char *k = mb->string;
        if (!k) continue;
        if (k[0] == 'n' && !strcmp(k, "name")) col->name = cJSON_IsString(mb) ? mb->valuestring : NULL;
        else if (k[0] == 't' && !strcmp(k, "type")) col->type = cJSON_IsString(mb) ? mb->valuestring : NULL;
        else if (k[0] == 'v' && !strcmp(k, "value")) v = mb;
    }
    if (!col->name || !v) {
        snprintf(errstr, errstr_size, "wal2json column without name or value");
        return -1;
    }
    if (cJSON_IsNull(v)) {
        col->value = NULL;
        col->value_len = 0;
    } else if (cJSON_IsString(v)) {
        col->value = v->valuestring;
        col->value_len = strlen(v->valuestring);
    } else if (cJSON_IsBool(v)) {
        col->value = cJSON_IsTrue(v) ? "true" : "false";
        col->value_len = strlen(col->value);
    } else if (cJSON_IsNumber(v)) {
        /* wal2json prints numeric types as JSON numbers and cJSON keeps
         * only a double: integers below 2^53 are exact, anything else
         * is flagged so no key or version is ever silently rounded. */
        double d = v->valuedouble;
        enum { NB = 32 }; /* "%.17g" of any double, or an int64 */
        char *nb = arena_alloc(out->arena, NB);
        if (!nb) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        /* Range first: converting a double beyond int64 (a real 1e+30)
         * is undefined behaviour. */
        if (fabs(d) < 9007199254740992.0 && d == (double)(int64_t)d) {
            snprintf(nb, NB, "%lld", (long long)(int64_t)d);
        } else {
            snprintf(nb, NB, "%.17g", d);
            col->inexact = 1;
        }
        col->value = nb;
        col->value_len = strlen(nb);
    } else {
        snprintf(errstr, errstr_size, "wal2json column %s has an unexpected JSON value type", col->name);
        return -1;
    }
    return 0;
}

/* I/U/D: schema, table and (for inserts and updates) the columns. */
static int parse_row(obx_w2j_change_t *out, const cJSON *root, char *errstr, size_t errstr_size)
{
    if (lsn_member(root, "lsn", &out->lsn, 0, errstr, errstr_size) != 0) return -1;
    out->schema = str_member(root, "schema");
    out->table = str_member(root, "table");
    if (!out->schema || !out->table) {
        snprintf(errstr, errstr_size, "wal2json row change without schema/table");
        return -1;
    }
    /* Deletes carry "identity" instead of "columns"; only inserts matter. */
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(root, out->kind == OBX_CHG_DELETE ? "identity" : "columns");
    if (!cols) return 0;
    if (!cJSON_IsArray(cols)) {
        snprintf(errstr, errstr_size, "wal2json \"columns\" is not an array");
        return -1;
    }
    int n = cJSON_GetArraySize(cols);
    if (n > 0 && !(out->cols = arena_alloc(out->arena, (size_t)n * sizeof(obx_col_t)))) {
        snprintf(errstr, errstr_size, "out of memory for %d columns of %s.%s", n, out->schema, out->table);
        return -1;
    }
    const cJSON *c;
    cJSON_ArrayForEach(c, cols) {
        if (parse_column(out, c, errstr, errstr_size) != 0) return -1;
        out->ncols++;
    }
    return 0;
}

/* B/C: the commit's LSNs and time. */
static int parse_txn(obx_w2j_change_t *out, const cJSON *root, char *errstr, size_t errstr_size)
{
    if (lsn_member(root, "lsn", &out->lsn, 1, errstr, errstr_size) != 0) return -1;
    if (lsn_member(root, "nextlsn", &out->nextlsn, 1, errstr, errstr_size) != 0) return -1;
    const char *ts = str_member(root, "timestamp");
    if (ts && obx_timestamptz_parse(ts, &out->commit_time_us) != 0) {
        snprintf(errstr, errstr_size, "wal2json timestamp \"%.60s\" not understood; the replication session needs DateStyle ISO", ts);
        return -1;
    }
    return 0;
}

int obx_w2j_parse(const char *line, size_t len, obx_w2j_change_t *out, char *errstr, size_t errstr_size)
{
    change_reset(out);
    if (!out->arena && !(out->arena = calloc(1, sizeof(arena_t)))) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    tl_arena = out->arena;
    cJSON *root = cJSON_ParseWithLength(line, len);
    tl_arena = NULL;
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at ? (long)(at - line) : -1;
        snprintf(errstr, errstr_size, "wal2json line is not valid JSON (at byte %ld of %zu)", off, len);
        obx_w2j_change_clear(out);
        return -1;
    }
    out->tree = root;
    if (!cJSON_IsObject(root)) {
        snprintf(errstr, errstr_size, "wal2json line is not a JSON object");
        goto fail;
    }
    const char *action = str_member(root, "action");
    if (!action || !action[0] || action[1]) {
        snprintf(errstr, errstr_size, "wal2json change has no one-letter \"action\"; is format-version 2 set?");
        goto fail;
    }
    out->kind = (obx_chg_kind_t)action[0];
    const cJSON *xid = cJSON_GetObjectItemCaseSensitive(root, "xid");
    if (cJSON_IsNumber(xid)) {
        /* Converting a double outside uint32_t is undefined behaviour. */
        if (!(xid->valuedouble >= 0 && xid->valuedouble <= 4294967295.0) || xid->valuedouble != floor(xid->valuedouble)) {
            snprintf(errstr, errstr_size, "wal2json \"xid\" %.17g is not a 32-bit transaction id", xid->valuedouble);
            goto fail;
        }
        out->xid = (uint32_t)xid->valuedouble;
        out->has_xid = 1;
    }
    int rc;
    switch (out->kind) {
    case OBX_CHG_BEGIN:
    case OBX_CHG_COMMIT:
        rc = parse_txn(out, root, errstr, errstr_size);
        break;
    case OBX_CHG_INSERT:
    case OBX_CHG_UPDATE:
    case OBX_CHG_DELETE:
        rc = parse_row(out, root, errstr, errstr_size);
        break;
    case OBX_CHG_MESSAGE:
        rc = lsn_member(root, "lsn", &out->lsn, 0, errstr, errstr_size);
        out->prefix = str_member(root, "prefix");
        out->content = str_member(root, "content");
        out->content_len = out->content ? strlen(out->content) : 0;
        out->transactional = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "transactional"));
        break;
    case OBX_CHG_TRUNCATE:
        out->schema = str_member(root, "schema");
        out->table = str_member(root, "table");
        rc = 0;
        break;
    default:
        snprintf(errstr, errstr_size, "wal2json action \"%s\" unknown", action);
        rc = -1;
    }
    if (rc == 0) return 0;
fail:
    obx_w2j_change_clear(out); /* a failed parse leaves nothing allocated */
    return -1;
}

const obx_col_t *obx_w2j_col(const obx_w2j_change_t *c, const char *name)
{
    /* Rows of one table list their columns in the same order: remember where
     * each (stable, config-owned) name was last found and check there first. */
    static _Thread_local struct {
        const char *name;
        int idx;
    } hint[16];
    unsigned h = (unsigned)(((uintptr_t)name >> 4) & 15);
    if (hint[h].name == name && hint[h].idx < c->ncols && strcmp(c->cols[hint[h].idx].name, name) == 0)
        return &c->cols[hint[h].idx];
    for (int i = 0; i < c->ncols; i++)
        if (strcmp(c->cols[i].name, name) == 0) {
            hint[h].name = name;
            hint[h].idx = i;
            return &c->cols[i];
        }
    return NULL;
}

static int esc(const char *s, char *out, size_t out_size, size_t *n)
{
    for (; *s; s++) {
        if (*s == '.' || *s == ',' || *s == '\\' || *s == ' ') {
            if (*n + 1 >= out_size) return -1;
            out[(*n)++] = '\\';
        }
        if (*n + 1 >= out_size) return -1;
        out[(*n)++] = *s;
    }
    return 0;
}

int obx_w2j_escape_table(const char *schema, const char *table, char *out, size_t out_size)
{
    size_t n = 0;
    if (out_size == 0 || esc(schema, out, out_size, &n) != 0) return -1;
    if (n + 1 >= out_size) return -1;
    out[n++] = '.';
    if (esc(table, out, out_size, &n) != 0) return -1;
    out[n] = '\0';
    return 0;
}
