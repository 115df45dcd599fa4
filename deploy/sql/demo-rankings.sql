-- The article's rankings service: its own database holding the slice of the
-- athletes it reads, kept by `outboxd apply` from the athlete events
-- (docs/apply.md). Run it in the replica database (the demo uses `rankings`).
\set ON_ERROR_STOP on

-- The replica: the mapped columns (apply.columns) plus the three metadata
-- columns the version guard and the freshness metrics use.
CREATE TABLE IF NOT EXISTS athletes_replica (
    athlete_id        text PRIMARY KEY,          -- apply.key_column: the aggregate id
    display_name      text NOT NULL,
    country_code      text NOT NULL,
    weight_class      text NOT NULL,
    status            text NOT NULL,
    source_version    bigint NOT NULL,           -- aggregate version of the row: the guard
    source_updated_at timestamptz NOT NULL,      -- apply.source_time (here the payload's updatedAt)
    replicated_at     timestamptz NOT NULL       -- now() of the transaction that wrote the row
);

-- Deletes (apply.delete_types) leave a version-guarded tombstone here, so an
-- older event replayed later cannot bring a deleted athlete back.
CREATE TABLE IF NOT EXISTS athletes_replica_tombstones (
    athlete_id        text PRIMARY KEY,
    source_version    bigint NOT NULL,
    source_updated_at timestamptz NOT NULL,
    replicated_at     timestamptz NOT NULL
);

-- The article's health query, for people; outboxd apply exports the same
-- numbers on its status port (outboxd_apply_*).
CREATE OR REPLACE VIEW athletes_replica_health AS
SELECT extract(epoch FROM now() - max(source_updated_at))             AS source_age_seconds,
       extract(epoch FROM now() - max(replicated_at))                 AS replicated_age_seconds,
       extract(epoch FROM max(replicated_at) - max(source_updated_at)) AS apply_lag_seconds
  FROM athletes_replica;
