/* pgoutput's protocol into obx_w2j_change_t (pgoutput.h). Message layouts
 * from PostgreSQL's src/backend/replication/logical/proto.c (version 1). */
#include "pgoutput.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Seconds from 1970-01-01 to 2000-01-01 (the protocol's epoch), in us. */
#define PG_EPOCH_OFFSET_US (INT64_C(946684800) * 1000000)
/* A relation has at most 1600 columns (MaxHeapAttributeNumber). */
#define MAX_COLS 1600
#define TYPE_NAME_MAX 128

typedef struct {
    char *name;
    uint32_t type_oid;
    const char *type; /* builtin string, or in the type cache; NULL unknown */
} att_t;

typedef struct {
    uint32_t oid;
    char *schema, *table;
    int natts;
    att_t *atts;
} rel_t;

typedef struct {
    uint32_t oid;
    char *name;
} typ_t;

struct obx_pgo_s {
    obx_pgo_type_fn resolver;
    void *ctx;
    rel_t *rels;
    size_t n_rels, cap_rels, last;
    typ_t *types;
    size_t n_types, cap_types;
    /* the current change's values and column array, reused */
    char *buf;
    size_t buf_cap, buf_used;
    obx_col_t *cols;
    size_t cols_cap;
    /* the open transaction (changes carry its xid, as wal2json's do) */
    uint32_t xid;
    int in_txn;
};

/* format_type()'s spelling, as wal2json prints it (include-typmod = 0). */
static const struct {
    uint32_t oid;
    const char *name;
} builtin[] = {
    {16, "boolean"}, {17, "bytea"}, {18, "\"char\""}, {19, "name"}, {20, "bigint"}, {21, "smallint"},
    {23, "integer"}, {25, "text"}, {26, "oid"}, {114, "json"}, {142, "xml"}, {650, "cidr"}, {700, "real"},
    {701, "double precision"}, {790, "money"}, {829, "macaddr"}, {869, "inet"}, {1000, "boolean[]"},
    {1001, "bytea[]"}, {1005, "smallint[]"}, {1007, "integer[]"}, {1009, "text[]"}, {1015, "character varying[]"},
    {1016, "bigint[]"}, {1042, "character"}, {1043, "character varying"}, {1082, "date"},
    {1083, "time without time zone"}, {1114, "timestamp without time zone"}, {1115, "timestamp without time zone[]"},
    {1182, "date[]"}, {1184, "timestamp with time zone"}, {1185, "timestamp with time zone[]"}, {1186, "interval"},
    {1266, "time with time zone"}, {1560, "bit"}, {1562, "bit varying"}, {1700, "numeric"}, {1231, "numeric[]"},
    {199, "json[]"}, {2950, "uuid"}, {2951, "uuid[]"}, {3802, "jsonb"}, {3807, "jsonb[]"}, {3614, "tsvector"},
    {4072, "jsonpath"},
};

const char *obx_pgo_builtin_type(uint32_t oid)
{
    for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
        if (builtin[i].oid == oid) return builtin[i].name;
    return NULL;
}

obx_pgo_t *obx_pgo_new(obx_pgo_type_fn resolver, void *ctx)
{
    obx_pgo_t *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->resolver = resolver;
    p->ctx = ctx;
    return p;
}

static void rel_free(rel_t *r)
{
    for (int i = 0; i < r->natts; i++) free(r->atts[i].name);
    free(r->atts);
    free(r->schema);
    free(r->table);
    memset(r, 0, sizeof(*r));
}

void obx_pgo_destroy(obx_pgo_t *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n_rels; i++) rel_free(&p->rels[i]);
    for (size_t i = 0; i < p->n_types; i++) free(p->types[i].name);
    free(p->rels);
    free(p->types);
    free(p->buf);
    free(p->cols);
    free(p);
}

/* A bounds-checked reader over one message: every read past the end sets
 * bad and yields zeroes, so hostile input is refused, never overread. */
typedef struct {
    const unsigned char *p, *end;
    int bad;
} rd_t;

static uint64_t rd_int(rd_t *r, int n)
{
    if (r->bad || r->end - r->p < n) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | r->p[i];
    r->p += n;
    return v;
}

