#!/usr/bin/env bash
# Creates .venv (if missing) and installs spg-hf with its test/bench extras.
# torch is pinned first to the CPU build so nothing pulls a CUDA build; on a GPU machine install your CUDA torch
# into the venv before running this, and the pin is skipped (SPG_KEEP_TORCH=1).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if [ "${SPG_KEEP_TORCH:-0}" != "1" ]; then
  python -m pip install --quiet torch==2.13.0
fi
python -m pip install --quiet -e ".[test]"
# DeepSpeed for tests/test_deepspeed.py (the [deepspeed] extra): its build imports torch, so no build isolation;
# no ops are compiled (about 15 s).
python -m pip install --quiet wheel
python -m pip install --quiet --no-build-isolation "deepspeed>=0.19"
