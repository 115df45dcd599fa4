-- Scratch tables for tests/unit/data/*.jsonl (see capture.sh). Never the real outbox.
DROP TABLE IF EXISTS ut_outbox, ut_outbox_bytea, ut_outbox_text, ut_outbox_num, ut_types, ut_other;
CREATE TABLE ut_outbox (
  id uuid, aggregatetype text, aggregateid text, type text, payload jsonb,
  aggregate_version bigint, topic text, headers jsonb, occurred_at timestamptz);
CREATE TABLE ut_outbox_bytea (
  id uuid, aggregatetype text, aggregateid text, type text, payload bytea,
  aggregate_version bigint, occurred_at timestamptz);
CREATE TABLE ut_outbox_text (id text, aggregatetype text, aggregateid text, type text, payload text);
CREATE TABLE ut_outbox_num (
  id uuid, aggregatetype text, aggregateid bigint, type text, payload json,
  aggregate_version numeric);
CREATE TABLE ut_types (
  id int PRIMARY KEY, t text, big bigint, num numeric, f8 float8, f4 real, i2 smallint,
  b boolean, bin bytea, j jsonb, js json, ts timestamptz, tsn timestamp, d date, arr int[]);
CREATE TABLE ut_other (x int);
-- for weird_names.jsonl (obx_w2j_escape_table against the real add-tables parser)
DROP SCHEMA IF EXISTS "ut s.ch" CASCADE;
CREATE SCHEMA "ut s.ch";
CREATE TABLE "ut s.ch"."t,a\b" (x int);
CREATE TABLE "ut s.ch"."t" (x int);