/* A NUL-terminated string inside the message, or NULL (bad). */
static const char *rd_str(rd_t *r)
{
    if (r->bad) return NULL;
    const unsigned char *z = memchr(r->p, '\0', (size_t)(r->end - r->p));
    if (!z) {
        r->bad = 1;
        return NULL;
    }
    const char *s = (const char *)r->p;
    r->p = z + 1;
    return s;
}

static const unsigned char *rd_bytes(rd_t *r, uint64_t n)
{
    if (r->bad || (uint64_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const unsigned char *b = r->p;
    r->p += n;
    return b;
}

/* Protocol time (us since 2000) to Unix us; wraps instead of overflowing
 * on a hostile value. */
static int64_t pg_time(uint64_t t) { return (int64_t)(t + (uint64_t)PG_EPOCH_OFFSET_US); }

static int malformed(obx_err_t *err, const char *what, char kind)
{
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL, "pgoutput message 0x%02x ('%c'): %s", (unsigned char)kind,
                kind >= ' ' && kind < 127 ? kind : '?', what);
    return -1;
}

static int oom(obx_err_t *err)
{
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_RETRIABLE, 0, "out of memory decoding pgoutput");
    return -1;
}

static rel_t *find_rel(obx_pgo_t *p, uint32_t oid)
{
    if (p->last < p->n_rels && p->rels[p->last].oid == oid) return &p->rels[p->last];
    for (size_t i = 0; i < p->n_rels; i++)
        if (p->rels[i].oid == oid) {
            p->last = i;
            return &p->rels[i];
        }
    return NULL;
}

static const char *find_type(const obx_pgo_t *p, uint32_t oid)
{
    for (size_t i = 0; i < p->n_types; i++)
        if (p->types[i].oid == oid) return p->types[i].name;
    return NULL;
}

/* Remembers oid's name (replacing an older one). 0 or -1 (OOM). */
static int put_type(obx_pgo_t *p, uint32_t oid, const char *name)
{
    char *copy = strdup(name);
    if (!copy) return -1;
    for (size_t i = 0; i < p->n_types; i++)
        if (p->types[i].oid == oid) {
            free(p->types[i].name);
            p->types[i].name = copy;
            return 0;
        }
    if (p->n_types == p->cap_types) {
        size_t cap = p->cap_types ? 2 * p->cap_types : 8;
        typ_t *t = realloc(p->types, cap * sizeof(*t));
        if (!t) {
            free(copy);
            return -1;
        }
        p->types = t;
        p->cap_types = cap;
    }
    p->types[p->n_types].oid = oid;
    p->types[p->n_types++].name = copy;
    return 0;
}

/* Built-in table, then the resolver (once per OID); a type it cannot name
 * is unknown. */
static int type_name(obx_pgo_t *p, uint32_t oid, const char **out, obx_err_t *err)
{
    *out = obx_pgo_builtin_type(oid);
    if (*out) return 0;
    if ((*out = find_type(p, oid))) return 0;
    if (!p->resolver) return 0;
    char name[TYPE_NAME_MAX];
    int rc = p->resolver(p->ctx, oid, name, sizeof(name), err);
    if (rc < 0) return -1;
    if (rc > 0) return 0;
    if (put_type(p, oid, name) != 0) return oom(err);
    *out = find_type(p, oid);
    return 0;
}

