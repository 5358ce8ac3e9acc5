"""Statistics of the raw rows: mean and sample std per arm, per-seed paired differences with a Student-t interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from bench.quality.plan import TASK_METRICS, row_arm


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    return {
        "n": n,
        "mean": float(array.mean()) if n else math.nan,
        "std": float(array.std(ddof=1)) if n > 1 else math.nan,
    }


def paired_difference(treatment: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> dict:
    """Per-seed differences treatment - baseline: their mean, std, Student-t interval for the mean difference, and
    how many seeds the treatment won, tied and lost. Both sequences are ordered by the same seeds."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(treatment)} and {len(baseline)}.")
    diffs = np.asarray(treatment, dtype=float) - np.asarray(baseline, dtype=float)
    summary = describe(diffs)
    n = summary["n"]
    if n > 1:
        half_width = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * summary["std"] / math.sqrt(n)
    else:
        half_width = math.nan
    return summary | {
        "ci_low": summary["mean"] - half_width,
        "ci_high": summary["mean"] + half_width,
        "confidence": confidence,
        "wins": int((diffs > 0).sum()),
        "ties": int((diffs == 0).sum()),
        "losses": int((diffs < 0).sum()),
    }


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


def summarize(rows: Sequence[dict], pairs: Sequence[tuple[str, str]], arms: Sequence[str]) -> list[dict]:
    """Per task (in first-seen order): each arm's recipe and metrics (mean, std over seeds) and mean train time, in
    the order of `arms` (arms without rows are left out), and for each (treatment, baseline) pair the paired
    difference on the main metric over the seeds both have."""
    summary = []
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task and row_arm(row) in arms]
        if not task_rows:
            continue
        metrics = TASK_METRICS[task]
        main = metrics[0]
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
        paired = {}
        for treatment, baseline in pairs:
            reference = {row["seed"]: row["metrics"][main] for row in by_arm.get(baseline, [])}
            common = [row for row in by_arm.get(treatment, []) if row["seed"] in reference]
            if common:
                paired[treatment] = {"baseline": baseline, "seeds": [row["seed"] for row in common]}
                paired[treatment] |= paired_difference(
                    [row["metrics"][main] for row in common], [reference[row["seed"]] for row in common]
                )
        summary.append({"task": task, "main_metric": main, "methods": methods, "paired": paired})
    return summary
