#!/usr/bin/env bash
# Sets up from nothing and fine-tunes all-MiniLM-L6-v2 on GLUE RTE with SPG (CPU, offline, under 10 minutes).
# Data: GLUE_DIR (the folder holding RTE/train.tsv and RTE/dev.tsv), else the HF hub.
# The model and eval_results.json are saved to outputs/glue/rte_minilm_cpu (the config's output_dir; --output_dir overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python run_glue_spg.py configs/glue/rte_minilm_cpu.yaml "$@"
