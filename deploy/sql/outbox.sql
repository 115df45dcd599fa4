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
