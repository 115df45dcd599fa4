/* obx_message_parse on an outbox message's content (any bytes a producer
 * can write with pg_logical_emit_message), then the row it stands for
 * through obx_outbox_map, the headers (with a tracingspancontext) and the
 * envelope, as the relay does. */
#include "config.h"
#include "envelope.h"
#include "fuzz.h"
#include "message.h"
#include "outbox.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static obx_config_t *cfg;
    if (!cfg) cfg = obx_config_new();
    CHECK(cfg);
    /* Not NUL-terminated: pgoutput hands over content and length. */
    char *content = malloc(size ? size : 1);
    CHECK(content);
    memcpy(content, data, size);
    obx_message_t m;
    char err[512] = "";
    if (obx_message_parse(cfg, content, size, 0x1000, &m, err, sizeof(err)) == 0) {
        CHECK(m.chg.kind == OBX_CHG_INSERT && m.chg.ncols <= OBX_MESSAGE_FIELDS);
        obx_outbox_row_t row;
        if (obx_outbox_map(cfg, &m.chg, &row, err, sizeof(err)) == 0) {
            CHECK(row.event_id && row.aggregate_id && obx_topic_valid(row.topic));
            obx_headers_t h;
            memset(&h, 0, sizeof(h));
            int ok = !row.headers_json || obx_headers_parse(row.headers_json, &h, err, sizeof(err)) == 0;
            if (ok && row.trace_props) ok = obx_headers_add_trace(&h, row.trace_props, err, sizeof(err)) == 0;
            if (ok) {
                row.headers = &h;
                obx_source_t src;
                memset(&src, 0, sizeof(src));
                uint8_t *buf = NULL;
                size_t len = 0;
                if (obx_envelope_encode(&row, &src, &buf, &len, err, sizeof(err)) == 0) {
                    struct Outboxd__V1__Event *ev = obx_envelope_decode(buf, len);
                    CHECK(ev);
                    obx_envelope_free(ev);
                    free(buf);
                }
            }
            obx_headers_clear(&h);
            obx_outbox_row_clear(&row);
        } else {
            CHECK(err[0]);
        }
    } else {
        CHECK(err[0]);
        /* What a dead letter carries: the content as it came. */
        CHECK(m.chg.ncols == 1 && m.cols[0].value == content && m.cols[0].value_len == size);
    }
    obx_message_clear(&m);
    /* The same bytes as a tracingspancontext text. */
    char *props = fuzz_cstr(data, size), v[64];
    if (obx_trace_props_get(props, "traceparent", v, sizeof(v))) CHECK(strlen(v) < sizeof(v));
    free(props);
    free(content);
    return 0;
}
