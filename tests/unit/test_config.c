/* The config table (src/config.h): defaults, file, environment, validation,
 * redaction and the generated reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "err.h"
#include "kconf.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "preflight.h"
#include "status_http.h"

/* Every key of the table, as documented. */
static const char *const all_keys[] = {
    "pg.conninfo", "slot.name", "slot.create", "decoder", "publication.name", "outbox.schema", "outbox.table",
    "outbox.column.id", "outbox.column.aggregatetype", "outbox.column.aggregateid", "outbox.column.type",
    "outbox.column.payload", "outbox.column.aggregate_version", "outbox.column.topic", "outbox.column.headers",
    "outbox.column.occurred_at", "outbox.column.tracingspancontext", "outbox.message_prefix", "topic.template", "status.interval_ms", "shutdown.timeout_ms",
    "reconnect.backoff_max_ms", "poll.batch", "status.listen", "heartbeat.interval_ms", "standby.retry_ms",
    "slot.poll_interval_ms", "slot.evidence_topic", "slot.failover", "exactly_once", "exactly_once.scan_max", "exactly_once.clock_skew_ms", "poison.policy", "poison.dlq_topic",
    "snapshot.table", "snapshot.name", "snapshot.where", "snapshot.topic", "snapshot.aggregate_type",
    "snapshot.version_column", "snapshot.columns", "snapshot.payload_sql", "snapshot.event_type",
    "snapshot.page_size", "snapshot.rate_limit", "signal.table", "signal.allowed_tables",
    "log.level", "log.format",
    /* apply.* (outboxd apply) */
    "apply.conninfo", "apply.topics", "apply.group", "apply.table", "apply.key_column", "apply.columns",
    "apply.event_types", "apply.delete_types", "apply.tombstone_table", "apply.column.source_version",
    "apply.column.source_updated_at", "apply.column.replicated_at", "apply.source_time", "apply.batch_max",
    "apply.batch_wait_ms", "apply.poison.policy", "apply.poison.dlq_topic",
};
#define N_KEYS (sizeof(all_keys) / sizeof(all_keys[0]))

static obx_config_t *cfg_new(void)
{
    obx_config_t *c = obx_config_new();
    assert_non_null(c);
    return c;
}

