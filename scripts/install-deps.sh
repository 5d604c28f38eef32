#!/usr/bin/env bash
# Installs the Debian packages distill needs, and only those missing; silent when all are present.
#   scripts/install-deps.sh            build and test dependencies
#   scripts/install-deps.sh --bench    also the benchmarks' references: Debian's PyTorch with OpenBLAS, and
#                                      PyTorch 2.x from PyPI (MKL, oneDNN), sacreBLEU and rouge-score in a
#                                      venv, $DISTILL_BENCH_VENV (default ~/.cache/distill/torch-venv),
#                                      found there by benchmarks/run
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
  packages+=(python3-torch libopenblas0-pthread python3-venv)
fi
if [[ "${1:-}" == "--fuzz" ]]; then
  packages+=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "${1:-}" == "--bench" ]]; then
  # The strongest PyTorch a user would install: PyPI's wheel (MKL and oneDNN inside), beside Debian's
  # 1.13, so that no ratio comes from a handicapped reference. A venv keeps it off the system Python.
  venv="${DISTILL_BENCH_VENV:-$HOME/.cache/distill/torch-venv}"
  if ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
    echo "installing PyTorch 2.x from PyPI into $venv (a few GB: PyPI's wheel brings its CUDA libraries)"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'torch>=2' numpy
  fi
  # the metrics' references (bench_metrics)
  "$venv/bin/python" -c 'import sacrebleu, rouge_score' 2>/dev/null ||
    "$venv/bin/pip" install --quiet --disable-pip-version-check sacrebleu rouge-score
fi
