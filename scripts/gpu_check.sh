#!/usr/bin/env bash
# The GPU check, one command on a machine with a CUDA GPU (under 8 minutes on one H100): the tests marked cuda, the
# main job under `accelerate launch` on one GPU, and bench/overhead.py's SPG/plain step-time and peak-memory ratios
# per head family in bf16; one report, outputs/gpu_check/gpu_check.md and .json (--output-dir to change).
# Runs in the active Python environment, which needs a CUDA build of torch and spg-hf with its [test] extra, e.g.
#   (install your CUDA torch into .venv first) SPG_KEEP_TORCH=1 bash scripts/setup.sh && . .venv/bin/activate
#   bash scripts/gpu_check.sh --glue-dir /path/to/glue
# Without a CUDA device it says so and exits 2 (never a pass); 1 if a step failed. Details: scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
