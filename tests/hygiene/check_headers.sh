#!/usr/bin/env bash
# Header hygiene (scripts/check-headers.sh runs it; CI after the test command):
#  1. every public header compiles on its own, warning-free (-Wall -Wextra -Wpedantic -Werror), with
#     clang++; the umbrella header (every header through it) with the build's compiler too;
#  2. including the umbrella header defines no macro of ours without the DISTILL_ prefix;
#  3. the committed single header equals a fresh regeneration.
# Usage: check_headers.sh <repo-root> <c++-compiler> <work-dir>
set -euo pipefail
root="$1"; cxx="$2"; work="$3"
mkdir -p "$work"
sys=(-isystem /usr/include/eigen3)
flags=(-std=c++20 -fopenmp -Wall -Wextra -Wpedantic -Werror -I"$root/include" "${sys[@]}")
status=0

# 1. self-contained headers, one compile per core at a time
cd "$root/include"
headers=$(find distill -name '*.hpp' | grep -v '/cuda' | sort)
# Each header alone with clang++ (with libstdc++), which parses them faster; the other compiler, the
# build's, on the umbrella header below (every header through it, at a fraction of the cost of each one
# alone). Without clang++, each header alone with the build's compiler, the umbrella among them.
if command -v clang++ >/dev/null; then alone=(clang++ -stdlib=libstdc++) umbrella=("$cxx"); else alone=("$cxx") umbrella=(); fi
check_one() {
  local h="$1" log="$work/$(echo "$1" | tr / _).log" extra=()
  # the oneDNN provider is compiled only with DISTILL_WITH_DNNL (distill::dnnl), where oneDNN is installed
  if [[ $h == distill/device/cpu/dnnl.hpp ]]; then
    [[ -f /usr/include/oneapi/dnnl/dnnl.hpp ]] || return 0
    extra=(-DDISTILL_WITH_DNNL)
  fi
  # the MPI communicator is compiled only with DISTILL_WITH_MPI (distill::mpi), where MPI is installed
  if [[ $h == distill/parallel/mpi.hpp ]]; then
    command -v mpicxx >/dev/null || return 0
    read -ra extra <<<"$(mpicxx --showme:compile) -DOMPI_SKIP_MPICXX -DDISTILL_WITH_MPI"
  fi
  # the NCCL communicator: with DISTILL_WITH_NCCL (distill::nccl), where MPI and the CUDA toolkit's NCCL are
  if [[ $h == distill/parallel/nccl.hpp ]]; then
    command -v mpicxx >/dev/null && [[ -f /usr/local/cuda/include/nccl.h ]] || return 0
    read -ra extra <<<"$(mpicxx --showme:compile) -isystem /usr/local/cuda/include -DOMPI_SKIP_MPICXX -DDISTILL_WITH_NCCL"
  fi
  printf '#include "%s"\n' "$h" | "${alone[@]}" -x c++ -fsyntax-only "${flags[@]}" "${extra[@]}" - >"$log" 2>&1 ||
    echo "$h (${alone[0]})"
}
failed=""
running=0
for h in $headers; do
  check_one "$h" > "$work/$(echo "$h" | tr / _).status" &
  running=$((running + 1))
  if (( running >= $(nproc) )); then wait -n || true; running=$((running - 1)); fi
done
wait
for h in $headers; do
  if [[ -s "$work/$(echo "$h" | tr / _).status" ]]; then
    echo "header does not compile on its own: $(cat "$work/$(echo "$h" | tr / _).status")"
    head -20 "$work/$(echo "$h" | tr / _).log"
    failed="$failed $h"; status=1
  fi
done
echo "self-contained headers: $(echo "$headers" | wc -w) checked with ${alone[0]}, $(echo "$failed" | wc -w) failed"
if (( ${#umbrella[@]} )); then
  for defines in "" "-DDISTILL_WITH_TEXT -DPCRE2_CODE_UNIT_WIDTH=8 -DDISTILL_WITH_HTTP"; do
    if ! printf '#include "distill/distill.hpp"\n' |
        "${umbrella[@]}" -x c++ -fsyntax-only "${flags[@]}" $defines - >"$work/umbrella.log" 2>&1; then
      echo "the umbrella header does not compile with $cxx ($defines)"; head -20 "$work/umbrella.log"; status=1
    fi
  done
  echo "umbrella header: compiled with $cxx (plain, and with the HTTP and tokenizer parts)"
fi

# 2. macro hygiene: macros defined by the umbrella minus those its third-party includes define
# (the host headers' includes; CUDA-only .cuh files are not in the umbrella; an optional library that
# is not installed here, e.g. cpp-httplib, cannot be in it either, so its header is left out)
: > "$work/thirdparty.cpp"
for h in $(grep -rhoE --include='*.hpp' '^\s*#\s*include\s*<[^>]+>' "$root/include/distill" |
           sed -E 's/^\s*#\s*include\s*//' | sort -u); do
  printf '#include %s\n' "$h" | "$cxx" -std=c++20 -fopenmp -DPCRE2_CODE_UNIT_WIDTH=8 "${sys[@]}" -E -x c++ - \
    >/dev/null 2>&1 && printf '#include %s\n' "$h" >> "$work/thirdparty.cpp"
done
# pcre2.h needs its code-unit width, which distill::text defines
"$cxx" -std=c++20 -fopenmp -DPCRE2_CODE_UNIT_WIDTH=8 "${sys[@]}" -dM -E "$work/thirdparty.cpp" | awk '{print $2}' | sed 's/(.*//' | sort -u > "$work/macros_thirdparty"
printf '#include <distill/distill.hpp>\n' > "$work/umbrella.cpp"
"$cxx" -std=c++20 -fopenmp -I"$root/include" "${sys[@]}" -dM -E "$work/umbrella.cpp" | awk '{print $2}' | sed 's/(.*//' | sort -u > "$work/macros_umbrella"
leaked=$(comm -13 "$work/macros_thirdparty" "$work/macros_umbrella" | grep -v '^DISTILL_' || true)
if [[ -n "$leaked" ]]; then
  echo "macros defined by distill without the DISTILL_ prefix:"; echo "$leaked"; status=1
else
  echo "macro hygiene: every macro distill defines starts with DISTILL_"
fi

# 3. the single header is current
bash "$root/tools/amalgamate" "$work/single.hpp"
if ! cmp -s "$work/single.hpp" "$root/single_include/distill/distill.hpp"; then
  echo "single_include/distill/distill.hpp is stale: run tools/amalgamate and commit the result"
  diff -u "$root/single_include/distill/distill.hpp" "$work/single.hpp" | head -20 || true
  status=1
else
  echo "single header: byte-identical to a fresh regeneration"
fi
exit $status
