#!/usr/bin/env bash
# Every C++ file the project owns is formatted (.clang-format). The file list comes from git, so outside
# a git checkout (or with no files found) this fails rather than passing on an empty list.
#   check_format.sh SOURCE_DIR CLANG_FORMAT
set -euo pipefail
cd "$1"
files=$(git ls-files '*.hpp' '*.cpp' '*.cuh' | grep -v '^single_include/') || {
  echo "format: cannot list the project's files with git (not a git checkout?)" >&2
  exit 1
}
[[ -n $files ]] || { echo "format: git lists no C++ files" >&2; exit 1; }
xargs "$2" --dry-run --Werror <<<"$files"
echo "format: $(wc -l <<<"$files") files formatted"
