#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the
# end-to-end suite (official socket.io-client from npm, headless Chromium,
# real redis-server and nginx processes started by the tests on free ports),
# then the client SDK's tests.
# Installs what a fresh Debian machine lacks (as root, from Debian's packages).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: please install: ${missing[*]} (Debian packages)" >&2
    exit 1
  fi
  echo "tests/run.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --locked
cargo test --locked --workspace

cd tests/e2e
npm ci --no-audit --no-fund --loglevel=error
TIDINGS_BIN="$(cd ../.. && pwd)/target/debug/tidings" npm test

# The client SDK (clients/js): built, then tested in Node and headless
# Chromium against the same binary (its tests use tests/e2e/lib and its
# node_modules, installed above).
cd ../../clients/js
timeout 300 npm ci --no-audit --no-fund --loglevel=error
TIDINGS_BIN="$(cd ../.. && pwd)/target/debug/tidings" timeout 600 npm test
