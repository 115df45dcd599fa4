#!/usr/bin/env bash
# Configures and builds outboxd (build/) and, with --asan, an ASan/UBSan
# build of it and its unit tests (build-asan/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOBX_WERROR=ON -DOBX_TESTS=ON >/dev/null
cmake --build build -j"$(nproc)"
if [ "${1:-}" = "--asan" ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DOBX_SANITIZE=ON -DOBX_WERROR=ON -DOBX_TESTS=ON >/dev/null
    cmake --build build-asan -j"$(nproc)"
fi
