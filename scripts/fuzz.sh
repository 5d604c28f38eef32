#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, clang 14, ASan + UBSan) in build/fuzz and runs each for
# a set time, one after the other, at low priority. Crashes, hangs and OOMs land in
# build/fuzz/artifacts/<target>/; the grown corpus in build/fuzz/corpus/<target>/; a summary table
# (seconds, executions, corpus size, findings per target) in build/fuzz/summary.md.
#   scripts/fuzz.sh [seconds-per-target] [target...]      (default 60 s, every target)
# Targets: jsonl safetensors topk config checkpoint openai tokenizer hf_config hf_index
# tokenizer_config. Reproduce a finding with
#   build/fuzz/fuzz_<target> build/fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(jsonl safetensors topk config checkpoint openai tokenizer hf_config hf_index tokenizer_config)
bash scripts/install-deps.sh --fuzz

b=build/fuzz
cmake -S tests/fuzz -B "$b" -DCMAKE_CXX_COMPILER=clang++ >/dev/null
nice -n 10 cmake --build "$b" -j "${FUZZ_JOBS:-2}" --target make_seeds "${targets[@]/#/fuzz_}"
rm -rf "$b/seeds"
"$b/make_seeds" "$b/seeds"

declare -A max_len=([jsonl]=4096 [safetensors]=8192 [topk]=4096 [config]=2048 [checkpoint]=16384 [openai]=4096 [tokenizer]=65536
                  [hf_config]=4096 [hf_index]=32768 [tokenizer_config]=8192)
summary="$b/summary.md"
echo "| target | seconds | executions | exec/s | corpus | crashes/hangs/OOMs |" >"$summary"
echo "|---|---|---|---|---|---|" >>"$summary"
status=0
for t in "${targets[@]}"; do
  corpus="$b/corpus/$t" artifacts="$b/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  echo "== fuzz_$t for ${seconds}s"
  log="$b/fuzz_$t.log"
  # seeds: the committed ones (tests/fuzz/seeds: findings and hand-made inputs) and the generated ones
  seed_dirs=()
  for d in "tests/fuzz/seeds/$t" "$b/seeds/$t"; do [[ -d $d ]] && seed_dirs+=("$d"); done
  # -timeout: an input running over 10 s is a hang; -rss_limit_mb / -malloc_limit_mb: an OOM.
  # -fork: a finding is recorded and fuzzing goes on until the time is up, so one run finds several.
  set +e
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 UBSAN_OPTIONS=print_stacktrace=1 \
    nice -n 10 "$b/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len="${max_len[$t]}" -dict=tests/fuzz/json.dict -print_final_stats=1 -artifact_prefix="$artifacts/" \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    "$corpus" "${seed_dirs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  execs=${execs:-0}
  found=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
  files=$(find "$corpus" -type f | wc -l)
  echo "| $t | $seconds | $execs | $((execs / (seconds > 0 ? seconds : 1))) | $files | $found |" >>"$summary"
  echo "   executions $execs, corpus $files, findings $found (exit $rc; log $log)"
  if [[ $found -gt 0 ]]; then status=1; fi
done
cat "$summary"
exit $status
