#include "config.h"
#include "err.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_STR, T_INT, T_BOOL } obx_type_t;

typedef struct {
    const char *name;
    obx_type_t type;
    size_t offset;
    const char *def;
    int min, max;       /* T_INT range */
    int required;
    const char *desc;
} obx_opt_t;

#define S(f) offsetof(obx_config_t, f)
static const obx_opt_t opts[] = {
    {"pg.conninfo", T_STR, S(pg_conninfo), "", 0, 0, 1,
     "libpq connection string of the producer database (the replication connection adds `replication=database`). The role needs LOGIN REPLICATION and SELECT on the outbox table. Passwords are redacted everywhere outboxd prints config. Prefer a `passfile` or PGPASSWORD from a Secret."},
    {"slot.name", T_STR, S(slot_name), "outboxd", 0, 0, 0,
     "Logical replication slot (plugin: `decoder`). One slot per outboxd deployment."},
    {"slot.create", T_BOOL, S(slot_create), "true", 0, 0, 0,
     "Create the slot when it does not exist. With `false`, a missing slot is an error (exit 4)."},
    {"decoder", T_STR, S(decoder), "wal2json", 0, 0, 0,
     "Logical decoding plugin: `wal2json` (needs the plugin on the server) or `pgoutput` (built into PostgreSQL 10+, faster; uses publication.name). A slot is bound to the plugin it was created with: outboxd refuses a slot made for the other decoder (exit 2)."},
    {"publication.name", T_STR, S(publication_name), "", 0, 0, 0,
     "decoder = pgoutput: the publication outboxd creates and streams (`FOR TABLE` the outbox and the signal table, `publish = 'insert'`, `publish_via_partition_root = true`). Empty: slot.name. An existing publication with other tables or options is refused (exit 2) with the ALTER PUBLICATION that fixes it; outboxd never changes a publication it did not create. Do not alter it while outboxd runs: rows written while the outbox is out of it are never sent, so any change halts the relay (exit 2; docs/decoders.md)."},
    {"outbox.schema", T_STR, S(outbox_schema), "public", 0, 0, 0, "Schema of the outbox table."},
    {"outbox.table", T_STR, S(outbox_table), "outbox", 0, 0, 0,
     "Outbox table. Only INSERTs are relayed; UPDATEs and DELETEs are ignored, so producers may delete rows right after inserting them."},
    {"outbox.column.id", T_STR, S(col_id), "id", 0, 0, 0, "Column with the event id (Kafka header `id`, envelope `event_id`). Required."},
    {"outbox.column.aggregatetype", T_STR, S(col_aggregatetype), "aggregatetype", 0, 0, 0,
     "Column with the aggregate type; `${aggregatetype}` in `topic.template`. Required."},
    {"outbox.column.aggregateid", T_STR, S(col_aggregateid), "aggregateid", 0, 0, 0,
     "Column with the aggregate id: the Kafka key, so one aggregate's events keep their order in one partition. Required, never NULL."},
    {"outbox.column.type", T_STR, S(col_type), "type", 0, 0, 0, "Column with the event type (Kafka header `type`). Required."},
    {"outbox.column.payload", T_STR, S(col_payload), "payload", 0, 0, 0,
     "Column with the payload: json/jsonb (application/json), bytea (application/octet-stream) or text. Required."},
    {"outbox.column.aggregate_version", T_STR, S(col_aggregate_version), "aggregate_version", 0, 0, 0,
     "Optional column with the monotonic aggregate version consumers use to drop stale events. Empty string or a missing column disables it."},
    {"outbox.column.topic", T_STR, S(col_topic), "topic", 0, 0, 0,
     "Optional column; when set on a row it overrides `topic.template` for that row."},
    {"outbox.column.headers", T_STR, S(col_headers), "headers", 0, 0, 0,
     "Optional json/jsonb column holding an object; each member becomes an envelope header and a Kafka header."},
    {"outbox.column.occurred_at", T_STR, S(col_occurred_at), "occurred_at", 0, 0, 0,
     "Optional timestamptz column copied to the envelope's `occurred_at_us`."},
    {"outbox.column.tracingspancontext", T_STR, S(col_tracingspancontext), "tracingspancontext", 0, 0, 0,
     "Optional text column in Debezium's format (java.util.Properties text, e.g. `traceparent=00-...`): its `traceparent` and `tracestate` become Kafka headers, unchanged, unless the headers column already has them (docs/envelope.md)."},
    {"outbox.message_prefix", T_STR, S(outbox_message_prefix), "outboxd.event", 0, 0, 0,
     "Prefix of the transactional logical messages that `outbox_emit()` writes (deploy/sql/outbox.sql, which reads the same name from the PostgreSQL setting `outboxd.message_prefix`): each becomes an event exactly like an outbox row. A non-transactional message with this prefix is poison (poison.policy); messages with other prefixes are ignored. No commas, spaces or backslashes, at most 200 bytes, not `outboxd`."},
    {"topic.template", T_STR, S(topic_template), "outbox.event.${aggregatetype}", 0, 0, 0,
     "Topic for rows whose topic column is NULL. `${aggregatetype}` is replaced by the row's aggregate type (Debezium's EventRouter default)."},
    {"status.interval_ms", T_INT, S(status_interval_ms), "10000", 100, 10000, 0,
     "Longest gap between standby status updates to Postgres (also sent at once when the server asks, and within 100 ms of the flush LSN moving). At most 10000, well under the server's wal_sender_timeout."},
    {"shutdown.timeout_ms", T_INT, S(shutdown_timeout_ms), "30000", 0, 3600000, 0,
     "On SIGTERM, how long to wait for Kafka to ack in-flight events before confirming and exiting. Unacked events are not confirmed and are re-sent after restart. Set the pod's terminationGracePeriodSeconds above it."},
    {"reconnect.backoff_max_ms", T_INT, S(reconnect_backoff_max_ms), "30000", 100, 600000, 0,
     "Cap of the exponential backoff (from 500 ms) between reconnects to Postgres or Kafka."},
    {"poll.batch", T_INT, S(poll_batch), "256", 1, 100000, 0,
     "Changes read from the slot between two services of Kafka delivery reports."},
    {"status.listen", T_STR, S(status_listen), "127.0.0.1:8080", 0, 0, 0,
     "host:port of the status HTTP port (/healthz, /readyz, /metrics, /status). Loopback by default; 0.0.0.0:8080 in a container. Empty disables it."},
    {"heartbeat.interval_ms", T_INT, S(heartbeat_interval_ms), "10000", 0, 3600000, 0,
     "Every this often, write a transactional pg_logical_emit_message (prefix `outboxd`) on a normal connection, so an idle outbox still advances the slot (no WAL pile-up) and source age stays measurable. 0 disables."},
    {"standby.retry_ms", T_INT, S(standby_retry_ms), "1000", 100, 60000, 0,
     "While another process holds the slot (hot standby), try to take it over this often."},
    {"slot.poll_interval_ms", T_INT, S(slot_poll_interval_ms), "10000", 1000, 600000, 0,
     "How often to read the slot's retained WAL and wal_status from pg_replication_slots (metrics; wal_status = lost stops with exit 4)."},
    {"slot.evidence_topic", T_STR, S(slot_evidence_topic), "outboxd.slots", 0, 0, 0,
     "Compacted Kafka topic where the relay records, per server, database and slot, that the slot has published and how far it has confirmed. A missing slot with such a record stops the relay (exit 4) instead of silently creating a new slot that would skip what was committed meanwhile; `outboxd slot create` is the explicit way forward. Must not be empty."},
    {"slot.failover", T_STR, S(slot_failover), "auto", 0, 0, 0,
     "Create the slot as a failover slot (PostgreSQL 17+): standbys running with `sync_replication_slots = on` keep a synchronised copy, so the slot survives a promotion (docs/operations.md, Failover). `auto`: on where the server supports it (17+), off on 15 and 16, where the slot-vanished guard of slot.evidence_topic is the protection; `on`: required, a server before 17 is a configuration error (exit 2); `off`: never. An existing slot of 17+ without the flag gets it at start unless `off`. `outboxd doctor` checks the flag and the standbys' settings."},
    {"exactly_once", T_BOOL, S(exactly_once), "true", 0, 0, 0,
     "After a restart or reconnect, read back each partition written to (from the commit time of the replay window on) and skip events already there, so a crash re-sends nothing. Requires that outboxd is the only writer of its (topic, key) records from this slot; see docs/guarantees.md. `false` gives plain at-least-once."},
    {"exactly_once.scan_max", T_INT, S(dedup_scan_max), "1000", 1, 1000000, 0,
     "Fallback only (a broker that cannot look up offsets by time): records read back per partition when looking for this slot's newest event. Normally the read-back starts at the commit time of the replay window's first transaction and has no record budget (docs/guarantees.md)."},
    {"exactly_once.clock_skew_ms", T_INT, S(dedup_clock_skew_ms), "60000", 0, 86400000, 0,
     "How far the read-back starts before the commit time of the replay window's first transaction: covers clock differences between PostgreSQL, outboxd (CreateTime topics) or the broker (LogAppendTime topics). Larger clock differences give duplicates, never loss."},
    {"poison.policy", T_STR, S(poison_policy), "halt", 0, 0, 0,
     "What to do with an outbox row that cannot become an event (NULL key, invalid topic, payload the broker refuses): `halt` stops before it without confirming past it (exit 3); `dead-letter` publishes it to poison.dlq_topic with the reason and goes on."},
    {"poison.dlq_topic", T_STR, S(dlq_topic), "outboxd.deadletter", 0, 0, 0,
     "Dead-letter topic for poison.policy = dead-letter. Records keep the envelope (payload dropped when it was too large) and carry headers `outboxd-error` and `outboxd-original-topic`."},
    {"snapshot.table", T_STR, S(snap_table), "", 0, 0, 0,
     "`outboxd snapshot`: the source table ([schema.]table, e.g. `athletes`) whose rows are re-emitted as events. It needs a one-column primary key (keyset pagination)."},
    {"snapshot.name", T_STR, S(snap_name), "", 0, 0, 0,
     "Checkpoint name in table outboxd_snapshots (default: the table name). A rerun with the same name resumes after the last acked page."},
    {"snapshot.where", T_STR, S(snap_where), "", 0, 0, 0, "Optional SQL filter over alias `t`, to reconcile only the affected aggregates."},
    {"snapshot.topic", T_STR, S(snap_topic), "", 0, 0, 0,
     "Optional topic override (e.g. a compacted snapshot topic). Default: topic.template with snapshot.aggregate_type."},
    {"snapshot.aggregate_type", T_STR, S(snap_aggregate_type), "", 0, 0, 0, "Aggregate type of the events (default: the table name)."},
    {"snapshot.version_column", T_STR, S(snap_version_column), "version", 0, 0, 0,
     "Column with the row's aggregate version; it must increase with every change, as the outbox rows' aggregate_version does."},
    {"snapshot.columns", T_STR, S(snap_columns), "", 0, 0, 0,
     "Payload as a JSON object of these comma-separated columns. Default: the whole row (to_jsonb)."},
    {"snapshot.payload_sql", T_STR, S(snap_payload_sql), "", 0, 0, 0,
     "Payload as an SQL expression over alias `t` returning json/jsonb (wins over snapshot.columns), to match the live events' payload shape."},
    {"snapshot.event_type", T_STR, S(snap_event_type), "snapshot", 0, 0, 0, "Event type of snapshot events (Kafka header `type`)."},
    {"snapshot.page_size", T_INT, S(snap_page_size), "1000", 1, 1000000, 0,
     "Rows per page; each page is acked by Kafka before its checkpoint moves, so a resumed snapshot re-sends at most one page."},
    {"snapshot.rate_limit", T_INT, S(snap_rate_limit), "0", 0, 100000000, 0, "Rows per second at most (0: as fast as Kafka acks)."},
    {"signal.table", T_STR, S(signal_table), "outboxd_signals", 0, 0, 0,
     "Table (in outbox.schema) whose INSERTs, read from the slot in commit order, start a snapshot inside `outboxd run`: `INSERT INTO outboxd_signals(type, data) VALUES ('snapshot', '{\"table\": \"athletes\", \"filter\": {\"column\": \"country\", \"op\": \"=\", \"value\": \"GB\"}}')`. A signal carries no SQL (docs/snapshot.md). Only its owner should be able to INSERT (`outboxd doctor` checks). Empty disables."},
    /* signal.allowed_tables: src/relay/signals.c */
    {"signal.allowed_tables", T_STR, S(signal_allowed_tables), "", 0, 0, 0,
     "Comma-separated tables a signal may name in its `table` member besides snapshot.table (always allowed), each written exactly as the signal writes it ([schema.]table, as in snapshot.table). Empty: only snapshot.table. Payload shape, version column and any SQL come from snapshot.* only, never from a signal."},
    /* apply.*: `outboxd apply`, the replica side (src/apply.c, docs/apply.md). It needs none of pg.* or slot.*. */
    {"apply.conninfo", T_STR, S(apply_conninfo), "", 0, 0, 0,
     "`outboxd apply`: libpq connection string of the replica (consumer's) database. The role needs SELECT, INSERT, UPDATE on apply.table (and DELETE, plus the tombstone table, with apply.delete_types). Required for apply."},
    {"apply.topics", T_STR, S(apply_topics), "", 0, 0, 0,
     "Comma-separated topics to apply (or one `^regex`). Required for apply."},
    {"apply.group", T_STR, S(apply_group), "outboxd-apply", 0, 0, 0,
     "Kafka consumer group. Offsets are committed only after the batch's transaction committed. A new group starts from the earliest offset (bootstrap; the version guard makes replays safe)."},
    {"apply.table", T_STR, S(apply_table), "", 0, 0, 0, "Replica table ([schema.]table). Required for apply."},
    {"apply.key_column", T_STR, S(apply_key_column), "id", 0, 0, 0,
     "Replica column that holds the aggregate id (the Kafka key). Needs a primary key or unique index on exactly this column."},
    {"apply.columns", T_STR, S(apply_columns), "", 0, 0, 0,
     "Payload fields to replica columns: `column:path` pairs, comma-separated; a path is a JSON member or dotted path (`status`, `address.city`, `tags.0`). A missing field or a type mismatch makes the event poison; `column:path?` maps a missing field to NULL."},
    {"apply.event_types", T_STR, S(apply_event_types), "", 0, 0, 0,
     "Event types that upsert, comma-separated. Empty: every type not in apply.delete_types. Other types are skipped (offsets still move)."},
    {"apply.delete_types", T_STR, S(apply_delete_types), "", 0, 0, 0,
     "Event types that delete the aggregate, comma-separated. A delete writes a version-guarded tombstone (apply.tombstone_table) and removes the row, so an older event replayed later cannot bring it back."},
    {"apply.tombstone_table", T_STR, S(apply_tombstone_table), "", 0, 0, 0,
     "Tombstone table for deletes: the key column plus the three metadata columns. Default: apply.table + `_tombstones`."},
    {"apply.column.source_version", T_STR, S(apply_col_version), "source_version", 0, 0, 0,
     "Replica column with the aggregate version of the row (integer): the guard."},
    {"apply.column.source_updated_at", T_STR, S(apply_col_source_updated_at), "source_updated_at", 0, 0, 0,
     "Replica column with the source's time of the change (timestamptz), see apply.source_time."},
    {"apply.column.replicated_at", T_STR, S(apply_col_replicated_at), "replicated_at", 0, 0, 0,
     "Replica column set to now() when a row is written (timestamptz)."},
    {"apply.source_time", T_STR, S(apply_source_time), "commit_time", 0, 0, 0,
     "What goes into source_updated_at: `commit_time` (the producer's commit, from the envelope), `occurred_at`, or `payload:<path>` (a timestamp string in the payload, e.g. `payload:updatedAt`)."},
    {"apply.batch_max", T_INT, S(apply_batch_max), "2000", 1, 100000, 0,
     "Events per replica transaction at most."},
    {"apply.batch_wait_ms", T_INT, S(apply_batch_wait_ms), "50", 0, 60000, 0,
     "After a batch's first event, how long to wait for more before writing it."},
    {"apply.poison.policy", T_STR, S(apply_poison_policy), "halt", 0, 0, 0,
     "An event that cannot become a row (undecodable envelope, no version, missing field, type mismatch, a value the database refuses): `halt` commits everything before it and exits 3 naming topic, partition and offset; `dead-letter` publishes it to apply.poison.dlq_topic and goes on."},
    {"apply.poison.dlq_topic", T_STR, S(apply_dlq_topic), "outboxd.apply.deadletter", 0, 0, 0,
     "Dead-letter topic for apply.poison.policy = dead-letter: the original record with headers `outboxd-error`, `outboxd-original-topic`, `outboxd-original-partition`, `outboxd-original-offset`."},
    /* end apply.* */
    {"log.level", T_STR, S(log_level), "info", 0, 0, 0, "debug, info, warn or error."},
    {"log.format", T_STR, S(log_format), "auto", 0, 0, 0,
     "auto (JSON when stderr is not a terminal), json or text."},
};
#undef S
#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

