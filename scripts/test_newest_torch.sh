#!/usr/bin/env bash
# Runs the test suite against the newest torch a user gets from PyPI, in a venv of its own (.venv-newest-torch), so
# that .venv keeps the torch 2.13.0 that scripts/setup.sh pins. The test command is scripts/test.sh's
# (scripts/run_tests.sh); arguments go to pytest:
#
#   bash scripts/test_newest_torch.sh                                   # the whole suite
#   bash scripts/test_newest_torch.sh tests/test_core_distributed.py    # one file
#
# The venv is created afresh (python -m venv --clear) and `pip install -e ".[test]"` resolves every dependency to the
# newest release pyproject.toml allows, as a user's fresh `pip install -e .` does. On Linux x86_64 PyPI's torch is
# the CUDA build, which pulls several GB of nvidia-* wheels; for the CPU build set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu and torch is installed from there first.
#
# Environment: NEWEST_TORCH_VENV (default .venv-newest-torch), PYTHON (default python3), TORCH_INDEX_URL (unset:
# PyPI), NEWEST_TORCH_SKIP_INSTALL=1 (run the tests in the existing venv without reinstalling).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NEWEST_TORCH_VENV:-.venv-newest-torch}"
if [ "${NEWEST_TORCH_SKIP_INSTALL:-0}" != "1" ]; then
  "${PYTHON:-python3}" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$VENV/bin/python" -m pip install --quiet torch --index-url "$TORCH_INDEX_URL"
  fi
  "$VENV/bin/python" -m pip install --quiet -e ".[test]"
fi
. "$VENV/bin/activate"
python -c "import sys, torch, transformers, accelerate; print(f'Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}')"
bash scripts/run_tests.sh "$@"
