#!/usr/bin/env bash
# Installs the Debian packages distill needs, and only those missing; silent when all are present.
#   scripts/install-deps.sh            build and test dependencies
#   scripts/install-deps.sh --bench    also PyTorch (the reference of the benchmarks) and OpenBLAS
#   scripts/install-deps.sh --fuzz     also clang 14 and its libFuzzer/sanitizer runtimes (scripts/fuzz.sh)
set -euo pipefail

packages=(build-essential cmake pkg-config libeigen3-dev libboost-dev nlohmann-json3-dev
          libxtensor-dev xtl-dev libxsimd-dev doctest-dev libomp-dev
          libcpp-httplib-dev libpcre2-dev git clang-format
          libdnnl-dev ocl-icd-opencl-dev  # optional for the library: oneDNN GEMMs and the bf16 precision of device::Cpu
          libopenmpi-dev openmpi-bin)     # optional: data-parallel runs under mpirun (distill::mpi)
if [[ "${1:-}" == "--bench" ]]; then
  # Debian's torch takes whatever BLAS the system provides; without OpenBLAS that is the slow
  # reference BLAS, which would make every ratio against PyTorch meaningless.
  packages+=(python3-torch libopenblas0-pthread)
fi
if [[ "${1:-}" == "--fuzz" ]]; then
  packages+=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "installing: ${missing[*]}"
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