/* Defaults outboxd applies to librdkafka unless the config sets them. */
static const struct { const char *key, *value, *why; } kafka_defaults[] = {
    {"enable.idempotence", "true", "acks=all, ordered retries, no duplicates within a producer session"},
    {"partitioner", "murmur2_random", "same partition for a key as Java clients (Debezium, Kafka Streams)"},
    {"linger.ms", "5", "batches under load: p99 ~6.5 ms at 10k events/s; 1 halves that but costs ~40 % more CPU per event at 30k/s (docs/benchmarks.md)"},
    {"compression.type", "lz4", "cheap on CPU, shrinks JSON payloads"},
    /* Each queued message costs ~700 B of heap besides its envelope (message,
     * 3 headers, malloc overhead), which max.kbytes does not count: with small
     * rows the count binds first. A one-transaction 1M-row drain: 20000 held
     * 14.6 MB of heap, peak RSS 30-31 MB; 10000 holds 7.6 MB, peak 21-22 MB,
     * same streaming rate in paired runs (bench/bigtxn.sh). */
    {"queue.buffering.max.messages", "10000", "bounds memory; a full queue stops reading the slot"},
    {"queue.buffering.max.kbytes", "8192", "bounds memory (8 MiB: peak RSS 28 MiB in a 200k backlog drain, same rate as 64 MiB)"},
    {"statistics.interval.ms", "5000", "broker connection states for /readyz and outboxd_kafka_brokers_up"},
};
#define N_KDEF (sizeof(kafka_defaults) / sizeof(kafka_defaults[0]))

