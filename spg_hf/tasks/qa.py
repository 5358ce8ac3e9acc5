"""Extractive question answering (SQuAD v1.1 / v2.0) for run_qa_spg.py: its arguments, loading the questions and
the model, and evaluation (logits to answers to EM / F1, and eval_predictions.json). Own, short versions of what HF's
run_qa.py takes from utils_qa.py and trainer_qa.py (neither is installed), in
- qa_files: reading SQuAD json files, and the split of one source by article;
- qa_windows: questions to overlapping model windows, and their logits back to answers;
- qa_scoring: the official EM / F1.
Their public names are importable from here too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from spg_hf.tasks.cli import ModelArguments, expand_path
from spg_hf.tasks.qa_files import REQUIRED_COLUMNS, SQUAD_FEATURES, read_squad_file, split_by_article
from spg_hf.tasks.qa_scoring import exact_match, f1, normalize_answer, score_squad, squad_metrics
from spg_hf.tasks.qa_windows import postprocess_qa_predictions, prepare_train_features, prepare_validation_features

__all__ = [
    "REQUIRED_COLUMNS",
    "SQUAD_FEATURES",
    "DataTrainingArguments",
    "check_tokenizer",
    "evaluate_squad",
    "exact_match",
    "f1",
    "load_model_and_tokenizer",
    "load_squad_datasets",
    "normalize_answer",
    "postprocess_qa_predictions",
    "prepare_train_features",
    "prepare_validation_features",
    "read_squad_file",
    "score_squad",
    "split_by_article",
    "squad_metrics",
    "tokenize_dataset",
]

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """Which SQuAD-style data to train and evaluate on, and how to cut it into model inputs (HF run_qa.py names)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset, e.g. 'rajpurkar/squad' (v1.1) or 'rajpurkar/squad_v2' (v2.0)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a .json in the original SQuAD format ({'version', 'data': [{'title', "
            "'paragraphs': [{'context', 'qas': [...]}]}]}), or a .json/.jsonl of flat rows with the hub's columns "
            "(id, title, context, question, answers{text, answer_start}). $VARS and ~ are expanded."
        },
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Evaluation data, in the same formats as train_file."}
    )
    split_by_article_eval_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Split ONE source into train and eval parts by article (title), so that no article is in both: "
            "this fraction of the articles (rounded up) becomes the eval part. The source is train_file (or "
            "validation_file when only that is given; both must then be the same file), or the hub dataset's "
            "train split. The split depends only on the source and split_seed. Use it when only one file is at hand, "
            "e.g. the SQuAD v1.1 dev file offline. Must lie in (0, 1)."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of split_by_article_eval_fraction's article split."})
    max_seq_length: int = field(
        default=384, metadata={"help": "Tokens per window (question + context part), after tokenization."}
    )
    doc_stride: int = field(
        default=128, metadata={"help": "Tokens shared by consecutive windows of a long context; < max_seq_length."}
    )
    pad_to_max_length: bool = field(
        default=True,
        metadata={"help": "Pad every window to max_seq_length. False: pad each batch to its longest window."},
    )
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens, that is predicted."})
    n_best_size: int = field(
        default=20, metadata={"help": "Best start and best end positions per window combined into answer candidates."}
    )
    version_2_with_negative: bool = field(
        default=False, metadata={"help": "SQuAD v2.0: some questions have no answer and may be answered ''."}
    )
    null_score_diff_threshold: float = field(
        default=0.0,
        metadata={"help": "v2.0: answer '' when null score minus best span score is above this threshold."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training questions (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation questions (debugging, quick runs)."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached tokenized hub datasets."})

    def __post_init__(self) -> None:
        self.train_file = expand_path(self.train_file, "train_file")
        self.validation_file = expand_path(self.validation_file, "validation_file")
        if self.dataset_name is None and self.train_file is None and self.validation_file is None:
            raise ValueError("Give dataset_name (hub) or train_file / validation_file (local SQuAD json).")
        if self.dataset_name is not None and (self.train_file or self.validation_file):
            raise ValueError("Give either dataset_name or train_file / validation_file, not both.")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: {path} does not exist.")
        if self.doc_stride >= self.max_seq_length:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be smaller than max_seq_length ({self.max_seq_length}): "
                "consecutive windows would not advance."
            )
        fraction = self.split_by_article_eval_fraction
        if fraction is not None:
            if not 0 < fraction < 1:
                raise ValueError(f"split_by_article_eval_fraction must lie in (0, 1), got {fraction}.")
            if self.train_file and self.validation_file and Path(self.train_file) != Path(self.validation_file):
                raise ValueError(
                    "split_by_article_eval_fraction splits one file: give train_file or validation_file, or the "
                    f"same file for both (got {self.train_file} and {self.validation_file})."
                )


def load_squad_datasets(
    data_args: DataTrainingArguments, model_args: ModelArguments, do_train: bool, do_eval: bool
) -> datasets.DatasetDict:
    """The 'train' and/or 'validation' questions (flat hub columns), checked, split and truncated as asked."""
    if data_args.dataset_name is not None:
        raw = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
        sources = {split: f"dataset_name={data_args.dataset_name} ({split} split)" for split in raw}
    else:
        raw, sources = datasets.DatasetDict(), {}
        for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file)):
            if path is not None:
                raw[split] = read_squad_file(path)
                sources[split] = path

    if data_args.split_by_article_eval_fraction is not None:
        source_split = "train" if "train" in raw else "validation"
        raw["train"], raw["validation"] = split_by_article(
            raw[source_split], data_args.split_by_article_eval_fraction, data_args.split_seed, sources[source_split]
        )
        sources["train"] = sources["validation"] = sources[source_split]
        logger.info(
            f"Split {sources[source_split]} by article: {len(set(raw['train']['title']))} articles for training, "
            f"{len(set(raw['validation']['title']))} for evaluation."
        )

    needed = {"train": (do_train, "do_train", "train_file"), "validation": (do_eval, "do_eval", "validation_file")}
    selected = datasets.DatasetDict()
    for split, (wanted, flag, file_argument) in needed.items():
        if not wanted:
            continue
        if split not in raw:
            raise ValueError(f"{flag} needs {file_argument} (or a dataset with a {split!r} split).")
        missing = [column for column in REQUIRED_COLUMNS if column not in raw[split].column_names]
        if missing:
            raise ValueError(
                f"{sources[split]}: missing column(s) {missing}; SQuAD data needs {list(REQUIRED_COLUMNS)}."
            )
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        selected[split] = raw[split].select(range(min(limit, len(raw[split])))) if limit is not None else raw[split]
    return selected


