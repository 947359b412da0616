#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the
# end-to-end suite (official socket.io-client from npm, headless Chromium,
# real redis-server, nginx and haproxy processes started by the tests on
# free ports; systemd-analyze for the shipped unit; promtool for the alert
# rules), then the client SDK's tests (Node and headless Chromium), the
# dashboard example's and the Python example's, and schemathesis against
# the OpenAPI document.
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
[ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# Syscall numbers for the systemd unit's seccomp filter (tests/e2e/lib/hardened_exec.py).
[ "$(uname -m)" != x86_64 ] || [ -f /usr/include/x86_64-linux-gnu/asm/unistd_64.h ] || missing+=(linux-libc-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3 python3-venv)
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

# The docs (seconds, no network): relative Markdown links and anchors resolve,
# every alert links its runbook section, docs/protocol.md is the contract.
node tests/docs/check.mjs

cargo build --locked
cargo test --locked --workspace
# The mutation patches still apply, build, and are caught by the hub's
# unit tests (a few seconds of tests after one build each).
timeout 1200 bash tests/mutations/check.sh

bin="$(pwd)/target/debug/tidings"
(
  cd tests/e2e
  npm ci --no-audit --no-fund --loglevel=error
  TIDINGS_BIN="$bin" npm test
)

# The client SDK (clients/js): built, then tested in Node and headless
# Chromium against the same binary (its test helpers and packages are its
# own, from its npm ci), and packed and installed as a user would.
(
  cd clients/js
  timeout 300 npm ci --no-audit --no-fund --loglevel=error
  TIDINGS_BIN="$bin" timeout 900 npm test
)

# The billing dashboard example, on the SDK built above, in Chromium.
(
  cd examples/dashboard
  timeout 300 npm ci --no-audit --no-fund --loglevel=error
  TIDINGS_BIN="$bin" timeout 300 npm test
)

# The Python example (python-socketio from PyPI, in a venv of its own).
(
  cd examples/python
  venv="${TMPDIR:-/tmp}/tidings-python-example"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  timeout 300 "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  TIDINGS_BIN="$bin" timeout 300 "$venv/bin/python" -m unittest -v test_tidings_watch
)

# The OpenAPI document against the live server: schemathesis (PyPI, in a
# venv of its own), every check, token mode and open mode.
TIDINGS_BIN="$bin" timeout 900 bash tests/openapi/run.sh
