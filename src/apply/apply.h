/* `outboxd apply`: the replica side. Consumes outboxd envelopes from Kafka (a
 * consumer group, manual offset commits) and keeps a replica table in the
 * consumer's own PostgreSQL: payload fields mapped to columns, one
 * version-guarded upsert per batch, offsets committed only after the
 * batch's transaction committed. See docs/apply.md.
 *
 * Ownership: obx_apply_run borrows cfg and stop. The helpers below are
 * exported for the unit tests (tests/unit/test_apply.c); every pointer they
 * return is malloc'd and owned by the caller unless said otherwise. */
#ifndef OBX_APPLY_H
#define OBX_APPLY_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "exitcodes.h"

struct cJSON;

/* One `column:path` pair of apply.columns. `path?` (optional) maps a
 * missing field to NULL instead of making the event poison. */
typedef struct {
    char *column;
    char *path;
    int optional;
} obx_apply_map_t;

/* How a payload value becomes a column value, from the column's type. */
typedef enum {
    OBX_COL_TEXT = 0, /* text, varchar, uuid, timestamps, enums, ...: a JSON string */
    OBX_COL_INT,      /* int2/int4/int8: a JSON integer (|n| <= 2^53) or a string */
    OBX_COL_FLOAT,    /* float4/float8: a JSON number or a string */
    OBX_COL_NUMERIC,  /* numeric and other numbers: a JSON number or a string */
    OBX_COL_BOOL,     /* boolean: true/false */
    OBX_COL_JSON      /* json/jsonb: any JSON value, stored as its JSON text */
} obx_col_kind_t;

/* Parses apply.columns ("col:path, col2:a.b?"). *out (n entries) is freed
 * with obx_apply_maps_free. 0, or -1 with errstr. An empty spec gives 0 maps. */
int obx_apply_parse_columns(const char *spec, obx_apply_map_t **out, size_t *n, char *errstr, size_t errstr_size);
void obx_apply_maps_free(obx_apply_map_t *maps, size_t n);

/* The member at a dotted path ("a.b", digits index arrays); NULL when
 * missing. Borrowed from root. */
const struct cJSON *obx_apply_json_path(const struct cJSON *root, const char *path);

/* Kind of a column from its (base) type name and pg_type.typcategory. */
obx_col_kind_t obx_apply_col_kind(const char *type_name, char category);

/* Converts one payload value into the text PostgreSQL parses for a column of
 * this kind. JSON null gives *out = NULL (SQL NULL). 0, or -1 with errstr
 * naming the mismatch (the event is then poison). */
int obx_apply_json_to_text(const struct cJSON *v, obx_col_kind_t kind, char **out, char *errstr, size_t errstr_size);

/* The same with the value's original text in the payload (raw, raw_len;
 * from obx_apply_json_span, or NULL): numbers, and json/jsonb values,
 * reach PostgreSQL as the producer wrote them, digit for digit. */
int obx_apply_json_to_text_raw(const struct cJSON *v, const char *raw, size_t raw_len, obx_col_kind_t kind, char **out,
                               char *errstr, size_t errstr_size);

/* The byte range of v (a node of root) in json, the text root was parsed
 * from: *start points into json. 0, or -1 when the text does not follow
 * the tree (the caller then falls back to cJSON's value). */
int obx_apply_json_span(const char *json, size_t len, const struct cJSON *root, const struct cJSON *v, const char **start,
                        size_t *n);

/* s[0..n) is a number by the JSON grammar (cJSON also takes "01", "1.",
 * "+1"...); with integer, without fraction or exponent. */
int obx_apply_json_number_ok(const char *s, size_t n, int integer);
/* Every number and string in the JSON text s[0..n) is strict JSON (as
 * PostgreSQL's json parser wants it). */
int obx_apply_json_text_ok(const char *s, size_t n);

/* Array literal ('{"a",NULL,"b\"c"}') of n values; NULL entries are SQL
 * NULLs. Returns a malloc'd string or NULL when out of memory. */
char *obx_apply_array_literal(const char *const *vals, size_t n);

/* Keeps one event per key, the one with the highest version (the first of
 * equal versions): keep[i] = 1 for winners, 0 for the superseded. ON
 * CONFLICT cannot touch a row twice in one statement. Returns the number of
 * winners, or (size_t)-1 when out of memory. */
size_t obx_apply_dedupe(const char *const *keys, const int64_t *versions, size_t n, unsigned char *keep);

/* Formats Unix microseconds as a timestamptz literal in UTC
 * ("2026-11-26 12:00:00.123456+00"); buf of at least 40 bytes. */
char *obx_apply_format_ts(int64_t us, char *buf, size_t size);

/* Checks the apply.* keys (and kafka.bootstrap.servers). 0, or -1 with
 * errstr naming the key. */
int obx_apply_validate(const obx_config_t *cfg, char *errstr, size_t errstr_size);

/* Runs until *stop: returns an OBX_EXIT_* code (3 for a poison event under
 * apply.poison.policy = halt, 2 for configuration or replica table problems). */
int obx_apply_run(const obx_config_t *cfg, volatile sig_atomic_t *stop);

#endif
