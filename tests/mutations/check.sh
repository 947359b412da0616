#!/usr/bin/env bash
# Keeps the mutation proofs alive (run by tests/run.sh, so by CI): each
# patch here puts a known defect back into the server (see prove.sh). For
# each one this script checks that it still applies to the current source,
# that the patched server builds, and that the hub's unit tests
# (`cargo test --lib hub::`: no sockets, no Redis, a few seconds) fail on
# it, or the tests a `Unit:` line above the patch's diff names (its
# `cargo test` arguments, e.g. `Unit: --test store streams` for a defect in
# the store, which the hub's tests never reach). A refactor that leaves a
# patch behind, or tests that stop biting, fail here.
#
# The full proof against a running server (the randomized checker, minutes
# per patch) is `bash tests/mutations/prove.sh`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

# The source as it is now, committed or not (a stash commit of the work
# tree, or HEAD when it is clean), in a scratch worktree.
snapshot=$(git stash create)
snapshot=${snapshot:-HEAD}
work=$(mktemp -d /tmp/tidings-mutants-XXXXXX)
cleanup() { git worktree remove --force "$work" >/dev/null 2>&1 || rm -rf "$work"; }
git worktree add -q --detach "$work" "$snapshot"
# The main target directory: dependencies are built once (the mutant's own
# crate lives at another path, so its library never overwrites the real
# build). Its binary does: a patch tested by integration tests (`Unit:
# --test ...`) builds the mutant's `tidings` into target/debug/tidings,
# which the end-to-end tests run next. The real one is put back at exit.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
real_bin="$CARGO_TARGET_DIR/debug/tidings"
saved_bin=""
if [ -f "$real_bin" ]; then
  saved_bin=$(mktemp /tmp/tidings-real-bin-XXXXXX)
  cp -p "$real_bin" "$saved_bin"
fi
restore() {
  cleanup
  if [ -n "$saved_bin" ]; then
    rm -f "$real_bin"
    cp -p "$saved_bin" "$real_bin"
    rm -f "$saved_bin"
  fi
}
trap restore EXIT

status=0
for patch in "$root"/tests/mutations/*.patch; do
  name=$(basename "$patch" .patch)
  git -C "$work" checkout -q -- .
  if ! git -C "$work" apply --check "$patch" 2>/dev/null; then
    echo "mutation $name: the patch no longer applies; update it to the current source" >&2
    git -C "$work" apply --check "$patch" || true
    status=1
    continue
  fi
  git -C "$work" apply "$patch"
  # The tests that must catch it (default: the hub's).
  unit=$(sed -n '/^diff --git/q; s/^Unit: *//p' "$patch" | head -1)
  read -r -a unit_args <<<"${unit:---lib hub::}"
  if ! timeout 900 cargo test --locked -q --manifest-path "$work/Cargo.toml" --no-run "${unit_args[@]}" 2>"$work/build.log"; then
    echo "mutation $name: the patched server does not build; update the patch" >&2
    tail -40 "$work/build.log" >&2
    status=1
    continue
  fi
  if timeout 300 cargo test --locked -q --manifest-path "$work/Cargo.toml" "${unit_args[@]}" >"$work/test.log" 2>&1; then
    echo "mutation $name: NOT caught: the tests (cargo test ${unit_args[*]}) pass with the defect" >&2
    status=1
    continue
  fi
  # The failures' list: one test name per line, indented by four spaces.
  failed=$(grep -E '^    [A-Za-z0-9_:]+$' "$work/test.log" | sed 's/^ *//' | sort -u | tr '\n' ' ')
  if [ -z "$failed" ]; then
    echo "mutation $name: the tests did not finish (timeout or crash): counted as caught" >&2
    tail -20 "$work/test.log" >&2
  fi
  echo "mutation $name: caught by ${failed:-a hang}"
done
exit $status
