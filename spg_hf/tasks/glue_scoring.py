"""What a GLUE run reports: GLUE's metric for each task (evaluate's when the hub is reachable, else computed locally,
under the same names), the expected calibration error of classifiers, and HF run_glue's prediction files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import EvalPrediction

from spg_hf.tasks.glue_tasks import GlueTask
from spg_hf.tasks.metrics import expected_calibration_error, load_hub_metric, logits_of


def glue_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE's metric for the task, from predicted ids (or scores, for regression) and labels, computed locally."""
    if task.name == "cola":
        result = {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    elif task.is_regression:
        result = {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearmanr": float(spearmanr(predictions, labels)[0]),
        }
    elif task.name in ("mrpc", "qqp"):
        result = {"accuracy": float(accuracy_score(labels, predictions)), "f1": float(f1_score(labels, predictions))}
    else:
        result = {"accuracy": float(accuracy_score(labels, predictions))}
    return with_combined_score(result)


def with_combined_score(result: dict[str, float]) -> dict[str, float]:
    """With more than one metric, 'combined_score' is their mean (as in HF run_glue)."""
    if len(result) > 1:
        result["combined_score"] = float(np.mean(list(result.values())))
    return result


def load_hub_glue_metric(task: GlueTask) -> Any | None:
    """The evaluate metric HF run_glue uses for the task (None offline). Files of your own get accuracy, or for
    regression GLUE's STS-B metric (Pearson and Spearman, as computed locally; run_glue would give MSE)."""
    if task.name is not None:
        return load_hub_metric("glue", task.name)
    return load_hub_metric("glue", "stsb") if task.is_regression else load_hub_metric("accuracy")


def predicted_labels(task: GlueTask, predictions: np.ndarray | tuple) -> np.ndarray:
    """Model outputs -> predicted label ids (argmax), or scores for regression."""
    logits = logits_of(predictions)
    return np.squeeze(logits, axis=-1) if task.is_regression else np.argmax(logits, axis=-1)


def compute_metrics_for(task: GlueTask) -> Callable[[EvalPrediction], dict[str, float]]:
    """A Trainer `compute_metrics` for the task: evaluate's metric when the hub is reachable, else the local one."""
    hub_metric = load_hub_glue_metric(task)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        predictions, labels = predicted_labels(task, prediction.predictions), prediction.label_ids
        if hub_metric is None:
            result = glue_metrics(task, predictions, labels)
        else:
            computed = hub_metric.compute(predictions=predictions, references=labels)
            result = with_combined_score({name: float(value) for name, value in computed.items()})
        if task.is_regression:
            return result
        # After combined_score, which averages GLUE's own metrics only.
        return result | expected_calibration_error(prediction.predictions, labels)

    return compute_metrics


def eval_metric_suffix(split: str) -> str:
    """HF run_glue suffixes MNLI's mismatched metrics with '_mm' (eval_accuracy_mm)."""
    return "_mm" if split.endswith("_mismatched") else ""


def predictions_file_name(task: GlueTask, split: str) -> str:
    """HF run_glue's names: predict_results_rte.txt, and predict_results_mnli-mm.txt for MNLI mismatched."""
    return f"predict_results_{task.name or 'task'}{'-mm' if split.endswith('_mismatched') else ''}.txt"


def write_predictions(path: Path | str, task: GlueTask, predictions: np.ndarray) -> None:
    """HF run_glue's predict_results file: 'index<TAB>prediction', label names (or scores for regression)."""
    with open(path, "w", encoding="utf-8") as file:
        file.write("index\tprediction\n")
        for index, item in enumerate(predictions):
            value = f"{item:3.3f}" if task.label_names is None else task.label_names[int(item)]
            file.write(f"{index}\t{value}\n")
