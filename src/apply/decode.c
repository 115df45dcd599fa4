/* outboxd apply: a Kafka record -> a batch entry (key, version, source
 * time, column values), or a poison entry with the reason. The entry owns
 * the message and every string in it; obx_apply_entry_clear frees them. */
#include "apply_int.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "outboxd/v1/event.pb-c.h"
#include "trace.h"

void obx_apply_poison(obx_apply_entry_t *e, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* One line: it goes into a log line and a Kafka header. */
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\t') *p = ' ';
    e->kind = OBX_EV_POISON;
    free(e->reason);
    e->reason = strdup(buf);
}

/* e->src_ts from apply.source_time. 0, or -1 with e poison. */
static int source_time(const obx_apply_t *a, const Outboxd__V1__Event *ev, const cJSON *root, obx_apply_entry_t *e)
{
    char ts[48];
    int64_t commit_us = ev->source ? ev->source->commit_time_us : 0;
    if (a->src_kind == OBX_SRC_PAYLOAD) {
        const cJSON *v = root ? obx_apply_json_path(root, a->src_path) : NULL;
        if (cJSON_IsString(v)) {
            e->src_ts = strdup(v->valuestring);
        } else if (e->kind == OBX_EV_DELETE && !v && commit_us > 0) {
            /* A delete event need not carry the state; its commit time will do. */
            e->src_ts = strdup(obx_apply_format_ts(commit_us, ts, sizeof(ts)));
        } else {
            obx_apply_poison(e, "event %s: payload field \"%s\" (apply.source_time) is %s, expected a timestamp string",
                             ev->event_id, a->src_path, v ? obx_apply_json_type(v) : "missing");
            return -1;
        }
    } else {
        int64_t us = a->src_kind == OBX_SRC_OCCURRED ? ev->occurred_at_us : commit_us;
        if (us <= 0) {
            obx_apply_poison(e, "event %s has no %s (apply.source_time)", ev->event_id,
                             a->src_kind == OBX_SRC_OCCURRED ? "occurred_at_us" : "source.commit_time_us");
            return -1;
        }
        e->src_ts = strdup(obx_apply_format_ts(us, ts, sizeof(ts)));
    }
    if (!e->src_ts) {
        obx_apply_poison(e, "out of memory");
        return -1;
    }
    return 0;
}

/* e->vals from the payload, one per mapped column; e poison on the first
 * value that cannot go into its column. */
static void column_values(const obx_apply_t *a, const Outboxd__V1__Event *ev, const cJSON *root, obx_apply_entry_t *e)
{
    const char *json = (const char *)ev->payload.data, *raw;
    size_t raw_len;
    char err[512];
    e->vals = calloc(a->n_maps ? a->n_maps : 1, sizeof(char *));
    if (!e->vals) {
        obx_apply_poison(e, "out of memory");
        return;
    }
    for (size_t i = 0; i < a->n_maps; i++) {
        const obx_apply_col_t *c = &a->cols[i];
        const cJSON *v = obx_apply_json_path(root, c->map->path);
        if (!v && !c->map->optional) {
            obx_apply_poison(e, "event %s: payload has no field \"%s\" (column %s)", ev->event_id, c->map->path, c->name);
            return;
        }
        if (!v || obx_apply_json_span(json, ev->payload.len, root, v, &raw, &raw_len) != 0) raw = NULL, raw_len = 0;
        if (v && obx_apply_json_to_text_raw(v, raw, raw_len, c->kind, &e->vals[i], err, sizeof(err)) != 0) {
            obx_apply_poison(e, "event %s: payload field \"%s\" for column %s (%s): %s", ev->event_id, c->map->path,
                             c->name, c->type, err);
            return;
        }
        if (!e->vals[i] && c->notnull) {
            obx_apply_poison(e, "event %s: payload field \"%s\" is %s but column %s is NOT NULL", ev->event_id,
                             c->map->path, v ? "null" : "missing", c->name);
            return;
        }
    }
}

/* Message -> entry (takes ownership of m). Anything that cannot become a
 * replica row is poison. */
void obx_apply_decode(obx_apply_t *a, rd_kafka_message_t *m, obx_apply_entry_t *e)
{
    memset(e, 0, sizeof(*e));
    e->msg = m;
    e->part = obx_apply_part_index(a, rd_kafka_topic_name(m->rkt), m->partition);
    rd_kafka_headers_t *hdrs = NULL;
    const void *tp;
    size_t tp_len;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(hdrs, "traceparent", &tp, &tp_len) == RD_KAFKA_RESP_ERR_NO_ERROR)
        obx_trace_id(tp, tp_len, e->trace_id);
    Outboxd__V1__Event *ev = obx_envelope_decode(m->payload, m->len);
    cJSON *root = NULL;
    if (!ev) {
        obx_apply_poison(e, "undecodable envelope: the record value is not an outboxd.v1.Event (%zu bytes)", m->len);
        return;
    }
    if (!ev->aggregate_id || !*ev->aggregate_id) {
        obx_apply_poison(e, "event %s has an empty aggregate_id (the replica key)", ev->event_id);
        goto done;
    }
    if (ev->version_case != OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION) {
        obx_apply_poison(e, "event %s has no aggregate_version: the version guard needs one (the producer's "
                         "outbox.column.aggregate_version)", ev->event_id);
        goto done;
    }
    e->version = ev->aggregate_version;
    e->key = strdup(ev->aggregate_id);
    e->kind = obx_apply_list_has(a->del_types, a->n_del_types, ev->event_type) ? OBX_EV_DELETE
              : (a->n_up_types && !obx_apply_list_has(a->up_types, a->n_up_types, ev->event_type)) ? OBX_EV_SKIP
                                                                                                   : OBX_EV_UPSERT;
    if (!e->key) {
        obx_apply_poison(e, "out of memory");
        goto done;
    }
    if (e->kind == OBX_EV_SKIP) goto done;
    if (e->kind == OBX_EV_UPSERT || a->src_kind == OBX_SRC_PAYLOAD) {
        if (strcmp(ev->content_type, "application/json") == 0)
            root = cJSON_ParseWithLength((const char *)ev->payload.data, ev->payload.len);
        if (!root && e->kind == OBX_EV_UPSERT) {
            obx_apply_poison(e, "event %s: payload is not JSON (content type %s)", ev->event_id, ev->content_type);
            goto done;
        }
    }
    if (source_time(a, ev, root, e) == 0 && e->kind == OBX_EV_UPSERT) column_values(a, ev, root, e);
done:
    cJSON_Delete(root);
    obx_envelope_free(ev);
}

void obx_apply_entry_clear(obx_apply_t *a, obx_apply_entry_t *e)
{
    if (e->msg) rd_kafka_message_destroy(e->msg);
    free(e->key);
    free(e->src_ts);
    if (e->vals)
        for (size_t i = 0; i < a->n_maps; i++) free(e->vals[i]);
    free(e->vals);
    free(e->reason);
    memset(e, 0, sizeof(*e));
}

void obx_apply_batch_free(obx_apply_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++) obx_apply_entry_clear(a, &a->batch[i]);
}
