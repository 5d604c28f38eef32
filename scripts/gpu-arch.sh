#!/usr/bin/env bash
# Prints the CUDA architecture of the first visible GPU as CMake's CUDA_ARCHITECTURES wants it
# (compute capability 9.0 -> 90), or nothing when no GPU is visible. Sourced by the scripts that build
# the CUDA suite for the GPU they run on.
if command -v nvidia-smi >/dev/null 2>&1; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  [[ $cap =~ ^[0-9]+$ ]] && echo "$cap"
fi
exit 0
