#!/usr/bin/env bash
# The reduced quickstart end to end: the report's structure, and distillation beating the baseline.
#   run_quickstart_small.sh QUICKSTART_BIN CHECK_REPORT_BIN WORK_DIR [TASK MARGIN]
# TASK (default math) is any task type the quickstart runs; MARGIN (default 0.05) is in its primary
# metric's unit.
set -eu
QUICKSTART=$1 CHECK=$2 WORK=$3 TASK=${4:-math} MARGIN=${5:-0.05}
rm -rf "$WORK"
"$QUICKSTART" --task "$TASK" --small --quiet --out "$WORK"
"$CHECK" "$WORK/report.json" "$MARGIN" "$TASK"
