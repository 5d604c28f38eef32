#!/usr/bin/env bash
# The tests whose code paths depend on the CPU's instruction set (ctest unit: the kernels, models,
# losses and optimizers; alloc_step; precision; bf16_storage: packed weights), run as on an AVX2-only host (AVX2 +
# FMA, no AVX-512: a common cloud CPU) whatever this machine has: the programs compiled with
# -march=x86-64-v3, oneDNN capped with ONEDNN_MAX_CPU_ISA=AVX2 (so bf16 must be refused, not abort).
# CI runs it after the test command.   Usage: scripts/test-avx2.sh [build-dir]   (default build/avx2)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build="${1:-build/avx2}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_MARCH=x86-64-v3 -DDISTILL_BUILD_TESTS=ON \
  -DDISTILL_BUILD_EXAMPLES=ON -DDISTILL_CUDA_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target distill_isa_dependent_tests
ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 \
  ctest --test-dir "$build" --output-on-failure -j "$(nproc)" -L '^isa_dependent$'
