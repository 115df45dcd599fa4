#include "envelope.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/v1/event.pb-c.h"

int obx_envelope_encode(const obx_outbox_row_t *row, const obx_source_t *src,
                        uint8_t **out, size_t *out_len, char *errstr, size_t errstr_size)
{
    Outboxd__V1__Event ev = OUTBOXD__V1__EVENT__INIT;
    Outboxd__V1__SourcePosition sp = OUTBOXD__V1__SOURCE_POSITION__INIT;
    Outboxd__V1__Event__HeadersEntry hent[OBX_MAX_HEADERS];
    Outboxd__V1__Event__HeadersEntry *hptr[OBX_MAX_HEADERS];
    obx_headers_t parsed;
    const obx_headers_t *hdrs = row->headers;
    int rc = -1;
    memset(&parsed, 0, sizeof(parsed));
    ev.event_id = (char *)row->event_id;
    ev.aggregate_type = (char *)row->aggregate_type;
    ev.aggregate_id = (char *)row->aggregate_id;
    ev.event_type = (char *)row->event_type;
    if (row->has_version) {
        ev.version_case = OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION;
        ev.aggregate_version = row->version;
    }
    ev.occurred_at_us = row->occurred_at_us;
    ev.payload.data = (uint8_t *)row->payload;
    ev.payload.len = row->payload_len;
    ev.content_type = (char *)obx_payload_content_type(row->payload_kind);

    if (!hdrs && row->headers_json) {
        if (obx_headers_parse(row->headers_json, &parsed, errstr, errstr_size) != 0) goto done;
        hdrs = &parsed;
    }
    for (size_t i = 0; hdrs && i < hdrs->n; i++) {
        outboxd__v1__event__headers_entry__init(&hent[i]);
        hent[i].key = (char *)hdrs->kv[2 * i];
        hent[i].value = (char *)hdrs->kv[2 * i + 1];
        hptr[i] = &hent[i];
    }
    if (hdrs) {
        ev.n_headers = hdrs->n;
        ev.headers = hptr;
    }

    sp.commit_lsn = src->commit_lsn;
    sp.commit_end_lsn = src->commit_end_lsn;
    sp.change_lsn = src->change_lsn;
    sp.index_in_txn = src->index_in_txn;
    sp.xid = src->xid;
    sp.commit_time_us = src->commit_time_us;
    sp.database = (char *)(src->database ? src->database : "");
    sp.schema = (char *)(src->schema ? src->schema : "");
    sp.table = (char *)(src->table ? src->table : "");
    sp.slot = (char *)(src->slot ? src->slot : "");
    sp.system_id = (char *)(src->system_id ? src->system_id : "");
    ev.source = &sp;

    size_t n = outboxd__v1__event__get_packed_size(&ev);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        snprintf(errstr, errstr_size, "out of memory (%zu bytes)", n);
        goto done;
    }
    outboxd__v1__event__pack(&ev, buf);
    *out = buf;
    *out_len = n;
    rc = 0;
done:
    obx_headers_clear(&parsed);
    return rc;
}

struct Outboxd__V1__Event *obx_envelope_decode(const uint8_t *buf, size_t len)
{
    return outboxd__v1__event__unpack(NULL, len, buf);
}

void obx_envelope_free(struct Outboxd__V1__Event *ev)
{
    if (ev) outboxd__v1__event__free_unpacked(ev, NULL);
}

static char *lsn_str(uint64_t l, char *b) { return obx_lsn_format(l, b, 24); }

/* cJSON holds numbers as doubles; print 64-bit integers as exact raw text. */
static void add_int(cJSON *o, const char *name, long long v)
{
    char b[32];
    snprintf(b, sizeof(b), "%lld", v);
    cJSON_AddRawToObject(o, name, b);
}

char *obx_envelope_to_json(const struct Outboxd__V1__Event *ev, const char *topic,
                           int32_t partition, int64_t offset, const char *key, size_t key_len,
                           int64_t timestamp_ms)
{
    cJSON *o = cJSON_CreateObject();
    char b[24];
    if (!o) return NULL;
    if (topic) {
        cJSON_AddStringToObject(o, "topic", topic);
        add_int(o, "partition", (long long)partition);
        add_int(o, "offset", (long long)offset);
        char *k = malloc(key_len + 1);
        if (k) {
            memcpy(k, key ? key : "", key ? key_len : 0);
            k[key ? key_len : 0] = '\0';
            cJSON_AddStringToObject(o, "key", k);
            free(k);
        }
        add_int(o, "kafka_timestamp_ms", (long long)timestamp_ms);
    }
    cJSON_AddStringToObject(o, "event_id", ev->event_id);
    cJSON_AddStringToObject(o, "aggregate_type", ev->aggregate_type);
    cJSON_AddStringToObject(o, "aggregate_id", ev->aggregate_id);
    if (ev->version_case == OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION)
        add_int(o, "aggregate_version", (long long)ev->aggregate_version);
    else
        cJSON_AddNullToObject(o, "aggregate_version");
    cJSON_AddStringToObject(o, "event_type", ev->event_type);
    add_int(o, "occurred_at_us", (long long)ev->occurred_at_us);
    cJSON_AddStringToObject(o, "content_type", ev->content_type);
    if (strcmp(ev->content_type, "application/octet-stream") == 0) {
        char *hex = malloc(ev->payload.len * 2 + 1);
        if (hex) {
            for (size_t i = 0; i < ev->payload.len; i++) sprintf(hex + 2 * i, "%02x", ev->payload.data[i]);
            hex[ev->payload.len * 2] = '\0';
            cJSON_AddStringToObject(o, "payload_hex", hex);
            free(hex);
        }
    } else {
        char *s = malloc(ev->payload.len + 1);
        if (s) {
            /* An empty payload decodes with data == NULL: memcpy from NULL is UB. */
            if (ev->payload.len) memcpy(s, ev->payload.data, ev->payload.len);
            s[ev->payload.len] = '\0';
            cJSON_AddStringToObject(o, "payload", s);
            free(s);
        }
    }
    cJSON *h = cJSON_AddObjectToObject(o, "headers");
    for (size_t i = 0; i < ev->n_headers; i++) cJSON_AddStringToObject(h, ev->headers[i]->key, ev->headers[i]->value);
    if (ev->source) {
        cJSON *s = cJSON_AddObjectToObject(o, "source");
        cJSON_AddStringToObject(s, "commit_lsn", lsn_str(ev->source->commit_lsn, b));
        cJSON_AddStringToObject(s, "commit_end_lsn", lsn_str(ev->source->commit_end_lsn, b));
        cJSON_AddStringToObject(s, "change_lsn", lsn_str(ev->source->change_lsn, b));
        add_int(s, "index_in_txn", (long long)ev->source->index_in_txn);
        add_int(s, "xid", (long long)ev->source->xid);
        add_int(s, "commit_time_us", (long long)ev->source->commit_time_us);
        cJSON_AddStringToObject(s, "database", ev->source->database);
        cJSON_AddStringToObject(s, "schema", ev->source->schema);
        cJSON_AddStringToObject(s, "table", ev->source->table);
        cJSON_AddStringToObject(s, "slot", ev->source->slot);
        cJSON_AddStringToObject(s, "system_id", ev->source->system_id);
    }
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}
