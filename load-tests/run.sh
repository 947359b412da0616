#!/usr/bin/env bash
# Runs every load scenario against Tidings and the Node socket.io peer, in
# the same run, alternating, and writes load-tests/results/ (RESULTS.md and
# latest.json). Arguments go to `tidings-load run` (e.g. --scale 0.1 for a
# quick run, --only storm, --label "what changed").
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "load-tests/run.sh: please install: ${missing[*]} (Debian packages)" >&2
    exit 1
  fi
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --release --locked -p tidings -p tidings-load
(cd load-tests/peer && npm ci --no-audit --no-fund --loglevel=error)
ulimit -n 20000 2>/dev/null || true
exec target/release/tidings-load run "$@"
