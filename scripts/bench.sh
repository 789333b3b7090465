#!/usr/bin/env bash
# First throughput figures: PAY.CACHE on new keys against SET key <json> NX EX
# on the same server in the same run, 50 clients, without and with pipelining
# (16). Prints requests per second and the ratio. The machine is small and
# noisy: only the ratio means anything.
set -euo pipefail
cd "$(dirname "$0")/.."

MODULE="$PWD/target/release/libredis_pay.so"
REQUESTS="${REQUESTS:-200000}"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
DIR="$(mktemp -d)"
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --dir "$DIR" --daemonize no \
  --loadmodule "$MODULE" >"$DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

JSON='{"transaction_id":"txn_12345","user_id":67890,"status":"pending","amount":1000,"currency":"USD","timestamp":"2024-01-30T12:45:00Z"}'

rps() { # pipeline, command...
  local pipeline="$1"; shift
  redis-cli -p "$PORT" flushall >/dev/null
  redis-benchmark -p "$PORT" -c 50 -n "$REQUESTS" -P "$pipeline" -r 100000000 -q "$@" \
    | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1 | cut -d' ' -f1
}

printf '%-10s %14s %14s %8s\n' pipeline "SET NX EX/s" "PAY.CACHE/s" ratio
for P in 1 16; do
  set_rps="$(rps "$P" SET "txn:__rand_int__" "$JSON" NX EX 86400)"
  pay_rps="$(rps "$P" PAY.CACHE "txn:__rand_int__" 67890 1000 USD)"
  ratio="$(python3 -c "print(f'{$pay_rps / $set_rps:.2f}')")"
  printf '%-10s %14s %14s %8s\n' "$P" "$set_rps" "$pay_rps" "$ratio"
done
