-- Roles, database and grants for outboxd. Idempotent: scripts/pg.sh runs it on
-- every start, the postgres Docker image runs it once from docker-entrypoint-initdb.d.
-- Run it as a superuser connected to any database; needs psql (\gexec, \connect).
\set ON_ERROR_STOP on

-- The relay: logs in with a replication connection (replication=database).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outboxd') THEN
    CREATE ROLE outboxd;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') THEN
    CREATE ROLE app;
  END IF;
END
$$;
-- ALTER every time so attributes are right even if the role pre-existed.
ALTER ROLE outboxd LOGIN REPLICATION PASSWORD 'outboxd';
-- The application writing the outbox: no replication rights.
ALTER ROLE app LOGIN NOREPLICATION PASSWORD 'app';

SELECT 'CREATE DATABASE app OWNER app'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'app') \gexec

-- Debian's 15.20+ builds restrict which output plugins REPLICATION roles may
-- name (GUC output_plugin_libraries); older/upstream builds lack the GUC, so
-- only set it when it exists. ALTER SYSTEM cannot run inside DO, hence \gexec.
-- It is a list GUC: write the items unquoted. SET x = 'a, b, c' would store
-- ONE element named "a, b, c" and wal2json would still be refused.
SELECT $q$ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json$q$
  FROM pg_settings
 WHERE name = 'output_plugin_libraries'
   AND setting <> 'pgoutput, test_decoding, wal2json' \gexec
SELECT pg_reload_conf();

\connect app
GRANT ALL ON SCHEMA public TO app, outboxd;
-- outboxd reads app's tables (snapshots, checks): membership covers tables
-- app owns now and later.
GRANT app TO outboxd;
-- Tables created by the superuser (tests often use it) are not app's: give
-- outboxd SELECT on those too.
ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER IN SCHEMA public GRANT SELECT ON TABLES TO outboxd;