def load_model_and_tokenizer(
    model_args: ModelArguments, data_args: DataTrainingArguments
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """AutoModelForQuestionAnswering (pre-trained, or random from config_name) and its fast tokenizer.

    Also lowers max_seq_length to what the tokenizer supports, like HF's run_qa.py.
    """
    config = model_args.load_config()
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path or model_args.config_name
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, use_fast=True, **model_args.hub_kwargs())
    check_tokenizer(tokenizer, tokenizer_name, data_args)
    return model_args.load_model(AutoModelForQuestionAnswering, config), tokenizer


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str, data_args: DataTrainingArguments) -> None:
    """Offsets (answer character spans) need a fast tokenizer; windows must fit the model."""
    if not tokenizer.is_fast:
        raise ValueError(
            f"Tokenizer {name} is not a fast tokenizer: question answering needs its offset mapping. "
            "Use a model with a fast (tokenizers-backed) tokenizer, or set tokenizer_name to one."
        )
    if data_args.max_seq_length > tokenizer.model_max_length:
        logger.warning(
            f"max_seq_length {data_args.max_seq_length} is longer than the model's maximum "
            f"({tokenizer.model_max_length}); using {tokenizer.model_max_length}."
        )
        data_args.max_seq_length = tokenizer.model_max_length
        if data_args.doc_stride >= data_args.max_seq_length:
            raise ValueError(
                f"doc_stride ({data_args.doc_stride}) must be smaller than the model's maximum length "
                f"({data_args.max_seq_length})."
            )


def tokenize_dataset(
    examples: datasets.Dataset, data_args: DataTrainingArguments, tokenizer: PreTrainedTokenizerBase, train: bool
) -> datasets.Dataset:
    """Map questions to model windows (training windows carry labels; evaluation windows carry example_id and
    offsets)."""
    return examples.map(
        prepare_train_features if train else prepare_validation_features,
        batched=True,
        remove_columns=examples.column_names,
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_seq_length": data_args.max_seq_length,
            "doc_stride": data_args.doc_stride,
            "pad_to_max_length": data_args.pad_to_max_length,
        },
        desc="Tokenizing " + ("training" if train else "evaluation") + " windows",
    )


def evaluate_squad(
    trainer: Trainer, examples: datasets.Dataset, features: datasets.Dataset, data_args: DataTrainingArguments
) -> dict[str, float]:
    """Predict logits for the evaluation windows, turn them into answers, score them; write
    output_dir/eval_predictions.json (question id -> answer). Returns eval_-prefixed metrics."""
    output = trainer.predict(features.remove_columns(["example_id", "offset_mapping"]), metric_key_prefix="eval")
    start_logits, end_logits = output.predictions[:2]
    predictions = postprocess_qa_predictions(
        examples,
        features,
        start_logits,
        end_logits,
        version_2_with_negative=data_args.version_2_with_negative,
        n_best_size=data_args.n_best_size,
        max_answer_length=data_args.max_answer_length,
        null_score_diff_threshold=data_args.null_score_diff_threshold,
    )
    scores = score_squad(predictions, examples, data_args.version_2_with_negative)
    metrics = {f"eval_{name}": value for name, value in scores.items()}
    metrics.update(output.metrics)
    metrics["eval_samples"] = len(examples)
    if trainer.is_world_process_zero():
        path = Path(trainer.args.output_dir) / "eval_predictions.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(predictions, indent=2, ensure_ascii=False), encoding="utf-8")
    return metrics
