#!/usr/bin/env bash
# CI: every cargo-fuzz target for about a minute, in the build the fuzzers
# use (cargo fuzz's default: optimised, with debug assertions and overflow
# checks; AddressSanitizer, except engine_io: `-s none`, as in README.md),
# starting from its committed corpus in fuzz/corpus/<target>/.
#
# Fails (non-zero) when a target crashes, leaks, times out or runs out of
# memory, printing the failing input's path and base64, so the CI log is
# enough to reproduce it. New corpus entries go to a temporary directory:
# the run never writes into fuzz/corpus (checked at the end). A failing
# input also stays in fuzz/artifacts/<target>/ (not committed).
#
# Every step is bounded by `timeout`. Needs the nightly toolchain
# (`rustup toolchain install nightly`); installs cargo-fuzz if missing.
#
# Usage: bash fuzz/ci.sh [TARGET...] (default: every target). Environment:
# FUZZ_SECONDS (default 60) per target; FUZZ_SANITIZER (`none` or
# `address`) for every target instead of each one's own (CI sets `none`:
# one build for all five instead of two, about half the build time; the
# debug assertions that make an overflow panic are in both); FUZZ_ARGS, more libFuzzer flags
# (after the ones below: the last of a flag wins); CARGO_TARGET_DIR
# (default fuzz/target; engine_io builds in its nosan/ subdirectory, as in
# README.md); CARGO_BUILD_JOBS as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
CARGO_FUZZ_VERSION=0.13.2
# target, its -max_len (as in README.md) and its sanitizer.
TARGETS=(
  "ingest_body 4096 address"
  "subscribe_payload 4096 address"
  "event_id 256 address"
  "token 4096 address"
  "engine_io 4096 none"
)
if [ $# -gt 0 ]; then
  chosen=()
  for name in "$@"; do
    spec="$(printf '%s\n' "${TARGETS[@]}" | grep "^$name " || true)"
    [ -n "$spec" ] || { echo "fuzz/ci.sh: no target $name" >&2; exit 2; }
    chosen+=("$spec")
  done
  TARGETS=("${chosen[@]}")
fi

# `timeout` puts its command in a process group of its own, which a
# `timeout` around this script does not reach: run each in the background
# and pass a TERM on to it (it passes it on to its command).
child=
trap '[ -z "$child" ] || kill -TERM "$child" 2>/dev/null; exit 143' TERM INT HUP
bounded() { # timeout's arguments
  timeout "$@" &
  child=$!
  wait "$child"
}

if ! timeout 60 cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/ci.sh: the nightly Rust toolchain is needed (cargo-fuzz builds" \
    "with nightly-only flags) and \`cargo +nightly\` does not run here." >&2
  echo "fuzz/ci.sh: install it with \`rustup toolchain install nightly --profile minimal\`." >&2
  exit 1
fi
echo "fuzz/ci.sh: $(cargo +nightly --version), $(rustc +nightly --version)"

if ! timeout 60 cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/ci.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  bounded 600 cargo +nightly install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
echo "fuzz/ci.sh: $(cargo +nightly fuzz --version)"

target_dir="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
build_flags() { # sanitizer -> the same build options for `build` and `run`
  if [ "$1" = none ]; then
    echo "-s none --target-dir $target_dir/nosan"
  else
    echo "-s $1 --target-dir $target_dir"
  fi
}

work="$(mktemp -d "${TMPDIR:-/tmp}/tidings-fuzz-ci.XXXXXX")"
trap 'rm -rf "$work"' EXIT

corpus_state() { find fuzz/corpus -type f -printf '%P %s %T@\n' | sort | sha256sum; }
corpus_before="$(corpus_state)"

# Build every target once (the runs below find them up to date).
lock_before="$(sha256sum fuzz/Cargo.lock)"
build_start=$SECONDS
for spec in "${TARGETS[@]}"; do
  read -r target _ sanitizer <<<"$spec"
  sanitizer="${FUZZ_SANITIZER:-$sanitizer}"
  echo "fuzz/ci.sh: building $target ($(build_flags "$sanitizer"))"
  # shellcheck disable=SC2046
  bounded 900 cargo +nightly fuzz build $(build_flags "$sanitizer") "$target"
done
build_seconds=$((SECONDS - build_start))
echo "fuzz/ci.sh: built in $build_seconds s"
if [ "$(sha256sum fuzz/Cargo.lock)" != "$lock_before" ]; then
  echo "fuzz/ci.sh: warning: the build changed fuzz/Cargo.lock (it was stale:" \
    "a dependency of tidings changed); commit the new one"
fi

failed=()
summary=()
for spec in "${TARGETS[@]}"; do
  read -r target max_len sanitizer <<<"$spec"
  sanitizer="${FUZZ_SANITIZER:-$sanitizer}"
  log="$work/$target.log"
  mkdir -p "$work/corpus/$target" "fuzz/artifacts/$target"
  touch "$work/$target.start"
  echo "fuzz/ci.sh: fuzzing $target for ${FUZZ_SECONDS} s from fuzz/corpus/$target ($(ls fuzz/corpus/"$target" | wc -l) inputs)"
  start=$SECONDS
  status=0
  # New inputs go to the first (temporary) corpus directory; libFuzzer only
  # reads the committed one. Past the bound, a hang that libFuzzer's own
  # -timeout did not catch.
  # shellcheck disable=SC2046,SC2086
  bounded --kill-after=15 $((FUZZ_SECONDS + 120)) \
    cargo +nightly fuzz run $(build_flags "$sanitizer") "$target" \
    "$work/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -max_len="$max_len" -timeout=5 -rss_limit_mb=1024 \
    -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
  elapsed=$((SECONDS - start))
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)"
  added="$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)"
  line="$target: exit $status, ${execs:-?} executions in ${elapsed} s, peak RSS ${rss:-?} MB, ${added:-?} new corpus inputs (not kept)"
  summary+=("$line")
  echo "fuzz/ci.sh: $line"
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
      echo "fuzz/ci.sh: $target did not finish within $((FUZZ_SECONDS + 120)) s (a hang)"
    fi
    echo "----- $target's output (last 300 lines, without libFuzzer's progress lines) -----"
    grep -av '^#[0-9]' "$log" | tail -n 300
    echo "------------------------------------------"
    found=0
    while IFS= read -r -d '' artifact; do
      found=1
      echo "fuzz/ci.sh: failing input of $target: $artifact ($(stat -c %s "$artifact") bytes), base64:"
      base64 -w 0 "$artifact"
      echo
      echo "fuzz/ci.sh: reproduce: echo '<base64 above>' | base64 -d > input &&" \
        "(cd fuzz && cargo +nightly fuzz run $( [ "$sanitizer" = none ] && echo "-s none --target-dir target/nosan " )$target ../input)"
      [ "$target" != engine_io ] ||
        echo "fuzz/ci.sh: (engine_io: add \`-- -runs=300\` for a polling input, and it may need the inputs before it: see fuzz/README.md)"
    done < <(find "fuzz/artifacts/$target" -type f -newer "$work/$target.start" -print0)
    [ "$found" -eq 1 ] || echo "fuzz/ci.sh: $target left no input in fuzz/artifacts/$target"
  fi
done

status=0
if [ "$(corpus_state)" != "$corpus_before" ]; then
  echo "fuzz/ci.sh: the run changed fuzz/corpus (it must not)" >&2
  status=1
fi
echo "fuzz/ci.sh: summary: build $build_seconds s, $((SECONDS - build_start)) s in all"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/ci.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
exit "$status"
