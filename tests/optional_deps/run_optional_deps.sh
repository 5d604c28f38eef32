#!/usr/bin/env bash
# An optional dependency that is missing can never fail configure: for each one, hidden in turn
# (-DCMAKE_DISABLE_FIND_PACKAGE_<Name>=ON, honoured by the pkg-config lookups too), the project
# configures with one status line saying what is skipped, builds the quickstart and the distill command
# (which carries every optional part), and `distill --version` reports the part as absent.
# Built at -O0: this tests the build, not the speed. Run by scripts/test-optional-deps.sh (CI runs it
# after the test command; these builds of the two largest programs would take the test command past
# its time budget). A program that compiles and links alike in two configurations is built once (OpenCL
# hidden only takes oneDNN away, as dnnl hidden does; the quickstart differs only where OpenMP is
# hidden); the build folders run side by side, JOBS at a time, each on one core.
#   run_optional_deps.sh SOURCE_DIR WORK_DIR CXX_COMPILER [NAME...]      (JOBS: builds at once)
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
# What decides a program's bits: its compile and link lines, the build folder's name left out.
programs=(quickstart distill_cli)
declare -A target_dir=([quickstart]=examples/CMakeFiles/quickstart.dir [distill_cli]=apps/CMakeFiles/distill_cli.dir)
fingerprint() {  # fingerprint FOLDER PROGRAM
  sed "s#$1#BUILD#g" "$1/${target_dir[$2]}/flags.make" "$1/${target_dir[$2]}/link.txt" | sha256sum | cut -c1-16
}
declare -A built_by=()  # program:fingerprint -> the hidden dependency whose folder builds it
declare -A builder=()   # hidden dependency:program -> the one whose folder builds that program
declare -A targets=()   # hidden dependency -> the programs its folder builds
configured=()
for name in "${names[@]}"; do
  b="$work/$name"
  rm -rf "$b"
  if ! log=$(cmake -S "$src" -B "$b" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS=-O0 \
               -DDISTILL_BUILD_TESTS=OFF -DDISTILL_BUILD_EXAMPLES=ON -DDISTILL_INSTALL=OFF \
               "-DCMAKE_DISABLE_FIND_PACKAGE_$name=ON" 2>&1); then
    fail "$name hidden: configure failed:"$'\n'"$log"
    continue
  fi
  line=$(grep -m1 -E "distill: .*(${status[$name]})" <<<"$log")
  [[ -n $line ]] || { fail "$name hidden: no status line matching '${status[$name]}' in:"$'\n'"$(grep 'distill:' <<<"$log")"; continue; }
  echo "$name hidden: configure:${line#--}"
  for program in "${programs[@]}"; do
    key=$program:$(fingerprint "$b" $program)
    if [[ -n ${built_by[$key]:-} ]]; then
      echo "$name hidden: $program compiles and links as with ${built_by[$key]} hidden; built once, there"
    else
      built_by[$key]=$name
      targets[$name]+=" $program"
    fi
    builder[$name:$program]=${built_by[$key]}
  done
  configured+=("$name")
done
# the distinct builds, JOBS folders at a time, each on one core
declare -A pid_of=()
running=0
# the folders with two programs first: they are the long poles
order=($(for name in "${!targets[@]}"; do echo "$(wc -w <<<"${targets[$name]}") $name"; done | sort -rn | cut -d' ' -f2))
for name in "${order[@]}"; do
  if ((running >= ${JOBS:-1})); then wait -n; running=$((running - 1)); fi
  cmake --build "$work/$name" -j 1 --target ${targets[$name]} >"$work/$name.build.log" 2>&1 &
  pid_of[$name]=$!
  running=$((running + 1))
done
declare -A build_ok=()
for name in "${!pid_of[@]}"; do
  if wait "${pid_of[$name]}"; then build_ok[$name]=1; fi
done
for name in "${configured[@]}"; do
  broken=""
  for from in $(for program in "${programs[@]}"; do echo "${builder[$name:$program]}"; done | sort -u); do
    [[ -n ${build_ok[$from]:-} ]] || broken+="$(grep -E 'error|Error' "$work/$from.build.log" | head -n 20)"$'\n'
  done
  if [[ -n $broken ]]; then
    fail "$name hidden: build failed:"$'\n'"$broken"
    continue
  fi
  v=$("$work/${builder[$name:distill_cli]}/apps/distill" --version 2>&1)
  if grep -qE "${version[$name]}" <<<"$v"; then
    echo "ok:   $name hidden: quickstart and distill built; distill --version: $(sed -n 2p <<<"$v")"
  else
    fail "$name hidden: distill --version does not say '${version[$name]}': $v"
  fi
done
echo "$(( ${#names[@]} - failures )) passed, $failures failed"
[[ $failures -eq 0 ]]
