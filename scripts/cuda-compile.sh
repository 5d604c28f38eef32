#!/usr/bin/env bash
# Proves that the whole CUDA test suite (tests/cuda/parity.cu and distiller.cu) compiles, on a machine
# without a GPU, where the test command does not compile it (it could not run it). CI runs this after
# the test command; it needs nvcc and does nothing (exit 0, with a note) without it.
# Usage: scripts/cuda-compile.sh [build-dir]   (default build/cuda-compile)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "cuda-compile: nvcc not found; nothing to compile"
  exit 0
fi
build="${1:-build/cuda-compile}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_TESTS=ON -DDISTILL_BUILD_EXAMPLES=OFF \
  -DDISTILL_CUDA_TESTS=ON -DDISTILL_CUDA_DISTILLER_TESTS=ON -DDISTILL_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build "$build" --target distill_cuda_tests -j "$(nproc)"
echo "cuda-compile: the CUDA suite compiles"
