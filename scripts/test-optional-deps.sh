#!/usr/bin/env bash
# Each optional dependency (oneDNN, OpenCL, cpp-httplib, PCRE2, OpenMP, MPI) hidden in turn: configure still
# succeeds with one status line, the quickstart and the distill command build, and `distill --version`
# reports the part absent (tests/optional_deps/run_optional_deps.sh). CI runs it after the test command.
#   scripts/test-optional-deps.sh [work-dir] [NAME...]      (default build/optional-deps, every dependency)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
work="${1:-build/optional-deps}"
shift || true
JOBS="$(nproc)" bash tests/optional_deps/run_optional_deps.sh "$PWD" "$PWD/$work" "$(command -v c++)" "$@"
