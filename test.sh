#!/usr/bin/env bash
# Set up the environment (first run only) and run the linter, the format check and the tests.
# Arguments are passed to pytest, e.g. ./test.sh -k spectrogram
set -euo pipefail
cd "$(dirname "$0")"
REQUIREMENTS="$PWD/requirements-dev.txt" source ./env.sh
echo "== ruff check, ruff format --check"
ruff check .
ruff format --check .
echo "== pytest"
python -m pytest "$@"
