/* obx_outbox_map on a parsed wal2json INSERT: the outbox row's columns are
 * the application's data (ids, types, topic, version, headers, bytea hex).
 * A mapped row must encode into an envelope that decodes back to the same
 * fields, since consumers (apply, consume, verify) read exactly that. */
#include "envelope.h"
#include "fuzz.h"
#include "outbox.h"
#include "outboxd/v1/event.pb-c.h"
#include "wal2json.h"

static void round_trip(const obx_outbox_row_t *row, const obx_w2j_change_t *chg)
{
    obx_source_t src;
    memset(&src, 0, sizeof(src));
    src.commit_lsn = chg->lsn;
    src.change_lsn = chg->lsn;
    src.xid = chg->xid;
    src.schema = chg->schema;
    src.table = chg->table;
    src.database = "db";
    src.slot = "outboxd";
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256] = "";
    /* Headers that do not parse make the row poison in the relay before it
     * is encoded; encoding refuses them the same way. */
    int rc = obx_envelope_encode(row, &src, &buf, &len, err, sizeof(err));
    if (rc != 0) {
        obx_headers_t h;
        CHECK(row->headers_json && obx_headers_parse(row->headers_json, &h, err, sizeof(err)) != 0);
        return;
    }
    Outboxd__V1__Event *ev = obx_envelope_decode(buf, len);
    CHECK(ev);
    CHECK(strcmp(ev->event_id, row->event_id) == 0);
    CHECK(strcmp(ev->aggregate_type, row->aggregate_type) == 0);
    CHECK(strcmp(ev->aggregate_id, row->aggregate_id) == 0);
    CHECK(strcmp(ev->event_type, row->event_type) == 0);
    CHECK(ev->payload.len == row->payload_len);
    CHECK(!row->payload_len || memcmp(ev->payload.data, row->payload, row->payload_len) == 0);
    CHECK((ev->version_case == OUTBOXD__V1__EVENT__VERSION_AGGREGATE_VERSION) == !!row->has_version);
    CHECK(!row->has_version || ev->aggregate_version == row->version);
    CHECK(ev->source && strcmp(ev->source->table, chg->table) == 0);
    char *js = obx_envelope_to_json(ev, row->topic, 0, 0, row->aggregate_id, strlen(row->aggregate_id), 0);
    free(js);
    obx_envelope_free(ev);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static obx_config_t *cfg;
    if (!cfg) CHECK((cfg = obx_config_new()) != NULL); /* the default column names */
    obx_w2j_change_t chg;
    char err[256];
    memset(&chg, 0, sizeof(chg));
    if (obx_w2j_parse((const char *)data, size, &chg, err, sizeof(err)) != 0) return 0;
    if (chg.kind == OBX_CHG_INSERT) {
        obx_outbox_row_t row;
        err[0] = '\0';
        if (obx_outbox_map(cfg, &chg, &row, err, sizeof(err)) == 0) {
            CHECK(obx_topic_valid(row.topic));
            CHECK(row.event_id && row.aggregate_type && row.aggregate_id && row.event_type);
            round_trip(&row, &chg);
            obx_outbox_row_clear(&row);
        } else {
            CHECK(err[0]);
            CHECK(row.payload_buf == NULL);
        }
    }
    obx_w2j_change_clear(&chg);
    return 0;
}
