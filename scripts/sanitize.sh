#!/usr/bin/env bash
# Builds and runs the doctest suites (unit and pipeline) under sanitizers (kept out of the README's
# test command for time: each configuration is a full rebuild).
#   scripts/sanitize.sh [address|thread|all]     (default all)
#   address: AddressSanitizer + UndefinedBehaviorSanitizer, every test
#   thread:  ThreadSanitizer, the tests of the threaded parts (kernels, student, losses, training)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
mode="${1:-all}"
jobs="$(nproc)"

run_address() {
  local b=build/asan
  cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISTILL_BUILD_EXAMPLES=ON \
    -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
  cmake --build "$b" -j "$jobs" --target distill_tests distill_pipeline_tests distill_train_child
  local t
  for t in distill_tests distill_pipeline_tests; do
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 "$b/tests/$t"
  done
}

run_thread() {
  # GCC's libgomp is not TSan-instrumented: its barriers look like races. Build the threaded tests with
  # clang and its TSan-aware OpenMP runtime (libomp) instead.
  local b=build/tsan
  cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DDISTILL_BUILD_EXAMPLES=OFF \
    -DCMAKE_CXX_FLAGS="-fsanitize=thread -stdlib=libstdc++" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" >/dev/null
  cmake --build "$b" -j "$jobs" --target distill_tests distill_train_child
  # libomp itself is not instrumented: TSan must not report its internal synchronisation
  TSAN_OPTIONS=halt_on_error=1:ignore_noninstrumented_modules=1 "$b/tests/distill_tests" -tc="*kernel*,*Cpu*,*student*,*loss*,*training*" 
}

case "$mode" in
  address) run_address ;;
  thread) run_thread ;;
  all) run_address; run_thread ;;
  *) echo "usage: scripts/sanitize.sh [address|thread|all]" >&2; exit 2 ;;
esac
