#!/usr/bin/env bash
# The producer's side of the three ways to write an event with a domain
# change, with pgbench (same clients, same fixed duration each):
#   row      UPDATE the aggregate + INSERT an outbox row (rows kept; cleanup later)
#   row+del  UPDATE + INSERT the outbox row + DELETE it in the same transaction
#   emit     UPDATE + SELECT outbox_emit(...) (a logical message, no table)
# Prints TPS and WAL bytes per event (pg_current_wal_lsn before/after; one
# event per transaction). Then the relay's drain rate for a backlog of N
# events written as messages vs as rows (outboxd run until the slot confirms).
# usage: bench/producer.sh [SECONDS] [CLIENTS] [DRAIN_EVENTS]   (services up, build/outboxd built)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${1:-15}
CLIENTS=${2:-8}
N=${3:-100000}
PORT=${OBX_PG_PORT:-55432}
PGBIN=/usr/lib/postgresql/15/bin
APP="host=127.0.0.1 port=$PORT dbname=app user=app password=app"
REL="host=127.0.0.1 port=$PORT dbname=app user=outboxd password=outboxd"
T=bench_pout
D=bench_pdomain
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
q() { PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X "$1" -qAt -v ON_ERROR_STOP=1 -c "$2"; }

setup() {
    q "$APP" "DROP TABLE IF EXISTS $T, $D"
    PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X "$APP" -qAt -v ON_ERROR_STOP=1 \
        -c "$(sed "s/CREATE TABLE IF NOT EXISTS outbox (/CREATE TABLE $T (/" deploy/sql/outbox.sql)" >/dev/null
    q "$APP" "CREATE TABLE $D (id int PRIMARY KEY, balance bigint NOT NULL, version bigint NOT NULL);
              INSERT INTO $D SELECT g, 0, 0 FROM generate_series(1, 10000) g"
    q "$APP" "VACUUM ANALYZE $D"
}

PAYLOAD="jsonb_build_object('id', :aid, 'balance', :delta, 'note', repeat('x', 200))"
cat >"$TMP/row.sql" <<SQL
\set aid random(1, 10000)
\set delta random(-100, 100)
BEGIN;
UPDATE $D SET balance = balance + :delta, version = version + 1 WHERE id = :aid;
INSERT INTO $T (aggregatetype, aggregateid, type, payload, aggregate_version) VALUES ('account', :aid, 'BalanceChanged', $PAYLOAD, 1);
END;
SQL
cat >"$TMP/rowdel.sql" <<SQL
\set aid random(1, 10000)
\set delta random(-100, 100)
BEGIN;
UPDATE $D SET balance = balance + :delta, version = version + 1 WHERE id = :aid;
INSERT INTO $T (aggregatetype, aggregateid, type, payload, aggregate_version) VALUES ('account', :aid, 'BalanceChanged', $PAYLOAD, 1) RETURNING id AS eid \gset
DELETE FROM $T WHERE id = ':eid'::uuid;
END;
SQL
cat >"$TMP/emit.sql" <<SQL
\set aid random(1, 10000)
\set delta random(-100, 100)
BEGIN;
UPDATE $D SET balance = balance + :delta, version = version + 1 WHERE id = :aid;
SELECT outbox_emit('account', :aid::text, 'BalanceChanged', $PAYLOAD, 1);
END;
SQL

echo "| producer transaction | TPS | WAL bytes / event |"
echo "|---|---|---|"
for kind in row rowdel emit; do
    setup
    q "$APP" "CHECKPOINT" 2>/dev/null || true
    before=$(q "$REL" "SELECT pg_current_wal_lsn()")
    "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECS" -f "$TMP/$kind.sql" "$APP" >"$TMP/$kind.out" 2>&1
    after=$(q "$REL" "SELECT pg_current_wal_lsn()")
    tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$TMP/$kind.out" | head -1)
    txns=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$TMP/$kind.out")
    bytes=$(q "$REL" "SELECT pg_wal_lsn_diff('$after', '$before')")
    name=$([ $kind = row ] && echo "domain update + outbox insert" || { [ $kind = rowdel ] && echo "domain update + outbox insert + delete" || echo "domain update + outbox_emit()"; })
    printf '| %s | %.0f | %.0f |\n' "$name" "$tps" "$(python3 -c "print($bytes / $txns)")"
done

# Drain: a backlog of N events, then outboxd until the slot confirms it.
drain() {
    local kind=$1
    setup
    q "$REL" "SELECT pg_drop_replication_slot('bench_pdrain') FROM pg_replication_slots WHERE slot_name = 'bench_pdrain'" >/dev/null
    q "$REL" "SELECT pg_create_logical_replication_slot('bench_pdrain', 'wal2json')" >/dev/null
    local write
    if [ "$kind" = rows ]; then
        write="INSERT INTO $T (aggregatetype, aggregateid, type, aggregate_version, payload)
               SELECT 'bench', 'agg-' || (g % 5000), 'Updated', g, jsonb_build_object('n', g, 'note', repeat('x', 200))
                 FROM generate_series(t * 1000, t * 1000 + 999) g;"
    else
        write="PERFORM outbox_emit('bench', 'agg-' || (g % 5000), 'Updated', jsonb_build_object('n', g, 'note', repeat('x', 200)), g)
                 FROM generate_series(t * 1000, t * 1000 + 999) g;"
    fi
    q "$APP" "DO \$\$ BEGIN FOR t IN 0..($N / 1000 - 1) LOOP $write COMMIT; END LOOP; END \$\$"
    local end_lsn start drained
    end_lsn=$(q "$REL" "SELECT pg_current_wal_lsn()")
    start=$(date +%s.%N)
    OUTBOXD_PG_CONNINFO="$REL" OUTBOXD_SLOT_NAME=bench_pdrain OUTBOXD_OUTBOX_TABLE=$T \
        OUTBOXD_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${OBX_KAFKA_PORT:-9092} OUTBOXD_LOG_FORMAT=text OUTBOXD_STATUS_LISTEN= \
        OUTBOXD_TOPIC_TEMPLATE="bench.pdrain.$kind.$(date +%s)" ./build/outboxd run 2>"$TMP/drain-$kind.log" &
    local pid=$!
    until [ "$(q "$REL" "SELECT confirmed_flush_lsn >= '$end_lsn' FROM pg_replication_slots WHERE slot_name = 'bench_pdrain'")" = t ]; do
        kill -0 $pid 2>/dev/null || { cat "$TMP/drain-$kind.log" >&2; exit 1; }
        sleep 0.02
    done
    drained=$(date +%s.%N)
    kill -TERM $pid; wait $pid || true
    q "$REL" "SELECT pg_drop_replication_slot('bench_pdrain')" >/dev/null
    printf '| %s | %s | %.0f |\n' "$kind" "$N" "$(python3 -c "print($N / ($drained - $start))")"
}
echo
echo "| backlog written as | events | outboxd drain, events/s |"
echo "|---|---|---|"
drain rows
drain messages
q "$APP" "DROP TABLE IF EXISTS $T, $D"
