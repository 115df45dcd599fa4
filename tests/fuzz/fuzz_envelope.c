/* obx_envelope_decode on a Kafka record value: apply, consume and verify
 * read topics anyone with produce rights may have written. A decoded event
 * goes through what those readers do with it: JSON rendering (consume), the
 * payload JSON and its conversion to column text (apply). No re-encode:
 * outboxd never packs a decoded event, and protobuf-c keeps unknown fields
 * (even the invalid field number 0) and re-packs them at a different size. */
#include "apply.h"
#include "envelope.h"
#include "fuzz.h"
#include "outboxd/v1/event.pb-c.h"

#include <cjson/cJSON.h>

static void apply_like(const Outboxd__V1__Event *ev)
{
    if (strcmp(ev->content_type, "application/json") != 0) return;
    cJSON *root = cJSON_ParseWithLength((const char *)ev->payload.data, ev->payload.len);
    if (!root) return;
    static const obx_col_kind_t kinds[] = {OBX_COL_TEXT, OBX_COL_INT, OBX_COL_FLOAT,
                                           OBX_COL_NUMERIC, OBX_COL_BOOL, OBX_COL_JSON};
    const cJSON *m;
    int n = 0;
    cJSON_ArrayForEach(m, root) {
        if (n++ == 16) break;
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
            char *text = NULL, err[256];
            if (obx_apply_json_to_text(m, kinds[k], &text, err, sizeof(err)) == 0) free(text);
        }
        if (m->string) (void)obx_apply_json_path(root, m->string);
    }
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Outboxd__V1__Event *ev = obx_envelope_decode(data, size);
    if (!ev) return 0;
    /* consume: every string field is there (proto3 defaults) and printable. */
    CHECK(ev->event_id && ev->aggregate_type && ev->aggregate_id && ev->event_type && ev->content_type);
    for (size_t i = 0; i < ev->n_headers; i++) CHECK(ev->headers[i]->key && ev->headers[i]->value);
    char *js = obx_envelope_to_json(ev, "t", 1, 2, ev->aggregate_id, strlen(ev->aggregate_id), 3);
    free(js);
    if (ev->source) CHECK(ev->source->database && ev->source->slot && ev->source->schema && ev->source->table);
    apply_like(ev);

    obx_envelope_free(ev);
    return 0;
}
