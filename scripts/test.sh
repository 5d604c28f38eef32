#!/usr/bin/env bash
# Builds and runs every test: installs missing packages, configures, builds, runs ctest.
# Usage: scripts/test.sh [build-dir]   (default build/test)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build="${1:-build/test}"
jobs="$(nproc)"
# The CUDA suite is compiled and run where a GPU is visible, for that GPU's architecture. Elsewhere it
# could only be skipped, so it is not compiled here (its nvcc time is minutes on two cores); CI proves
# it compiles with scripts/cuda-compile.sh.
gpu_arch=$(bash scripts/gpu-arch.sh)
cuda=(-DDISTILL_CUDA_TESTS=OFF)
[[ -n $gpu_arch ]] && cuda=(-DDISTILL_CUDA_TESTS=ON -DDISTILL_CUDA_ARCHITECTURES="$gpu_arch")
# Release at -O2, not CMake's -O3: measured on two cores, -O2 compiles apps/distill.cpp in 161 s
# instead of 211 and examples/quickstart.cpp in 79 s instead of 100, and the reduced quickstart then
# trains within 1.5% of -O3's time (its hot loops are explicit SIMD and oneDNN/Eigen GEMMs).
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" \
  -DDISTILL_BUILD_TESTS=ON -DDISTILL_BUILD_EXAMPLES=ON "${cuda[@]}" >/dev/null
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