/* Writes text to a fresh temp file; path into buf. */
static void write_file(char *path, size_t size, const char *text)
{
    snprintf(path, size, "/tmp/obx_test_config_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
}

static void load_ok(obx_config_t *c, const char *text)
{
    char path[64], err[512] = "";
    write_file(path, sizeof(path), text);
    int rc = obx_config_load_file(c, path, err, sizeof(err));
    unlink(path);
    if (rc != 0) fail_msg("%s", err);
}

/* Loads text, expects -1 and every needle in errstr ("@" = "path:line"). */
static void load_fail(const char *text, int line, const char *n1, const char *n2)
{
    obx_config_t *c = cfg_new();
    char path[64], err[512] = "", where[96];
    write_file(path, sizeof(path), text);
    int rc = obx_config_load_file(c, path, err, sizeof(err));
    unlink(path);
    if (rc != -1) fail_msg("accepted: %s", text);
    snprintf(where, sizeof(where), "%s:%d", path, line);
    if (!strstr(err, where)) fail_msg("errstr \"%s\" lacks \"%s\"", err, where);
    if (n1 && !strstr(err, n1)) fail_msg("errstr \"%s\" lacks \"%s\"", err, n1);
    if (n2 && !strstr(err, n2)) fail_msg("errstr \"%s\" lacks \"%s\"", err, n2);
    obx_config_destroy(c);
}

static char *print_cfg(const obx_config_t *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    obx_config_print(c, f);
    fclose(f);
    assert_non_null(buf);
    return buf;
}

static void assert_has(const char *hay, const char *needle)
{
    if (!strstr(hay, needle)) fail_msg("\"%s\" not found in:\n%s", needle, hay);
}

static void assert_lacks(const char *hay, const char *needle)
{
    if (strstr(hay, needle)) fail_msg("\"%s\" found in:\n%s", needle, hay);
}

static void test_defaults(void **state)
{
    (void)state;
    obx_config_t *c = cfg_new();
    assert_string_equal(c->pg_conninfo, "");
    assert_string_equal(c->slot_name, "outboxd");
    assert_int_equal(c->slot_create, 1);
    assert_string_equal(c->outbox_schema, "public");
    assert_string_equal(c->outbox_table, "outbox");
    assert_string_equal(c->col_id, "id");
    assert_string_equal(c->col_aggregatetype, "aggregatetype");
    assert_string_equal(c->col_aggregateid, "aggregateid");
    assert_string_equal(c->col_type, "type");
    assert_string_equal(c->col_payload, "payload");
    assert_string_equal(c->col_aggregate_version, "aggregate_version");
    assert_string_equal(c->col_topic, "topic");
    assert_string_equal(c->col_headers, "headers");
    assert_string_equal(c->col_occurred_at, "occurred_at");
    assert_string_equal(c->topic_template, "outbox.event.${aggregatetype}");
    assert_int_equal(c->status_interval_ms, 10000);
    assert_int_equal(c->shutdown_timeout_ms, 30000);
    assert_int_equal(c->reconnect_backoff_max_ms, 30000);
    assert_int_equal(c->poll_batch, 256);
    assert_string_equal(c->log_level, "info");
    assert_string_equal(c->log_format, "auto");
    assert_int_equal(c->n_kafka, 7);
    assert_string_equal(obx_config_kafka_get(c, "enable.idempotence"), "true");
    assert_string_equal(obx_config_kafka_get(c, "partitioner"), "murmur2_random");
    assert_string_equal(obx_config_kafka_get(c, "linger.ms"), "5");
    assert_string_equal(obx_config_kafka_get(c, "compression.type"), "lz4");
    assert_string_equal(obx_config_kafka_get(c, "queue.buffering.max.messages"), "10000");
    assert_string_equal(obx_config_kafka_get(c, "queue.buffering.max.kbytes"), "8192");
    /* Set by the producer: 0 with exactly_once, 300000 without. */
    assert_null(obx_config_kafka_get(c, "message.timeout.ms"));
    assert_string_equal(obx_config_kafka_get(c, "statistics.interval.ms"), "5000");
    assert_string_equal(c->status_listen, "127.0.0.1:8080");
    assert_int_equal(c->heartbeat_interval_ms, 10000);
    assert_int_equal(c->standby_retry_ms, 1000);
    assert_int_equal(c->slot_poll_interval_ms, 10000);
    assert_int_equal(c->exactly_once, 1);
    assert_int_equal(c->dedup_scan_max, 1000);
    assert_string_equal(c->poison_policy, "halt");
    assert_string_equal(c->slot_failover, "auto");
    assert_string_equal(c->dlq_topic, "outboxd.deadletter");
    assert_null(obx_config_kafka_get(c, "bootstrap.servers"));
    obx_config_destroy(c);
    obx_config_destroy(NULL);
}

static void test_load_file(void **state)
{
    (void)state;
    obx_config_t *c = cfg_new();
    load_ok(c,
            "# outboxd.conf\n"
            "\n"
            "   # indented comment\n"
            "pg.conninfo = host=127.0.0.1 port=55432 dbname=app user=outboxd\n"
            "slot.name=my_slot\n"
            "  slot.create   =   false  \n"
            "outbox.table = \"  spaced name  \"\n"
            "outbox.schema = \"\"\n"
            "topic.template = events.${aggregatetype}\n"
            "status.interval_ms = 250\r\n"
            "poll.batch = 1\n"
            "outbox.column.aggregate_version =\n"
            "kafka.bootstrap.servers = 127.0.0.1:9092,127.0.0.1:9093\n"
            "kafka.linger.ms = 50\n"
            "kafka.sasl.password = p#ss word=\n"
            "log.level = debug\n"
            "pg.conninfo = host=db2\n" /* later lines win */
            "# the end");
    assert_string_equal(c->pg_conninfo, "host=db2");
    assert_string_equal(c->slot_name, "my_slot");
    assert_int_equal(c->slot_create, 0);
    assert_string_equal(c->outbox_table, "  spaced name  ");
    assert_string_equal(c->outbox_schema, "");
    assert_string_equal(c->topic_template, "events.${aggregatetype}");
    assert_int_equal(c->status_interval_ms, 250);
    assert_int_equal(c->poll_batch, 1);
    assert_string_equal(c->col_aggregate_version, "");
    assert_string_equal(c->log_level, "debug");
    assert_string_equal(obx_config_kafka_get(c, "bootstrap.servers"), "127.0.0.1:9092,127.0.0.1:9093");
    assert_string_equal(obx_config_kafka_get(c, "linger.ms"), "50"); /* overrides the default */
    assert_string_equal(obx_config_kafka_get(c, "sasl.password"), "p#ss word="); /* '#' mid-value is data */
    assert_int_equal(c->n_kafka, 9);
    /* untouched keys keep their defaults */
    assert_string_equal(c->col_id, "id");
    assert_int_equal(c->shutdown_timeout_ms, 30000);
    obx_config_destroy(c);

    c = cfg_new();
    load_ok(c, ""); /* empty file */
    assert_string_equal(c->slot_name, "outboxd");
    obx_config_destroy(c);
}

static void test_load_file_errors(void **state)
{
    (void)state;
    load_fail("# ok\nslot.name = x\nno.such.key = 1\n", 3, "\"no.such.key\"", "unknown config key");
    load_fail("pg_conninfo = x\n", 1, "\"pg_conninfo\"", "kafka.");
    load_fail("bootstrap.servers = b:9092\n", 1, "\"bootstrap.servers\"", NULL);
    load_fail("\n\njust some text\n", 3, "key = value", "no \"=\"");
    load_fail("kafka. = 1\n", 1, "empty kafka property", NULL);
    load_fail("status.interval_ms = fast\n", 1, "status.interval_ms", "not an integer");
    load_fail("status.interval_ms = 99\n", 1, "status.interval_ms", "[100, 10000]");
    load_fail("status.interval_ms = 10001\n", 1, "status.interval_ms", "[100, 10000]");
    load_fail("status.interval_ms = 12x\n", 1, "status.interval_ms", "[100, 10000]");
    load_fail("status.interval_ms =\n", 1, "status.interval_ms", "not an integer");
    load_fail("poll.batch = 99999999999999999999\n", 1, "poll.batch", "not an integer");
    load_fail("shutdown.timeout_ms = -1\n", 1, "shutdown.timeout_ms", "[0, 3600000]");
    load_fail("slot.create = maybe\n", 1, "slot.create", "not a boolean");
    load_fail("slot.create = TRUE\n", 1, "slot.create", "not a boolean");

    obx_config_t *c = cfg_new();
    char err[512] = "";
    assert_int_equal(obx_config_load_file(c, "/nonexistent/outboxd.conf", err, sizeof(err)), -1);
    assert_has(err, "/nonexistent/outboxd.conf");
    /* set() reports the source it was given */
    assert_int_equal(obx_config_set(c, "poll.batch", "0", "--set", err, sizeof(err)), -1);
    assert_has(err, "--set");
    assert_has(err, "poll.batch");
    assert_int_equal(c->poll_batch, 256); /* unchanged by a failed set */
    assert_int_equal(obx_config_set(c, "slot.create", "off", "--set", err, sizeof(err)), 0);
    assert_int_equal(c->slot_create, 0);
    assert_int_equal(obx_config_set(c, "slot.create", "yes", "--set", err, sizeof(err)), 0);
    assert_int_equal(c->slot_create, 1);
    assert_int_equal(obx_config_set(c, "slot.create", "0", "--set", err, sizeof(err)), 0);
    assert_int_equal(c->slot_create, 0);
    assert_int_equal(obx_config_set(c, "shutdown.timeout_ms", "0", "--set", err, sizeof(err)), 0);
    assert_int_equal(c->shutdown_timeout_ms, 0);
    assert_int_equal(obx_config_set(c, "shutdown.timeout_ms", "3600000", "--set", err, sizeof(err)), 0);
    assert_int_equal(c->shutdown_timeout_ms, 3600000);
    obx_config_destroy(c);
}

static void test_env(void **state)
{
    (void)state;
    obx_config_t *c = cfg_new();
    char err[512] = "";
    load_ok(c, "pg.conninfo = host=from-file\nslot.name = file_slot\nkafka.linger.ms = 7\n");
    char *env[] = {
        "PATH=/usr/bin",
        "OUTBOXD_PG_CONNINFO=host=from-env password=pw",
        "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS=k1:9092",
        "OUTBOXD_KAFKA_LINGER_MS=9",
        "OUTBOXD_KAFKA_SASL_PASSWORD=Secret_With_Caps",
        "OUTBOXD_SERVICE_HOST=10.0.0.1",      /* Kubernetes: ignored */
        "OUTBOXD_PORT_8080_TCP=tcp://10.0.0.1:8080",
        "OUTBOXD_STATUS_INTERVAL_MS=500",
        "OUTBOXD_SLOT_CREATE=false",
        "OUTBOXD_OUTBOX_COLUMN_AGGREGATE_VERSION=ver",
        "OUTBOXD_TOPIC_TEMPLATE=t.${aggregatetype}",
        "outboxd_log_level=debug",            /* case matters */
        "OUTBOXD_LOG_LEVEL",                  /* no '=' */
        "OUTBOXD_=x",
        NULL,
    };
    assert_int_equal(obx_config_load_env(c, env, err, sizeof(err)), 0);
    assert_string_equal(c->pg_conninfo, "host=from-env password=pw"); /* env wins */
    assert_string_equal(c->slot_name, "file_slot");
    assert_string_equal(obx_config_kafka_get(c, "bootstrap.servers"), "k1:9092");
    assert_string_equal(obx_config_kafka_get(c, "linger.ms"), "9");
    assert_string_equal(obx_config_kafka_get(c, "sasl.password"), "Secret_With_Caps"); /* values keep case */
    assert_int_equal(c->status_interval_ms, 500);
    assert_int_equal(c->slot_create, 0);
    assert_string_equal(c->col_aggregate_version, "ver");
    assert_string_equal(c->topic_template, "t.${aggregatetype}");
    assert_string_equal(c->log_level, "info");
    assert_null(obx_config_kafka_get(c, "service.host"));
    assert_int_equal(obx_config_load_env(c, NULL, err, sizeof(err)), 0);

    char *bad[] = {"OUTBOXD_STATUS_INTERVAL_MS=fast", NULL};
    assert_int_equal(obx_config_load_env(c, bad, err, sizeof(err)), -1);
    assert_has(err, "OUTBOXD_STATUS_INTERVAL_MS");
    assert_lacks(err, "fast"); /* config errors never repeat a value */
    assert_int_equal(c->status_interval_ms, 500);
    char *bad2[] = {"OUTBOXD_SLOT_CREATE=sometimes", NULL};
    assert_int_equal(obx_config_load_env(c, bad2, err, sizeof(err)), -1);
    assert_has(err, "OUTBOXD_SLOT_CREATE");
    obx_config_destroy(c);
}

static void validate_fails(obx_config_t *c, const char *n1, const char *n2)
{
    char err[512] = "";
    assert_int_equal(obx_config_validate(c, err, sizeof(err)), -1);
    assert_has(err, n1);
    if (n2) assert_has(err, n2);
}

static void set(obx_config_t *c, const char *k, const char *v)
{
    char err[512];
    if (obx_config_set(c, k, v, "test", err, sizeof(err)) != 0) fail_msg("%s", err);
}

static void test_validate(void **state)
{
    (void)state;
    char err[512] = "";
    obx_config_t *c = cfg_new();
    validate_fails(c, "\"pg.conninfo\"", "OUTBOXD_PG_CONNINFO");
    set(c, "pg.conninfo", "host=127.0.0.1");
    validate_fails(c, "\"kafka.bootstrap.servers\"", "OUTBOXD_KAFKA_BOOTSTRAP_SERVERS");
    set(c, "kafka.bootstrap.servers", "127.0.0.1:9092");
    assert_int_equal(obx_config_validate(c, err, sizeof(err)), 0);
    /* decoder: wal2json by default; the publication defaults to the slot's name */
    assert_string_equal(c->decoder, "wal2json");
    assert_string_equal(obx_config_publication(c), "outboxd");
    set(c, "decoder", "pgoutput");
    set(c, "publication.name", "outbox_pub");
    assert_int_equal(obx_config_validate(c, err, sizeof(err)), 0);
    assert_string_equal(obx_config_publication(c), "outbox_pub");

    set(c, "kafka.no.such.property", "1");
    validate_fails(c, "kafka.no.such.property", "No such configuration property");
    obx_config_destroy(c);

    static const struct { const char *key, *value, *n1, *n2; } bad[] = {
        {"kafka.compression.type", "zip", "kafka.compression.type", NULL},
        {"kafka.linger.ms", "soon", "kafka.linger.ms", NULL},
        {"slot.name", "Outboxd", "slot.name", "lower case"},
        {"slot.name", "out-boxd", "slot.name", "\"out-boxd\""},
        {"slot.name", "", "slot.name", NULL},
        {"log.level", "loud", "log.level", "\"loud\""},
        {"log.format", "xml", "log.format", "\"xml\""},
        {"decoder", "pgjson", "decoder", "wal2json or pgoutput"},
        {"outbox.column.id", "", "outbox.column", NULL},
        {"outbox.column.payload", "", "outbox.column", NULL},
        {"pg.conninfo", "", "pg.conninfo", NULL},
        {"slot.failover", "yes", "slot.failover", "auto, on or off"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = cfg_new();
        set(c, "pg.conninfo", "host=127.0.0.1");
        set(c, "kafka.bootstrap.servers", "127.0.0.1:9092");
        set(c, bad[i].key, bad[i].value);
        validate_fails(c, bad[i].n1, bad[i].n2);
        obx_config_destroy(c);
    }

    /* optional columns may be empty; good log settings pass */
    c = cfg_new();
    set(c, "pg.conninfo", "host=127.0.0.1");
    set(c, "kafka.bootstrap.servers", "127.0.0.1:9092");
    set(c, "outbox.column.topic", "");
    set(c, "outbox.column.aggregate_version", "");
    set(c, "log.level", "warn");
    set(c, "log.format", "json");
    set(c, "slot.name", "outboxd_2");
    set(c, "kafka.acks", "all");
    assert_int_equal(obx_config_validate(c, err, sizeof(err)), 0);
    obx_config_destroy(c);
}

/* slot.failover: auto follows the server (17+), on is an error before 17
 * naming the fix, off never. */
static void test_slot_failover_wanted(void **state)
{
    (void)state;
    char err[512] = "";
    obx_config_t *c = cfg_new();
    assert_int_equal(obx_slot_failover_wanted(c, 150020, err, sizeof(err)), 0);
    assert_int_equal(obx_slot_failover_wanted(c, 160004, err, sizeof(err)), 0);
    assert_int_equal(obx_slot_failover_wanted(c, 170000, err, sizeof(err)), 1);
    assert_int_equal(obx_slot_failover_wanted(c, 180006, err, sizeof(err)), 1);
    set(c, "slot.failover", "on");
    assert_int_equal(obx_slot_failover_wanted(c, 180006, err, sizeof(err)), 1);
    assert_int_equal(obx_slot_failover_wanted(c, 160004, err, sizeof(err)), -1);
    assert_has(err, "slot.failover = auto");
    assert_has(err, "Patroni");
    set(c, "slot.failover", "off");
    assert_int_equal(obx_slot_failover_wanted(c, 180006, err, sizeof(err)), 0);
    obx_config_destroy(c);
}

/* Identifiers longer than PostgreSQL's 63 bytes (NAMEDATALEN-1) are refused
 * naming the key; 63 bytes pass. Lists and [schema.]table are judged part
 * by part, "quoted" parts without their quotes. */
static void test_identifier_lengths(void **state)
{
    (void)state;
    char err[512] = "", n63[64], n64[65], v[400];
    memset(n63, 'a', 63);
    n63[63] = '\0';
    memset(n64, 'b', 64);
    n64[64] = '\0';
    static const char *const keys[] = {
        "slot.name", "publication.name", "outbox.schema", "outbox.table", "outbox.column.id", "outbox.column.aggregatetype",
        "outbox.column.aggregateid", "outbox.column.type", "outbox.column.payload",
        "outbox.column.aggregate_version", "outbox.column.topic", "outbox.column.headers",
        "outbox.column.occurred_at", "outbox.column.tracingspancontext", "signal.table", "snapshot.version_column", "snapshot.columns",
        "snapshot.table", "signal.allowed_tables", "apply.table", "apply.tombstone_table", "apply.key_column",
        "apply.column.source_version", "apply.column.source_updated_at", "apply.column.replicated_at",
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        obx_config_t *c = cfg_new();
        set(c, "pg.conninfo", "host=127.0.0.1");
        set(c, "kafka.bootstrap.servers", "127.0.0.1:9092");
        set(c, keys[i], n63);
        if (obx_config_validate(c, err, sizeof(err)) != 0) fail_msg("%s: 63 bytes refused: %s", keys[i], err);
        set(c, keys[i], n64);
        validate_fails(c, keys[i], "63 bytes");
        validate_fails(c, "64 bytes", "NAMEDATALEN");
        obx_config_destroy(c);
    }
    static const struct { const char *key, *fmt; int ok; } parts[] = {
        {"snapshot.table", "s.%s", 1},                /* each part is its own name */
        {"snapshot.table", "\"%s\".t", 1},           /* quotes are not part of it */
        {"snapshot.table", "\"Sales-EU\".\"x%s\"", 0},
        {"snapshot.columns", "id, %s", 1},
        {"snapshot.columns", "id,x%s", 0},
        {"signal.allowed_tables", "athletes, s.%s", 1},
        {"signal.allowed_tables", "athletes, s.x%s", 0},
        {"signal.allowed_tables", "\"a.b\".\"%s\"", 1}, /* a dot inside quotes does not split */
    };
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        obx_config_t *c = cfg_new();
        set(c, "pg.conninfo", "host=127.0.0.1");
        set(c, "kafka.bootstrap.servers", "127.0.0.1:9092");
        snprintf(v, sizeof(v), parts[i].fmt, n63);
        set(c, parts[i].key, v);
        int rc = obx_config_validate(c, err, sizeof(err));
        if (parts[i].ok && rc != 0) fail_msg("%s = %s refused: %s", parts[i].key, v, err);
        if (!parts[i].ok) validate_fails(c, parts[i].key, "63 bytes");
        obx_config_destroy(c);
    }
}

static void test_conninfo_redact(void **state)
{
    (void)state;
    char out[512];
    obx_conninfo_redact("host=db port=5432 user=u password=hunter2 dbname=app", out, sizeof(out));
    assert_lacks(out, "hunter2");
    assert_has(out, "password=[redacted]");
    assert_has(out, "host=db");
    assert_has(out, "user=u");
    assert_has(out, "dbname=app");
    assert_has(out, "port=5432");

    obx_conninfo_redact("postgresql://u:s3cr3t@db:5432/app?sslmode=require", out, sizeof(out));
    assert_lacks(out, "s3cr3t");
    assert_has(out, "password=[redacted]");
    assert_has(out, "host=db");
    assert_has(out, "sslmode=require");

    obx_conninfo_redact("host=db password='quoted secret'", out, sizeof(out));
    assert_lacks(out, "quoted");
    assert_lacks(out, "secret");

    obx_conninfo_redact("host=db", out, sizeof(out));
    assert_string_equal(out, "host=db");
    obx_conninfo_redact("", out, sizeof(out));
    assert_string_equal(out, "");

    /* unparseable: nothing of it is printed */
    obx_conninfo_redact("host=db password='unterminated", out, sizeof(out));
    assert_string_equal(out, "<unparseable conninfo>");
    obx_conninfo_redact("host=db passwrd=x", out, sizeof(out));
    assert_string_equal(out, "<unparseable conninfo>");

    /* a small buffer truncates, NUL-terminated */
    memset(out, 'X', sizeof(out));
    obx_conninfo_redact("host=averyveryverylonghostname password=hunter2", out, 12);
    assert_int_equal(strlen(out), 11);
    assert_lacks(out, "hunter2");
}

static void test_print_redacts(void **state)
{
    (void)state;
    obx_config_t *c = cfg_new();
    set(c, "pg.conninfo", "host=db user=outboxd password=pg_secret_1");
    set(c, "kafka.bootstrap.servers", "k1:9092");
    set(c, "kafka.sasl.username", "alice");
    set(c, "kafka.sasl.password", "kafka_secret_2");
    set(c, "kafka.ssl.key.password", "kafka_secret_3");
    set(c, "kafka.sasl.oauthbearer.client.secret", "kafka_secret_4");
    set(c, "kafka.sasl.oauthbearer.config", "principal=kafka_secret_5");
    set(c, "kafka.ssl.key.pem", "kafka_secret_6");
    char *s = print_cfg(c);
    for (int i = 1; i <= 6; i++) {
        char needle[32];
        snprintf(needle, sizeof(needle), "secret_%d", i);
        assert_lacks(s, needle);
    }
    /* redacted conninfo comes back in libpq's keyword order */
    const char *first = "pg.conninfo = user=outboxd password=[redacted] host=db\n";
    assert_memory_equal(s, first, strlen(first));
    assert_has(s, "\nkafka.sasl.password = [redacted]\n");
    assert_has(s, "\nkafka.ssl.key.password = [redacted]\n");
    assert_has(s, "\nkafka.sasl.oauthbearer.client.secret = [redacted]\n");
    assert_has(s, "\nkafka.sasl.username = alice\n");
    assert_has(s, "\nkafka.bootstrap.servers = k1:9092\n");
    assert_has(s, "\nslot.create = true\n");
    assert_has(s, "\nstatus.interval_ms = 10000\n");
    assert_has(s, "\ntopic.template = outbox.event.${aggregatetype}\n");
    free(s);
    obx_config_destroy(c);

    assert_true(obx_config_is_secret("sasl.password"));
    assert_true(obx_config_is_secret("ssl.keystore.password"));
    assert_true(obx_config_is_secret("sasl.oauthbearer.client.secret"));
    assert_true(obx_config_is_secret("sasl.oauthbearer.config"));
    assert_true(obx_config_is_secret("ssl.key.pem"));
    assert_false(obx_config_is_secret("sasl.username"));
    assert_false(obx_config_is_secret("bootstrap.servers"));
    assert_false(obx_config_is_secret("ssl.ca.location"));
}

/* print lists every table key once, as "key = value" */
static void test_print_lists_every_key(void **state)
{
    (void)state;
    obx_config_t *c = cfg_new();
    char *s = print_cfg(c);
    size_t lines = 0;
    for (const char *p = s; *p; p++) lines += *p == '\n';
    assert_int_equal(lines, N_KEYS + c->n_kafka);
    for (size_t i = 0; i < N_KEYS; i++) {
        char needle[96];
        snprintf(needle, sizeof(needle), "%s%s = ", i ? "\n" : "", all_keys[i]);
        assert_has(s, needle);
    }
    free(s);
    obx_config_destroy(c);
}

static void test_print_doc(void **state)
{
    (void)state;
    char *doc = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&doc, &len);
    assert_non_null(f);
    obx_config_print_doc(f);
    fclose(f);
    assert_non_null(doc);
    for (size_t i = 0; i < N_KEYS; i++) {
        char needle[96];
        snprintf(needle, sizeof(needle), "| `%s` |", all_keys[i]);
        assert_has(doc, needle);
    }
    assert_has(doc, "| `kafka.bootstrap.servers` |");
    /* every librdkafka default outboxd sets is listed with its value */
    obx_config_t *c = cfg_new();
    for (size_t i = 0; i < c->n_kafka; i++) {
        char needle[160];
        snprintf(needle, sizeof(needle), "| `%s` | `%s` |", c->kafka[i].key, c->kafka[i].value);
        assert_has(doc, needle);
    }
    obx_config_destroy(c);
    assert_has(doc, "| `status.interval_ms` | int | `10000` |");
    assert_has(doc, "Range 100..10000.");
    assert_has(doc, "| `slot.create` | bool | `true` |");
    assert_has(doc, "| `pg.conninfo` | string | (none) | **Required.**");
    assert_has(doc, "OUTBOXD_SERVICE_HOST");
    free(doc);
}

