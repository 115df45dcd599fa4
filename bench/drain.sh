#!/usr/bin/env bash
# Backlog drain: N outbox rows committed while nothing reads the slot, then
#   1. the decoding limit: pg_recvlogical with outboxd's wal2json options to
#      /dev/null (its own slot, created before the writes, same backlog);
#   2. outboxd run until the slot confirms the last commit (= Kafka acked all).
# Prints rows/s, CPU seconds per 100k events and peak RSS for each.
# usage: bench/drain.sh [ROWS] [PAYLOAD_BYTES]   (services must be up)
#   OBX_PERF=FILE  also record outboxd with `perf record -g` into FILE
#                  (then: perf report -i FILE --no-children)
# bench/run.sh runs the same drain next to Debezium, plus latency at fixed rates.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
N=${1:-200000}
PAD=${2:-600}
PORT=${OBX_PG_PORT:-55432}
APP="host=127.0.0.1 port=$PORT dbname=app user=app password=app"
REL="host=127.0.0.1 port=$PORT dbname=app user=outboxd password=outboxd"
T=bench_outbox
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
q() { psql "$1" -qAt -v ON_ERROR_STOP=1 -c "$2"; }

for s in bench_relay bench_recv; do
    q "$REL" "SELECT pg_drop_replication_slot('$s') FROM pg_replication_slots WHERE slot_name = '$s'" >/dev/null
done
q "$APP" "DROP TABLE IF EXISTS $T"
# The project's outbox DDL under the bench table's name (works on a fresh cluster too).
psql "$APP" -qAt -v ON_ERROR_STOP=1 \
    -c "$(sed "s/CREATE TABLE IF NOT EXISTS outbox (/CREATE TABLE $T (/" deploy/sql/outbox.sql)"
q "$REL" "SELECT pg_create_logical_replication_slot('bench_relay', 'wal2json')" >/dev/null
q "$REL" "SELECT pg_create_logical_replication_slot('bench_recv', 'wal2json')" >/dev/null

echo "writing $N rows (~$PAD B payload) in transactions of 1000..."
q "$APP" "DO \$\$ BEGIN FOR t IN 0..($N / 1000 - 1) LOOP
  INSERT INTO $T (aggregatetype, aggregateid, type, aggregate_version, payload)
  SELECT 'bench', 'agg-' || (g % 5000), 'Updated', g,
         jsonb_build_object('n', g, 'name', 'Zoë \"q\" ' || g, 'pad', repeat('x', $PAD))
    FROM generate_series(t * 1000, t * 1000 + 999) g;
  COMMIT; END LOOP; END \$\$"
END_LSN=$(q "$REL" "SELECT pg_current_wal_lsn()")

echo "decoding limit: pg_recvlogical -> /dev/null"
/usr/bin/time -f "%e %U %S %M" -o "$TMP/recv.time" \
    pg_recvlogical -d "$REL" -S bench_recv --start --endpos="$END_LSN" -f /dev/null --no-loop \
    -o format-version=2 -o include-xids=1 -o include-lsn=1 -o include-timestamp=1 -o include-typmod=0 \
    -o add-tables=public.$T

echo "outboxd: drain until confirmed >= $END_LSN"
export OUTBOXD_PG_CONNINFO="$REL" OUTBOXD_SLOT_NAME=bench_relay OUTBOXD_OUTBOX_TABLE=$T \
    OUTBOXD_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${OBX_KAFKA_PORT:-9092} OUTBOXD_LOG_FORMAT=text OUTBOXD_STATUS_LISTEN= \
    OUTBOXD_TOPIC_TEMPLATE="bench.drain.$(date +%s)"
start=$(date +%s.%N)
/usr/bin/time -f "%e %U %S %M" -o "$TMP/relay.time" ./build/outboxd run 2>"$TMP/relay.log" &
TPID=$!
if [ -n "${OBX_PERF:-}" ]; then
    for _ in $(seq 50); do RPID=$(pgrep -P $TPID) && break; sleep 0.01; done
    perf record -q -F 499 --call-graph dwarf,16384 -p "$RPID" -o "$OBX_PERF" &
    PERF_PID=$!
fi
until [ "$(q "$REL" "SELECT confirmed_flush_lsn >= '$END_LSN' FROM pg_replication_slots WHERE slot_name = 'bench_relay'")" = t ]; do
    sleep 0.02
done
drained=$(date +%s.%N)
[ -z "${PERF_PID:-}" ] || { kill -INT "$PERF_PID"; wait "$PERF_PID" || true; }
kill -TERM "$(pgrep -P $TPID)" || true
wait $TPID || true

python3 - "$N" "$start" "$drained" "$TMP/recv.time" "$TMP/relay.time" <<'PY'
import sys
n, start, drained = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
def t(p):
    e, u, s, m = open(p).read().split()[-4:]
    return float(e), float(u) + float(s), int(m)
re, rc, rm = t(sys.argv[4])
oe, oc, om = t(sys.argv[5])
od = drained - start
print(f"| system | rows/s | wall s | CPU s / 100k | peak RSS MiB |")
print(f"|---|---|---|---|---|")
print(f"| pg_recvlogical (decoding limit) | {n / re:,.0f} | {re:.2f} | {rc / n * 1e5:.2f} | {rm / 1024:.1f} |")
print(f"| outboxd (to Kafka, acked, confirmed) | {n / od:,.0f} | {od:.2f} | {oc / n * 1e5:.2f} | {om / 1024:.1f} |")
print(f"ratio outboxd / decoding limit: {re / od:.2f}")
PY
for s in bench_relay bench_recv; do q "$REL" "SELECT pg_drop_replication_slot('$s')" >/dev/null; done
q "$APP" "DROP TABLE $T"
