#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, clang with ASan/UBSan, in
# build-fuzz/) and runs each for SECONDS (default 30), starting from its
# committed corpus tests/fuzz/corpus/<target>/. New inputs go to
# build-fuzz/corpus/<target>/, crashes to build-fuzz/crashes/. Fails on the
# first crash, leak, UBSan report or timeout; prints executions and coverage
# (libFuzzer's #N, cov:, ft:) per target.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 60 wal2json
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${1:-30}
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(wal2json pgoutput outbox_map headers envelope config message)

command -v clang >/dev/null || { echo "fuzz.sh: clang is missing: run scripts/install-deps.sh" >&2; exit 1; }
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DOBX_FUZZ=ON -DOBX_TESTS=OFF -DOBX_WERROR=ON >/dev/null
cmake --build build-fuzz --target fuzz -j"$(nproc)" >/dev/null

mkdir -p build-fuzz/crashes build-fuzz/logs
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
printf '%-12s %10s %8s %8s %s\n' target execs cov ft result
for t in "${TARGETS[@]}"; do
    bin=build-fuzz/fuzz_$t
    [ -x "$bin" ] || { echo "fuzz.sh: no target fuzz_$t" >&2; exit 1; }
    mkdir -p "build-fuzz/corpus/$t"
    log=build-fuzz/logs/$t.log
    rc=0
    # The first corpus dir receives new inputs; the committed one is only read.
    "$bin" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/crashes/$t-" "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
    [ -n "$execs" ] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
    if [ "$rc" -eq 0 ]; then
        printf '%-12s %10s %8s %8s %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" ok
    else
        printf '%-12s %10s %8s %8s %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "CRASH (exit $rc)"
        grep -E 'ERROR|runtime error|check failed|SUMMARY|Test unit written' "$log" | head -8 >&2 || true
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "fuzz.sh: crashes in: ${failed[*]} (logs in build-fuzz/logs/, inputs in build-fuzz/crashes/)" >&2
    exit 1
fi
