"""The example scripts' metrics: evaluate's when the hub is reachable, the local ones otherwise, under the same names.

Metric scripts cannot be downloaded here, so `evaluate.load` is replaced by a stub that answers under the names
evaluate's metrics give (their metric cards / scripts: glue, squad, squad_v2, accuracy).
"""

from __future__ import annotations

import datasets
import evaluate
import huggingface_hub
import numpy as np
import pytest
from transformers import EvalPrediction

from spg_hf.tasks import audio, glue, qa
from spg_hf.tasks.metrics import load_hub_metric

GLUE_NAMES = {
    "cola": ["matthews_correlation"],
    "stsb": ["pearson", "spearmanr"],
    "mrpc": ["accuracy", "f1"],
    "qqp": ["accuracy", "f1"],
}
HUB_METRIC_NAMES = {
    **{("glue", task): GLUE_NAMES.get(task, ["accuracy"]) for task in glue.TASKS},
    ("accuracy", None): ["accuracy"],
    ("squad", None): ["exact_match", "f1"],
    ("squad_v2", None): [f"{prefix}{name}" for prefix in ("", "HasAns_", "NoAns_") for name in ("exact", "f1", "total")]
    + ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"],
}


class StubMetric:
    """Stands in for a loaded evaluate metric: records its inputs, answers 0.5 under the metric's names."""

    def __init__(self, path: str, config_name: str | None) -> None:
        self.names = HUB_METRIC_NAMES[(path, config_name)]
        self.inputs: list[dict] = []

    def compute(self, predictions, references) -> dict[str, float]:
        self.inputs.append(dict(predictions=predictions, references=references))
        return {name: np.float64(0.5) for name in self.names}


@pytest.fixture
def loaded(monkeypatch) -> list[StubMetric]:
    """Hub reachable: evaluate.load gives stub metrics, listed here as they are loaded."""
    metrics = []

    def load(path, config_name=None):
        metrics.append(StubMetric(path, config_name))
        return metrics[-1]

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)
    monkeypatch.setattr(evaluate, "load", load)
    return metrics


@pytest.fixture
def offline(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("evaluate.load must not be called offline")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(evaluate, "load", refuse)


# ---- choosing evaluate or the local implementation ----


def test_offline_uses_the_local_implementation_without_trying_the_hub(offline):
    assert load_hub_metric("glue", "rte") is None


def test_evaluate_offline_setting_is_honoured(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate, "load", lambda *args: pytest.fail("evaluate.load called"))
    assert load_hub_metric("accuracy") is None


def test_online_loads_evaluates_metric(loaded):
    metric = load_hub_metric("glue", "rte")
    assert loaded == [metric] and metric.names == ["accuracy"]


@pytest.mark.parametrize("error", [FileNotFoundError("no such metric"), ConnectionError("unreachable"), ImportError])
def test_failed_load_falls_back_with_a_warning(monkeypatch, caplog, error):
    def fail(*args):
        raise error

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)
    monkeypatch.setattr(evaluate, "load", fail)
    with caplog.at_level("WARNING", logger="spg_hf.tasks.metrics"):
        assert load_hub_metric("squad") is None
    assert "Could not load the squad metric" in caplog.text


# ---- both paths give the same names ----


def glue_prediction(task: glue.GlueTask) -> EvalPrediction:
    rng = np.random.default_rng(0)
    labels = rng.normal(size=8) if task.is_regression else rng.integers(0, task.num_labels, size=8)
    return EvalPrediction(predictions=rng.normal(size=(8, task.num_labels)), label_ids=labels)


@pytest.mark.parametrize("task_name", list(glue.TASKS) + ["own classification files", "own regression files"])
def test_glue_metrics_have_the_same_names_both_ways(monkeypatch, loaded, task_name):
    if task_name in glue.TASKS:
        task = glue.TASKS[task_name]
    else:
        task = glue.GlueTask(None, None, ("sentence",), None if "regression" in task_name else ("a", "b"))
    prediction = glue_prediction(task)
    hub_result = glue.compute_metrics_for(task)(prediction)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    local_result = glue.compute_metrics_for(task)(prediction)

    assert len(loaded) == 1 and set(hub_result) == set(local_result)
    # evaluate's metric gets what the local one gets: predicted ids (or scores) and the labels.
    np.testing.assert_array_equal(
        loaded[0].inputs[0]["predictions"], glue.predicted_labels(task, prediction.predictions)
    )
    np.testing.assert_array_equal(loaded[0].inputs[0]["references"], prediction.label_ids)
    assert all(type(value) is float for value in hub_result.values())


SQUAD_EXAMPLES = datasets.Dataset.from_dict(
    {
        "id": ["has", "none"],
        "answers": [{"text": ["Denver Broncos"], "answer_start": [3]}, {"text": [], "answer_start": []}],
    }
)


@pytest.mark.parametrize("version_2_with_negative", [False, True])
def test_squad_metrics_have_the_same_names_both_ways(monkeypatch, loaded, version_2_with_negative):
    predictions = {"has": "Broncos", "none": ""}
    hub_result = qa.score_squad(predictions, SQUAD_EXAMPLES, version_2_with_negative)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    local_result = qa.score_squad(predictions, SQUAD_EXAMPLES, version_2_with_negative)

    assert set(hub_result) == set(local_result)
    inputs = loaded[0].inputs[0]
    assert inputs["references"][0] == {"id": "has", "answers": {"text": ["Denver Broncos"], "answer_start": [3]}}
    expected_prediction = {"id": "has", "prediction_text": "Broncos"}
    if version_2_with_negative:
        expected_prediction["no_answer_probability"] = 0.0
    assert inputs["predictions"][0] == expected_prediction


def test_audio_accuracy_has_the_same_name_both_ways(monkeypatch, loaded):
    prediction = EvalPrediction(predictions=np.array([[0.1, 0.9], [2.0, 0.0]]), label_ids=np.array([1, 1]))
    hub_result = audio.make_compute_metrics()(prediction)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert audio.make_compute_metrics() is audio.compute_accuracy
    assert set(hub_result) == set(audio.compute_accuracy(prediction)) == {"accuracy", "expected_calibration_error"}
    np.testing.assert_array_equal(loaded[0].inputs[0]["predictions"], [1, 0])
