#!/usr/bin/env bash
# The reduced quickstart end to end: the report's structure, and distillation beating the baseline.
#   run_quickstart_small.sh QUICKSTART_BIN CHECK_REPORT_BIN WORK_DIR
set -eu
QUICKSTART=$1 CHECK=$2 WORK=$3
rm -rf "$WORK"
"$QUICKSTART" --small --quiet --out "$WORK"
"$CHECK" "$WORK/report.json" 0.05
