#!/usr/bin/env bash
# Proves that the whole CUDA test suite (tests/cuda/parity.cu and distiller.cu, and nccl.cu where
# distill::nccl is offered) compiles, on a machine without a GPU, where the test command does not
# compile it (it could not run it). CI runs this after
# the test command. It fails when nvcc is missing: a CUDA suite that was not compiled is not proven.
# The architecture: the visible GPU's, else CUDA_ARCH, else 90 (H100/H200).
# Usage: scripts/cuda-compile.sh [build-dir]   (default build/cuda-compile)
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=$(command -v nvcc || true)
[[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
if [[ -z $nvcc ]]; then
  echo "cuda-compile: FAILED: nvcc not found (install the CUDA toolkit, or put nvcc on PATH)" >&2
  exit 1
fi
arch=$(bash scripts/gpu-arch.sh)
arch=${arch:-${CUDA_ARCH:-90}}
build="${1:-build/cuda-compile}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_TESTS=ON -DDISTILL_BUILD_EXAMPLES=OFF \
  -DDISTILL_CUDA_TESTS=ON -DDISTILL_CUDA_DISTILLER_TESTS=ON -DDISTILL_CUDA_ARCHITECTURES="$arch" \
  -DCMAKE_CUDA_COMPILER="$nvcc" >/dev/null
# distill_cuda_suite: the programs side by side, nccl.cu's where MPI and NCCL are found (distill::nccl)
cmake --build "$build" --target distill_cuda_suite -j "$(nproc)"
nccl="nccl.cu not compiled: distill::nccl not offered (MPI or NCCL not found)"
[[ -x $build/tests/cuda/distill_nccl_tests ]] && nccl="nccl.cu included"
echo "cuda-compile: the CUDA suite compiles (nvcc $("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), sm_$arch; $nccl)"
