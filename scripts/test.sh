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

echo "== services"
scripts/services.sh up

echo "== end-to-end tests (real PostgreSQL 15 + wal2json, real Kafka)"
python3 -m pytest -q -p no:cacheprovider tests/e2e "$@"
