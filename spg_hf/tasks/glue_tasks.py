"""The GLUE tasks: each task's columns and labels (named and ordered as on the hub, nyu-mll/glue) and where GLUE's own
tsv files keep them, and labels checked and turned into the hub's ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Value


@dataclass(frozen=True)
class GlueTask:
    """One task: its hub column names and labels, and where to find them in GLUE's own tsv files."""

    name: str | None  # hub config name, e.g. "rte"; None for a task defined only by csv/json files
    folder: str | None  # folder in a GLUE download, e.g. "RTE"
    text_columns: tuple[str, ...]  # the one or two text columns fed to the tokenizer, named as on the hub
    label_names: tuple[str, ...] | None  # hub ClassLabel names in id order; None: regression (num_labels=1)
    tsv_label: str = "label"  # label column in GLUE's tsv header
    tsv_text: tuple[str, ...] | None = None  # text columns in GLUE's tsv header, when named unlike the hub's
    tsv_fieldnames: tuple[str, ...] | None = None  # column names of tsv files without a header (CoLA train/dev)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    def split_names(self, do_train: bool, do_eval: bool, do_predict: bool) -> list[str]:
        """The hub splits a run needs; MNLI has matched and mismatched dev and test sets."""
        suffixes = ("_matched", "_mismatched") if self.name == "mnli" else ("",)
        return (
            (["train"] if do_train else [])
            + ([f"validation{s}" for s in suffixes] if do_eval else [])
            + ([f"test{s}" for s in suffixes] if do_predict else [])
        )


# Label names and their order are the hub dataset's (nyu-mll/glue), so ids mean the same whichever source is used.
TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            "cola",
            "CoLA",
            ("sentence",),
            ("unacceptable", "acceptable"),
            tsv_fieldnames=("source", "label", "label_marker", "sentence"),
        ),
        GlueTask("sst2", "SST-2", ("sentence",), ("negative", "positive")),
        GlueTask(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            tsv_label="Quality",
            tsv_text=("#1 String", "#2 String"),
        ),
        GlueTask("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), tsv_label="is_duplicate"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), None, tsv_label="score"),
        GlueTask(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            tsv_label="gold_label",
            tsv_text=("sentence1", "sentence2"),
        ),
        GlueTask("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    )
}


def normalize_task_name(name: str) -> str:
    """'SST-2', 'STS-B', 'rte' -> the hub config name; unknown names are an error listing the known ones."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"task_name={name!r} is not a GLUE task; known tasks: {', '.join(TASKS)}.")
    return key


def label_ids(values: Sequence[Any], rows: Sequence[int], task: GlueTask, path: Path | str, accept_ids: bool) -> list:
    """Labels as the hub stores them: the id of each label name (or the id itself when accept_ids; GLUE's tsv files
    write 0/1 for some tasks), or a float for regression. A label outside the task's list names file, row, label."""
    if task.label_names is None:
        result = []
        for value, row in zip(values, rows, strict=True):
            try:
                result.append(float(value))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {row}: label {value!r} is not a number (regression task).") from None
        return result
    to_id = {name: i for i, name in enumerate(task.label_names)}
    if accept_ids:
        to_id.update({str(i): i for i in range(len(task.label_names))})
    result = []
    for value, row in zip(values, rows, strict=True):
        key = str(value)
        if key not in to_id:
            ids = f" or their ids 0..{len(task.label_names) - 1}" if accept_ids else ""
            raise ValueError(
                f"{path}: row {row}: label {value!r} is not a label of task {task.name or 'from train_file'}; "
                f"expected one of {list(task.label_names)}{ids}."
            )
        result.append(to_id[key])
    return result


def label_feature(task: GlueTask) -> Value | ClassLabel:
    return Value("float32") if task.label_names is None else ClassLabel(names=list(task.label_names))