/* 'R': replaces the relation's cache entry. */
static int on_relation(obx_pgo_t *p, rd_t *r, obx_err_t *err)
{
    rel_t nr = {0};
    nr.oid = (uint32_t)rd_int(r, 4);
    const char *schema = rd_str(r), *table = rd_str(r);
    rd_int(r, 1); /* replica identity */
    int natts = (int)(int16_t)rd_int(r, 2);
    if (r->bad || natts < 0 || natts > MAX_COLS) return malformed(err, "truncated or invalid Relation", 'R');
    /* pgoutput writes pg_catalog as "" */
    if (!(nr.schema = strdup(*schema ? schema : "pg_catalog")) || !(nr.table = strdup(table)) ||
        (natts && !(nr.atts = calloc((size_t)natts, sizeof(att_t))))) {
        rel_free(&nr);
        return oom(err);
    }
    for (int i = 0; i < natts; i++) {
        rd_int(r, 1); /* flags: part of the key */
        const char *name = rd_str(r);
        uint32_t typ = (uint32_t)rd_int(r, 4);
        rd_int(r, 4); /* typmod */
        if (r->bad) {
            rel_free(&nr);
            return malformed(err, "truncated Relation attribute", 'R');
        }
        nr.atts[i].type_oid = typ;
        if (!(nr.atts[i].name = strdup(name))) {
            rel_free(&nr);
            return oom(err);
        }
        nr.natts = i + 1;
    }
    if (r->p != r->end) {
        rel_free(&nr);
        return malformed(err, "trailing bytes after Relation", 'R');
    }
    /* Types after the whole message: a failed lookup leaves the cache as it was. */
    for (int i = 0; i < natts; i++)
        if (type_name(p, nr.atts[i].type_oid, &nr.atts[i].type, err) != 0) {
            rel_free(&nr);
            return -1;
        }
    rel_t *old = find_rel(p, nr.oid);
    if (old) {
        rel_free(old);
        *old = nr;
        return 1;
    }
    if (p->n_rels == p->cap_rels) {
        size_t cap = p->cap_rels ? 2 * p->cap_rels : 8;
        rel_t *v = realloc(p->rels, cap * sizeof(*v));
        if (!v) {
            rel_free(&nr);
            return oom(err);
        }
        p->rels = v;
        p->cap_rels = cap;
    }
    p->rels[p->n_rels++] = nr;
    return 1;
}

/* 'Y': checked, not used. It names a domain by its base type's bare
 * typname ("jsonb" for a domain over jsonb, "_mood" for mood[]), where
 * wal2json prints format_type() of the column's own type: trusting it
 * would carry a payload differently from wal2json (docs/decoders.md). */
static int on_type(rd_t *r, obx_err_t *err)
{
    rd_int(r, 4); /* oid */
    rd_str(r);    /* namespace */
    rd_str(r);    /* base type's name */
    if (r->bad || r->p != r->end) return malformed(err, "truncated or invalid Type", 'Y');
    return 1;
}

/* Room for the change's values: every value fits in the message, plus a
 * NUL each. 0 or -1. */
static int reserve(obx_pgo_t *p, size_t need)
{
    p->buf_used = 0;
    if (need <= p->buf_cap) return 0;
    size_t cap = p->buf_cap ? p->buf_cap : 4096;
    while (cap < need) cap *= 2;
    char *b = realloc(p->buf, cap);
    if (!b) return -1;
    p->buf = b;
    p->buf_cap = cap;
    return 0;
}

static char *copy_in(obx_pgo_t *p, const unsigned char *s, size_t n)
{
    char *d = p->buf + p->buf_used;
    memcpy(d, s, n);
    d[n] = '\0';
    p->buf_used += n + 1;
    return d;
}

/* One text value, normalised to wal2json's form: bytea without "\x",
 * booleans as true/false. */
static int set_value(obx_pgo_t *p, obx_col_t *col, const att_t *a, const unsigned char *v, size_t n, obx_err_t *err)
{
    if (a->type_oid == 17) {
        if (n < 2 || v[0] != '\\' || v[1] != 'x') {
            obx_err_clear(err);
            obx_err_set(err, OBX_ERR_FATAL, OBX_EXIT_FAIL,
                        "pgoutput bytea column %s is not in hex format (the replication session sets bytea_output = hex)",
                        a->name);
            return -1;
        }
        v += 2;
        n -= 2;
    } else if (a->type_oid == 16 && n == 1 && (v[0] == 't' || v[0] == 'f')) {
        v = (const unsigned char *)(v[0] == 't' ? "true" : "false");
        n = strlen((const char *)v);
    }
    col->value = copy_in(p, v, n);
    col->value_len = n;
    return 0;
}

