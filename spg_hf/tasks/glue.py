"""GLUE for run_glue_spg.py: the task table, loading (hub, a folder of GLUE tsv files, csv/json files),
tokenisation, metrics and prediction files. The script mirrors HF's run_glue.py; the task logic lives here."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
    default_data_collator,
)

from spg_hf.tasks.cli import ModelArguments, expand_path
from spg_hf.tasks.metrics import expected_calibration_error, load_hub_metric

logger = logging.getLogger("spg_hf.tasks.glue")

HUB_DATASET = "nyu-mll/glue"
DATA_FILE_SUFFIXES = (".csv", ".json", ".jsonl")


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


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on (HF run_glue.py's names)."""

    task_name: str | None = field(
        default=None, metadata={"help": f"GLUE task: {', '.join(TASKS)}. Optional with train_file/validation_file."}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of GLUE tsv files, the one holding RTE/train.tsv, RTE/dev.tsv, ... Defaults to the "
            f"GLUE_DIR environment variable; when neither is set the task is loaded from the hub ({HUB_DATASET})."
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "csv or json(l) file of training data."})
    validation_file: str | None = field(default=None, metadata={"help": "csv or json(l) file of evaluation data."})
    test_file: str | None = field(default=None, metadata={"help": "csv or json(l) file to predict (do_predict)."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per example after tokenisation; longer inputs are truncated."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Tokenise again instead of using the cache."})
    pad_to_max_length: bool = field(
        default=False,
        metadata={"help": "Pad every example to max_seq_length. False: pad each batch to its longest example."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    train_subset_seed: int | None = field(
        default=None,
        metadata={
            "help": "With max_train_samples: take N training examples drawn at random with this seed instead of the "
            "first N (the same seed always draws the same subset)."
        },
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N examples per eval set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Predict only the first N examples."})

    def __post_init__(self) -> None:
        if self.task_name is not None:
            self.task_name = normalize_task_name(self.task_name)
        if self.data_dir is None:
            self.data_dir = os.environ.get("GLUE_DIR") or None
        if self.train_subset_seed is not None and self.max_train_samples is None:
            raise ValueError("--train_subset_seed draws a random subset of --max_train_samples examples; set both.")
        self.data_dir = expand_path(self.data_dir, "data_dir")
        for argument in ("train_file", "validation_file", "test_file"):
            path = expand_path(getattr(self, argument), argument)
            if path is not None and not path.endswith(DATA_FILE_SUFFIXES):
                raise ValueError(f"{argument}={path!r}: expected a {', '.join(DATA_FILE_SUFFIXES)} file.")
            setattr(self, argument, path)
        if self.task_name is None and self.data_files() == {}:
            raise ValueError("Give a GLUE task_name, or your own data as train_file / validation_file (csv or json).")

    def data_files(self) -> dict[str, str]:
        files = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}
        return {split: path for split, path in files.items() if path is not None}


def load_raw_datasets(
    data_args: DataTrainingArguments, training_args: TrainingArguments, model_args: ModelArguments
) -> tuple[DatasetDict, GlueTask]:
    """The splits this run needs (train / validation[_matched, _mismatched] / test...), with hub column names and
    label ids. Every file, column and label is checked here, before any training."""
    do = (training_args.do_train, training_args.do_eval, training_args.do_predict)
    if data_args.data_files():
        return _load_data_files(data_args, *do, cache_dir=model_args.cache_dir)
    task = TASKS[data_args.task_name]
    splits = task.split_names(*do)
    if data_args.data_dir is not None:
        folder = Path(data_args.data_dir) / task.folder
        logger.info(f"Loading GLUE {task.name} from the tsv files in {folder}")
        return DatasetDict({split: read_glue_tsv(folder, task, split) for split in splits}), task
    logger.info(f"Loading GLUE {task.name} from the hub ({HUB_DATASET}); set data_dir or GLUE_DIR to use local files")
    hub = load_dataset(HUB_DATASET, task.name, cache_dir=model_args.cache_dir, token=model_args.token)
    return DatasetDict({split: hub[split] for split in splits}), task


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
    return Dataset.from_dict(columns, features=_hub_features(task, has_labels))


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


def _hub_features(task: GlueTask, with_labels: bool) -> Features:
    features = {column: Value("string") for column in task.text_columns}
    if with_labels:
        features["label"] = label_feature(task)
    return Features({**features, "idx": Value("int64")})


def _load_data_files(
    data_args: DataTrainingArguments, do_train: bool, do_eval: bool, do_predict: bool, cache_dir: str | None
) -> tuple[DatasetDict, GlueTask]:
    """csv/json files with HF run_glue's conventions: a 'label' column; with a task_name the task's hub column names
    and labels (names or ids), without one the labels found in the training file (floats: regression)."""
    needed = {"train": do_train, "validation": do_eval, "test": do_predict}
    files = data_args.data_files()
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
    logger.info(f"Loading {data_args.task_name or 'your task'} from {files}")
    loaded = {}
    for split, path in files.items():
        builder = "csv" if path.endswith(".csv") else "json"
        loaded[split] = load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir)
    if data_args.task_name is not None:
        task = TASKS[data_args.task_name]
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


def limit_samples(raw_datasets: DatasetDict, data_args: DataTrainingArguments) -> DatasetDict:
    """Keep the first max_train/eval/predict_samples examples of each split (before tokenising, to save time); with
    train_subset_seed, a seeded random draw of max_train_samples training examples instead of the first ones."""
    limited = {}
    for split, dataset in raw_datasets.items():
        kind = split.split("_")[0]
        limit = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}.get(
            kind, data_args.max_predict_samples
        )
        if kind == "train" and data_args.train_subset_seed is not None:
            # In memory: no indices cache file, so the draw depends on the seed alone.
            dataset = dataset.shuffle(seed=data_args.train_subset_seed, keep_in_memory=True)
        limited[split] = dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset
    return DatasetDict(limited)


