"""Statistics of the GLUE sweeps' raw rows: recipes read from the flags, and per task each arm's metrics and its
paired difference to its baseline arm (spg_hf.compare's statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.quality.plan import TASK_METRICS, row_arm
from spg_hf.compare import describe, higher_is_better, pair_by_seed


def flag_value(row: dict, flag: str) -> str | None:
    """The value a raw row's run gave a run_glue_spg.py flag (the last one wins, as in argparse), or None."""
    flags = row["flags"]
    positions = [i for i, name in enumerate(flags) if name == flag]
    return flags[positions[-1] + 1] if positions else None


def recipe(row: dict) -> dict[str, Any]:
    """Variant, epochs, learning rate and training-set size (None: the whole training set) of a raw row, read from
    the flags it ran with."""
    subset = flag_value(row, "--max_train_samples")
    return {
        "variant": row["variant"],
        "epochs": float(flag_value(row, "--num_train_epochs")),
        "lr": float(flag_value(row, "--learning_rate")),
        "train_samples": int(subset) if subset is not None else None,
    }


def summarize(
    rows: Sequence[dict], pairs: Sequence[tuple[str, str]], arms: Sequence[str], paired_metric: str | None = None
) -> list[dict]:
    """Per task (in first-seen order): each arm's recipe and metrics (mean, std over seeds) and mean train time, in
    the order of `arms` (arms without rows are left out), and for each (treatment, baseline) pair the paired
    difference on the main metric (or on `paired_metric`, e.g. eval_loss, added to the metrics) over the seeds
    both have."""
    summary = []
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task and row_arm(row) in arms]
        if not task_rows:
            continue
        main = paired_metric or TASK_METRICS[task][0]
        metrics = list(dict.fromkeys((*TASK_METRICS[task], main)))
        present = {row_arm(row) for row in task_rows}
        by_arm = {
            arm: sorted((row for row in task_rows if row_arm(row) == arm), key=lambda row: row["seed"])
            for arm in arms
            if arm in present
        }
        methods = {}
        for arm, arm_rows in by_arm.items():
            methods[arm] = {
                "recipe": recipe(arm_rows[0]),
                "seeds": [row["seed"] for row in arm_rows],
                "metrics": {name: describe([row["metrics"][name] for row in arm_rows]) for name in metrics},
                "train_runtime": describe([row["train_runtime"] for row in arm_rows]),
            }
        main_by_seed = {arm: {row["seed"]: row["metrics"][main] for row in runs} for arm, runs in by_arm.items()}
        paired = {}
        for treatment, baseline in pairs:
            pair = pair_by_seed(main_by_seed.get(treatment, {}), main_by_seed.get(baseline, {}), higher_is_better(main))
            if pair is not None:
                paired[treatment] = {"baseline": baseline} | pair
        summary.append({"task": task, "main_metric": main, "methods": methods, "paired": paired})
    return summary