static char **str_field(obx_config_t *cfg, const obx_opt_t *o) { return (char **)((char *)cfg + o->offset); }
static int *int_field(obx_config_t *cfg, const obx_opt_t *o) { return (int *)((char *)cfg + o->offset); }

static const obx_opt_t *find_opt(const char *key)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if (strcmp(opts[i].name, key) == 0) return &opts[i];
    return NULL;
}

static int parse_bool(const char *v, int *out)
{
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on")) *out = 1;
    else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off")) *out = 0;
    else return -1;
    return 0;
}

static int kafka_set(obx_config_t *cfg, const char *prop, const char *value)
{
    for (size_t i = 0; i < cfg->n_kafka; i++)
        if (strcmp(cfg->kafka[i].key, prop) == 0) {
            char *v = strdup(value);
            if (!v) return -1;
            free(cfg->kafka[i].value);
            cfg->kafka[i].value = v;
            return 0;
        }
    obx_kv_t *kv = realloc(cfg->kafka, (cfg->n_kafka + 1) * sizeof(*kv));
    if (!kv) return -1;
    cfg->kafka = kv;
    kv[cfg->n_kafka].key = strdup(prop);
    kv[cfg->n_kafka].value = strdup(value);
    if (!kv[cfg->n_kafka].key || !kv[cfg->n_kafka].value) {
        free(kv[cfg->n_kafka].key);
        free(kv[cfg->n_kafka].value);
        return -1;
    }
    cfg->n_kafka++;
    return 0;
}

