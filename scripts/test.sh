#!/usr/bin/env bash
# Sets up from nothing and runs the test suite (CPU). Data folders default to ../shared/data beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export GLUE_DIR="${GLUE_DIR:-$(pwd)/../shared/data/glue}"
export SQUAD_DIR="${SQUAD_DIR:-$(pwd)/../shared/data/squad}"
export FSDD_DIR="${FSDD_DIR:-$(pwd)/../shared/data/audio/free-spoken-digit-dataset/recordings}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ruff check .
python -m pytest -q "$@"