/* TupleData into out->cols against the relation's columns. */
static int read_tuple(obx_pgo_t *p, rd_t *r, const rel_t *rel, obx_w2j_change_t *out, char kind, obx_err_t *err)
{
    int n = (int)(int16_t)rd_int(r, 2);
    if (r->bad || n < 0) return malformed(err, "truncated tuple", kind);
    if (n != rel->natts) {
        obx_err_clear(err);
        obx_err_set(err, OBX_ERR_POISON, OBX_EXIT_POISON,
                    "pgoutput change of %s.%s has %d columns, its Relation message %d: the decoder's relation cache "
                    "disagrees with the server",
                    rel->schema, rel->table, n, rel->natts);
        return -1;
    }
    if ((size_t)n > p->cols_cap) {
        obx_col_t *c = realloc(p->cols, (size_t)n * sizeof(*c));
        if (!c) return oom(err);
        p->cols = c;
        p->cols_cap = (size_t)n;
    }
    out->cols = p->cols;
    out->ncols = 0;
    for (int i = 0; i < n; i++) {
        obx_col_t *col = &p->cols[i];
        const att_t *a = &rel->atts[i];
        memset(col, 0, sizeof(*col));
        col->name = a->name;
        col->type = a->type;
        switch ((char)rd_int(r, 1)) {
        case 'n':
            break;
        case 'u':
            /* Unchanged TOAST: the value is not in the stream. An INSERT
             * never has one; in anything else it is no event's field. */
            if (kind == 'I') {
                obx_err_clear(err);
                obx_err_set(err, OBX_ERR_POISON, OBX_EXIT_POISON,
                            "pgoutput INSERT into %s.%s has an unchanged-TOAST value in column %s: cannot relay it",
                            rel->schema, rel->table, a->name);
                return -1;
            }
            break;
        case 't': {
            uint64_t len = rd_int(r, 4);
            const unsigned char *v = rd_bytes(r, len);
            if (!v) return malformed(err, "truncated column value", kind);
            if (set_value(p, col, a, v, (size_t)len, err) != 0) return -1;
            break;
        }
        default:
            if (r->bad) return malformed(err, "truncated tuple", kind);
            return malformed(err, "column value neither text, NULL nor unchanged (binary was not asked for)", kind);
        }
        out->ncols = i + 1;
    }
    return 0;
}

static int uncached(uint32_t oid, char kind, obx_err_t *err)
{
    obx_err_clear(err);
    obx_err_set(err, OBX_ERR_POISON, OBX_EXIT_POISON,
                "pgoutput message '%c' names relation OID %u, which no Relation message described: the stream cannot "
                "be classified",
                kind, oid);
    return -1;
}

/* I/U/D: the relation, then the new tuple (I, U) or the key/old tuple (D). */
static int on_row(obx_pgo_t *p, rd_t *r, char kind, obx_w2j_change_t *out, obx_err_t *err)
{
    uint32_t oid = (uint32_t)rd_int(r, 4);
    if (r->bad) return malformed(err, "truncated", kind);
    rel_t *rel = find_rel(p, oid);
    if (!rel) return uncached(oid, kind, err);
    out->schema = rel->schema;
    out->table = rel->table;
    char t = (char)rd_int(r, 1);
    if (kind == 'U' && (t == 'K' || t == 'O')) {
        /* The old key or row comes first; the new tuple follows. */
        if (read_tuple(p, r, rel, out, kind, err) != 0) return -1;
        p->buf_used = 0;
        t = (char)rd_int(r, 1);
    }
    int want = kind == 'D' ? (t == 'K' || t == 'O') : t == 'N';
    if (r->bad || !want) return malformed(err, "unexpected tuple marker", kind);
    /* wal2json's deletes carry the identity, not columns: the core reads none. */
    if (read_tuple(p, r, rel, out, kind, err) != 0) return -1;
    if (r->p != r->end) return malformed(err, "trailing bytes", kind);
    return 0;
}

/* 'T': every relation must be known; the change names the first (all of
 * them are in the publication, so each is the outbox or the signal table). */
