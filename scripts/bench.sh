#!/usr/bin/env bash
# Throughput figures, each against its baseline on the same server in the same
# run, 50 clients, without and with pipelining (16):
#   PAY.CACHE on new keys        vs  SET key <json> NX EX 86400 (also with BRIEF)
#   PAY.CACHE on existing keys   vs  GET (the duplicate path, also with BRIEF)
#   PAY.CHECK on existing keys   vs  GET (also with JSON: one string, like GET)
# Prints the median requests per second of ROUNDS (3) interleaved runs and the
# ratio. The machine is small and noisy:
# only the ratios mean anything.
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

ROUNDS="${ROUNDS:-3}"

bench() { # keyspace-size pipeline command...
  local range="$1" pipeline="$2"; shift 2
  redis-benchmark -p "$PORT" -c 50 -n "$REQUESTS" -P "$pipeline" -r "$range" -q "$@" \
    | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1 | cut -d' ' -f1
}
median() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
row() { printf '%-34s %4s %12s %12s %7s\n' "$@"; }

# Each case runs ROUNDS times, interleaved with the others; the median counts.
declare -A RUNS
for P in 1 16; do
  for _ in $(seq "$ROUNDS"); do
    redis-cli -p "$PORT" flushall >/dev/null
    RUNS[set$P]+=" $(bench 100000000 "$P" SET "txn:__rand_int__" "$JSON" NX EX 86400)"
    redis-cli -p "$PORT" flushall >/dev/null
    RUNS[new$P]+=" $(bench 100000000 "$P" PAY.CACHE "txn:__rand_int__" 67890 1000 USD)"
    redis-cli -p "$PORT" flushall >/dev/null
    RUNS[brief$P]+=" $(bench 100000000 "$P" PAY.CACHE "txn:__rand_int__" 67890 1000 USD BRIEF)"
    # A fixed keyspace of 10,000 payments (and as many JSON strings) for reads.
    redis-cli -p "$PORT" flushall >/dev/null
    bench 10000 16 PAY.CACHE "txn:__rand_int__" 67890 1000 USD >/dev/null
    bench 10000 16 SET "txn:__rand_int__:json" "$JSON" >/dev/null
    RUNS[get$P]+=" $(bench 10000 "$P" GET "txn:__rand_int__:json")"
    RUNS[dup$P]+=" $(bench 10000 "$P" PAY.CACHE "txn:__rand_int__" 67890 1000 USD)"
    RUNS[dupbrief$P]+=" $(bench 10000 "$P" PAY.CACHE "txn:__rand_int__" 67890 1000 USD BRIEF)"
    RUNS[check$P]+=" $(bench 10000 "$P" PAY.CHECK "txn:__rand_int__")"
    RUNS[json$P]+=" $(bench 10000 "$P" PAY.CHECK "txn:__rand_int__" JSON)"
  done
done

row comparison pipe "baseline/s" "redis-pay/s" ratio
for P in 1 16; do
  # shellcheck disable=SC2086 # word splitting of the run lists is intended
  for pair in "PAY.CACHE new vs SET NX EX:new:set" "PAY.CACHE new BRIEF vs SET NX EX:brief:set" \
    "PAY.CACHE duplicate vs GET:dup:get" "PAY.CACHE duplicate BRIEF vs GET:dupbrief:get" \
    "PAY.CHECK vs GET:check:get" "PAY.CHECK JSON vs GET:json:get"; do
    IFS=: read -r label pay base <<<"$pair"
    b="$(median ${RUNS[$base$P]})"
    v="$(median ${RUNS[$pay$P]})"
    row "$label" "$P" "$b" "$v" "$(ratio "$v" "$b")"
  done
done
