-- The article's athletes service in SQL: a domain table and, in the same
-- transaction as every change to it, an outbox row carrying the new state.
\set ON_ERROR_STOP on
CREATE TABLE IF NOT EXISTS athletes (
    id           text PRIMARY KEY,
    display_name text NOT NULL,
    country_code text NOT NULL,
    weight_class text NOT NULL,
    status       text NOT NULL DEFAULT 'active',
    version      bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- updateStatus() of the article: domain write + outbox insert, one transaction.
CREATE OR REPLACE FUNCTION athlete_update_status(p_id text, p_status text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE a athletes;
BEGIN
    UPDATE athletes SET status = p_status, version = version + 1, updated_at = now()
     WHERE id = p_id RETURNING * INTO STRICT a;
    INSERT INTO outbox (aggregatetype, aggregateid, type, aggregate_version, occurred_at, payload)
    VALUES ('athlete', a.id, 'AthleteUpdated', a.version, a.updated_at,
            jsonb_build_object('schemaVersion', 1, 'athleteId', a.id, 'displayName', a.display_name,
                               'countryCode', a.country_code, 'weightClass', a.weight_class,
                               'status', a.status, 'updatedAt', a.updated_at));
    -- The row is in the WAL now; the table itself need not keep it.
    DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE aggregateid = a.id AND aggregate_version = a.version);
    RETURN a.version;
END $$;

INSERT INTO athletes (id, display_name, country_code, weight_class)
SELECT 'ath-' || i, 'Athlete ' || i, (ARRAY['GB','BR','US','JP','PL'])[1 + i % 5],
       (ARRAY['flyweight','bantamweight','featherweight','lightweight','welterweight'])[1 + i % 5]
  FROM generate_series(1, 1000) i
ON CONFLICT DO NOTHING;