const char *obx_config_kafka_get(const obx_config_t *cfg, const char *prop)
{
    for (size_t i = 0; i < cfg->n_kafka; i++)
        if (strcmp(cfg->kafka[i].key, prop) == 0) return cfg->kafka[i].value;
    return NULL;
}

int obx_config_set(obx_config_t *cfg, const char *key, const char *value,
                   const char *source, char *errstr, size_t errstr_size)
{
    if (strncmp(key, "kafka.", 6) == 0) {
        if (key[6] == '\0') {
            snprintf(errstr, errstr_size, "%s: empty kafka property name after \"kafka.\"", source);
            return -1;
        }
        if (kafka_set(cfg, key + 6, value) != 0) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        return 0;
    }
    const obx_opt_t *o = find_opt(key);
    if (!o) {
        snprintf(errstr, errstr_size,
                 "%s: unknown config key \"%s\"; see docs/configuration.md for the keys, "
                 "or prefix librdkafka properties with \"kafka.\"", source, key);
        return -1;
    }
    switch (o->type) {
    case T_STR: {
        char *v = strdup(value);
        if (!v) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        free(*str_field(cfg, o));
        *str_field(cfg, o) = v;
        break;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long n = strtol(value, &end, 10);
        if (errno || end == value || *end || n < o->min || n > o->max) {
            /* The value is not repeated: a config error must never print one. */
            snprintf(errstr, errstr_size, "%s: %s is not an integer in [%d, %d]", source, key, o->min, o->max);
            return -1;
        }
        *int_field(cfg, o) = (int)n;
        break;
    }
    case T_BOOL:
        if (parse_bool(value, int_field(cfg, o)) != 0) {
            snprintf(errstr, errstr_size, "%s: %s is not a boolean (true/false)", source, key);
            return -1;
        }
        break;
    }
    return 0;
}

