#!/usr/bin/env bash
# README command 1: the main job end to end on this machine.
# Installs what is missing, builds, starts PostgreSQL 15 (wal2json) and Kafka,
# creates the outbox and the article's athletes service, runs outboxd, runs a
# sample producer, and shows the events arriving in Kafka, decoded. Then it
# drains a 100k-event burst and prints the relay's events/s. Second half: the
# rankings service's replica of the athletes, kept by outboxd apply.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUN=${OBX_RUN_DIR:-/tmp/outboxd-run}
PSQL_APP=(psql "host=127.0.0.1 port=${OBX_PG_PORT:-55432} dbname=app user=app password=app" -qAt -v ON_ERROR_STOP=1)
PSQL_RELAY=(psql "host=127.0.0.1 port=${OBX_PG_PORT:-55432} dbname=app user=outboxd password=outboxd" -qAt)
BURST=${BURST:-100000}
# The config file names the default ports; follow OBX_* when they differ.
export OUTBOXD_PG_CONNINFO="host=127.0.0.1 port=${OBX_PG_PORT:-55432} dbname=app user=outboxd password=outboxd"
export OUTBOXD_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${OBX_KAFKA_PORT:-9092}"

scripts/install-deps.sh
scripts/build.sh
scripts/services.sh up

echo "== outbox table and the athletes service (deploy/sql)"
"${PSQL_APP[@]}" -f deploy/sql/outbox.sql -f deploy/sql/demo-athletes.sql

echo "== outboxd run (log: $RUN/outboxd-demo.log)"
pkill -f "outboxd run --config deploy/config/outboxd.conf" 2>/dev/null || true
# A demo slot invalidated earlier (e.g. by the slot-loss test) cannot stream:
# start over with a new one, as the runbook says.
if ./build/outboxd slot status --config deploy/config/outboxd.conf 2>/dev/null | grep -q "wal_status=lost"; then
    ./build/outboxd slot drop --yes --config deploy/config/outboxd.conf
fi
OUTBOXD_LOG_FORMAT=text ./build/outboxd run --config deploy/config/outboxd.conf >"$RUN/outboxd-demo.log" 2>&1 &
RELAY=$!
trap 'kill $RELAY 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "streaming slot" "$RUN/outboxd-demo.log" && break; sleep 0.1; done
grep "streaming slot" "$RUN/outboxd-demo.log" || { cat "$RUN/outboxd-demo.log"; exit 1; }

echo "== sample producer: 10 status changes, one transaction each"
for i in $(seq 1 10); do
    st=$( ((i % 3)) && echo active || echo suspended)
    v=$("${PSQL_APP[@]}" -c "SELECT athlete_update_status('ath-$i', '$st')")
    echo "  committed athlete ath-$i status=$st version=$v"
done

echo "== events in Kafka topic outbox.event.athlete, decoded (outboxd consume)"
# A fresh consumer group reads the topic from the beginning; the newest 10
# are the ones just committed.
./build/outboxd consume --brokers "$OUTBOXD_KAFKA_BOOTSTRAP_SERVERS" --topic outbox.event.athlete --idle-exit-ms 3000 | python3 scripts/show_events.py 10

echo "== burst: $BURST events (topic outbox.event.rating) in 100 transactions, timed from commit to confirmed (= acked by Kafka)"
per=$((BURST / 100))
start_ns=$(date +%s%N)
"${PSQL_APP[@]}" -c "
DO \$\$ BEGIN
  FOR t IN 1..100 LOOP
    INSERT INTO outbox (aggregatetype, aggregateid, type, aggregate_version, payload)
    SELECT 'rating', 'ath-' || (1 + g % 1000), 'AthleteRated', g,
           jsonb_build_object('rating', g, 'note', repeat('x', 400))
      FROM generate_series((t - 1) * $per + 1, t * $per) g;
    COMMIT;
  END LOOP;
END \$\$;"
target=$("${PSQL_RELAY[@]}" -c "SELECT pg_current_wal_lsn()")
commit_ns=$(date +%s%N)
until [ "$("${PSQL_RELAY[@]}" -c "SELECT confirmed_flush_lsn >= '$target' FROM pg_replication_slots WHERE slot_name = 'outboxd'")" = t ]; do
    sleep 0.05
done
done_ns=$(date +%s%N)
python3 - "$start_ns" "$commit_ns" "$done_ns" "$BURST" <<'PY'
import sys
s, c, d, n = map(int, sys.argv[1:])
print(f"  committed in {(c - s) / 1e9:.2f} s; all {n} acked by Kafka and confirmed {(d - c) / 1e9:.2f} s after the last commit")
print(f"  end to end: {n / ((d - s) / 1e9):,.0f} events/s from first commit to last confirm")
PY
grep -E "progress|error" "$RUN/outboxd-demo.log" | tail -2 || true

