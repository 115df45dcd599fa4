/* obx_headers_parse on the outbox row's headers column (json/jsonb text
 * written by the application), then the headers as envelope headers. */
#include "envelope.h"
#include "fuzz.h"
#include "outbox.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = fuzz_cstr(data, size);
    obx_headers_t h;
    char err[256] = "";
    if (obx_headers_parse(json, &h, err, sizeof(err)) == 0) {
        CHECK(h.n <= OBX_MAX_HEADERS);
        for (size_t i = 0; i < h.n; i++) CHECK(h.kv[2 * i] && h.kv[2 * i + 1]);
        /* The envelope carries them: encode a minimal row with them. */
        obx_outbox_row_t row;
        memset(&row, 0, sizeof(row));
        row.event_id = row.aggregate_type = row.aggregate_id = row.event_type = "x";
        row.headers_json = json;
        row.headers = &h;
        obx_source_t src;
        memset(&src, 0, sizeof(src));
        uint8_t *buf = NULL;
        size_t len = 0;
        CHECK(obx_envelope_encode(&row, &src, &buf, &len, err, sizeof(err)) == 0);
        struct Outboxd__V1__Event *ev = obx_envelope_decode(buf, len);
        CHECK(ev);
        obx_envelope_free(ev);
        free(buf);
        obx_headers_clear(&h);
    } else {
        CHECK(err[0]);
        CHECK(h.tree == NULL && h.n == 0 && h.n_owned == 0); /* cleared on failure */
    }
    free(json);
    return 0;
}
