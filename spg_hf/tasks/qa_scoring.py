"""SQuAD scoring: the official evaluation's EM and F1 (v2.0 script, which reduces to v1.1's on answerable questions),
by evaluate's squad / squad_v2 metric when the hub is reachable, else computed here under the same names."""

from __future__ import annotations

import collections
import re
import string

import datasets
import numpy as np

from spg_hf.tasks.metrics import load_hub_metric

PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(char for char in text.lower() if char not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation; 1 if both are empty, 0 if one is."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: dict[str, str], references: dict[str, list[str]], version_2_with_negative: bool = False
) -> dict[str, float]:
    """EM and F1 in percent, each the max over a question's gold answers, averaged over questions, under the names of
    evaluate's metrics: exact_match and f1 (squad); for v2.0 exact, f1 and total, and HasAns_* / NoAns_* on the
    answerable / unanswerable questions (squad_v2). A question whose gold answers are empty is unanswerable: only ''
    scores on it.
    """
    missing = references.keys() - predictions.keys()
    if missing:
        raise ValueError(f"No prediction for {len(missing)} question(s), e.g. {sorted(missing)[0]!r}.")
    scores: dict[str, list[tuple[float, float]]] = {"HasAns": [], "NoAns": []}
    for question_id, answers in references.items():
        golds = [answer for answer in answers if normalize_answer(answer)] or [""]
        prediction = predictions[question_id]
        score = (max(exact_match(prediction, g) for g in golds), max(f1(prediction, g) for g in golds))
        scores["HasAns" if golds != [""] else "NoAns"].append(score)
    exact_name = "exact" if version_2_with_negative else "exact_match"

    def summary(pairs: list[tuple[float, float]], prefix: str = "") -> dict[str, float]:
        exact, overlap = np.mean(pairs, axis=0) if pairs else (0.0, 0.0)
        return {f"{prefix}{exact_name}": 100 * float(exact), f"{prefix}f1": 100 * float(overlap)}

    every_question = scores["HasAns"] + scores["NoAns"]
    metrics = summary(every_question)
    if version_2_with_negative:
        metrics["total"] = float(len(every_question))
        for kind, pairs in scores.items():
            if pairs:
                metrics |= summary(pairs, f"{kind}_") | {f"{kind}_total": float(len(pairs))}
    return metrics


def score_squad(predictions: dict[str, str], examples: datasets.Dataset, version_2_with_negative: bool) -> dict:
    """squad_metrics, by evaluate's squad / squad_v2 metric (as HF run_qa) when the hub is reachable."""
    hub_metric = load_hub_metric("squad_v2" if version_2_with_negative else "squad")
    if hub_metric is None:
        references = dict(zip(examples["id"], (answers["text"] for answers in examples["answers"]), strict=True))
        return squad_metrics(predictions, references, version_2_with_negative)
    # The post-processing decides "no answer" by null_score_diff_threshold and keeps no probability for it, so,
    # as in HF run_qa, every question gets probability 0; squad_v2's best_* threshold sweep over those constant
    # values says nothing, and is left out (it is not computed locally either).
    extra = {"no_answer_probability": 0.0} if version_2_with_negative else {}
    result = hub_metric.compute(
        predictions=[{"id": key, "prediction_text": text, **extra} for key, text in predictions.items()],
        references=[
            {"id": key, "answers": answers} for key, answers in zip(examples["id"], examples["answers"], strict=True)
        ],
    )
    return {name: float(value) for name, value in result.items() if not name.startswith("best_")}
