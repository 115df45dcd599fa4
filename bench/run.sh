#!/usr/bin/env bash
# outboxd against its own limits and against Debezium, side by side in one run on
# the same PostgreSQL and Kafka (issues 5 and 18). One command:
#
#   bench/run.sh [--rows N] [--seconds S] [--rates 1000,10000,30000] [--reps 3] [--keep-topics]
#
# Builds outboxd and the benchmark programs (bench_loadgen, bench_slot_reader,
# bench_apply_row) and the Debezium side (bench/debezium, mvn -q package),
# starts the local services if they are down, runs bench/bench.py (bench/full.py:
# drain of rows and of outbox_emit() messages on both decoders against the
# slot's decoding limit, apply against the replica's write limit, latency at
# fixed rates; everything --reps times), prints the tables, writes
# bench/results/<UTC timestamp>.json and .png, copies the plot to
# docs/img/benchmarks.png and rewrites docs/benchmarks.md from
# bench/benchmarks.md.in. About 12 minutes on 2 cores once Maven has its jars.
# Run it on a quiet machine: other work on the cores shows up as invalid steps
# (the load generator reports how late it was) and wider min-max ranges.
# Every slot, publication, table and topic of the run is dropped at the end, also
# on failure or Ctrl-C (a forgotten slot pins WAL forever).
#
#   bench/run.sh [--private] --only limit,outboxd --rounds 2 \
#       --outboxd-bin old=../wt-old/build/outboxd --outboxd-bin new=build/outboxd
#       A/B mode: two outboxd binaries (a LABEL=PATH each), alternating A B A B,
#       no Debezium; prints every run and a per-binary summary, writes
#       bench/results/<stamp>.json and leaves docs/benchmarks.md alone.
#   bench/run.sh [--private] --decoders --rows 100000
#       The backlog drain only, on both decoders: the slot reader on wal2json
#       and on pgoutput (the two limits), outboxd with decoder = wal2json and =
#       pgoutput; prints the ratios of issue 14 (no Debezium, no latency).
#   bench/run.sh --private [...]   the same on a private PostgreSQL + Kafka
#       (OBX_RUN_DIR=/tmp/obxbench-run, ports 55532 and 9192-9195), started for
#       the run and stopped after it: for a machine where tests restart the
#       shared services (tests/e2e/test_faults.py does).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ARGS="$*"
PRIVATE=
if [ "${1:-}" = "--private" ]; then
    shift
    PRIVATE=1
    export OBX_RUN_DIR=${BENCH_PRIVATE_DIR:-/tmp/obxbench-run} OBX_PG_PORT=55532 OBX_KAFKA_PORT=9192 \
        OBX_KAFKA_CONTROLLER_PORT=9193 OBX_KAFKA_PROXY_PORT=9194 OBX_KAFKA_PROXY_ADV_PORT=9195
fi
PG_PORT=${OBX_PG_PORT:-55432}
BROKERS=127.0.0.1:${OBX_KAFKA_PORT:-9092}
REL="host=127.0.0.1 port=$PG_PORT dbname=app user=outboxd password=outboxd"
APP="host=127.0.0.1 port=$PG_PORT dbname=app user=app password=app"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN_ID=obxbench_$(date +%s)
RESULTS=$ROOT/bench/results
WORK=$RESULTS/$STAMP.d
DBZ=$ROOT/bench/debezium
JAVA_CP="$DBZ/target/bench-debezium.jar:$DBZ/target/lib/*"

say() { echo "[run.sh] $*" >&2; }

# Second line of defence after bench.py's own cleanup: whatever carries this
# run's id goes, whether bench.py finished, failed or was killed.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "${BENCH_PID:-}" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    local i left
    for i in $(seq 1 25); do
        left=$(psql "$REL" -qAt -c "SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name)
                 FROM pg_replication_slots WHERE slot_name LIKE '${RUN_ID}\_%' AND NOT active) d;
                 SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '${RUN_ID}\_%'" 2>/dev/null | tail -n1) || left=?
        [ "$left" = 0 ] && break
        sleep 0.4
    done
    [ "$left" = 0 ] || say "WARNING: slots ${RUN_ID}_* still present (active?): drop them by hand"
    psql "$APP" -qAt -c "DROP PUBLICATION IF EXISTS ${RUN_ID}_pub; DROP PUBLICATION IF EXISTS ${RUN_ID}_opub; DROP TABLE IF EXISTS ${RUN_ID}_outbox" \
        >/dev/null 2>&1 || true
    # bench/apply_bench.py's tables, should it have been killed.
    psql "$APP" -qAt -c "SELECT format('DROP TABLE IF EXISTS %I', tablename) FROM pg_tables
                         WHERE tablename LIKE '${RUN_ID}\_%' AND tablename <> '${RUN_ID}_outbox'" 2>/dev/null |
        psql "$APP" -qAt >/dev/null 2>&1 || true
    if [ -n "$PRIVATE" ] && [ -n "${STARTED_PRIVATE:-}" ]; then
        scripts/services.sh down >&2 || true
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- prerequisites
command -v kcat >/dev/null || { say "kcat is missing (apt-get install kcat)"; exit 1; }
python3 -c 'import psycopg' 2>/dev/null || { say "python3 psycopg is missing (pip install psycopg)"; exit 1; }
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    say "installing matplotlib (plots)"
    pip install -q matplotlib || pip install -q --break-system-packages matplotlib
