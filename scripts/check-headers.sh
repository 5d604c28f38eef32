#!/usr/bin/env bash
# Header hygiene (tests/hygiene/check_headers.sh): every public header compiles alone with -Werror,
# every macro distill defines starts with DISTILL_, the committed single header equals a fresh
# regeneration. It checks the source tree, not a build, and compiles each of the ~130 headers on its
# own (five minutes of CPU with g++), so it runs beside the test command rather than inside it: CI
# runs it right after.   Usage: scripts/check-headers.sh [work-dir]   (default build/hygiene)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash tests/hygiene/check_headers.sh "$PWD" "${CXX:-c++}" "$(realpath -m "${1:-build/hygiene}")"
