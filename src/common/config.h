/* Configuration: one declarative table (config.c) is the single source of
 * truth for the file format, environment overrides, --print-config and
 * docs/configuration.md.
 *
 * Sources, later wins: built-in defaults, the file (`key = value` lines;
 * `#` at the start of a line or after whitespace starts a comment, a value
 * in double quotes keeps its ` #` and its outer spaces), then environment variables OUTBOXD_<KEY> with dots as
 * underscores (pg.conninfo -> OUTBOXD_PG_CONNINFO). librdkafka properties
 * pass through under `kafka.` (file) or OUTBOXD_KAFKA_<PROP> (env, underscores
 * become dots: OUTBOXD_KAFKA_BOOTSTRAP_SERVERS -> kafka.bootstrap.servers). */
#ifndef OBX_CONFIG_H
#define OBX_CONFIG_H

#include <stddef.h>
#include <stdio.h>


#define OBX_MESSAGE_PREFIX_MAX 200

typedef struct obx_kv_s {
    char *key;
    char *value;
} obx_kv_t;

/* All strings are owned by the config and freed by obx_config_destroy. */
typedef struct obx_config_s {
    char *pg_conninfo;
    char *slot_name;
    int slot_create;
    char *decoder;          /* "wal2json" or "pgoutput" */
    char *publication_name; /* pgoutput; "" = slot_name (obx_config_publication) */
    char *outbox_schema;
    char *outbox_table;
    char *col_id, *col_aggregatetype, *col_aggregateid, *col_type, *col_payload;
    char *col_aggregate_version, *col_topic, *col_headers, *col_occurred_at;
    char *col_tracingspancontext;
    char *outbox_message_prefix; /* at most OBX_MESSAGE_PREFIX_MAX bytes (deploy/sql/outbox.sql checks the same) */
    char *topic_template;
    int status_interval_ms;
    int shutdown_timeout_ms;
    int reconnect_backoff_max_ms;
    int poll_batch;
    char *status_listen;
    int heartbeat_interval_ms;
    int standby_retry_ms;
    int slot_poll_interval_ms;
    char *slot_evidence_topic;
    char *slot_failover; /* auto | on | off (obx_slot_failover_wanted) */
    int exactly_once;
    int dedup_scan_max;
    int dedup_clock_skew_ms;
    char *poison_policy;
    char *dlq_topic;
    /* snapshot.* (outboxd snapshot, and snapshots started by a signal) */
    char *snap_name, *snap_table, *snap_where, *snap_topic, *snap_aggregate_type, *snap_version_column;
    char *snap_columns, *snap_payload_sql, *snap_event_type;
    int snap_page_size, snap_rate_limit;
    char *signal_table;
    char *signal_allowed_tables; /* signal.allowed_tables (src/relay/signals.c) */
    /* apply.* (outboxd apply, the replica side: src/apply.c) */
    char *apply_conninfo, *apply_topics, *apply_group, *apply_table, *apply_key_column, *apply_columns;
    char *apply_event_types, *apply_delete_types, *apply_tombstone_table;
    char *apply_col_version, *apply_col_source_updated_at, *apply_col_replicated_at;
    char *apply_source_time, *apply_poison_policy, *apply_dlq_topic;
    int apply_batch_max, apply_batch_wait_ms;
    /* end apply.* */
    char *log_level;
    char *log_format;
    obx_kv_t *kafka;   /* librdkafka properties without the "kafka." prefix */
    size_t n_kafka;
} obx_config_t;

/* Returns a config holding the defaults, or NULL on allocation failure. */
obx_config_t *obx_config_new(void);
void obx_config_destroy(obx_config_t *cfg);

/* Each returns 0, or -1 with errstr naming the key, the source and the fix. */
int obx_config_set(obx_config_t *cfg, const char *key, const char *value,
                   const char *source, char *errstr, size_t errstr_size);
int obx_config_load_file(obx_config_t *cfg, const char *path, char *errstr, size_t errstr_size);
int obx_config_load_env(obx_config_t *cfg, char **envp, char *errstr, size_t errstr_size);
/* Required keys present, values in range, kafka.* accepted by librdkafka. */
int obx_config_validate(const obx_config_t *cfg, char *errstr, size_t errstr_size);
/* Values beyond type and range (config_check.c): topic.template (known
 * placeholders, a legal topic for a sample aggregate type), topic names,
 * status.listen. Called by obx_config_validate. 0 or -1 with errstr. */
