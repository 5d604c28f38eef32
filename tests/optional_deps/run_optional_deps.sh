#!/usr/bin/env bash
# An optional dependency that is missing can never fail configure: for each one, hidden in turn
# (-DCMAKE_DISABLE_FIND_PACKAGE_<Name>=ON, honoured by the pkg-config lookups too), the project
# configures with one status line saying what is skipped, builds the quickstart and the distill command
# (which carries every optional part), and `distill --version` reports the part as absent.
# Built at -O0: this tests the build, not the speed. Run by scripts/test-optional-deps.sh (CI runs it
# after the test command; ten builds of the two largest programs would take the test command past its
# time budget).
#   run_optional_deps.sh SOURCE_DIR WORK_DIR CXX_COMPILER [NAME...]      (JOBS: parallel compile jobs)
set -u
src=$1 work=$2 cxx=$3
shift 3
names=("$@")
[[ ${#names[@]} -eq 0 ]] && names=(dnnl OpenCL CPPHTTPLIB PCRE2 OpenMP MPI)
# what configure must say, and what `distill --version` must then report, per hidden dependency
declare -A status=([dnnl]="oneDNN not used \(disabled" [OpenCL]="oneDNN not used \(.*OpenCL"
                   [CPPHTTPLIB]="cpp-httplib not found" [PCRE2]="PCRE2 not found" [OpenMP]="OpenMP not found"
                   [MPI]="MPI not found")
declare -A version=([dnnl]="oneDNN no" [OpenCL]="oneDNN no" [CPPHTTPLIB]="http no" [PCRE2]="published tokenizers no"
                    [OpenMP]="OpenMP no" [MPI]="MPI no")
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
for name in "${names[@]}"; do
  b="$work/$name"
  rm -rf "$b"
  if ! log=$(cmake -S "$src" -B "$b" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS=-O0 \
               -DDISTILL_BUILD_TESTS=OFF -DDISTILL_BUILD_EXAMPLES=ON -DDISTILL_INSTALL=OFF \
               "-DCMAKE_DISABLE_FIND_PACKAGE_$name=ON" 2>&1); then
    fail "$name hidden: configure failed:"$'\n'"$log"
    continue
  fi
  line=$(grep -E "distill: .*(${status[$name]})" <<<"$log")
  [[ -n $line ]] || { fail "$name hidden: no status line matching '${status[$name]}' in:"$'\n'"$(grep 'distill:' <<<"$log")"; continue; }
  echo "$name hidden: configure:${line#--}"
  if ! out=$(cmake --build "$b" -j "${JOBS:-1}" --target quickstart distill_cli 2>&1); then
    fail "$name hidden: build failed:"$'\n'"$(grep -E 'error|Error' <<<"$out" | head -n 20)"
    continue
  fi
  v=$("$b/apps/distill" --version 2>&1)
  if grep -qE "${version[$name]}" <<<"$v"; then
    echo "ok:   $name hidden: quickstart and distill built; distill --version: $(sed -n 2p <<<"$v")"
  else
    fail "$name hidden: distill --version does not say '${version[$name]}': $v"
  fi
done
echo "$(( ${#names[@]} - failures )) passed, $failures failed"
[[ $failures -eq 0 ]]
