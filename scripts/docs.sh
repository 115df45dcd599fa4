#!/usr/bin/env bash
# Updates the committed docs/configuration.md from the config table in
# src/common/config.c (the build itself writes only build/docs/).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -d build ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target docs
git --no-pager diff --stat -- docs/configuration.md || true
