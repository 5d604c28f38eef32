#!/usr/bin/env bash
# Builds and runs every test: installs missing packages, configures, builds, runs ctest.
# Usage: scripts/test.sh [build-dir]   (default build/test)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build="${1:-build/test}"
jobs="$(nproc)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_TESTS=ON -DDISTILL_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
