#!/bin/sh
# Re-captures the wal2json lines in this directory from a live server.
# Uses its own slot (ut_capture) and scratch tables (capture_ddl.sql); never
# the slot `outboxd` or the table `outbox`.
#   PGHOST=127.0.0.1 PGPORT=55432 sh capture.sh NAME [TimeZone] [add-tables] < scenario.sql
# The scenario runs as one transaction; only its changes (and ut_* messages)
# are kept. DATESTYLE=... and BYTEA_OUTPUT=... set the
# decoding session's DateStyle and bytea_output.
# The slot must exist (as user outboxd):
#   select pg_create_logical_replication_slot('ut_capture','wal2json');
set -eu
: "${PGHOST:=127.0.0.1}" "${PGPORT:=55432}"
export PGHOST PGPORT
dir=$(dirname "$0")
name=$1 tz=${2:-UTC}
tables=${3:-public.ut_outbox,public.ut_outbox_bytea,public.ut_outbox_text,public.ut_outbox_num,public.ut_types}
xid=$(psql -U app -d app -X -Atq -v ON_ERROR_STOP=1 -1 -c "select txid_current()" -f - | sed -n 1p)
psql -U outboxd -d app -X -Atq -v ON_ERROR_STOP=1 -c "set timezone = '$tz'" -c "set datestyle = '${DATESTYLE:-ISO, MDY}'" -c "set bytea_output = '${BYTEA_OUTPUT:-hex}'" -c "
  select data from pg_logical_slot_get_changes('ut_capture', NULL, NULL,
    'format-version','2','include-xids','1','include-lsn','1','include-timestamp','1',
    'include-typmod','0','add-tables','$tables')
  where xid::text = '$xid' or data like '%\"action\":\"M\"%\"prefix\":\"ut_%'" > "$dir/$name.jsonl"
echo "$name: xid $xid, $(wc -l < "$dir/$name.jsonl") lines"