/* Secret keys: libpq's own marks (dispchar '*'), librdkafka's sensitive
 * properties with or without the kafka. prefix. */
static void test_secret_keys(void **state)
{
    (void)state;
    static const char *const secret[] = {"password", "sslpassword", "kafka.sasl.password", "sasl.password",
                                         "kafka.ssl.key.password", "ssl.keystore.password", "kafka.ssl.key.pem",
                                         "ssl_key", "ssl.key.location", "ssl.ca.pem", "sasl.oauthbearer.config",
                                         "kafka.sasl.oauthbearer.client.secret", "kafka.some.future.secret"};
    static const char *const plain[] = {"user", "host", "passfile", "sslkey", "dbname", "kafka.sasl.username",
                                        "kafka.bootstrap.servers", "security.protocol", "sasl.mechanisms",
                                        "pg.conninfo", "slot.name"};
    for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++)
        if (!obx_config_is_secret(secret[i])) fail_msg("%s is not treated as secret", secret[i]);
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
        if (obx_config_is_secret(plain[i])) fail_msg("%s is treated as secret", plain[i]);
}

static void test_redact_every_libpq_secret(void **state)
{
    (void)state;
    char out[512];
    obx_conninfo_redact("host=db sslpassword=ssl_secret_1 password=pw_secret_2 sslkey=/k.pem", out, sizeof(out));
    assert_lacks(out, "ssl_secret_1");
    assert_lacks(out, "pw_secret_2");
    assert_has(out, "sslpassword=[redacted]");
    assert_has(out, "sslkey=/k.pem");
    obx_conninfo_redact("postgresql://u:uri_secret_3@db/app?sslpassword=ssl_secret_4", out, sizeof(out));
    assert_lacks(out, "uri_secret_3");
    assert_lacks(out, "ssl_secret_4");
    assert_has(out, "user=u");
    /* a URI libpq refuses: nothing of it */
    obx_conninfo_redact("postgresql://u:uri_secret_5@[::1/app", out, sizeof(out));
    assert_string_equal(out, "<unparseable conninfo>");
}

