-- The outbox table outboxd relays. Producers insert one row per event in the
-- same transaction as their domain change; outboxd reads the INSERTs from the
-- WAL (never with SELECT), so rows may be deleted right away, e.g. in the same
-- transaction or by a periodic cleanup job. UPDATEs and DELETEs are ignored.
--
-- The first five columns are Debezium's outbox EventRouter defaults, so a
-- table built for Debezium works unchanged. Column names are configurable
-- (outbox.column.* in docs/configuration.md).
CREATE TABLE IF NOT EXISTS outbox (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(), -- event id
    aggregatetype     text        NOT NULL,  -- topic: outbox.event.<aggregatetype> by default
    aggregateid       text        NOT NULL,  -- Kafka key: one aggregate, one partition, in order
    type              text        NOT NULL,  -- event type, e.g. AthleteUpdated
    payload           jsonb,                 -- json/jsonb, bytea or text
    aggregate_version bigint,                -- monotonic per aggregate; consumers drop older versions
    topic             text,                  -- optional: overrides the topic template for this row
    headers           jsonb,                 -- optional: {"k": "v"} become Kafka headers
    occurred_at       timestamptz NOT NULL DEFAULT now()
);

-- outboxd needs no index, trigger or replica identity: INSERTs carry every column.

-- Signals: an INSERT here (read from the slot, in commit order with the
-- stream) starts a snapshot inside the running relay, e.g.
--   INSERT INTO outboxd_signals(type, data)
--   VALUES ('snapshot', '{"table": "athletes",
--                         "filter": {"column": "country_code", "op": "=", "value": "GB"}}');
-- data carries no SQL (docs/snapshot.md); only snapshot.table and
-- signal.allowed_tables may be named. outboxd updates status (pending,
-- running, done, failed, interrupted, rejected, ignored) and counts attempts:
-- a signal whose snapshot was cut short by a crash 3 times is marked failed.
-- Only the owner should be able to INSERT here (outboxd doctor warns).
-- Upgrading an older table: ALTER TABLE outboxd_signals ADD COLUMN attempts integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS outboxd_signals (
    id         bigserial   PRIMARY KEY,
    type       text        NOT NULL,
    data       jsonb       NOT NULL DEFAULT '{}',
    status     text        NOT NULL DEFAULT 'pending',
    detail     text,
    attempts   integer     NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Snapshot checkpoints (outboxd creates it when missing and allowed to).
CREATE TABLE IF NOT EXISTS outboxd_snapshots (
    name           text        PRIMARY KEY,
    source_table   text        NOT NULL,
    filter         text,
    topic          text,
    last_key       text,
    rows_done      bigint      NOT NULL DEFAULT 0,
    rows_estimated bigint,
    status         text        NOT NULL,
    error          text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The relay's role (docs/security.md has the whole list): it reads the outbox's
-- columns at start, updates signal rows' status, and keeps snapshot
-- checkpoints. Snapshots also need SELECT on each source table, e.g.
--   GRANT SELECT ON athletes TO outboxd;
-- The role itself: CREATE ROLE outboxd LOGIN REPLICATION PASSWORD '...';
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outboxd') THEN
        -- Tables may be missing when a part of this file is applied alone,
        -- and only their owner may grant: a table outboxd created itself
        -- (outboxd_snapshots, by its first snapshot) needs no grant.
        IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = to_regclass('outbox')), 'USAGE') THEN
            GRANT SELECT ON outbox TO outboxd;
        END IF;
        IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = to_regclass('outboxd_signals')), 'USAGE') THEN
            GRANT SELECT, UPDATE ON outboxd_signals TO outboxd;
        END IF;
        IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = to_regclass('outboxd_snapshots')), 'USAGE') THEN
            GRANT SELECT, INSERT, UPDATE ON outboxd_snapshots TO outboxd;
        END IF;
    END IF;
END
$$;

-- An outbox without a table: outbox_emit() writes the event straight into
-- the WAL as one transactional logical message, inside the caller's
-- transaction (rolled back with it, decoded in commit order, nothing to
-- delete or vacuum). outboxd relays it exactly like an outbox row with the
-- same values: same key, topic rule, headers, version, envelope; rows and
-- messages of one transaction keep their order. Returns the event id.
--   SELECT outbox_emit('athlete', '42', 'AthleteUpdated', '{"name": "Ada"}', 7);
-- The message prefix must equal outboxd's outbox.message_prefix (default
-- outboxd.event); to change it, set the same value for the producers, e.g.
--   ALTER DATABASE app SET outboxd.message_prefix = 'orders.event';
-- The content is a JSON object with the row's fields; payload and headers
-- are carried as jsonb's text, aggregate_version as digits, so nothing is
-- reformatted on the way (docs/envelope.md).
CREATE OR REPLACE FUNCTION outbox_emit(aggregatetype text, aggregateid text, type text, payload jsonb,
                                       aggregate_version bigint DEFAULT NULL, topic text DEFAULT NULL,
                                       headers jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    event_id uuid := gen_random_uuid();
    prefix text := coalesce(nullif(current_setting('outboxd.message_prefix', true), ''), 'outboxd.event');
BEGIN
    -- Refuse here, in the producer's transaction, what the relay could only
    -- treat as poison after the commit (the table's NOT NULLs, bad headers or
    -- topic), and prefixes outboxd can never be configured to read.
    IF outbox_emit.aggregatetype IS NULL OR outbox_emit.aggregateid IS NULL OR outbox_emit.type IS NULL THEN
        RAISE EXCEPTION 'outbox_emit: aggregatetype, aggregateid and type must not be NULL'
            USING ERRCODE = 'not_null_violation';
    END IF;
    IF outbox_emit.headers IS NOT NULL AND (jsonb_typeof(outbox_emit.headers) <> 'object'
            OR outbox_emit.headers ?| ARRAY['id', 'type', 'content-type']) THEN
        RAISE EXCEPTION 'outbox_emit: headers must be a JSON object without the members id, type and content-type (outboxd sets those Kafka headers), not %',
            left(outbox_emit.headers::text, 200) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(outbox_emit.topic, '') <> '' AND (outbox_emit.topic !~ '^[A-Za-z0-9._-]{1,249}$'
            OR outbox_emit.topic IN ('.', '..')) THEN
        RAISE EXCEPTION 'outbox_emit: topic "%" is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)',
            left(outbox_emit.topic, 300) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF prefix = 'outboxd' OR prefix ~ '[, \t\r\n\\]' OR octet_length(prefix) > 200 THEN
        RAISE EXCEPTION 'outbox_emit: outboxd.message_prefix "%" can never match outboxd''s outbox.message_prefix (no commas, blanks or backslashes, at most 200 bytes, not the heartbeat''s "outboxd")',
            left(prefix, 300) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_logical_emit_message(
        true,
        prefix,
        json_build_object(
            'id', event_id,
            'aggregatetype', outbox_emit.aggregatetype,
            'aggregateid', outbox_emit.aggregateid,
            'type', outbox_emit.type,
            'payload', outbox_emit.payload::text,
            'aggregate_version', outbox_emit.aggregate_version::text,
            'topic', outbox_emit.topic,
            'headers', outbox_emit.headers::text,
            'occurred_at', now())::text);
    RETURN event_id;
END
$fn$;