def load_model_and_tokenizer(
    model_args: ModelArguments, task: GlueTask
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pre-trained model with a fresh head for the task, or a randomly initialised one from config_name (+
    config_overrides). The config names the task's labels (label2id / id2label)."""
    config = model_args.load_config(num_labels=task.num_labels, finetuning_task=task.name)
    if task.label_names is not None:
        label2id = {name: i for i, name in enumerate(task.label_names)}
        if config.label2id not in (label2id, {f"LABEL_{i}": i for i in range(task.num_labels)}):
            logger.warning(f"The model names its labels {config.label2id}; using the task's {label2id} instead.")
        config.label2id = label2id
        config.id2label = {i: name for name, i in label2id.items()}
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    if tokenizer_source is None:
        raise ValueError("A randomly initialised model (config_name without model_name_or_path) needs tokenizer_name.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **model_args.hub_kwargs())
    return model_args.load_model(AutoModelForSequenceClassification, config), tokenizer


def tokenize_datasets(
    raw_datasets: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    task: GlueTask,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
) -> DatasetDict:
    """Tokenise the text column(s) (as a pair for two), keep only the model inputs and 'label' (none for test
    splits: the hub's test labels are -1)."""
    max_seq_length = data_args.max_seq_length
    if max_seq_length > tokenizer.model_max_length:
        logger.warning(f"max_seq_length={max_seq_length} exceeds the tokenizer's {tokenizer.model_max_length}.")
        max_seq_length = tokenizer.model_max_length
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(examples: dict[str, list]) -> dict[str, list]:
        texts = [examples[column] for column in task.text_columns]
        return tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)

    tokenized = {}
    # The main process tokenises first so that the others read its cache instead of repeating the work.
    with training_args.main_process_first(desc="dataset map pre-processing"):
        for split, dataset in raw_datasets.items():
            tokenized[split] = dataset.map(
                preprocess,
                batched=True,
                remove_columns=[c for c in dataset.column_names if c != "label" or split.startswith("test")],
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Tokenising {split}",
            )
    return DatasetDict(tokenized)


def make_data_collator(
    tokenizer: PreTrainedTokenizerBase, data_args: DataTrainingArguments, training_args: TrainingArguments
) -> Callable:
    """Dynamic padding (each batch to its longest example) unless pad_to_max_length; multiples of 8 suit tensor
    cores under mixed precision."""
    if data_args.pad_to_max_length:
        return default_data_collator
    # mixed_precision also reflects `accelerate launch --mixed_precision` / an accelerate config file.
    mixed = training_args.mixed_precision != "no"
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if mixed else None)


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
    logits = predictions[0] if isinstance(predictions, tuple) else predictions
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
