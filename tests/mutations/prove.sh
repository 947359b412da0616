#!/usr/bin/env bash
# Proves that the checker bites: each patch here puts a known defect back
# into the server (1: an unsubscribe racing a disconnect releases the
# subscription twice; 2: the node never catches its sockets up; 3: delivery
# waits on the turn a subscribe holds across its Redis calls; 4 and 5, the
# repeated `since` on a held trackingId, are marked `Checker: no` in their
# first line and skipped here: only the hub's unit tests repeat a
# subscribe on a held trackingId, and check.sh runs those, as is 6; 7: a
# payment stored in its trackingId's history and not in its account's
# stream, which the redis variant catches). For each, the script builds
# the patched server in a scratch worktree, runs the checker on
# consecutive seeds until one reports violations, and prints the seed and
# the violation kinds; a patch the checker does not catch within --tries
# seeds fails the script. Not part of CI (three builds, minutes of runs):
#
#   bash tests/mutations/prove.sh [--variant redis] [--seed 1] [--tries 5] [--only NAME]
#
# --only runs the patches whose file name contains NAME (e.g. --only 7-).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
variant=redis
seed=1
tries=5
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=$2; shift 2 ;;
    --variant) variant=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --tries) tries=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d /tmp/tidings-mutant-XXXXXX)
cleanup() { git -C "$root" worktree remove --force "$work" >/dev/null 2>&1 || rm -rf "$work"; }
trap cleanup EXIT
git -C "$root" worktree add -q --detach "$work" HEAD
target="${CARGO_TARGET_DIR:-/tmp/tidings-mutant-target}"

status=0
for patch in "$root"/tests/mutations/*.patch; do
  name=$(basename "$patch" .patch)
  if [ -n "$only" ] && [[ "$name" != *"$only"* ]]; then
    continue
  fi
  if head -1 "$patch" | grep -q '^Checker: no'; then
    echo "== $name: skipped ($(head -1 "$patch"))"
    continue
  fi
  git -C "$work" checkout -q -- .
  git -C "$work" apply "$patch"
  echo "== $name: building"
  CARGO_TARGET_DIR="$target" cargo build --locked -q --manifest-path "$work/Cargo.toml" --bin tidings
  caught=""
  for ((k = 0; k < tries; k++)); do
    s=$((seed + k))
    out=$(cd "$root/tests/e2e" && timeout 600 node checker/cli.mjs --bin "$target/debug/tidings" \
      --variant "$variant" --seed "$s" --examples 1 2>/dev/null) && rc=0 || rc=$?
    if [ "$rc" -ne 0 ]; then
      caught=$s
      echo "$out" | grep -E "^  [a-z-]+: [0-9]+ — " | head -12
      break
    fi
    echo "   seed $s: no violation"
  done
  if [ -n "$caught" ]; then
    echo "== $name: caught by seed $caught ($variant)"
  else
    echo "== $name: NOT caught in $tries seeds ($variant)"
    status=1
  fi
done
exit $status