obx_config_t *obx_config_new(void)
{
    obx_config_t *cfg = calloc(1, sizeof(*cfg));
    char err[256];
    if (!cfg) return NULL;
    for (size_t i = 0; i < N_OPTS; i++)
        if (obx_config_set(cfg, opts[i].name, opts[i].def, "default", err, sizeof(err)) != 0)
            goto fail;
    for (size_t i = 0; i < N_KDEF; i++)
        if (kafka_set(cfg, kafka_defaults[i].key, kafka_defaults[i].value) != 0) goto fail;
    return cfg;
fail:
    obx_config_destroy(cfg);
    return NULL;
}

void obx_config_destroy(obx_config_t *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < N_OPTS; i++)
        if (opts[i].type == T_STR) free(*str_field(cfg, &opts[i]));
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        free(cfg->kafka[i].key);
        free(cfg->kafka[i].value);
    }
    free(cfg->kafka);
    free(cfg);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

/* A quoted value ends at the first quote followed only by blanks or a
 * comment; an unquoted one at a `#` after whitespace (or at its start).
 * Quotes keep outer spaces and a literal " #". */
static char *value_part(char *val)
{
    if (val[0] == '"') {
        for (char *q = strchr(val + 1, '"'); q; q = strchr(q + 1, '"')) {
            char *rest = q + 1;
            while (*rest == ' ' || *rest == '\t') rest++;
            if (!*rest || *rest == '#') {
                *q = '\0';
                return val + 1;
            }
        }
    }
    for (char *p = val; *p; p++)
        if (*p == '#' && (p == val || p[-1] == ' ' || p[-1] == '\t')) {
            *p = '\0';
            break;
        }
    return trim(val);
}

int obx_config_load_file(obx_config_t *cfg, const char *path, char *errstr, size_t errstr_size)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(errstr, errstr_size, "cannot open config file %s: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    while (getline(&line, &cap, f) != -1) {
        lineno++;
        /* Editors on Windows start a UTF-8 file with an invisible BOM. */
        char *s = trim(lineno == 1 && !strncmp(line, "\xEF\xBB\xBF", 3) ? line + 3 : line);
        if (*s == '\0' || *s == '#') continue;
        char *eq = strchr(s, '=');
        char src[512];
        snprintf(src, sizeof(src), "%s:%d", path, lineno);
        if (!eq) {
            /* The line is not echoed: it may be `kafka.sasl.password: x`. */
            snprintf(errstr, errstr_size, "%s: expected \"key = value\" (the line has no \"=\")", src);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = value_part(trim(eq + 1));
        if (obx_config_set(cfg, key, val, src, errstr, errstr_size) != 0) {
            rc = -1;
            break;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

int obx_config_load_env(obx_config_t *cfg, char **envp, char *errstr, size_t errstr_size)
{
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, "OUTBOXD_", 8) != 0) continue;
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        char name[256], key[256];
        size_t n = (size_t)(eq - *e);
        if (n >= sizeof(name)) continue;
        memcpy(name, *e, n);
        name[n] = '\0';
        const char *value = eq + 1;
        char src[300];
        snprintf(src, sizeof(src), "environment %s", name);
        if (strncmp(name, "OUTBOXD_KAFKA_", 14) == 0) {
            /* librdkafka property names are dotted and have no underscores. */
            snprintf(key, sizeof(key), "kafka.%s", name + 14);
            for (char *p = key + 6; *p; p++) *p = *p == '_' ? '.' : (char)tolower((unsigned char)*p);
            if (obx_config_set(cfg, key, value, src, errstr, errstr_size) != 0) return -1;
            continue;
        }
        const obx_opt_t *match = NULL;
        for (size_t i = 0; i < N_OPTS && !match; i++) {
            char want[256];
            snprintf(want, sizeof(want), "OUTBOXD_%s", opts[i].name);
            for (char *p = want + 8; *p; p++) *p = (*p == '.') ? '_' : (char)toupper((unsigned char)*p);
            if (strcmp(want, name) == 0) match = &opts[i];
        }
        /* Kubernetes injects OUTBOXD_SERVICE_HOST, OUTBOXD_PORT_... for a Service
         * named outboxd, so unknown OUTBOXD_ variables cannot be fatal; any
         * other is most likely a typo, which must not pass in silence. */
        if (!match) {
            if (!obx_config_env_service_link(name))
                obx_warn("config", "%s is not a config key: ignored (see docs/configuration.md)", name);
            continue;
        }
        if (obx_config_set(cfg, match->name, value, src, errstr, errstr_size) != 0) return -1;
    }
    return 0;
}

