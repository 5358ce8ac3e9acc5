"""The example scripts' metrics come from 🤗 evaluate, as in HF's example scripts, when the hub is reachable; offline,
or when a metric fails to load, the scripts compute the same metrics, under the same names, with their own code
(scikit-learn / scipy for GLUE, the official SQuAD scoring rules, numpy for accuracy)."""

from __future__ import annotations

import logging
from typing import Any

import huggingface_hub
import numpy as np

logger = logging.getLogger("spg_hf.tasks.metrics")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE or evaluate's own HF_EVALUATE_OFFLINE is set."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return True
    # Imported only when online: evaluate takes long to import, and offline runs never need it.
    import evaluate

    return evaluate.config.HF_EVALUATE_OFFLINE


def load_hub_metric(path: str, config_name: str | None = None) -> Any | None:
    """`evaluate.load(path, config_name)`, or None (the caller uses its local implementation) when the hub is off or
    the metric cannot be loaded."""
    description = f"{path}/{config_name}" if config_name else path
    if hub_offline():
        logger.info(f"Offline: the {description} metric is computed locally, not by evaluate.")
        return None
    import evaluate

    try:
        return evaluate.load(path, config_name)
    except Exception as error:  # noqa: BLE001 - whatever stops the download, the local implementation stands in
        logger.warning(f"Could not load the {description} metric with evaluate ({error}); computing it locally.")
        return None


def logits_of(predictions: np.ndarray | tuple) -> np.ndarray:
    """The logits among Trainer's predictions: the first array when the model returns more than its logits."""
    return predictions[0] if isinstance(predictions, tuple) else predictions


CALIBRATION_BINS = 15


def expected_calibration_error(predictions: np.ndarray | tuple, labels: np.ndarray) -> dict[str, float]:
    """{"expected_calibration_error": ECE} of a classifier's logits (the first array of a tuple): examples are binned
    by their top softmax probability (CALIBRATION_BINS equal-width bins), and each bin's |accuracy - mean top
    probability| is weighted by its share of the examples. 0 is perfectly calibrated; a model that predicts one
    class with confidence 0.9 and is right half the time scores 0.4. The eval loss alone mixes calibration with
    accuracy, so the comparisons report both."""
    logits = np.asarray(logits_of(predictions), dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == np.asarray(labels)
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    error = 0.0
    for index in np.unique(bins):
        members = bins == index
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return {"expected_calibration_error": float(error)}
