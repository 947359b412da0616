#!/usr/bin/env bash
# The whole load-test harness at a hundredth of its counts, one run, every
# system (under a minute): for CI, so that the benchmark cannot rot.
# Exits non-zero if a scenario fails or delivers fewer or more payments than
# it sent (`--check`). Debug binaries; results go to target/load-smoke/, not
# to load-tests/results/. Needs redis-server and node (tests/run.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p tidings -p tidings-load
(cd load-tests/peer && npm ci --no-audit --no-fund --loglevel=error)
ulimit -n 20000 2>/dev/null || true
exec target/debug/tidings-load run --scale 0.01 --runs 1 --check \
  --tidings-bin target/debug/tidings --out target/load-smoke "$@"
