"""Extractive question answering (SQuAD v1.1 / v2.0) for run_qa_spg.py: data loading, sliding-window features,
turning start/end logits into answers, and the official-style EM / F1.

Own, short versions of what HF's run_qa.py takes from utils_qa.py and trainer_qa.py (neither is installed).
"""

from __future__ import annotations

import collections
import json
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from sklearn.model_selection import GroupShuffleSplit
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from spg_hf.tasks.cli import ModelArguments, expand_path
from spg_hf.tasks.metrics import load_hub_metric

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "context", "question", "answers")
PUNCTUATION = frozenset(string.punctuation)
SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)


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


# ---------------------------------------------------------------------------------------------------------------
# Data


def read_squad_file(path: str) -> datasets.Dataset:
    """Read a SQuAD-format .json (original nested format, or flat rows under 'data') or a flat .json/.jsonl.

    Raises a ValueError naming the file and the missing key when the content is not SQuAD data.
    """
    file = Path(path)
    if file.suffix not in (".json", ".jsonl"):
        raise ValueError(f"{file}: expected a .json or .jsonl file.")
    text = file.read_text(encoding="utf-8")
    content = None
    if file.suffix == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            pass  # maybe JSON lines under a .json name, which datasets' json loader accepts too
    if content is None:
        try:
            content = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: not valid JSON or JSON lines ({error}).") from error
    if isinstance(content, dict):
        if "data" not in content:
            raise ValueError(f"{file} is not in SQuAD format: top-level key 'data' is missing.")
        content = content["data"]
    if not isinstance(content, list) or not content:
        raise ValueError(f"{file} is not in SQuAD format: expected a non-empty list of articles or rows.")
    nested = isinstance(content[0], dict) and "paragraphs" in content[0]
    if nested:
        rows = _flatten_articles(content, file)
    else:
        rows = [_flat_row(row, f"{file}: row {i}") for i, row in enumerate(content)]
    return datasets.Dataset.from_list(rows, features=SQUAD_FEATURES)


def _require(mapping: Any, key: str, where: str, file: Path) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{file} is not in SQuAD format: {where} has no key {key!r}.")
    return mapping[key]


def _flatten_articles(articles: list[Any], file: Path) -> list[dict[str, Any]]:
    """Original SQuAD nesting (article > paragraph > question) to the hub's flat rows."""
    rows = []
    for i, article in enumerate(articles):
        title = _require(article, "title", f"data[{i}]", file)
        for j, paragraph in enumerate(_require(article, "paragraphs", f"data[{i}]", file)):
            context = _require(paragraph, "context", f"data[{i}].paragraphs[{j}]", file)
            for k, qa in enumerate(_require(paragraph, "qas", f"data[{i}].paragraphs[{j}]", file)):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                answers = [] if qa.get("is_impossible", False) else _require(qa, "answers", where, file)
                for a, answer in enumerate(answers):
                    for key in ("text", "answer_start"):
                        _require(answer, key, f"{where}.answers[{a}]", file)
                rows.append(
                    {
                        "id": str(_require(qa, "id", where, file)),
                        "title": title,
                        "context": context,
                        "question": _require(qa, "question", where, file),
                        "answers": {
                            "text": [answer["text"] for answer in answers],
                            "answer_start": [answer["answer_start"] for answer in answers],
                        },
                    }
                )
    return rows


def _flat_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where} is not an object with the columns {list(REQUIRED_COLUMNS)}.")
    missing = [column for column in REQUIRED_COLUMNS if column not in row]
    if missing:
        raise ValueError(f"{where} is missing column(s) {missing}; SQuAD rows need {list(REQUIRED_COLUMNS)}.")
    answers = row["answers"]
    if not isinstance(answers, dict) or {"text", "answer_start"} - answers.keys():
        raise ValueError(f"{where}: 'answers' must be {{'text': [...], 'answer_start': [...]}}, got {answers!r}.")
    return {**{column: row[column] for column in REQUIRED_COLUMNS}, "title": row.get("title", "")}


