/* Parses one wal2json format-version 2 line (one change) with cJSON.
 * Options outboxd asks for: include-xids, include-lsn, include-timestamp,
 * include-typmod=0. Numeric columns arrive as JSON numbers: integers up to
 * 2^53 are reproduced exactly, other numbers are marked `inexact`. */
#ifndef OBX_WAL2JSON_H
#define OBX_WAL2JSON_H

#include <stddef.h>
#include <stdint.h>

#include "lsn.h"

typedef enum {
    OBX_CHG_BEGIN = 'B',
    OBX_CHG_COMMIT = 'C',
    OBX_CHG_INSERT = 'I',
    OBX_CHG_UPDATE = 'U',
    OBX_CHG_DELETE = 'D',
    OBX_CHG_MESSAGE = 'M',
    OBX_CHG_TRUNCATE = 'T'
} obx_chg_kind_t;

typedef struct {
    const char *name;
    const char *type;   /* PostgreSQL type name, e.g. "jsonb", "uuid" */
    const char *value;  /* text form; NULL for SQL NULL */
    size_t value_len;
    int inexact;        /* a JSON number that a double cannot hold exactly */
} obx_col_t;

/* All pointers borrow from the parse tree and stay valid until
 * obx_w2j_change_clear or the next obx_w2j_parse into the same struct.
 * Zero-initialise before the first parse; obx_w2j_change_clear frees the
 * struct's parse memory (call it when done with the struct; a failed parse
 * has already done so). */
typedef struct {
    obx_chg_kind_t kind;
    obx_lsn_t lsn;        /* B/C: commit record start; I/U/D/M: change LSN */
    obx_lsn_t nextlsn;    /* B/C: commit record end */
    uint32_t xid;
    int has_xid;
    int64_t commit_time_us; /* B/C with include-timestamp; 0 if absent */
    const char *schema, *table;
    const char *prefix;   /* M */
    const char *content;  /* M; NUL-terminated, but may hold NUL bytes (pgoutput) */
    size_t content_len;   /* M: content's length (0: use strlen) */
    int transactional;    /* M */
    int ncols;
    obx_col_t *cols;      /* ncols entries, in the arena (a table may have 1600 columns) */
    void *tree;           /* cJSON root, in the arena */
    void *arena;          /* parse memory, reused by the next parse into this struct */
} obx_w2j_change_t;

/* Returns 0, or -1 with errstr describing what is wrong with the line. */
int obx_w2j_parse(const char *line, size_t len, obx_w2j_change_t *out, char *errstr, size_t errstr_size);
void obx_w2j_change_clear(obx_w2j_change_t *c);
/* Column by name, NULL when the change has none of that name. */
const obx_col_t *obx_w2j_col(const obx_w2j_change_t *c, const char *name);

/* Escapes a schema or table name for wal2json's add-tables option
 * ('.', ',', '\' and ' ' take a backslash; wal2json rejects an unescaped
 * space). Returns 0, -1 if it does not fit. */
int obx_w2j_escape_table(const char *schema, const char *table, char *out, size_t out_size);

#endif