int obx_config_check_values(const obx_config_t *cfg, char *errstr, size_t errstr_size);
int obx_config_check_template(const char *tmpl, char *errstr, size_t errstr_size);
/* A conninfo libpq can parse (empty is fine: required keys are checked
 * elsewhere); the error names key and never a value. 0 or -1. */
int obx_config_check_conninfo(const char *key, const char *conninfo, char *errstr, size_t errstr_size);
/* status.listen: host:port syntax, and a host getaddrinfo resolves. */
int obx_config_check_listen(const char *listen, char *errstr, size_t errstr_size);
/* 1 when name (an OUTBOXD_ variable) has the shape of what Kubernetes
 * injects for a Service: *_SERVICE_HOST, *_SERVICE_PORT*, *_PORT, *_PORT_*. */
int obx_config_env_service_link(const char *name);
/* KEY=VALUE lines read like the environment (config-check --env-file); a
 * line of another shape (YAML `KEY: value`, spaces around =) is an error. */
int obx_config_load_env_file(obx_config_t *cfg, const char *path, char *errstr, size_t errstr_size);
/* log.format from the file and OUTBOXD_LOG_FORMAT, before loading: an
 * obx_log_format_t (OBX_LOG_AUTO when unset or unreadable). */
int obx_config_peek_log_format(const char *path, char **envp);
/* Refuses identifier keys longer than PostgreSQL's 63 bytes, naming the
 * key (called by obx_config_validate and obx_apply_validate). 0 or -1. */
int obx_config_check_names(const obx_config_t *cfg, char *errstr, size_t errstr_size);

/* The partition key rule (key column, partitioner) is part of the event
 * schema: refuses (-1, errstr) a change of it that keeps the same topic
 * template. For `outboxd config-check --previous OLD`. */
int obx_config_check_key_rule(const obx_config_t *prev, const obx_config_t *next, char *errstr, size_t errstr_size);

/* decoder = pgoutput: the publication's name (publication.name, else slot.name). */
const char *obx_config_publication(const obx_config_t *cfg);

/* Looks up a kafka.* property; NULL when unset. */
const char *obx_config_kafka_get(const obx_config_t *cfg, const char *prop);

/* Effective config as `key = value` lines with secrets redacted. */
void obx_config_print(const obx_config_t *cfg, FILE *out);
/* Markdown reference generated from the table (docs/configuration.md). */
void obx_config_print_doc(FILE *out);

/* Secrets (docs/security.md): a libpq keyword is secret when libpq marks
 * it so (PQconndefaults() dispchar '*': password, sslpassword), a URI's
 * userinfo password is, and so is every librdkafka property librdkafka
 * flags sensitive (sasl.password, ssl.key.*, ssl.ca.pem,
 * ssl.keystore.password, sasl.oauthbearer.config; not sasl.username, an
 * identity like libpq's user) or whose name says password, secret,
 * passphrase, private.key, token or credential. */

/* Copies conninfo into out (libpq keyword form) with every secret keyword's
 * value replaced by [redacted]; "<unparseable conninfo>" when libpq cannot
 * parse it. For logs, doctor and --print-config. */
void obx_conninfo_redact(const char *conninfo, char *out, size_t out_size);
/* Replaces in msg (a libpq error, NUL-terminated in msg_size) the conninfo
 * text, each of its secret values and the URI password as written with
 * "***"; when libpq cannot parse conninfo, also every quoted token of msg
 * found in it (libpq quotes the part it choked on). */
void obx_conninfo_scrub(const char *conninfo, char *msg, size_t msg_size);
/* True for a config key, kafka.* property (with or without the prefix) or
 * libpq keyword that carries a secret. */
int obx_config_is_secret(const char *key);
/* Registers (obx_secret_add) every secret value of cfg: conninfo secrets
 * and secret kafka.* values, and $PGPASSWORD. Call before any thread starts. */
void obx_config_register_secrets(const obx_config_t *cfg);

#endif