/* obx_pg_connect's error never carries the conninfo or its secrets, even
 * where libpq quotes them (URIs and tokens it cannot parse). */
static void test_pg_connect_error_scrubbed(void **state)
{
    (void)state;
    static const struct { const char *conninfo, *secret; } cases[] = {
        {"postgresql://u:UriSecret_1@[::1/app", "UriSecret_1"},
        {"postgresql://u:Uri%ZZSecret_2@127.0.0.1:1/app", "Uri%ZZSecret_2"},
        {"postgresql://u:UriSecret_3@127.0.0.1:1/app?connect_timeout=bogus", "UriSecret_3"},
        {"host=127.0.0.1 port=1 password KwSecret_4", "KwSecret_4"},
        {"host=127.0.0.1 port=1 connect_timeout=2 password=KwSecret_5 sslpassword=KwSecret_6", "KwSecret_5"},
        {"host=127.0.0.1 port=1 connect_timeout=2 sslpassword=KwSecret_6", "KwSecret_6"},
        {"host=127.0.0.1 port=1 password='KwSecret_7", "KwSecret_7"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        obx_err_t err;
        PGconn *c = obx_pg_connect(cases[i].conninfo, "pg.conninfo", OBX_PG_NORMAL, &err);
        assert_null(c);
        assert_has(err.msg, "pg.conninfo");
        if (strstr(err.msg, cases[i].secret) || strstr(err.msg, cases[i].conninfo))
            fail_msg("case %zu leaks: %s", i, err.msg);
    }
}

static void test_scrub_value(void **state)
{
    (void)state;
    char s[64];
    snprintf(s, sizeof(s), "a hunter2x b hunter2x");
    obx_scrub_value(s, sizeof(s), "hunter2x");
    assert_string_equal(s, "a *** b ***");
    snprintf(s, sizeof(s), "ab");
    obx_scrub_value(s, sizeof(s), "b"); /* the mask is longer than the value */
    assert_string_equal(s, "a***");
    char small[8] = "xyz pw";
    obx_scrub_value(small, sizeof(small), "pw");
    assert_string_equal(small, "xyz ***");
    char tight[7] = "xyz pw"; /* no room for the whole mask: cut */
    obx_scrub_value(tight, sizeof(tight), "pw");
    assert_lacks(tight, "pw");
    /* a full buffer that ends in the first bytes of a secret */
    char cut[12];
    memcpy(cut, "pass=Sekrit", 12); /* what snprintf left of "pass=Sekrit99" */
    obx_scrub_value(cut, sizeof(cut), "Sekrit99");
    assert_lacks(cut, "Sek");
}

/* Registered secrets never reach a message: obx_err_set, obx_err_prefix and
 * obx_log (stderr) replace them. */
static void test_secret_registry(void **state)
{
    (void)state;
    obx_secret_reset();
    obx_config_t *c = cfg_new();
    set(c, "pg.conninfo", "postgresql://u:RegUri_1@db/app?sslpassword=RegSsl_2");
    set(c, "apply.conninfo", "host=r password=RegApply_3");
    set(c, "kafka.sasl.password", "RegSasl_4");
    set(c, "kafka.ssl.keystore.password", "RegStore_5");
    set(c, "kafka.bootstrap.servers", "RegPlain_6:9092");
    obx_config_register_secrets(c);
    obx_err_t e;
    obx_err_clear(&e);
    obx_err_set(&e, OBX_ERR_FATAL, 0, "a RegUri_1 b RegSsl_2 c RegApply_3 d RegSasl_4 e RegStore_5 f RegPlain_6");
    assert_string_equal(e.msg, "a *** b *** c *** d *** e *** f RegPlain_6");
    obx_err_prefix(&e, "ctx RegSasl_4");
    assert_lacks(e.msg, "RegSasl_4");

    char path[64];
    write_file(path, sizeof(path), "");
    fflush(stderr);
    int saved = dup(2);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    dup2(fileno(f), 2);
    obx_log(OBX_LOG_ERROR, "test", "libpq said: \"%s\"", "postgresql://u:RegUri_1@db/app?sslpassword=RegSsl_2");
    obx_log(OBX_LOG_ERROR, "test", "kafka said: %s", "RegStore_5");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(f);
    char buf[2048] = "";
    f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(path);
    assert_has(buf, "libpq said");
    assert_lacks(buf, "RegUri_1");
    assert_lacks(buf, "RegSsl_2");
    assert_lacks(buf, "RegStore_5");
    obx_secret_reset();
    obx_config_destroy(c);
}

/* A config error names the key and where, never the value: a line without
 * "=" may be `kafka.sasl.password: x`. */
static void test_config_errors_hide_values(void **state)
{
    (void)state;
    load_fail("slot.name = x\nkafka.sasl.password: NoEqSecret_1\n", 2, "key = value", NULL);
    obx_config_t *c = cfg_new();
    char path[64], err[512] = "";
    write_file(path, sizeof(path), "kafka.sasl.password: NoEqSecret_1\n");
    assert_int_equal(obx_config_load_file(c, path, err, sizeof(err)), -1);
    unlink(path);
    assert_lacks(err, "NoEqSecret_1");
    assert_lacks(err, "sasl");
    assert_int_equal(obx_config_set(c, "poll.batch", "BadInt_2", "--set", err, sizeof(err)), -1);
    assert_lacks(err, "BadInt_2");
    char *env[] = {"OUTBOXD_SLOT_CREATE=BadBool_3", NULL};
    assert_int_equal(obx_config_load_env(c, env, err, sizeof(err)), -1);
    assert_lacks(err, "BadBool_3");
    /* librdkafka may quote a refused value: not a secret property's */
    set(c, "pg.conninfo", "host=db");
    set(c, "kafka.bootstrap.servers", "b:9092");
    set(c, "kafka.my.secret.thing", "RdkSecret_4");
    validate_fails(c, "kafka.my.secret.thing", "No such configuration property");
    assert_int_equal(obx_config_validate(c, err, sizeof(err)), -1);
    assert_lacks(err, "RdkSecret_4");
    obx_err_t e;
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    assert_int_equal(obx_kconf_set(kc, "my.secret.thing", "RdkSecret_4", &e), -1);
    assert_lacks(e.msg, "RdkSecret_4");
    assert_has(e.msg, "kafka.my.secret.thing");
    rd_kafka_conf_destroy(kc);
    obx_config_destroy(c);
}

/* Polls a producer (nothing listens on its broker) for ms. */
static void poll_producer(rd_kafka_conf_t *conf, int ms)
{
    char e[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof(e));
    assert_non_null(rk);
    for (int t = 0; t < ms; t += 50) rd_kafka_poll(rk, 50);
    rd_kafka_destroy(rk);
}

/* Only the client that owns kafka_brokers_up sets it: a snapshot's producer
 * (plain obx_kconf_new) must not overwrite the relay's gauge (/readyz). */
static void test_brokers_gauge_owner(void **state)
{
    (void)state;
    obx_log_setup(OBX_LOG_ERROR + 1, OBX_LOG_TEXT); /* librdkafka's connection errors are expected */
    obx_config_t *c = cfg_new();
    set(c, "kafka.bootstrap.servers", "127.0.0.1:1");
    set(c, "kafka.statistics.interval.ms", "100");
    obx_err_t e;
    atomic_store(&obx_metrics()->kafka_brokers_up, 7);
    rd_kafka_conf_t *conf = obx_kconf_new(c, OBX_KCONF_PRODUCER, &e);
    assert_non_null(conf);
    poll_producer(conf, 400);
    assert_int_equal(atomic_load(&obx_metrics()->kafka_brokers_up), 7);
    conf = obx_kconf_new(c, OBX_KCONF_PRODUCER, &e);
    assert_non_null(conf);
    obx_kconf_own_brokers_gauge(conf);
    poll_producer(conf, 400);
    assert_int_equal(atomic_load(&obx_metrics()->kafka_brokers_up), 0);
    obx_config_destroy(c);
    obx_log_setup(OBX_LOG_INFO, OBX_LOG_TEXT);
}


/* Issue 17 item 4: `#` after whitespace starts a comment; quotes keep one. */
static void test_trailing_comments(void **state)
{
    (void)state;
    obx_config_t *c = cfg_new();
    load_ok(c, "topic.template = outbox.${aggregatetype}   # per team\n"
               "slot.name = s1# not a comment: no space before it\n"
               "outbox.table = \"events #1\"   # quoted: the # inside stays\n"
               "snapshot.where = \"a = 'x'\"\n"
               "status.interval_ms = 5000\t# tab before the comment\n"
               "outbox.schema = \"  spaced  \"\n"
               "signal.table = # only a comment: empty value\n"
               "snapshot.name = \"a\"b\"  # the last quote before the comment closes\n");
    assert_string_equal(c->topic_template, "outbox.${aggregatetype}");
    assert_string_equal(c->slot_name, "s1# not a comment: no space before it");
    assert_string_equal(c->outbox_table, "events #1");
    assert_string_equal(c->snap_where, "a = 'x'");
    assert_int_equal(c->status_interval_ms, 5000);
    assert_string_equal(c->outbox_schema, "  spaced  ");
    assert_string_equal(c->signal_table, "");
    assert_string_equal(c->snap_name, "a\"b");
    obx_config_destroy(c);
}

static void check_refused(const char *key, const char *value, const char *needle)
{
    obx_config_t *c = cfg_new();
    char err[1024] = "";
    assert_int_equal(obx_config_set(c, "pg.conninfo", "host=x", "t", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "kafka.bootstrap.servers", "k:9092", "t", err, sizeof(err)), 0);
    assert_int_equal(obx_config_validate(c, err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, key, value, "t", err, sizeof(err)), 0);
    if (obx_config_validate(c, err, sizeof(err)) != -1) fail_msg("%s = %s accepted", key, value);
    if (!strstr(err, needle)) fail_msg("errstr \"%s\" lacks \"%s\"", err, needle);
    obx_config_destroy(c);
}

static void check_accepted(const char *key, const char *value)
{
    obx_config_t *c = cfg_new();
    char err[1024] = "";
    assert_int_equal(obx_config_set(c, "pg.conninfo", "host=x", "t", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, "kafka.bootstrap.servers", "k:9092", "t", err, sizeof(err)), 0);
    assert_int_equal(obx_config_set(c, key, value, "t", err, sizeof(err)), 0);
    if (obx_config_validate(c, err, sizeof(err)) != 0) fail_msg("%s = %s refused: %s", key, value, err);
    obx_config_destroy(c);
}

/* Checked at start (and by doctor), not at the first row. */
static void test_topic_template_validated(void **state)
{
    (void)state;
    check_accepted("topic.template", "outbox.event.${aggregatetype}");
    check_accepted("topic.template", "fixed-topic");
    check_refused("topic.template", "outbox.${aggregatetype}   # per team", "not a legal Kafka topic name");
    check_refused("topic.template", "outbox.${aggregate_type}", "unknown placeholder \"${aggregate_type}\"");
    check_refused("topic.template", "outbox/${aggregatetype}", "outbox/order");
    check_refused("topic.template", "", "not a legal");
    check_refused("slot.evidence_topic", "bad topic", "slot.evidence_topic");
    check_refused("snapshot.topic", "a:b", "snapshot.topic");
    check_accepted("poison.dlq_topic", ""); /* unused with poison.policy = halt */
    obx_config_t *c = cfg_new();
    char err[512];
    assert_int_equal(obx_config_check_template("x.${aggregatetype}.v2", err, sizeof(err)), 0);
    obx_config_destroy(c);
}

/* Issue 17 item 5: ports 1-65535, IPv6 in brackets, garbage refused. */
static void test_status_listen(void **state)
{
    (void)state;
    char host[256], err[512];
    int port = 0;
    assert_int_equal(obx_status_listen_parse("127.0.0.1:8080", host, sizeof(host), &port, err, sizeof(err)), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_int_equal(obx_status_listen_parse("[::1]:9000", host, sizeof(host), &port, err, sizeof(err)), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9000);
    assert_int_equal(obx_status_listen_parse("localhost:65535", host, sizeof(host), &port, err, sizeof(err)), 0);
    const char *bad[] = {"127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:", "127.0.0.1", ":8080", "::1:8080",
                         "[::1]8080", "[::1", "127.0.0.1:80x", "127.0.0.1:-1", "garbage", "127.0.0.1: 80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (obx_status_listen_parse(bad[i], host, sizeof(host), &port, err, sizeof(err)) != -1)
            fail_msg("accepted %s", bad[i]);
        assert_non_null(strstr(err, "1-65535"));
    }
    check_refused("status.listen", "127.0.0.1:99999", "status.listen");
    check_accepted("status.listen", "[::1]:8080");
    check_accepted("status.listen", "");
    /* A real listener on IPv6 loopback (skipped where the host has no ::1). */
    obx_status_http_t *h = obx_status_http_start("[::1]:0", err, sizeof(err));
    assert_null(h); /* port 0 is refused, not a random port */
}

/* A value that can never work is refused at start (exit 2), naming the
 * key, never echoing a secret: conninfo libpq cannot parse, a listen host
 * that does not resolve. */
static void test_unusable_values_refused(void **state)
{
    (void)state;
    check_refused("pg.conninfo", "host=db user=outboxd passwrd=hunter2", "did you mean \"password\"");
    check_refused("pg.conninfo", "host=db user=outboxd password='hunter2", "pg.conninfo cannot be parsed");
    check_refused("pg.conninfo", "postgresql://u:hunter2@db/app?sslmod=disable", "pg.conninfo cannot be parsed");
    check_refused("pg.conninfo", "host=db password=hunter2 secret=x", "pg.conninfo cannot be parsed");
    check_accepted("pg.conninfo", "host=db user=outboxd password='a b=c' sslmode=require");
    check_accepted("pg.conninfo", "postgresql://u:p%40ss@db:5432/app?sslmode=disable");
    char err[512];
    const char *leaky[] = {"host=db password=hun ter2=x", "host=db password=hunter2 'x", "postgresql://u:hunter2@db/a?x=hunter2"};
    for (size_t i = 0; i < sizeof(leaky) / sizeof(leaky[0]); i++) {
        assert_int_equal(obx_config_check_conninfo("pg.conninfo", leaky[i], err, sizeof(err)), -1);
        if (strstr(err, "hunter2") || strstr(err, "ter2")) fail_msg("secret in \"%s\"", err);
    }
    assert_int_equal(obx_config_check_conninfo("apply.conninfo", "", err, sizeof(err)), 0);
    check_refused("status.listen", "999.1.1.1:8080", "999.1.1.1");
    check_refused("status.listen", "no-such-host.invalid:8080", "status.listen");
    check_accepted("status.listen", "0.0.0.0:8080");
}

/* config-check --env-file and the early log format peek. */
static void test_env_file_and_peek(void **state)
{
    (void)state;
    char path[64], err[512] = "";
    write_file(path, sizeof(path), "# comment\nexport OUTBOXD_SLOT_NAME=from_env_file\nOUTBOXD_KAFKA_CLIENT_ID=x\n"
                                   "OTHER=1\n\nOUTBOXD_LOG_FORMAT=json\n");
    obx_config_t *c = cfg_new();
    assert_int_equal(obx_config_load_env_file(c, path, err, sizeof(err)), 0);
    assert_string_equal(c->slot_name, "from_env_file");
    assert_string_equal(obx_config_kafka_get(c, "client.id"), "x");
    obx_config_destroy(c);
    unlink(path);
    /* A line config-check cannot read is an error, not a variable it then
     * compares as unset (a ConfigMap's YAML, spaces around =), and the
     * error never echoes the line (its value may be a secret). */
    const char *bad[] = {"OUTBOXD_OUTBOX_COLUMN_AGGREGATEID: tenant\n", "OUTBOXD_SLOT_NAME = x\n",
                         "# ok\nOUTBOXD_SLOT_NAME=x\n  password hunter2\n", "1ABC=x\n", "=hunter2\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, sizeof(path), bad[i]);
        c = cfg_new();
        err[0] = '\0';
        if (obx_config_load_env_file(c, path, err, sizeof(err)) != -1) fail_msg("accepted %s", bad[i]);
        assert_non_null(strstr(err, "not a NAME=VALUE line"));
        assert_null(strstr(err, "hunter2"));
        assert_null(strstr(err, "tenant"));
        obx_config_destroy(c);
        unlink(path);
    }
    /* Unknown OUTBOXD_ names are ignored (warned); Kubernetes service links silently. */
    const char *links[] = {"OUTBOXD_SERVICE_HOST", "OUTBOXD_SERVICE_PORT", "OUTBOXD_SERVICE_PORT_STATUS",
                           "OUTBOXD_PORT", "OUTBOXD_PORT_8080_TCP_ADDR", "OUTBOXD_APPLY_SERVICE_HOST"};
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
        if (!obx_config_env_service_link(links[i])) fail_msg("%s is a service link", links[i]);
    const char *typos[] = {"OUTBOXD_TOPIC_TEMPLTE", "OUTBOXD_STATUS_LISTN", "OUTBOXD_X"};
    for (size_t i = 0; i < sizeof(typos) / sizeof(typos[0]); i++)
        if (obx_config_env_service_link(typos[i])) fail_msg("%s is not a service link", typos[i]);
    /* A UTF-8 BOM (Windows editors) is not part of the first key. */
    write_file(path, sizeof(path), "\xEF\xBB\xBFlog.format = text\nslot.name = bom\n");
    c = cfg_new();
    assert_int_equal(obx_config_load_file(c, path, err, sizeof(err)), 0);
    assert_string_equal(c->log_format, "text");
    assert_int_equal(obx_config_peek_log_format(path, NULL), OBX_LOG_TEXT);
    obx_config_destroy(c);
    unlink(path);
    write_file(path, sizeof(path), "log.format = json  # c\n");
    assert_int_equal(obx_config_peek_log_format(path, NULL), OBX_LOG_JSON);
    char *env[] = {"OUTBOXD_LOG_FORMAT=text", NULL};
    assert_int_equal(obx_config_peek_log_format(path, env), OBX_LOG_TEXT);
    assert_int_equal(obx_config_peek_log_format(NULL, NULL), OBX_LOG_AUTO);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_slot_failover_wanted),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_identifier_lengths),
        cmocka_unit_test(test_conninfo_redact),
        cmocka_unit_test(test_print_redacts),
        cmocka_unit_test(test_print_lists_every_key),
        cmocka_unit_test(test_print_doc),
        cmocka_unit_test(test_secret_keys),
        cmocka_unit_test(test_redact_every_libpq_secret),
        cmocka_unit_test(test_pg_connect_error_scrubbed),
        cmocka_unit_test(test_scrub_value),
        cmocka_unit_test(test_secret_registry),
        cmocka_unit_test(test_config_errors_hide_values),
        cmocka_unit_test(test_brokers_gauge_owner),
        cmocka_unit_test(test_trailing_comments),
        cmocka_unit_test(test_topic_template_validated),
        cmocka_unit_test(test_status_listen),
        cmocka_unit_test(test_env_file_and_peek),
        cmocka_unit_test(test_unusable_values_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