/* Identifier lengths (src/relay/signals.c owner): PostgreSQL keeps 63 bytes
 * (NAMEDATALEN-1) of a name and cuts the rest with only a NOTICE, so a
 * longer name would mean another object. Mode 0: one name as written;
 * 1: names split at commas/spaces; 2: SQL names ([schema.]table lists,
 * "quoted" parts, unquoted spaces ignored); 3: apply.columns, the column
 * of each "column:path" item. */
int obx_config_check_names(const obx_config_t *cfg, char *errstr, size_t errstr_size)
{
    const struct { const char *key, *v; int mode; } ids[] = {
        {"slot.name", cfg->slot_name, 0}, {"publication.name", cfg->publication_name, 0},
        {"outbox.schema", cfg->outbox_schema, 0},
        {"outbox.table", cfg->outbox_table, 0}, {"outbox.column.id", cfg->col_id, 0},
        {"outbox.column.aggregatetype", cfg->col_aggregatetype, 0},
        {"outbox.column.aggregateid", cfg->col_aggregateid, 0}, {"outbox.column.type", cfg->col_type, 0},
        {"outbox.column.payload", cfg->col_payload, 0},
        {"outbox.column.aggregate_version", cfg->col_aggregate_version, 0},
        {"outbox.column.topic", cfg->col_topic, 0}, {"outbox.column.headers", cfg->col_headers, 0},
        {"outbox.column.occurred_at", cfg->col_occurred_at, 0}, {"signal.table", cfg->signal_table, 0},
        {"outbox.column.tracingspancontext", cfg->col_tracingspancontext, 0},
        {"snapshot.version_column", cfg->snap_version_column, 0}, {"snapshot.columns", cfg->snap_columns, 1},
        {"snapshot.table", cfg->snap_table, 2}, {"signal.allowed_tables", cfg->signal_allowed_tables, 2},
        {"apply.table", cfg->apply_table, 2}, {"apply.tombstone_table", cfg->apply_tombstone_table, 2},
        {"apply.key_column", cfg->apply_key_column, 0}, {"apply.column.source_version", cfg->apply_col_version, 0},
        {"apply.column.source_updated_at", cfg->apply_col_source_updated_at, 0},
        {"apply.column.replicated_at", cfg->apply_col_replicated_at, 0}, {"apply.columns", cfg->apply_columns, 3},
    };
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        size_t part = 0, longest = 0;
        int m = ids[i].mode, quoted = 0, skip = 0;
        for (const char *p = ids[i].v ? ids[i].v : "";; p++) {
            if (skip && *p && *p != ',') continue; /* a path of apply.columns */
            if (!*p || (m == 1 && (*p == ',' || *p == ' ')) || (m == 2 && !quoted && (*p == '.' || *p == ',')) ||
                (m == 3 && (*p == ',' || *p == ':'))) {
                longest = part > longest ? part : longest;
                part = 0;
                skip = m == 3 && *p == ':';
                if (!*p) break;
            } else if (m == 2 && *p == '"') {
                if (quoted && p[1] == '"') part++, p++;
                else quoted = !quoted;
            } else if (!(m >= 2 && !quoted && *p == ' ')) {
                part++;
            }
        }
        if (longest > 63) {
            snprintf(errstr, errstr_size,
                     "%s = \"%.70s...\": a name of %zu bytes; PostgreSQL names are at most 63 bytes "
                     "(NAMEDATALEN-1) and it would cut this one, naming another object: use a shorter name",
                     ids[i].key, ids[i].v, longest);
            return -1;
        }
    }
    return 0;
}

