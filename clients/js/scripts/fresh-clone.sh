#!/usr/bin/env bash
# What a newcomer does with the SDK, on a fresh clone of the repository's
# committed HEAD (no node_modules anywhere in it), checked step by step:
#   1. npm pack before npm ci fails, saying to run npm ci first;
#   2. npm test without a server binary fails, saying to cargo build and set TIDINGS_BIN;
#   3. npm ci, then npm test with TIDINGS_BIN passes (and npm ci warns about nothing);
#   4. the README's install: npm pack, npm install of the tarball in an empty
#      project, which imports and requires it;
#   5. npm publish --dry-run: no warning (but npm's "not logged in" one) and
#      only package.json, README.md and dist/ in the package.
#
#   TIDINGS_BIN=/path/to/tidings clients/js/scripts/fresh-clone.sh [repository to clone]
set -euo pipefail

: "${TIDINGS_BIN:?set TIDINGS_BIN to the tidings binary (\`cargo build\` at the repository root builds target/debug/tidings)}"
bin="$(realpath "$TIDINGS_BIN")"
repo="${1:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)}"
work="$(mktemp -d "${TMPDIR:-/tmp}/tidings-fresh-clone-XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() { echo "fresh-clone: FAIL: $*" >&2; exit 1; }
step() { echo "fresh-clone: $*"; }
quiet=(--no-audit --no-fund)

git clone -q "$repo" "$work/clone"
step "cloned $repo ($(git -C "$work/clone" rev-parse --short HEAD)) into $work/clone"
[ -z "$(find "$work/clone" -name node_modules -print -quit)" ] || fail "the clone has a node_modules"
[ ! -e "$work/clone/target" ] || fail "the clone has a target/"
cd "$work/clone/clients/js"

step "1. npm pack before npm ci"
if npm pack "${quiet[@]}" >"$work/out" 2>&1; then cat "$work/out"; fail "npm pack succeeded without the devDependencies"; fi
grep -q "npm ci && npm pack" "$work/out" || { cat "$work/out"; fail "npm pack did not say to run npm ci"; }
! grep -q "ERR_MODULE_NOT_FOUND" "$work/out" || { cat "$work/out"; fail "npm pack crashed instead of saying what to run"; }
[ -z "$(ls ./*.tgz 2>/dev/null)" ] || fail "npm pack wrote a tarball"

step "3a. npm ci"
npm ci "${quiet[@]}" >"$work/out" 2>&1 || { cat "$work/out"; fail "npm ci"; }
! grep -qi "warn" "$work/out" || { cat "$work/out"; fail "npm ci warned"; }

step "2. npm test without TIDINGS_BIN (and no target/debug/tidings)"
if env -u TIDINGS_BIN npm test >"$work/out" 2>&1; then cat "$work/out"; fail "npm test passed without a server"; fi
grep -q "cargo build" "$work/out" && grep -q "TIDINGS_BIN=" "$work/out" || { cat "$work/out"; fail "no clear message about the server binary"; }
! grep -q "^not ok\|^# Subtest" "$work/out" || { cat "$work/out"; fail "tests ran without a server instead of stopping first"; }

step "3b. TIDINGS_BIN=$bin npm test"
TIDINGS_BIN="$bin" npm test >"$work/test.log" 2>&1 || { tail -100 "$work/test.log"; fail "npm test"; }
grep -E "^# (tests|pass|fail) " "$work/test.log" | paste -sd' ' | sed 's/^/fresh-clone:    /'

step "4. npm pack, npm install of the tarball in an empty project"
npm pack "${quiet[@]}" >"$work/out" 2>&1 || { cat "$work/out"; fail "npm pack"; }
version="$(node -p 'require("./package.json").version')"
tgz="$PWD/tidings-client-$version.tgz"
[ -f "$tgz" ] || fail "npm pack wrote no $tgz"
mkdir "$work/app"
( cd "$work/app"
  npm init -y >/dev/null
  npm install "${quiet[@]}" "$tgz" >"$work/out" 2>&1 || { cat "$work/out"; fail "npm install $tgz"; }
  grep -q '"tidings-client": "file:' package.json || fail "package.json does not record the tarball"
  node --input-type=module -e 'import { connect, TidingsError } from "tidings-client"; if (typeof connect !== "function" || typeof TidingsError !== "function") process.exit(1);' \
    || fail "import of tidings-client"
  node -e 'const { connect } = require("tidings-client"); if (typeof connect !== "function") process.exit(1);' \
    || fail "require of tidings-client"
)

step "5. npm publish --dry-run"
npm publish --dry-run >"$work/out" 2>&1 || { cat "$work/out"; fail "npm publish --dry-run"; }
if grep -i "warn" "$work/out" | grep -v "requires you to be logged in"; then fail "npm publish --dry-run warned"; fi
files="$(sed -n '/Tarball Contents/,/Tarball Details/p' "$work/out" | awk '/npm notice [0-9.]+k?B /{print $4}')"
[ -n "$files" ] || { cat "$work/out"; fail "no file list from npm publish --dry-run"; }
other="$(grep -Ev '^(package\.json|README\.md|dist/.*)$' <<<"$files" || true)"
[ -z "$other" ] || fail "unintended files in the package: $other"
step "   $(wc -l <<<"$files") files: package.json, README.md, dist/"

step "all checks passed"
