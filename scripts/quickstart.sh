#!/usr/bin/env bash
# The main job: installs missing packages, builds the quickstart example and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=build/quickstart
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDISTILL_BUILD_TESTS=OFF -DDISTILL_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target quickstart
"$build/examples/quickstart" "$@"
