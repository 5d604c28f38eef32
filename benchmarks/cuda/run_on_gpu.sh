#!/usr/bin/env bash
# The CUDA check for a machine with an NVIDIA GPU, in one go (< 8 minutes on 16 cores):
# configure with the CUDA device, build the parity suite and the benchmark, run the parity suite
# (every kernel, a full distillation step and a loss curve against device::Cpu), run the
# benchmark with fp32 and with tf32 GEMMs, and the PyTorch equivalent when torch sees a GPU.
# Results go to $OUT when it is set (else build/gpu/results): parity.txt, bench_fp32.json,
# bench_tf32.json, bench.txt, torch.txt, gpu.txt, configure.txt, build.txt, summary.md.
# Every step runs under a timeout cut to a global budget (BUDGET seconds, default 450), so the whole
# script ends within 8 minutes whatever hangs.
#
# Usage: benchmarks/cuda/run_on_gpu.sh [build-dir]   (default build/gpu)
# Env:   CUDA_ARCH (default: the visible GPU's, from nvidia-smi; else 90), JOBS (default nproc), QUICK=1
#        (smaller benchmark shapes).
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
build="${1:-build/gpu}"
out="${OUT:-$build/results}"
mkdir -p "$out"
arch="${CUDA_ARCH:-$(bash scripts/gpu-arch.sh)}"
arch="${arch:-90}"
jobs="${JOBS:-$(nproc)}"
export PATH="/usr/local/cuda/bin:$PATH"
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$out/summary.md"; }
budget="${BUDGET:-450}"
# limit N: N seconds, or what is left of the budget when that is less (at least 1)
limit() { local left=$(( start + budget - $(date +%s) )); (( left < 1 )) && left=1; (( left < $1 )) && echo "$left" || echo "$1"; }
: > "$out/summary.md"

log "GPU check"
{ timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; nvcc --version 2>&1 | tail -1; } \
  | tee "$out/gpu.txt"

log "configure ($build, CUDA architectures $arch)"
if ! timeout "$(limit 90)" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_ENABLE_CUDA=ON -DDISTILL_CUDA_DISTILLER_TESTS=ON -DDISTILL_CUDA_ARCHITECTURES="$arch" \
     -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" -DDISTILL_BUILD_TESTS=ON \
     -DDISTILL_BUILD_BENCHMARKS=ON -DDISTILL_BUILD_EXAMPLES=OFF > "$out/configure.txt" 2>&1; then
  log "configure FAILED (see configure.txt)"; tail -30 "$out/configure.txt"; exit 1
fi

log "build distill_cuda_tests and bench_cuda (-j$jobs)"
if ! timeout "$(limit 240)" cmake --build "$build" --target distill_cuda_tests bench_cuda -j "$jobs" > "$out/build.txt" 2>&1; then
  log "build FAILED (see build.txt)"; grep -E "error|Error" "$out/build.txt" | head -40; exit 1
fi

log "parity suite"
timeout "$(limit 150)" "$build/tests/cuda/distill_cuda_tests" --duration=true > "$out/parity.txt" 2>&1
parity=$?
tail -25 "$out/parity.txt"
log "parity suite exit code $parity (0 passed, 77 skipped: no GPU visible, 124 timed out)"

if [[ "${QUICK:-0}" == 1 ]]; then shape=(--batch 4 --context 512 --steps 5 --gen-batch 16 --gen-tokens 64); else shape=(); fi
log "benchmark, fp32 GEMMs"
timeout "$(limit 90)" "$build/benchmarks/cuda/bench_cuda" "${shape[@]}" --json "$out/bench_fp32.json" 2>&1 | tee "$out/bench.txt"
log "benchmark, tf32 GEMMs"
timeout "$(limit 75)" "$build/benchmarks/cuda/bench_cuda" "${shape[@]}" --tf32 --json "$out/bench_tf32.json" 2>&1 | tee -a "$out/bench.txt"

if timeout 30 python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "PyTorch reference (same models and step)"
  timeout "$(limit 60)" python3 benchmarks/cuda/bench_cuda_torch.py "${shape[@]}" 2>&1 | tee "$out/torch.txt"
  timeout "$(limit 45)" python3 benchmarks/cuda/bench_cuda_torch.py "${shape[@]}" --tf32 2>&1 | tee -a "$out/torch.txt"
else
  log "PyTorch with CUDA not available: no side-by-side figure" ; echo "torch with CUDA not available" > "$out/torch.txt"
fi

{ echo; echo '```'; cat "$out/bench.txt" "$out/torch.txt"; echo '```'; } >> "$out/summary.md"
log "done; results in $out"
exit $parity
