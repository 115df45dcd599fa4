#!/usr/bin/env bash
# One big transaction: ROWS outbox rows committed by one INSERT ... SELECT
# generate_series while nothing reads the slot, then `outboxd run` until the
# slot confirms the commit (= Kafka acked every row). Prints the drain rate
# and outboxd's peak RSS (VmHWM, what `ps`/cgroups see). The slot holds the
# whole transaction until its COMMIT, so the relay streams ROWS rows it can
# confirm only at the very end: memory must not grow with the transaction.
# usage: bench/bigtxn.sh [ROWS] [TXN_ROWS] [PAYLOAD_BYTES]   (services must be up)
#   ROWS      default 1000000
#   TXN_ROWS  rows per transaction, default ROWS (one transaction); e.g. 1000
#             gives the same backlog as many small transactions, to compare
#   PAYLOAD_BYTES  padding in each payload, default 0 ({"n": g}, as the e2e test)
#   OBX_WRAP  command prefix for outboxd, e.g. "valgrind --tool=massif"
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
N=${1:-1000000}
TXN=${2:-$N}
PAD=${3:-0}
PORT=${OBX_PG_PORT:-55432}
APP="host=127.0.0.1 port=$PORT dbname=app user=app password=app"
REL="host=127.0.0.1 port=$PORT dbname=app user=outboxd password=outboxd"
T=bench_bigtxn
S=bench_bigtxn
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
q() { psql "$1" -qAt -v ON_ERROR_STOP=1 -c "$2"; }

q "$REL" "SELECT pg_drop_replication_slot('$S') FROM pg_replication_slots WHERE slot_name = '$S'" >/dev/null
q "$APP" "DROP TABLE IF EXISTS $T"
psql "$APP" -qAt -v ON_ERROR_STOP=1 \
    -c "$(sed "s/CREATE TABLE IF NOT EXISTS outbox (/CREATE TABLE $T (/" deploy/sql/outbox.sql)"
q "$REL" "SELECT pg_create_logical_replication_slot('$S', 'wal2json')" >/dev/null

echo "writing $N rows in transactions of $TXN (payload pad $PAD B)..."
PAYLOAD="jsonb_build_object('n', g)"
[ "$PAD" = 0 ] || PAYLOAD="jsonb_build_object('n', g, 'pad', repeat('x', $PAD))"
q "$APP" "DO \$\$ BEGIN FOR t IN 0..(($N + $TXN - 1) / $TXN - 1) LOOP
  INSERT INTO $T (aggregatetype, aggregateid, type, payload, aggregate_version)
  SELECT 'big', 'a' || (g % 1000), 'created', $PAYLOAD, g
    FROM generate_series(t * $TXN + 1, least((t + 1) * $TXN, $N)) g;
  COMMIT; END LOOP; END \$\$"
END_LSN=$(q "$REL" "SELECT pg_current_wal_lsn()")

echo "outboxd: drain until confirmed >= $END_LSN"
HTTP=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export OUTBOXD_PG_CONNINFO="$REL" OUTBOXD_SLOT_NAME=$S OUTBOXD_OUTBOX_TABLE=$T \
    OUTBOXD_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${OBX_KAFKA_PORT:-9092} OUTBOXD_LOG_FORMAT=text \
    OUTBOXD_STATUS_LISTEN=127.0.0.1:$HTTP OUTBOXD_TOPIC_TEMPLATE="bench.bigtxn.$(date +%s)"
metric() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk -v m="outboxd_$1" '$1 ~ "^"m"({|$)" {print $2}'; }
start=$(date +%s.%N)
first=
# shellcheck disable=SC2086
/usr/bin/time -f "%e %U %S %M" -o "$TMP/relay.time" ${OBX_WRAP:-} ./build/outboxd run 2>"$TMP/relay.log" &
TPID=$!
until [ "$(q "$REL" "SELECT confirmed_flush_lsn >= '$END_LSN' FROM pg_replication_slots WHERE slot_name = '$S'")" = t ]; do
    sleep 0.05
    # The server decodes (and spills) the whole transaction before its first
    # row arrives: the streaming rate starts at the first event handed to Kafka.
    [ -n "$first" ] || [ "$(metric events_published_total || echo 0)" = 0 ] || first=$(date +%s.%N)
    kill -0 $TPID 2>/dev/null || { echo "outboxd exited early:"; tail -20 "$TMP/relay.log"; exit 1; }
done
drained=$(date +%s.%N)
bp=$(metric backpressure_episodes_total || echo "?")
# outboxd itself, also under a wrapper (heaptrack runs it as a grandchild).
RPID=$TPID
while C=$(pgrep -P "$RPID" -x outboxd || pgrep -P "$RPID" | head -1) && [ -n "$C" ]; do RPID=$C; done
kill -TERM "$RPID" || true
wait $TPID || true

python3 - "$N" "$TXN" "$start" "${first:-$start}" "$drained" "$TMP/relay.time" "$bp" <<'PY'
import sys
n, txn = int(sys.argv[1]), int(sys.argv[2])
start, first, drained = (float(x) for x in sys.argv[3:6])
e, u, s, m = open(sys.argv[6]).read().split()[-4:]
od, st = drained - start, drained - first
print("| rows | rows/txn | rows/s (start to confirmed) | rows/s (first event to confirmed) | wall s | CPU s / 100k "
      "| backpressure episodes | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
print(f"| {n:,} | {txn:,} | {n / od:,.0f} | {n / st:,.0f} | {od:.2f} | {(float(u) + float(s)) / n * 1e5:.2f} "
      f"| {sys.argv[7]} | {int(m) / 1024:.1f} |")
PY
q "$REL" "SELECT pg_drop_replication_slot('$S')" >/dev/null
q "$APP" "DROP TABLE $T"
