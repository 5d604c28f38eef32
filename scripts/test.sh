#!/usr/bin/env bash
# Builds and runs every test: installs missing packages, configures, builds, runs ctest.
# Usage: scripts/test.sh [build-dir]   (default build/test)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build="${1:-build/test}"
jobs="$(nproc)"
# The CUDA suite (where nvcc is found) is compiled for one architecture here: the test command proves
# that it compiles; run_on_gpu.sh builds it for the GPU it runs on.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_TESTS=ON -DDISTILL_BUILD_EXAMPLES=ON \
  -DDISTILL_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
