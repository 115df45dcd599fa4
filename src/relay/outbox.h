/* The outbox contract: which columns of an inserted outbox row become which
 * parts of the event, the topic rule, and what makes a row poison. */
#ifndef OBX_OUTBOX_H
#define OBX_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "wal2json.h"

typedef enum { OBX_PAYLOAD_JSON, OBX_PAYLOAD_BYTES, OBX_PAYLOAD_TEXT } obx_payload_kind_t;

#define OBX_MAX_HEADERS 64

/* The row's headers object as key/value strings (non-string values as
 * their JSON text as written, e.g. jsonb's {"a": [1, 2]}, never reprinted
 * through a double). kv points into `tree` and `owned`, which
 * obx_headers_clear frees. */
typedef struct {
    const char *kv[2 * OBX_MAX_HEADERS];
    size_t n;
    void *tree;
    char *owned[OBX_MAX_HEADERS];
    size_t n_owned;
} obx_headers_t;

/* 0, or -1 with errstr when json is not an object of at most
 * OBX_MAX_HEADERS members. h is cleared either way first. */
int obx_headers_parse(const char *json, obx_headers_t *h, char *errstr, size_t errstr_size);
void obx_headers_clear(obx_headers_t *h);

/* The text of an object's member values, as written, for JSON that cJSON
 * has already parsed (so it is well formed; members come in cJSON's order):
 * p = obx_json_members(json), then each p = obx_json_member_next(p, &v,
 * &v_end) gives the next member's value text [v, v_end). */
const char *obx_json_members(const char *json);
const char *obx_json_member_next(const char *p, const char **value, const char **value_end);

/* The value of key in Debezium's tracingspancontext text (java.util.Properties:
 * key=value or key:value lines, # and ! comments, backslash escapes), copied
 * into out. 1 found, 0 not found (or it does not fit). */
int obx_trace_props_get(const char *props, const char *key, char *out, size_t out_size);
/* Appends traceparent and tracestate from a tracingspancontext text to h,
 * each only when h has no header of that name (the headers column wins).
 * 0, or -1 with errstr when h is full or out of memory. */
int obx_headers_add_trace(obx_headers_t *h, const char *props, char *errstr, size_t errstr_size);

/* Borrowed pointers into the change it was mapped from, except `payload`
 * for bytea and `topic`, which point into buffers the row owns.
 * obx_outbox_row_clear frees them. */
typedef struct {
    const char *event_id, *aggregate_type, *aggregate_id, *event_type;
    const unsigned char *payload;
    size_t payload_len;
    obx_payload_kind_t payload_kind;
    int has_version;
    int64_t version;
    int64_t occurred_at_us;
    const char *headers_json;  /* object text or NULL */
    const char *trace_props;   /* tracingspancontext text or NULL */
    const obx_headers_t *headers; /* headers_json already parsed (borrowed), or NULL */
    char topic[256];
    unsigned char *payload_buf;
} obx_outbox_row_t;

/* Maps an INSERT change. Returns 0, or -1 when the row is poison: errstr then
 * names the column and the problem (never a silent skip). */
int obx_outbox_map(const obx_config_t *cfg, const obx_w2j_change_t *chg, obx_outbox_row_t *row,
                   char *errstr, size_t errstr_size);
void obx_outbox_row_clear(obx_outbox_row_t *row);

/* Kafka's topic name rule: 1..249 of [a-zA-Z0-9._-], not "." or "..". */
int obx_topic_valid(const char *topic);
/* Expands ${aggregatetype} in tmpl. Returns 0, -1 if it does not fit. */
int obx_topic_expand(const char *tmpl, const char *aggregate_type, char *out, size_t out_size);

const char *obx_payload_content_type(obx_payload_kind_t k);

#endif
