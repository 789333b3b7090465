#!/usr/bin/env bash
# Sums the memcheck logs written by scripts/valgrind-server.sh and fails if
# any server process reported an error (after scripts/valgrind.sup), showing
# the first error of each such process.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
logs="${PAY_VALGRIND_DIR:-$here/target/valgrind}"
shopt -s nullglob
files=("$logs"/vg-*.log)
summaries=$(grep -l "ERROR SUMMARY" "${files[@]}" | wc -l)
echo "valgrind: ${#files[@]} server processes, ${summaries} ran to a summary"
grep -h "ERROR SUMMARY" "${files[@]}" | sed 's/^==[0-9]*== //' | sort | uniq -c
bad=$(grep -l -E "ERROR SUMMARY: [1-9]" "${files[@]}" || true)
if [ -n "$bad" ]; then
  for f in $bad; do
    echo "--- $f"
    grep -A12 -m1 -E "^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and)" "$f"
  done
  exit 1
fi
echo "no memory errors"