fi

# One run at a time per services directory: runs share the services, and a
# second run's cleanup or stale-object sweep would hit the first's objects.
mkdir -p "$RESULTS"
exec 9>"$RESULTS/.lock-$(echo "${OBX_RUN_DIR:-/tmp/outboxd-run}" | tr / _)"
flock -n 9 || { say "another bench/run.sh is running on these services (lock $RESULTS/.lock-*)"; exit 1; }

say "building outboxd (incremental)"
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOBX_WERROR=ON >/dev/null
cmake --build build --target outboxd bench_loadgen bench_slot_reader bench_apply_row -j"$(nproc)" >/dev/null

say "building the Debezium side (mvn -q package)"
mvn -q -B -Dstyle.color=never -f "$DBZ/pom.xml" package

if [ -n "$PRIVATE" ]; then
    say "private services in $OBX_RUN_DIR (PostgreSQL :$OBX_PG_PORT, Kafka :$OBX_KAFKA_PORT)"
    STARTED_PRIVATE=1
    scripts/services.sh up >&2
else
    scripts/services.sh status >/dev/null 2>&1 || scripts/services.sh up >&2
fi

# Leftovers of an earlier run.sh that was SIGKILLed (or lost its PostgreSQL)
# pin WAL: drop inactive slots, publications and tables of runs started more
# than an hour ago (run ids carry their start time; younger ones may be a
# concurrent run).
OLD="substring(%s from '^obxbench_([0-9]+)_')::bigint < extract(epoch from now()) - 3600"
stale=$(psql "$REL" -qAt -c "SELECT string_agg(slot_name, ' ') FROM (SELECT slot_name, pg_drop_replication_slot(slot_name)
          FROM pg_replication_slots WHERE slot_name LIKE 'obxbench\_%' AND NOT active AND ${OLD//%s/slot_name}) d")
[ -z "$stale" ] || say "dropped stale slots of earlier runs: $stale"
psql "$APP" -qAt -c "SELECT pubname FROM pg_publication WHERE pubname LIKE 'obxbench\_%' AND ${OLD//%s/pubname}
                     UNION ALL SELECT tablename FROM pg_tables WHERE tablename LIKE 'obxbench\_%' AND ${OLD//%s/tablename}" |
while read -r obj; do
    case $obj in
        *_pub)    psql "$APP" -qAt -c "DROP PUBLICATION IF EXISTS $obj" ;;
        *_outbox) psql "$APP" -qAt -c "DROP TABLE IF EXISTS $obj" ;;
    esac
    say "dropped stale $obj"
done

mkdir -p "$WORK" "$ROOT/docs/img"
say "run $STAMP (PG objects ${RUN_ID}_*, topics bench.${RUN_ID//_/-}.*); logs in ${WORK#$ROOT/}"
python3 bench/bench.py --run-id "$RUN_ID" --stamp "$STAMP" --work-dir "$WORK" \
    --json-out "$RESULTS/$STAMP.json" --pg-port "$PG_PORT" --brokers "$BROKERS" \
    --java-cp "$JAVA_CP" "$@" &
BENCH_PID=$!
wait "$BENCH_PID"
BENCH_PID=

python3 bench/report.py "$RESULTS/$STAMP.json" "$RESULTS/$STAMP.png" docs/benchmarks.md \
    --doc-png img/benchmarks.png --command "bench/run.sh${ARGS:+ $ARGS}" --pg-port "$PG_PORT" --java-cp "$JAVA_CP"
# Commit-time files are large and only for debugging a run (BENCH_KEEP_WORK=1 keeps them).
[ -n "${BENCH_KEEP_WORK:-}" ] || rm -f "$WORK"/*.commits "$WORK"/*.offsets
if [ -f "$RESULTS/$STAMP.png" ]; then
    cp "$RESULTS/$STAMP.png" docs/img/benchmarks.png
    say "results: bench/results/$STAMP.json, bench/results/$STAMP.png (= docs/img/benchmarks.png), docs/benchmarks.md"
else
    say "results (A/B mode): bench/results/$STAMP.json"
fi
