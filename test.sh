#!/usr/bin/env bash
# Set up the environment (first run only) and run the linter and the test suite.
# Arguments are passed to pytest, e.g. ./test.sh -k spectrogram
set -euo pipefail
cd "$(dirname "$0")"
REQUIREMENTS="$PWD/requirements-dev.txt" source ./env.sh
echo "== ruff check"
ruff check .
echo "== pytest"
python -m pytest "$@"