def split_by_article(
    dataset: datasets.Dataset, eval_fraction: float, seed: int, source: str = "dataset"
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split questions into (train, eval) so that every article (title) lies wholly in one part.

    ceil(eval_fraction * number of articles) articles go to eval; the choice depends only on the titles and seed.
    """
    if "title" not in dataset.column_names:
        raise ValueError(f"{source}: split_by_article_eval_fraction needs a 'title' column.")
    titles = dataset["title"]
    if len(set(titles)) < 2:
        raise ValueError(f"{source}: split_by_article_eval_fraction needs at least 2 articles (titles).")
    splitter = GroupShuffleSplit(n_splits=1, test_size=eval_fraction, random_state=seed)
    try:
        train_indices, eval_indices = next(splitter.split(np.zeros(len(titles)), groups=titles))
    except ValueError as error:
        raise ValueError(f"{source}: split_by_article_eval_fraction={eval_fraction}: {error}") from error
    return dataset.select(np.sort(train_indices)), dataset.select(np.sort(eval_indices))


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


# ---------------------------------------------------------------------------------------------------------------
# Features: a long context becomes several overlapping windows, each a separate model input


def _tokenize_windows(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> tuple[Any, int]:
    """Tokenize question + context into windows of max_seq_length overlapping by doc_stride tokens."""
    question_first = tokenizer.padding_side == "right"
    # Leading whitespace in some SQuAD questions would only waste window room.
    questions = [question.lstrip() for question in examples["question"]]
    first, second = (questions, examples["context"]) if question_first else (examples["context"], questions)
    windows = tokenizer(
        first,
        second,
        truncation="only_second" if question_first else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )
    return windows, 1 if question_first else 0


def prepare_train_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> dict[str, list]:
    """Windows with start_positions / end_positions: the answer's token span, or the CLS index when the
    (first) answer is not wholly inside the window or the question has none."""
    windows, context_id = _tokenize_windows(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    example_index = windows.pop("overflow_to_sample_mapping")
    offset_mapping = windows.pop("offset_mapping")
    windows["start_positions"], windows["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = windows["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        answers = examples["answers"][example_index[i]]
        start, end = cls_index, cls_index
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context_tokens = [t for t, sequence_id in enumerate(windows.sequence_ids(i)) if sequence_id == context_id]
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                start = max(t for t in context_tokens if offsets[t][0] <= start_char)
                end = min(t for t in context_tokens if offsets[t][1] >= end_char)
        windows["start_positions"].append(start)
        windows["end_positions"].append(end)
    return windows


def prepare_validation_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> dict[str, list]:
    """Windows with example_id and an offset_mapping that is None outside the context, for post-processing.
    Both columns must be removed before the windows go to the model."""
    windows, context_id = _tokenize_windows(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    example_index = windows.pop("overflow_to_sample_mapping")
    windows["example_id"] = [examples["id"][index] for index in example_index]
    windows["offset_mapping"] = [
        [
            offset if sequence_id == context_id else None
            for offset, sequence_id in zip(offsets, windows.sequence_ids(i), strict=True)
        ]
        for i, offsets in enumerate(windows["offset_mapping"])
    ]
    return windows


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


# ---------------------------------------------------------------------------------------------------------------
# From logits to answers


def postprocess_qa_predictions(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """The answer text for each question id: the best-scoring span (start logit + end logit) over all its windows,
    among the n_best_size best starts x ends of each window, inside the context, end >= start, at most
    max_answer_length tokens. v2.0: '' when the smallest null score (CLS start + end) beats that span's score by
    more than null_score_diff_threshold. Rows of the logits may be padded with -100 past a window's length.
    """
    if len(features) != len(start_logits) or len(features) != len(end_logits):
        raise ValueError(f"{len(features)} windows but {len(start_logits)} / {len(end_logits)} rows of logits.")
    windows_of = collections.defaultdict(list)
    for window, example_id in enumerate(features["example_id"]):
        windows_of[example_id].append(window)
    all_offsets = features["offset_mapping"]

    predictions = {}
    for example in examples:
        best_score, best_text, null_score = -np.inf, "", np.inf
        for window in windows_of[example["id"]]:
            starts, ends, offsets = start_logits[window], end_logits[window], all_offsets[window]
            null_score = min(null_score, starts[0] + ends[0])
            for start in np.argsort(starts)[::-1][:n_best_size]:
                for end in np.argsort(ends)[::-1][:n_best_size]:
                    if max(start, end) >= len(offsets) or offsets[start] is None or offsets[end] is None:
                        continue
                    if not 0 <= end - start < max_answer_length or starts[start] + ends[end] <= best_score:
                        continue
                    best_score = starts[start] + ends[end]
                    best_text = example["context"][offsets[start][0] : offsets[end][1]]
        if version_2_with_negative and null_score - best_score > null_score_diff_threshold:
            best_text = ""
        predictions[example["id"]] = best_text
    return predictions


# ---------------------------------------------------------------------------------------------------------------
# Metrics: the official SQuAD evaluation (v2.0 script, which reduces to v1.1's on answerable questions)


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
