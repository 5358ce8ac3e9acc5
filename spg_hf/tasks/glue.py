"""GLUE for run_glue_spg.py: its arguments, loading (hub, a folder of GLUE tsv files, csv/json files) and
tokenisation. The script mirrors HF's run_glue.py; the task logic lives here and in
- glue_tasks: the task table (columns and labels as on the hub, where GLUE's tsv files keep them), label checks;
- glue_files: reading GLUE's tsv files, or csv/json files of your own, into the hub's shape;
- glue_scoring: GLUE's metrics and HF run_glue's prediction files.
Their public names are importable from here too."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict, load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

from spg_hf.tasks.cli import ModelArguments, expand_path
from spg_hf.tasks.glue_files import load_data_files, read_glue_tsv, tsv_path
from spg_hf.tasks.glue_scoring import (
    compute_metrics_for,
    eval_metric_suffix,
    glue_metrics,
    load_hub_glue_metric,
    predicted_labels,
    predictions_file_name,
    with_combined_score,
    write_predictions,
)
from spg_hf.tasks.glue_tasks import TASKS, GlueTask, label_feature, label_ids, normalize_task_name

__all__ = [
    "DATA_FILE_SUFFIXES",
    "HUB_DATASET",
    "TASKS",
    "DataTrainingArguments",
    "GlueTask",
    "compute_metrics_for",
    "eval_metric_suffix",
    "glue_metrics",
    "label_feature",
    "label_ids",
    "limit_samples",
    "load_hub_glue_metric",
    "load_model_and_tokenizer",
    "load_raw_datasets",
    "normalize_task_name",
    "predicted_labels",
    "predictions_file_name",
    "read_glue_tsv",
    "tokenize_datasets",
    "tsv_path",
    "with_combined_score",
    "write_predictions",
]

logger = logging.getLogger("spg_hf.tasks.glue")

HUB_DATASET = "nyu-mll/glue"
DATA_FILE_SUFFIXES = (".csv", ".json", ".jsonl")


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
        return load_data_files(data_args.data_files(), data_args.task_name, *do, cache_dir=model_args.cache_dir)
    task = TASKS[data_args.task_name]
    splits = task.split_names(*do)
    if data_args.data_dir is not None:
        folder = Path(data_args.data_dir) / task.folder
        logger.info(f"Loading GLUE {task.name} from the tsv files in {folder}")
        return DatasetDict({split: read_glue_tsv(folder, task, split) for split in splits}), task
    logger.info(f"Loading GLUE {task.name} from the hub ({HUB_DATASET}); set data_dir or GLUE_DIR to use local files")
    hub = load_dataset(HUB_DATASET, task.name, cache_dir=model_args.cache_dir, token=model_args.token)
    return DatasetDict({split: hub[split] for split in splits}), task


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