int obx_config_validate(const obx_config_t *cfg, char *errstr, size_t errstr_size)
{
    obx_config_t *c = (obx_config_t *)cfg;
    for (size_t i = 0; i < N_OPTS; i++) {
        if (opts[i].type == T_STR && opts[i].required && **str_field(c, &opts[i]) == '\0') {
            char env[128];
            snprintf(env, sizeof(env), "OUTBOXD_%s", opts[i].name);
            for (char *p = env + 8; *p; p++) *p = (*p == '.') ? '_' : (char)toupper((unsigned char)*p);
            snprintf(errstr, errstr_size, "missing required config key \"%s\": set it in the config file or as %s",
                     opts[i].name, env);
            return -1;
        }
    }
    const char *required_cols[] = {cfg->col_id, cfg->col_aggregatetype, cfg->col_aggregateid,
                                   cfg->col_type, cfg->col_payload};
    for (size_t i = 0; i < 5; i++)
        if (!*required_cols[i]) {
            snprintf(errstr, errstr_size, "outbox.column.* for id, aggregatetype, aggregateid, type and payload must not be empty");
            return -1;
        }
    if (!*cfg->slot_name || strspn(cfg->slot_name, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(cfg->slot_name)) {
        snprintf(errstr, errstr_size, "slot.name = \"%s\": slot names may contain only lower case letters, digits and underscores",
                 cfg->slot_name);
        return -1;
    }
    if (obx_config_check_names(cfg, errstr, errstr_size) != 0) return -1;
    const char *mp = cfg->outbox_message_prefix;
    if (!*mp || strpbrk(mp, ", \t\r\n\\") || !strcmp(mp, "outboxd") || strlen(mp) > OBX_MESSAGE_PREFIX_MAX) {
        /* wal2json's add-msg-prefixes splits at commas and spaces and keeps
         * backslashes; "outboxd" is the heartbeat's; a bound keeps the
         * option from being cut (a cut prefix filters every event away). */
        snprintf(errstr, errstr_size, "outbox.message_prefix = \"%.100s\": use a non-empty prefix of at most %d bytes "
                 "without commas, spaces or backslashes, other than the heartbeat's \"outboxd\" (default outboxd.event)",
                 mp, OBX_MESSAGE_PREFIX_MAX);
        return -1;
    }
    if (!*cfg->slot_evidence_topic) {
        /* Without it a vanished slot could be replaced silently. */
        snprintf(errstr, errstr_size, "slot.evidence_topic is empty: set a Kafka topic name (default outboxd.slots)");
        return -1;
    }
    if (strcmp(cfg->slot_failover, "auto") != 0 && strcmp(cfg->slot_failover, "on") != 0 &&
        strcmp(cfg->slot_failover, "off") != 0) {
        snprintf(errstr, errstr_size, "slot.failover = \"%s\": use auto, on or off", cfg->slot_failover);
        return -1;
    }
    obx_log_level_t lvl;
    obx_log_format_t fmt;
    if (obx_log_level_parse(cfg->log_level, &lvl) != 0) {
        snprintf(errstr, errstr_size, "log.level = \"%s\": use debug, info, warn or error", cfg->log_level);
        return -1;
    }
    if (strcmp(cfg->poison_policy, "halt") != 0 && strcmp(cfg->poison_policy, "dead-letter") != 0) {
        snprintf(errstr, errstr_size, "poison.policy = \"%s\": use halt or dead-letter", cfg->poison_policy);
        return -1;
    }
    if (strcmp(cfg->decoder, "wal2json") != 0 && strcmp(cfg->decoder, "pgoutput") != 0) {
        snprintf(errstr, errstr_size, "decoder = \"%s\": use wal2json or pgoutput", cfg->decoder);
        return -1;
    }
    if (obx_log_format_parse(cfg->log_format, &fmt) != 0) {
        snprintf(errstr, errstr_size, "log.format = \"%s\": use auto, json or text", cfg->log_format);
        return -1;
    }
    const char *part = obx_config_kafka_get(cfg, "partitioner");
    if (part && !strcmp(part, "random")) {
        snprintf(errstr, errstr_size, "kafka.partitioner = random ignores the key and breaks per-aggregate order: use murmur2_random (default)");
        return -1;
    }
    if (!obx_config_kafka_get(cfg, "bootstrap.servers")) {
        snprintf(errstr, errstr_size,
                 "missing required config key \"kafka.bootstrap.servers\": set it in the config file or as OUTBOXD_KAFKA_BOOTSTRAP_SERVERS");
        return -1;
    }
    /* Let librdkafka judge its own properties now, not at first connect. */
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char kerr[256];
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        if (rd_kafka_conf_set(kc, cfg->kafka[i].key, cfg->kafka[i].value, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
            /* librdkafka's message may quote the value. */
            if (obx_config_is_secret(cfg->kafka[i].key)) obx_scrub_value(kerr, sizeof(kerr), cfg->kafka[i].value);
            snprintf(errstr, errstr_size, "kafka.%s: %s", cfg->kafka[i].key, kerr);
            rd_kafka_conf_destroy(kc);
            return -1;
        }
    }
    rd_kafka_conf_destroy(kc);
    return obx_config_check_values(cfg, errstr, errstr_size);
}

void obx_config_print(const obx_config_t *cfg, FILE *out)
{
    obx_config_t *c = (obx_config_t *)cfg;
    for (size_t i = 0; i < N_OPTS; i++) {
        const obx_opt_t *o = &opts[i];
        if (o->type == T_STR) {
            const char *v = *str_field(c, o);
            if (o->offset == offsetof(obx_config_t, pg_conninfo) ||
                o->offset == offsetof(obx_config_t, apply_conninfo) /* apply.* */) {
                char red[1024];
                obx_conninfo_redact(v, red, sizeof(red));
                fprintf(out, "%s = %s\n", o->name, red);
            } else {
                fprintf(out, "%s = %s\n", o->name, v);
            }
        } else if (o->type == T_INT) {
            fprintf(out, "%s = %d\n", o->name, *int_field(c, o));
        } else {
            fprintf(out, "%s = %s\n", o->name, *int_field(c, o) ? "true" : "false");
        }
    }
    for (size_t i = 0; i < cfg->n_kafka; i++)
        fprintf(out, "kafka.%s = %s\n", cfg->kafka[i].key,
                obx_config_is_secret(cfg->kafka[i].key) ? "[redacted]" : cfg->kafka[i].value);
}

void obx_config_print_doc(FILE *out)
{
    fputs("# Configuration reference\n\n"
          "<!-- Generated by `outboxd config-doc` from the table in src/common/config.c (the build writes build/docs/; scripts/docs.sh updates this copy). Do not edit. -->\n\n"
          "outboxd reads `key = value` lines from the file given with `--config`. A `#` at the\n"
          "start of a line or after a space or tab starts a comment (`topic.template = x.${aggregatetype}  # per team`\n"
          "is `x.${aggregatetype}`); put a value in double quotes to keep a literal ` #` or outer spaces\n"
          "(`snapshot.where = \"note = 'a #1'\"`). Values are checked at start-up and by `outboxd doctor`\n"
          "(`topic.template` must give a legal topic name; `status.listen` a port 1-65535 on a host\n"
          "that resolves; `pg.conninfo` and `apply.conninfo` must be what libpq can parse).\n"
          "Environment variables come after the file: `OUTBOXD_` + the key in upper case with\n"
          "dots as underscores (`pg.conninfo` -> `OUTBOXD_PG_CONNINFO`). Environment wins.\n"
          "Unknown keys in the file stop outboxd with exit code 2 and the key's name;\n"
          "unknown `OUTBOXD_` variables are ignored with a warning that names them (not fatal:\n"
          "Kubernetes injects `OUTBOXD_SERVICE_HOST` and friends for a Service named outboxd,\n"
          "and those are ignored silently).\n\n"
          "librdkafka properties pass through with a `kafka.` prefix (`kafka.bootstrap.servers`),\n"
          "or as `OUTBOXD_KAFKA_` + the property with dots as underscores\n"
          "(`OUTBOXD_KAFKA_SASL_PASSWORD`). They are checked by librdkafka at start-up.\n"
          "`outboxd --print-config` prints the effective configuration with secrets redacted.\n"
          "`kafka.message.timeout.ms` defaults to 0 (never time out; Kafka down means waiting with the slot paused)\n"
          "with `exactly_once = true`, and to 300000 otherwise.\n\n"
          "| key | type | default | description |\n|---|---|---|---|\n", out);
    for (size_t i = 0; i < N_OPTS; i++) {
        const char *t = opts[i].type == T_STR ? "string" : opts[i].type == T_INT ? "int" : "bool";
        char range[64] = "";
        if (opts[i].type == T_INT) snprintf(range, sizeof(range), " Range %d..%d.", opts[i].min, opts[i].max);
        fprintf(out, "| `%s` | %s | %s%s%s | %s%s%s |\n", opts[i].name, t,
                *opts[i].def ? "`" : "", *opts[i].def ? opts[i].def : "(none)", *opts[i].def ? "`" : "",
                opts[i].required ? "**Required.** " : "", opts[i].desc, range);
    }
    fputs("| `kafka.bootstrap.servers` | string | (none) | **Required.** Kafka brokers, `host:port[,host:port]`. |\n", out);
    fputs("\n## librdkafka defaults set by outboxd\n\nOverride any of them with `kafka.<property>`.\n\n"
          "| property | value | why |\n|---|---|---|\n", out);
    for (size_t i = 0; i < N_KDEF; i++)
        fprintf(out, "| `%s` | `%s` | %s |\n", kafka_defaults[i].key, kafka_defaults[i].value, kafka_defaults[i].why);
}

int obx_config_check_key_rule(const obx_config_t *prev, const obx_config_t *next, char *errstr, size_t errstr_size)
{
    const char *pp = obx_config_kafka_get(prev, "partitioner"), *np = obx_config_kafka_get(next, "partitioner");
    pp = pp ? pp : "consistent_random";
    np = np ? np : "consistent_random";
    char change[512] = "";
    if (strcmp(prev->col_aggregateid, next->col_aggregateid) != 0)
        snprintf(change, sizeof(change), "the key column changed (outbox.column.aggregateid: %s -> %s)",
                 prev->col_aggregateid, next->col_aggregateid);
    else if (strcmp(pp, np) != 0)
        snprintf(change, sizeof(change), "the partitioner changed (kafka.partitioner: %s -> %s)", pp, np);
    if (!*change) return 0;
    if (strcmp(prev->topic_template, next->topic_template) != 0) return 0;
    snprintf(errstr, errstr_size,
             "%s but topic.template is still \"%s\": consumers would see one aggregate's events in two partitions, "
             "out of order. The key rule is part of the event schema: give the topic a new version in topic.template "
             "(e.g. \"%s.v2\") and migrate consumers, or keep the old key rule",
             change, next->topic_template, next->topic_template);
    return -1;
}

const char *obx_config_publication(const obx_config_t *cfg)
{
    return *cfg->publication_name ? cfg->publication_name : cfg->slot_name;
}
