-- Docker only: creates the outbox table in database app, owned by role app,
-- from the same file the local scripts use (mounted by docker-compose.yml).
\set ON_ERROR_STOP on
\connect app
SET ROLE app;
\i /outboxd-sql/outbox.sql
