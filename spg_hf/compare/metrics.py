"""Which metric a metrics file is compared on, and which way it is better."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from spg_hf.compare.errors import CompareError

# The main metric of a metrics file, when none is named: the first of these it has (GLUE's CoLA, STS-B, MRPC/QQP
# and the others; SQuAD v1.1 / v2.0; audio classification).
MAIN_METRIC_PREFERENCE = ("matthews_correlation", "pearson", "f1", "exact_match", "exact", "accuracy")
# Reported beside the main metric whenever every run has them (the example scripts' eval loss and, for
# classification, expected calibration error).
SECONDARY_METRICS = ("eval_loss", "eval_expected_calibration_error")


# Which way a metric is better, known by its name without an eval_/test_ prefix, case ignored. Lower: losses (as
# TrainingArguments takes a metric_for_best_model ending in "loss"), error rates, calibration and regression errors,
# perplexity, time. Any other metric is assumed higher-is-better, and the report says it assumed so.
LOWER_IS_BETTER_NAMES = frozenset({"cer", "wer", "mse", "rmse", "mae", "mape", "perplexity", "ppl", "runtime"})
LOWER_IS_BETTER_ENDINGS = ("loss", "error", "error_rate")
HIGHER_IS_BETTER_NAMES = frozenset({"combined_score"})
HIGHER_IS_BETTER_ENDINGS = (
    *("accuracy", "f1", "precision", "recall", "exact", "exact_match", "correlation", "pearson", "spearmanr"),
    *("auc", "iou", "bleu", "r2", "per_second"),
)
HIGHER_IS_BETTER_BEGINNINGS = ("rouge",)
DIRECTION_FLAGS = {True: "--greater-is-better", False: "--lower-is-better"}


@dataclasses.dataclass(frozen=True)
class Direction:
    """Which way a metric is better, and how that is known: `source` is "flag" (said by --greater-is-better or
    --lower-is-better), "name" (a metric known by name) or "assumed" (an unknown metric, taken as higher)."""

    higher_is_better: bool
    source: str

    def __str__(self) -> str:
        words = f"{'higher' if self.higher_is_better else 'lower'} is better"
        if self.source == "flag":
            return f"{words}, per {DIRECTION_FLAGS[self.higher_is_better]}"
        if self.source == "assumed":
            return f"{words}, assumed"
        return words


def known_direction(metric: str) -> bool | None:
    """True when `metric` is known by name to be better higher, False when lower, None when it is not known."""
    name = re.sub(r"^(eval|test)_", "", metric.lower())
    if name in LOWER_IS_BETTER_NAMES or name.endswith(LOWER_IS_BETTER_ENDINGS):
        return False
    if (
        name in HIGHER_IS_BETTER_NAMES
        or name.endswith(HIGHER_IS_BETTER_ENDINGS)
        or name.startswith(HIGHER_IS_BETTER_BEGINNINGS)
    ):
        return True
    return None


def metric_direction(metric: str, greater_is_better: bool | None = None) -> Direction:
    """The direction of `metric`: as `greater_is_better` says when given (as TrainingArguments.greater_is_better
    for metric_for_best_model), else by name, else assumed higher. Raises CompareError when `greater_is_better`
    contradicts a metric known by name: a verdict turned round by a slip of the flag is worse than none."""
    known = known_direction(metric)
    if greater_is_better is None:
        return Direction(True, "assumed") if known is None else Direction(known, "name")
    if known is not None and known != greater_is_better:
        raise CompareError(
            f"{DIRECTION_FLAGS[greater_is_better]} contradicts {metric}, which is better "
            f"{'higher' if known else 'lower'}; leave the flag out for it."
        )
    return Direction(greater_is_better, "flag")


def higher_is_better(metric: str) -> bool:
    """Whether `metric` is better higher, by name (an unknown metric: assumed so; see metric_direction)."""
    return metric_direction(metric).higher_is_better


def resolve_metric(requested: str | None, metrics: Mapping[str, Any], source: str) -> str:
    """The name of the metric to compare in a metrics file: `requested` (with or without the eval_ prefix), or the
    file's main metric. Raises CompareError naming what the file has."""
    numeric = sorted(name for name, value in metrics.items() if isinstance(value, int | float))
    if requested is not None:
        for name in (requested, f"eval_{requested}"):
            if name in numeric:
                return name
        raise CompareError(f"metric {requested!r} is not in {source}; it has {', '.join(numeric)}.")
    for main in MAIN_METRIC_PREFERENCE:
        for name in (f"eval_{main}", main):
            if name in numeric:
                return name
    raise CompareError(
        f"{source} has none of the usual main metrics ({', '.join(MAIN_METRIC_PREFERENCE)}); name one with "
        f"--metric. It has {', '.join(numeric)}."
    )
