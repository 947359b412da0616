#!/usr/bin/env bash
# schemathesis (PyPI, pinned in requirements.txt, in a venv of its own)
# against the tidings binary ($TIDINGS_BIN) started on a free port, in
# token mode and in open mode: every check, on the OpenAPI document the
# server serves (tests/openapi/run.py). Bounded: the venv setup and the
# whole run each have a timeout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${TIDINGS_BIN:?set TIDINGS_BIN to the tidings binary}"
venv="${TMPDIR:-/tmp}/tidings-schemathesis"
[ -x "$venv/bin/python" ] || timeout 120 python3 -m venv "$venv"
timeout 300 "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
# No __pycache__ beside the hooks in the work tree.
PYTHONDONTWRITEBYTECODE=1 timeout 600 "$venv/bin/python" "$here/run.py"
