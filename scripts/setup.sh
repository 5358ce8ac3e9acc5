#!/usr/bin/env bash
# Creates .venv (if missing) and installs spg-hf with its test extra, and DeepSpeed.
# torch is installed first, pinned to 2.13.0 (the version the suite is tested with), from the index pip is set up
# with. Which build that gives depends on the index: PyPI's torch on Linux x86_64 is the CUDA build (several GB of
# nvidia-* wheels); the machines CI runs on take the CPU build from their own package index.
#
# Environment:
#   TORCH_INDEX_URL  unset: pip's configured index (today's behaviour, which CI relies on). Set: torch is installed with
#                    --index-url "$TORCH_INDEX_URL", e.g. https://download.pytorch.org/whl/cpu for the CPU build
#                    (as scripts/test_newest_torch.sh takes it).
#   SPG_KEEP_TORCH=1 install no torch: keep the one already in .venv (e.g. a CUDA build installed there first).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if [ "${SPG_KEEP_TORCH:-0}" != "1" ]; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    python -m pip install --quiet torch==2.13.0 --index-url "$TORCH_INDEX_URL"
  else
    python -m pip install --quiet torch==2.13.0
  fi
fi
python -m pip install --quiet -e ".[test]"
# DeepSpeed for tests/test_deepspeed.py (the [deepspeed] extra): its build imports torch, so no build isolation;
# no ops are compiled (about 15 s).
python -m pip install --quiet wheel
python -m pip install --quiet --no-build-isolation "deepspeed>=0.19"
