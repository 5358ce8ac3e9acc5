#!/usr/bin/env bash
# The test command of scripts/test.sh and scripts/test_newest_torch.sh, run in the Python environment that is active:
# data folders default to ../shared/data beside the checkout, the hub is offline, ruff, then pytest with the
# arguments given (e.g. `tests/test_core.py -k resume`).
set -euo pipefail
cd "$(dirname "$0")/.."
export GLUE_DIR="${GLUE_DIR:-$(pwd)/../shared/data/glue}"
export SQUAD_DIR="${SQUAD_DIR:-$(pwd)/../shared/data/squad}"
export FSDD_DIR="${FSDD_DIR:-$(pwd)/../shared/data/audio/free-spoken-digit-dataset/recordings}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ruff check .
python -m pytest -q "$@"