static int on_truncate(obx_pgo_t *p, rd_t *r, obx_w2j_change_t *out, obx_err_t *err)
{
    uint32_t n = (uint32_t)rd_int(r, 4);
    rd_int(r, 1); /* options */
    if (r->bad || n == 0 || (uint64_t)(r->end - r->p) != 4 * (uint64_t)n) return malformed(err, "invalid Truncate", 'T');
    for (uint32_t i = 0; i < n; i++) {
        uint32_t oid = (uint32_t)rd_int(r, 4);
        rel_t *rel = find_rel(p, oid);
        if (!rel) return uncached(oid, 'T', err);
        if (i == 0) {
            out->schema = rel->schema;
            out->table = rel->table;
        }
    }
    return 0;
}

/* 'M': flags, LSN, prefix, content (may hold NUL bytes). */
static int on_message(obx_pgo_t *p, rd_t *r, obx_w2j_change_t *out, obx_err_t *err)
{
    uint64_t flags = rd_int(r, 1);
    out->lsn = rd_int(r, 8);
    const char *prefix = rd_str(r);
    uint64_t n = rd_int(r, 4);
    const unsigned char *content = rd_bytes(r, n);
    if (r->bad || r->p != r->end) return malformed(err, "truncated or invalid Message", 'M');
    if (reserve(p, (size_t)(r->end - (const unsigned char *)prefix) + 2) != 0) return oom(err);
    out->transactional = (flags & 1) != 0;
    out->prefix = copy_in(p, (const unsigned char *)prefix, strlen(prefix));
    out->content = copy_in(p, content, (size_t)n);
    out->content_len = (size_t)n;
    return 0;
}

int obx_pgo_parse(obx_pgo_t *p, const char *data, size_t len, obx_lsn_t data_start, obx_w2j_change_t *out,
                  obx_err_t *err)
{
    obx_w2j_change_clear(out); /* no arena here: pointers borrow from p */
    if (len == 0) return malformed(err, "empty message", '?');
    rd_t r = {(const unsigned char *)data + 1, (const unsigned char *)data + len, 0};
    char kind = data[0];
    int rc;
    switch (kind) {
    case 'B':
        out->kind = OBX_CHG_BEGIN;
        out->lsn = rd_int(&r, 8); /* final_lsn: the commit record's start */
        out->commit_time_us = pg_time(rd_int(&r, 8));
        out->xid = (uint32_t)rd_int(&r, 4);
        if (r.bad || r.p != r.end) return malformed(err, "truncated or invalid Begin", kind);
        out->has_xid = 1;
        p->xid = out->xid;
        p->in_txn = 1;
        return 0;
    case 'C':
        out->kind = OBX_CHG_COMMIT;
        rd_int(&r, 1); /* flags */
        out->lsn = rd_int(&r, 8);
        out->nextlsn = rd_int(&r, 8);
        out->commit_time_us = pg_time(rd_int(&r, 8));
        if (r.bad || r.p != r.end) return malformed(err, "truncated or invalid Commit", kind);
        out->xid = p->xid;
        out->has_xid = p->in_txn;
        p->in_txn = 0;
        return 0;
    case 'R':
        return on_relation(p, &r, err);
    case 'Y':
        return on_type(&r, err);
    case 'O':
        rd_int(&r, 8);
        rd_str(&r);
        if (r.bad || r.p != r.end) return malformed(err, "truncated or invalid Origin", kind);
        return 1;
    case 'I':
    case 'U':
    case 'D':
        out->kind = (obx_chg_kind_t)kind;
        out->lsn = data_start;
        /* +5 a column: a NUL, and "false" for "f" */
        if (reserve(p, len + 5 * MAX_COLS + 1) != 0) return oom(err);
        rc = on_row(p, &r, kind, out, err);
        break;
    case 'T':
        out->kind = OBX_CHG_TRUNCATE;
        out->lsn = data_start;
        rc = on_truncate(p, &r, out, err);
        break;
    case 'M':
        out->kind = OBX_CHG_MESSAGE;
        rc = on_message(p, &r, out, err);
        break;
    default:
        return malformed(err, "unknown message type (streaming was not asked for)", kind);
    }
    if (rc != 0) {
        obx_w2j_change_clear(out);
        return rc;
    }
    out->xid = p->xid;
    out->has_xid = p->in_txn;
    return 0;
}
