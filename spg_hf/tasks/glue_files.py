"""Reading GLUE data from files: a split of GLUE's own tsv download, or csv/json files with HF run_glue's
conventions. Either way the result is shaped like the hub's dataset, with every column and label checked."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value, load_dataset

from spg_hf.tasks.glue_tasks import TASKS, GlueTask, label_feature, label_ids

# One logger name for the GLUE task, whichever of its modules logs.
logger = logging.getLogger("spg_hf.tasks.glue")


def tsv_path(folder: Path, split: str) -> Path:
    """GLUE's file names: train.tsv, dev.tsv, dev_matched.tsv, test_mismatched.tsv, ..."""
    return folder / f"{split.replace('validation', 'dev')}.tsv"


def read_glue_tsv(folder: Path, task: GlueTask, split: str) -> Dataset:
    """Read one split of a GLUE download into a Dataset shaped like the hub's (text columns, label, idx).

    Quoting is off: STS-B and others hold unmatched double quotes. utf-8-sig drops MRPC's byte order mark.
    Rows with missing fields are skipped with a warning, as the hub's GLUE builder does.
    """
    path = tsv_path(folder, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"GLUE {task.name} {split} file not found: {path}. data_dir (or GLUE_DIR) must be the GLUE folder "
            f"that holds {task.folder}/{path.name}."
        )
    has_labels = not split.startswith("test")
    wanted = list(task.text_columns) + (["label"] if has_labels else [])
    tsv_names = dict(zip(wanted, (task.tsv_text or task.text_columns) + (task.tsv_label,), strict=False))
    # GLUE's test files have a header row even for CoLA, and never a label.
    fieldnames = task.tsv_fieldnames if has_labels else None
    texts: dict[str, list[str]] = {column: [] for column in task.text_columns}
    raw_labels, rows, skipped = [], [], []
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file, fieldnames=fieldnames, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []
        for column in wanted:
            if tsv_names[column] not in header:
                raise ValueError(f"{path}: column {tsv_names[column]!r} is missing (header: {header}).")
        for row_number, row in enumerate(reader, start=1):
            values = [row.get(tsv_names[column]) for column in wanted]
            if any(value is None for value in values):
                skipped.append(reader.line_num)
                continue
            for column, value in zip(task.text_columns, values, strict=False):
                texts[column].append(value)
            if has_labels:
                raw_labels.append(values[-1])
            rows.append(row_number)
    if skipped:
        logger.warning(f"{path}: skipped {len(skipped)} rows with missing fields (lines {skipped[:5]}...).")
    columns: dict[str, list] = dict(texts)
    if has_labels:
        columns["label"] = label_ids(raw_labels, rows, task, path, accept_ids=True)
    columns["idx"] = [row - 1 for row in rows]
    return Dataset.from_dict(columns, features=hub_features(task, has_labels))


def hub_features(task: GlueTask, with_labels: bool) -> Features:
    """The hub dataset's columns: the text columns, the label (not in test splits) and idx."""
    features = {column: Value("string") for column in task.text_columns}
    if with_labels:
        features["label"] = label_feature(task)
    return Features({**features, "idx": Value("int64")})


def load_data_files(
    files: dict[str, str],
    task_name: str | None,
    do_train: bool,
    do_eval: bool,
    do_predict: bool,
    cache_dir: str | None,
) -> tuple[DatasetDict, GlueTask]:
    """csv/json files (split -> path) with HF run_glue's conventions: a 'label' column; with a task_name the task's
    hub column names and labels (names or ids), without one the labels found in the training file (floats:
    regression). Only the splits a run needs are loaded, and each of those must have a file."""
    needed = {"train": do_train, "validation": do_eval, "test": do_predict}
    for split, wanted in needed.items():
        if wanted and split not in files:
            flag = {"train": "do_train", "validation": "do_eval", "test": "do_predict"}[split]
            raise ValueError(f"{flag} with your own data files needs {split}_file.")
    files = {split: path for split, path in files.items() if needed[split]}
    if not files:
        raise ValueError("Nothing to do: set do_train, do_eval or do_predict.")
    for split, path in files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{split}_file not found: {path}")
    logger.info(f"Loading {task_name or 'your task'} from {files}")
    loaded = {}
    for split, path in files.items():
        builder = "csv" if path.endswith(".csv") else "json"
        loaded[split] = load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir)
    if task_name is not None:
        task = TASKS[task_name]
    else:
        task = _task_from_files(loaded, files)
    datasets = {}
    for split, dataset in loaded.items():
        required = list(task.text_columns) + ([] if split == "test" else ["label"])
        for column in required:
            if column not in dataset.column_names:
                raise ValueError(f"{files[split]}: column {column!r} is missing (columns: {dataset.column_names}).")
        if "label" in dataset.column_names:
            ids = label_ids(
                dataset["label"], range(1, len(dataset) + 1), task, files[split], accept_ids=task.name is not None
            )
            dataset = dataset.remove_columns("label").add_column("label", ids, feature=label_feature(task))
        datasets[split] = dataset
    return DatasetDict(datasets), task


def _task_from_files(loaded: dict[str, Dataset], files: dict[str, str]) -> GlueTask:
    """HF run_glue's inference for your own data: labels from the training file (float labels: regression); the
    text columns are sentence1/sentence2 if present, else the first two (or one) non-label columns."""
    reference = "train" if "train" in loaded else next(iter(loaded))
    dataset = loaded[reference]
    if "label" not in dataset.column_names:
        raise ValueError(f"{files[reference]}: column 'label' is missing (columns: {dataset.column_names}).")
    others = [name for name in dataset.column_names if name != "label"]
    if not others:
        raise ValueError(f"{files[reference]}: no text column besides 'label'.")
    text_columns = ("sentence1", "sentence2") if {"sentence1", "sentence2"} <= set(others) else tuple(others[:2])
    if dataset.features["label"].dtype.startswith("float"):
        return GlueTask(None, None, text_columns, None)
    return GlueTask(None, None, text_columns, tuple(str(label) for label in sorted(set(dataset["label"]))))
