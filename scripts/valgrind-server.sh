#!/usr/bin/env bash
# Runs a server under valgrind (memcheck), for the memory-safety check of
# the module: PAY_SERVER=scripts/valgrind-server.sh cargo test --test ...
# Valkey from the wheel is built with libc malloc, which memcheck tracks
# fully (Debian's redis-server uses jemalloc). One log per process lands in
# $PAY_VALGRIND_DIR (default target/valgrind); scripts/valgrind-check.sh sums them.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
server="${PAY_VALGRIND_SERVER:-$here/target/valkey/bin/valkey-server}"
logs="${PAY_VALGRIND_DIR:-$here/target/valgrind}"
mkdir -p "$logs"
exec valgrind --tool=memcheck --error-exitcode=99 --track-origins=no --leak-check=no \
  --suppressions="$here/scripts/valgrind.sup" --log-file="$logs/vg-%p.log" "$server" "$@"
