#!/usr/bin/env bash
# Builds and runs every test: installs missing packages, configures, builds, runs ctest.
# Usage: scripts/test.sh [build-dir]   (default build/test)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build="${1:-build/test}"
jobs="$(nproc)"
# The CUDA suite is compiled and run where a GPU is visible (for one architecture; run_on_gpu.sh builds
# it for the GPU it runs on). Elsewhere it could only be skipped, so it is not compiled here: its nvcc
# time would take the command past 15 minutes on two cores; CI proves it compiles with
# scripts/cuda-compile.sh.
cuda_tests=OFF
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda_tests=ON; fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_TESTS=ON -DDISTILL_BUILD_EXAMPLES=ON \
  -DDISTILL_CUDA_TESTS="$cuda_tests" -DDISTILL_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
