"""Which metric a metrics file is compared on, and which way it is better."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spg_hf.compare.errors import CompareError

# The main metric of a metrics file, when none is named: the first of these it has (GLUE's CoLA, STS-B, MRPC/QQP
# and the others; SQuAD v1.1 / v2.0; audio classification).
MAIN_METRIC_PREFERENCE = ("matthews_correlation", "pearson", "f1", "exact_match", "exact", "accuracy")
# Reported beside the main metric whenever every run has them (the example scripts' eval loss and, for
# classification, expected calibration error).
SECONDARY_METRICS = ("eval_loss", "eval_expected_calibration_error")


def higher_is_better(metric: str) -> bool:
    """Losses and calibration errors are better lower; every other metric higher."""
    return not metric.endswith(("loss", "calibration_error"))


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
