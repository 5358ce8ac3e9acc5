#!/usr/bin/env bash
# Sets up from nothing and runs the test suite (CPU). Data folders default to ../shared/data beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/run_tests.sh "$@"