# --- second half: the replica side (outboxd apply, docs/apply.md) ----------
echo "== the rankings service keeps its own copy of the athletes: outboxd apply (log: $RUN/apply-demo.log)"
# In production rankings has its own PostgreSQL; here it is a second database
# on the same server, sharing nothing with app but the event stream.
PSQL_SUPER=(psql "host=127.0.0.1 port=${OBX_PG_PORT:-55432} dbname=postgres user=postgres" -qAt -v ON_ERROR_STOP=1)
PSQL_RANK=(psql "host=127.0.0.1 port=${OBX_PG_PORT:-55432} dbname=rankings user=postgres" -qAt -v ON_ERROR_STOP=1)
[ "$("${PSQL_SUPER[@]}" -c "SELECT count(*) FROM pg_database WHERE datname = 'rankings'")" = 1 ] ||
    "${PSQL_SUPER[@]}" -c "CREATE DATABASE rankings"
"${PSQL_RANK[@]}" -f deploy/sql/demo-rankings.sql
cat >"$RUN/apply-demo.conf" <<CONF
apply.conninfo = host=127.0.0.1 port=${OBX_PG_PORT:-55432} dbname=rankings user=postgres
apply.topics = outbox.event.athlete
apply.group = rankings.athletes-replica.v1
apply.table = athletes_replica
apply.key_column = athlete_id
apply.columns = display_name:displayName, country_code:countryCode, weight_class:weightClass, status:status
apply.source_time = payload:updatedAt
kafka.bootstrap.servers = 127.0.0.1:${OBX_KAFKA_PORT:-9092}
status.listen = 127.0.0.1:${OBX_APPLY_STATUS_PORT:-8081}
log.format = text
CONF
echo "  every athlete gets an event (so the topic holds the whole slice), then apply bootstraps from the earliest offset"
"${PSQL_APP[@]}" -c "SELECT count(athlete_update_status(id, status)) FROM athletes" >/dev/null
./build/outboxd apply --config "$RUN/apply-demo.conf" >"$RUN/apply-demo.log" 2>&1 &
APPLY=$!
trap 'kill $RELAY $APPLY 2>/dev/null || true' EXIT
echo "  meanwhile the athletes service keeps changing: 5 transactions of 200 random status changes"
for t in 1 2 3 4 5; do
    "${PSQL_APP[@]}" -c "SELECT count(athlete_update_status('ath-' || (1 + (random() * 999)::int),
        (ARRAY['active', 'retired', 'suspended'])[1 + (random() * 2)::int])) FROM generate_series(1, 200)" >/dev/null
done
slice="md5(string_agg(concat_ws('|', %s, display_name, country_code, weight_class, status, %s, %s), ',' ORDER BY %s))"
src_q="SELECT count(*) || ' rows, versions ' || sum(version) || ', ' || $(printf "$slice" id version updated_at id) FROM athletes"
rep_q="SELECT count(*) || ' rows, versions ' || coalesce(sum(source_version), 0) || ', ' || $(printf "$slice" athlete_id source_version source_updated_at athlete_id) FROM athletes_replica"
src=$("${PSQL_APP[@]}" -c "$src_q")
echo "  source   athletes:         $src"
for i in $(seq 60); do
    rep=$("${PSQL_RANK[@]}" -c "$rep_q")
    echo "  replica  athletes_replica: $rep"
    [ "$rep" = "$src" ] && break
    sleep 0.5
done
[ "$rep" = "$src" ] || { echo "replica did not converge"; tail -20 "$RUN/apply-demo.log"; exit 1; }
echo "  converged: every row, every mapped column, every version and updatedAt equal (md5 over the slice)"
echo "== freshness on apply's status port (outboxd_apply_*, docs/operations.md explains the reading)"
curl -s "127.0.0.1:${OBX_APPLY_STATUS_PORT:-8081}/metrics" |
    grep -E '^outboxd_apply_(events_(applied|stale_ignored|superseded)_total|source_age_seconds|replicated_age_seconds|lag_seconds_(count|sum)|consumer_lag_messages)' |
    sed 's/^/  /'
echo "== the same from the replica table (the article's health query)"
"${PSQL_RANK[@]}" -F ' | ' -c "SELECT 'source_age_s', round(source_age_seconds, 3), 'replicated_age_s', round(replicated_age_seconds, 3), 'apply_lag_s', round(apply_lag_seconds, 3) FROM athletes_replica_health" | sed 's/^/  /'
kill -TERM $APPLY; wait $APPLY || true
tail -1 "$RUN/apply-demo.log"
# --- end of the replica side -------------------------------------------------

echo "== stopping outboxd (SIGTERM: flush Kafka, confirm, end the stream)"
kill -TERM $RELAY; wait $RELAY || true
tail -3 "$RUN/outboxd-demo.log"
trap - EXIT
echo "demo done. Services keep running: scripts/services.sh down stops them."
