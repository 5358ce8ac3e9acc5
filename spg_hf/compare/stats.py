"""The paired statistics of a comparison: per-seed differences, their Student-t interval and the seeds won. Only
numpy and scipy: importable where matplotlib (the plots) and torch (the runs) are not."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    return {
        "n": n,
        "mean": float(array.mean()) if n else math.nan,
        "std": float(array.std(ddof=1)) if n > 1 else math.nan,
    }


def paired_difference(
    treatment: Sequence[float], baseline: Sequence[float], confidence: float = 0.95, higher_is_better: bool = True
) -> dict:
    """Per-seed differences treatment - baseline: their mean, std, Student-t interval for the mean difference, and
    how many seeds the treatment won (was better: higher, or lower for a loss), tied and lost. Both sequences are
    ordered by the same seeds."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(treatment)} and {len(baseline)}.")
    diffs = np.asarray(treatment, dtype=float) - np.asarray(baseline, dtype=float)
    summary = describe(diffs)
    n = summary["n"]
    if n > 1:
        half_width = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * summary["std"] / math.sqrt(n)
    else:
        half_width = math.nan
    better = diffs if higher_is_better else -diffs
    return summary | {
        "ci_low": summary["mean"] - half_width,
        "ci_high": summary["mean"] + half_width,
        "confidence": confidence,
        "wins": int((better > 0).sum()),
        "ties": int((better == 0).sum()),
        "losses": int((better < 0).sum()),
    }


def pair_by_seed(
    treatment: Mapping[int, float], baseline: Mapping[int, float], higher_is_better: bool = True
) -> dict | None:
    """The paired difference over the seeds both arms have (seed -> value each), with those seeds first; None
    when they share none."""
    seeds = sorted(seed for seed in treatment if seed in baseline)
    if not seeds:
        return None
    difference = paired_difference(
        [treatment[seed] for seed in seeds], [baseline[seed] for seed in seeds], higher_is_better=higher_is_better
    )
    return {"seeds": seeds} | difference
